"""No-data (inactivity) alarms: the catalog's max_silence_s, the pure state machine
(transforms.alarms.observe_batch / scan_silences) and the keyed stage's timer
(transforms.sensor_state._SensorStateFn driven with in-memory state and timers).

The properties run random traces of readings arriving and of the bucket's scans
(with gaps: the job down, restored from a checkpoint) and check the spec of
docs/pipeline.md ("No-data alarms") on the transitions, not a copy of the code.
"""

from __future__ import annotations

import copy
import json
import pickle
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.assets import AssetCatalogError, Thresholds, load_asset_catalog, parse_asset_catalog
from transforms import dedup, sensor_state
from transforms.alarms import (
    BUCKET_META,
    CLEARED,
    NO_DATA,
    RAISED,
    AlarmState,
    advance_alarms,
    observe_batch,
    scan_silences,
    sensor_key,
)

# ---- catalog --------------------------------------------------------------------------------

SITES = {"s": {"name": "S", "location": "L"}}


def _catalog(assets: dict[str, Any], asset_types: Any = None, generated: Any = None):
    doc: dict[str, Any] = {"sites": SITES, "assets": assets}
    if asset_types is not None:
        doc["asset_types"] = asset_types
    if generated is not None:
        doc["generated"] = generated
    return parse_asset_catalog(doc)


def test_max_silence_comes_from_the_asset_type_and_the_asset_overrides_it():
    types = {"_doc": "comment", "inverter": {"max_silence_s": {"TEMPERATURE": 300,
                                                               "POWER": 120}}}
    cat = _catalog({
        "plain": {"site_id": "s", "asset_type": "inverter",
                  "thresholds": {"TEMPERATURE": {"warning_high": 80}}},
        "tuned": {"site_id": "s", "asset_type": "inverter",
                  "max_silence_s": {"TEMPERATURE": 60, "POWER": None, "VOLTAGE": 30}},
        "quiet": {"site_id": "s", "asset_type": "inverter", "max_silence_s": None},
        "other": {"site_id": "s", "asset_type": "meter"},
    }, types, [{"sites": 1, "assets_per_site": 2, "site_id": "s", "asset_id": "g-{asset}",
                "site_name": "S", "asset_type": "inverter", "location": "L",
                "max_silence_s": {"POWER": 5}}])
    plain = cat.get("plain").thresholds
    assert plain["TEMPERATURE"] == Thresholds(warning_high=80, max_silence_s=300)
    assert plain["POWER"] == Thresholds(max_silence_s=120)   # a silence limit, no bands
    tuned = cat.get("tuned").thresholds
    assert {k: v.max_silence_s for k, v in tuned.items()} == {"TEMPERATURE": 60, "VOLTAGE": 30}
    assert cat.get("quiet").thresholds == {} and cat.get("other").thresholds == {}
    assert {k: v.max_silence_s for k, v in cat.get("g-2").thresholds.items()} == {
        "TEMPERATURE": 300, "POWER": 5}
    assert cat.get("plain").as_dict()["thresholds"]["POWER"]["max_silence_s"] == 120


@pytest.mark.parametrize("types, assets, match", [
    ({"inverter": {"max_silence_s": {"TEMPERATURE": 0}}}, {}, r"asset_types\.inverter"
     r"\.max_silence_s\.TEMPERATURE: must be a number of seconds > 0"),
    ({"inverter": {"max_silence_s": {"TEMPERATURE": None}}}, {}, "seconds > 0, got None"),
    ({"inverter": {"max_silence_s": {"SMELL": 10}}}, {}, "SMELL: unknown sensor type"),
    ({"inverter": {"silence": 10}}, {}, r"asset_types\.inverter: must be an object with keys"),
    ([], {}, "'asset_types' must be an object"),
    ({}, {"a": {"site_id": "s", "asset_type": "t", "max_silence_s": {"POWER": -1}}},
     r"assets\.a\.max_silence_s\.POWER: must be a number of seconds > 0 or null"),
    ({}, {"a": {"site_id": "s", "asset_type": "t", "max_silence_s": 60}},
     r"assets\.a\.max_silence_s: must be an object"),
])
def test_bad_max_silence_is_refused_naming_the_file_and_entry(tmp_path, types, assets, match):
    path = tmp_path / "assets.json"
    path.write_text(json.dumps({"sites": SITES, "assets": assets, "asset_types": types}))
    with pytest.raises(AssetCatalogError, match=match) as info:
        load_asset_catalog(path)
    assert "assets.json" in str(info.value)


def test_repo_catalog_sets_silence_limits_for_real_assets_not_for_bench_traffic():
    cat = load_asset_catalog()
    assert cat.get("asset-001").thresholds["TEMPERATURE"].max_silence_s == 300
    assert cat.get("asset-001").thresholds["CURRENT"].max_silence_s == 300   # type default
    bench = cat.get("bench-asset-01-001").thresholds
    assert bench and all(t.max_silence_s is None for t in bench.values())


# ---- pure state machine ---------------------------------------------------------------------

LIMIT_S = {"t": 10.0, "p": 25.0, "n": None}   # sensor -> max_silence_s ("n": no limit)
GAP_MS = 30_000


def _reading(sensor: str, ts: int, value: float = 20.0) -> dict[str, Any]:
    return {"event_id": f"{sensor}-{ts}", "timestamp": ts, "site_id": "site", "asset_id": "a",
            "sensor_id": sensor, "sensor_type": "TEMPERATURE", "value": value,
            "quality_flag": "GOOD", "ingested_at": ts}


def _item(sensor: str, ts: int, value: float = 20.0, bands: dict | None = None):
    row = _reading(sensor, ts, value)
    return sensor_key(row), ts, (row, Thresholds(**(bands or {}),
                                                 max_silence_s=LIMIT_S[sensor]))


# A trace: steps of ("read", sensor, out_of_order) or ("scan",), each after a clock advance.
_STEP = st.one_of(
    st.tuples(st.just("read"), st.sampled_from(sorted(LIMIT_S)), st.booleans()),
    st.tuples(st.just("scan")),
)
_TRACE = st.lists(st.tuples(st.integers(0, 40_000), _STEP), max_size=80)


def _run(trace, restore_every: int = 0):
    """Drive one bucket; returns [(now_ms, step, transitions)], the gap-ending scan times
    and the arrival times per sensor. ``restore_every``: pickle/unpickle the stored dict
    (a checkpoint restore) every so many steps."""
    stored: dict[str, Any] = {}
    now = 1_000_000
    event_ts = {s: 0 for s in LIMIT_S}
    log, gap_ends, last_scan = [], [], None
    arrivals: dict[str, list[int]] = {s: [] for s in LIMIT_S}
    for i, (advance, step_) in enumerate(trace):
        now += advance
        if step_[0] == "read":
            _, sensor, late = step_
            event_ts[sensor] += 1000
            ts = event_ts[sensor] - (5000 if late else 0)
            _changed, out = observe_batch(stored, [_item(sensor, ts)], now)
            arrivals[sensor].append(now)
        else:
            if last_scan is not None and now - last_scan > GAP_MS:
                gap_ends.append(now)
            last_scan = now
            out, _deferred = scan_silences(stored, now, GAP_MS)
        log.append((now, step_, out))
        if restore_every and i % restore_every == 0:
            stored = pickle.loads(pickle.dumps(stored))
    return log, gap_ends, arrivals


@settings(max_examples=300, deadline=None)
@given(_TRACE)
def test_no_data_episodes_alternate_and_share_their_id(trace):
    log, _gaps, _arrivals = _run(trace)
    open_: dict[str, dict[str, Any]] = {}
    for _now, _step, out in log:
        for t in out:
            if t["severity"] != NO_DATA:
                continue
            s = t["sensor_id"]
            if t["state"] == RAISED:
                assert s not in open_, f"second RAISED while {open_[s]['alarm_id']} is open"
                open_[s] = t
            else:
                assert t["state"] == CLEARED and s in open_, "CLEARED without an open episode"
                raised = open_.pop(s)
                assert t["alarm_id"] == raised["alarm_id"]
                assert t["timestamp"] > raised["timestamp"]   # latest transition = the clear


@settings(max_examples=300, deadline=None)
@given(_TRACE)
def test_no_data_raises_exactly_when_silent_past_the_limit_while_the_job_ran(trace):
    """Each scan at ``now`` raises sensor s iff it is not alarmed, has a limit L, and
    ``now >= max(last arrival, last gap-ending scan) + L``; the raise is stamped with that
    due time and its id ends with the last arrival. A reading clears an open episode at once
    (in or out of event-time order) and never raises NO_DATA."""
    log, gap_ends, arrivals = _run(trace)
    alarmed: dict[str, bool] = {s: False for s in LIMIT_S}
    last: dict[str, int | None] = {s: None for s in LIMIT_S}
    for now, step_, out in log:
        nd = [t for t in out if t["severity"] == NO_DATA]
        if step_[0] == "read":
            sensor = step_[1]
            assert [t["state"] for t in nd] == ([CLEARED] if alarmed[sensor] else [])
            alarmed[sensor], last[sensor] = False, now
            continue
        resumed = max([g for g in gap_ends if g <= now], default=0)
        expected = {}
        for s, limit in LIMIT_S.items():
            if limit is None or last[s] is None or alarmed[s]:
                continue
            due = max(last[s], resumed) + int(limit * 1000)
            if due <= now:
                expected[s] = due
        assert {t["sensor_id"]: t["timestamp"] for t in nd} == expected
        for t in nd:
            s = t["sensor_id"]
            assert t["state"] == RAISED and t["alarm_id"] == f"a:{s}:{last[s]}"
            assert t["threshold"] == LIMIT_S[s] and t["event_id"] == ""
            assert t["value"] == (t["timestamp"] - last[s]) / 1000 >= LIMIT_S[s]
            alarmed[s] = True


@settings(max_examples=200, deadline=None)
@given(_TRACE)
def test_a_restore_between_steps_changes_nothing(trace):
    assert _run(trace, restore_every=3) == _run(trace)


@given(st.lists(st.tuples(st.sampled_from(["t", "p"]),
                          st.sampled_from([20.0, 85.0, 97.0, 79.0, 77.0, -40.0])),
                max_size=40))
def test_tracking_silence_does_not_change_threshold_alarms(readings):
    bands = {"warning_high": 80, "critical_high": 95, "warning_low": -20, "hysteresis": 2}
    items = [_item(s, 1000 * (i + 1), v, bands) for i, (s, v) in enumerate(readings)]
    _, without = observe_batch({}, copy.deepcopy(items), None)
    tracked: list[dict[str, Any]] = []
    stored: dict[str, Any] = {}
    for n, item in enumerate(items):
        tracked += observe_batch(stored, [item], 1_000_000 + n)[1]
    assert tracked == without and all(t["severity"] != NO_DATA for t in tracked)


def test_the_job_being_down_raises_no_storm_and_counts_a_fresh_interval():
    stored: dict[str, Any] = {}
    t0 = 1_000_000
    for s in ("t", "p"):
        observe_batch(stored, [_item(s, 1000)], t0)
    scan_silences(stored, t0 + 5_000, GAP_MS)
    # Down for an hour: both sensors are long past their limits when the scans resume.
    back = t0 + 3_600_000
    assert scan_silences(stored, back, GAP_MS) == ([], 2)
    assert scan_silences(stored, back + 9_000, GAP_MS) == ([], 0)
    raised, _ = scan_silences(stored, back + 10_000, GAP_MS)   # "t": 10 s after the return
    assert [(t["sensor_id"], t["timestamp"], t["alarm_id"]) for t in raised] == [
        ("t", back + 10_000, f"a:t:{t0}")]
    # "p" reports 20 s after the return: it never alarms.
    assert observe_batch(stored, [_item("p", 2000)], back + 20_000)[1] == []
    assert scan_silences(stored, back + 30_000, GAP_MS)[0] == []


def test_a_sensor_that_never_reported_or_has_no_limit_never_alarms():
    stored: dict[str, Any] = {}
    observe_batch(stored, [_item("n", 1000)], 0)   # reported, no max_silence_s
    assert scan_silences(stored, 10_000_000, GAP_MS) == ([], 0)
    assert set(stored) == {sensor_key(_reading("n", 0)), BUCKET_META}


def test_state_of_the_previous_layout_reads_as_never_seen():
    old = {sensor_key(_reading("t", 0)): ("a:t:5", "WARNING", 5)}   # layout 4: 3-tuples
    assert scan_silences(old, 10_000_000, GAP_MS) == ([], 0)
    assert AlarmState.from_tuple(old[sensor_key(_reading("t", 0))]).active
    _, out = observe_batch(old, [_item("t", 10, 20.0, {"warning_high": 8})], 10_000_001)
    assert out == []   # still WARNING-active (10 > 8): no clear, no NO_DATA


# ---- the keyed stage's timer ----------------------------------------------------------------

class _Value:
    def __init__(self) -> None:
        self.value: Any = None
        self.writes = 0

    def read(self) -> Any:
        return self.value

    def write(self, value: Any) -> None:
        self.value, self.writes = value, self.writes + 1

    def clear(self) -> None:
        self.value = None


class _Bag:
    def __init__(self) -> None:
        self.items: list[Any] = []

    def read(self) -> list[Any]:
        return list(self.items)

    def add(self, value: Any) -> None:
        self.items.append(value)

    def clear(self) -> None:
        self.items = []


class _Timer:
    def __init__(self) -> None:
        self.sets: list[int] = []

    def set(self, at: Any) -> None:
        self.sets.append(at.micros // 1000)


def test_the_stage_arms_one_timer_per_bucket_and_the_timer_raises(monkeypatch):
    clock = [5_000_000]
    monkeypatch.setattr(dedup, "_now_ms", lambda: clock[0])
    monkeypatch.setattr(sensor_state, "_now_ms", lambda: clock[0])
    fn = sensor_state._SensorStateFn(60_000, "scope-no-data", check_ms=1_000)
    seen, version, expire, states, no_data = _Bag(), _Value(), _Timer(), _Value(), _Timer()

    def batch(*items):
        payload = pickle.dumps(list(items))
        return list(fn.process((3, payload), seen=seen, version=version, timer=expire,
                               states=states, no_data=no_data))

    batch(_item("t", 1000), _item("p", 1000))
    assert no_data.sets == [5_001_000]            # armed by the bucket's first batch
    writes = states.writes
    clock[0] += 500
    batch(_item("t", 2000))
    assert no_data.sets == [5_001_000]            # a batch never sets it again
    assert states.writes == writes + 1            # and writes the alarm state once, as before
    out = []
    while clock[0] < 5_000_500 + 10_000:          # the timer fires every period
        clock[0] = no_data.sets[-1]
        out += fn.check_no_data(states=states, no_data=no_data)
        assert no_data.sets[-1] == clock[0] + 1_000   # re-armed one period on
    assert [(o.tag, o.value["sensor_id"], o.value["severity"], o.value["timestamp"])
            for o in out] == [("alarms", "t", NO_DATA, 5_000_500 + 10_000)]
    clock[0] += 60_000                            # the job stalls for a minute: no storm
    assert list(fn.check_no_data(states=states, no_data=no_data)) == []
    clock[0] += 1_000
    out = batch(_item("t", 3000))
    assert [(o.value["state"], o.value["severity"]) for o in out[1:]] == [(CLEARED, NO_DATA)]


def test_check_period_zero_turns_no_data_alarms_off(monkeypatch):
    fn = sensor_state._SensorStateFn(60_000, "scope-no-data-off", check_ms=0)
    states, no_data = _Value(), _Timer()
    payload = pickle.dumps([_item("t", 1000)])
    list(fn.process((3, payload), seen=_Bag(), version=_Value(), timer=_Timer(),
                    states=states, no_data=no_data))
    assert no_data.sets == []
    stored = pickle.loads(states.read())
    assert BUCKET_META not in stored and stored[sensor_key(_reading("t", 0))][3] is None
    assert list(fn.check_no_data(states=states, no_data=no_data)) == [] and no_data.sets == []


def test_advance_alarms_without_a_clock_is_the_threshold_machine_only():
    states = _Value()
    transitions, new = advance_alarms([_item("t", 1000, 99.0, {"warning_high": 80})], states)
    assert new is False and [t["severity"] for t in transitions] == ["WARNING"]
    assert BUCKET_META not in pickle.loads(states.read())


@pytest.mark.parametrize("bad", [-1, float("nan")])
def test_a_negative_check_period_is_refused_naming_the_setting(bad):
    with pytest.raises(ValueError, match=r"\[pipeline\] no_data_check_seconds"):
        sensor_state.DedupAndDetectAlarms(None, no_data_check_seconds=bad)  # type: ignore[arg-type]


def test_turning_no_data_alarms_off_and_on_again_re_arms_without_a_storm(monkeypatch):
    clock = [5_000_000]
    monkeypatch.setattr(dedup, "_now_ms", lambda: clock[0])
    monkeypatch.setattr(sensor_state, "_now_ms", lambda: clock[0])
    states, no_data = _Value(), _Timer()

    def batch(fn, *items):
        return list(fn.process((3, pickle.dumps(list(items))), seen=_Bag(), version=_Value(),
                               timer=_Timer(), states=states, no_data=no_data))

    on = sensor_state._SensorStateFn(60_000, "scope-no-data-on", check_ms=1_000)
    batch(on, _item("t", 1000), _item("p", 1000))
    off = sensor_state._SensorStateFn(60_000, "scope-no-data-off2", check_ms=0)
    clock[0] += 1_000
    assert list(off.check_no_data(states=states, no_data=no_data)) == []   # restored, off
    assert BUCKET_META not in pickle.loads(states.read())
    clock[0] += 3_600_000                        # an hour later, turned on again
    batch(on, _item("t", 2000))
    assert no_data.sets[-1] == clock[0] + 1_000  # re-armed by the first batch
    back, out = clock[0], []
    while clock[0] < back + 30_000:
        clock[0] = no_data.sets[-1]
        out += on.check_no_data(states=states, no_data=no_data)
    # "p" was silent all along but is only counted from the return: due back + 25 s.
    assert sorted((o.value["sensor_id"], o.value["timestamp"]) for o in out) == [
        ("p", back + 25_000), ("t", back + 10_000)]
