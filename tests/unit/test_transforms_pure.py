"""Pure cores of the transforms: decode, enrich, catalog refresh, dedup model, alarm machine."""

from __future__ import annotations

import copy
import json
import pickle
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.assets import (
    AssetCatalogError,
    Thresholds,
    latest_catalog,
    load_asset_catalog,
)
from schemas.avro import TELEMETRY_BATCH, TELEMETRY_EVENT, load_schema
from schemas.dead_letter import DEAD_LETTER_FIELDS
from schemas.validation import default_sensor_rules
from schemas.wire import InMemorySchemaLookup, encode
from transforms.alarms import CLEARED, CRITICAL, RAISED, WARNING, AlarmState, classify, step
from transforms.common import Rejected
from transforms.decode import decode_source_record, unpack_source_record
from transforms.dedup import dedup_step, first_copies
from transforms.enrich import READING_FIELDS, enrich, refresh_catalog
from transforms.validate import validate_envelope

NOW = 1_800_000_000_000
EVENT = {"event_id": "e1", "timestamp": NOW, "site_id": "site-001", "asset_id": "asset-001",
         "sensor_id": "temp-001", "sensor_type": "TEMPERATURE", "value": 72.5,
         "unit": "celsius", "quality_flag": "GOOD", "source": None}


# ---- decode ---------------------------------------------------------------------------------

def test_source_record_shapes():
    assert unpack_source_record(b"v") == (None, b"v", {"source": "kafka"})
    assert unpack_source_record((b"k", b"v"))[:2] == (b"k", b"v")
    row = SimpleNamespace(key=b"k", value=b"v", topic="raw_telemetry", partition=2, offset=9)
    assert unpack_source_record(row) == (b"k", b"v", {"source": "kafka", "topic":
                                                      "raw_telemetry", "partition": 2,
                                                      "offset": 9})
    assert unpack_source_record({"value": b"v", "offset": 1})[2]["offset"] == 1


def test_decode_source_record_good_and_bad():
    schema = load_schema(TELEMETRY_EVENT)
    lookup = InMemorySchemaLookup()
    sid = lookup.register(schema)
    data = encode(EVENT, sid, schema)
    envs = decode_source_record((b"asset-001", data), lookup, schema)
    assert envs == [(EVENT, data, {"source": "kafka", "key": b"asset-001",
                                   "original_format": "avro-confluent"})]
    for element, code, original in ((b"\x05junk", "bad_magic", b"\x05junk"),
                                    ((None, None), "not_bytes", b""),
                                    ((None, "text"), "not_bytes", b"text"),
                                    (data[:-1], "truncated_body", data[:-1])):
        out = decode_source_record(element, lookup, schema)
        assert isinstance(out, Rejected) and out.stage == "decode" and out.codes == (code,)
        dead = out.dead_letter()
        assert tuple(dead) == DEAD_LETTER_FIELDS
        assert (dead["stage"], dead["original"], dead["original_format"], dead["source"],
                dead["event_id"]) == ("decode", original, "avro-confluent", "kafka", None)
        assert list(out.reasons) == dead["reasons"] and len(dead["reasons"]) == 1
    # the record's metadata reaches the dead letter
    record = SimpleNamespace(key=b"k", value=b"\x05junk", topic="raw_telemetry", partition=2,
                             offset=9)
    dead = decode_source_record(record, lookup, schema).dead_letter()
    assert (dead["topic"], dead["partition"], dead["offset"], dead["key"]) == \
        ("raw_telemetry", 2, 9, b"k")


def test_registry_outage_propagates_instead_of_dead_lettering():
    def down(_sid):
        raise ConnectionError("registry down")

    data = encode(EVENT, 1, load_schema(TELEMETRY_EVENT))
    with pytest.raises(ConnectionError):
        decode_source_record(data, down, load_schema(TELEMETRY_EVENT))


def test_batch_record_decodes_to_one_envelope_per_event_in_order():
    """What the edge writes: a TelemetryBatch told apart from a single event by its schema id."""
    lookup = InMemorySchemaLookup()
    event_id, batch_id = lookup.register(load_schema(TELEMETRY_EVENT)), \
        lookup.register(load_schema(TELEMETRY_BATCH))
    events = [dict(EVENT, event_id=f"e{i}", value=float(i)) for i in range(5)]
    data = encode({"events": events}, batch_id, load_schema(TELEMETRY_BATCH))
    record = SimpleNamespace(key=None, value=data, topic="raw_telemetry", partition=3, offset=7)
    envs = decode_source_record(record, lookup, load_schema(TELEMETRY_EVENT))
    assert [e[0] for e in envs] == events
    assert all(e[1] is None and e[2]["offset"] == 7 and e[2]["original_format"] == "json"
               for e in envs)
    single = decode_source_record(encode(EVENT, event_id, load_schema(TELEMETRY_EVENT)),
                                  lookup, load_schema(TELEMETRY_EVENT))
    assert [e[0] for e in single] == [EVENT]
    empty = decode_source_record(
        encode({"events": []}, batch_id, load_schema(TELEMETRY_BATCH)), lookup,
        load_schema(TELEMETRY_EVENT))
    assert empty == []
    # a batch cut short is one dead letter for the record, like a single event's
    out = decode_source_record(data[:-3], lookup, load_schema(TELEMETRY_EVENT))
    assert isinstance(out, Rejected) and out.code == "truncated_body"
    assert out.dead_letter()["original"] == data[:-3]


def test_dead_letter_of_a_batch_item_carries_the_event_as_json():
    bad = dict(EVENT, value=float("inf"))
    meta = {"source": "kafka", "original_format": "json", "topic": "raw_telemetry",
            "partition": 1, "offset": 9}
    out = validate_envelope((bad, None, meta), now_ms=NOW, rules=default_sensor_rules())
    assert isinstance(out, Rejected) and out.codes == ("value.not_finite",)
    dead = out.dead_letter()
    assert dead["original_format"] == "json" and (dead["partition"], dead["offset"]) == (1, 9)
    assert json.loads(dead["original"])["event_id"] == "e1"


def test_validate_envelope_keeps_original_bytes_in_dead_letters():
    bad = dict(EVENT, value=float("nan"))
    out = validate_envelope((bad, b"orig", {"source": "kafka", "offset": 4}),
                            now_ms=NOW, rules=default_sensor_rules())
    assert isinstance(out, Rejected) and out.codes == ("value.not_finite",)
    dead = out.dead_letter()
    assert (dead["stage"], dead["original"], dead["offset"], dead["event_id"]) == \
        ("validate", b"orig", 4, "e1")
    assert dead["reasons"] == list(out.reasons) and "value" in dead["reasons"][0]


def test_validate_envelope_passes_the_normalised_event_with_original_and_meta():
    meta = {"source": "kafka", "offset": 4}
    raw = dict(EVENT, sensor_type="temperature", quality_flag="good")
    out = validate_envelope((raw, b"orig", meta), now_ms=NOW, rules=default_sensor_rules())
    assert not isinstance(out, Rejected)
    event, original, out_meta = out
    assert event == EVENT and original == b"orig" and out_meta is meta


def test_a_reject_lists_every_failed_rule():
    bad = dict(EVENT, value=float("nan"), unit="")
    out = validate_envelope((bad, b"orig", {"source": "kafka"}), now_ms=NOW,
                            rules=default_sensor_rules())
    assert isinstance(out, Rejected) and len(out.codes) == 2 == len(out.reasons)


def test_rejected_is_immutable_and_needs_an_envelope_for_its_dead_letter():
    out = Rejected("enrich", ("unknown_asset",), ("asset_id: unknown",), "e1")
    with pytest.raises(AttributeError):
        out.codes = ()  # type: ignore[misc]
    assert not hasattr(out, "__dict__")
    with pytest.raises(ValueError, match="envelope"):
        out.dead_letter()
    dead = out.dead_letter((EVENT, None, {"source": "kafka", "original_format": "json"}))
    assert (dead["stage"], dead["reasons"], dead["event_id"]) == \
        ("enrich", ["asset_id: unknown"], "e1")
    assert json.loads(dead["original"]) == EVENT
    assert pickle.loads(pickle.dumps(out)) == out and copy.copy(out) == out


# ---- assets and enrich ----------------------------------------------------------------------

def test_repo_catalog_covers_the_seed_asset_and_bench_assets():
    catalog = load_asset_catalog()
    seed = catalog.get("asset-001")
    assert seed is not None and seed.site_id == "site-001"
    assert seed.thresholds["TEMPERATURE"].warning_high == 80
    assert catalog.get("bench-asset-10-100") is not None
    assert json.dumps(seed.as_dict())  # the API serves this


@pytest.mark.parametrize("doc, match", [
    ({"sites": {}, "assets": {"a": {"site_id": "s", "asset_type": "t"}}}, "site 's'"),
    ({"sites": {"s": {"name": "S", "location": "L"}},
      "assets": {"a": {"site_id": "s", "asset_type": "t",
                       "thresholds": {"TEMPERATURE": {"warning_high": 90,
                                                      "critical_high": 80}}}}},
     "critical_high must be >= warning_high"),
    ({"sites": {"s": {"name": "S", "location": "L"}},
      "assets": {"a": {"site_id": "s", "asset_type": "t",
                       "thresholds": {"TEMPERATURE": {"warning_hi": 90}}}}}, "keys among"),
])
def test_bad_asset_files_are_refused_with_the_file_named(tmp_path, doc, match):
    path = tmp_path / "assets.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(AssetCatalogError, match="assets.json") as info:
        load_asset_catalog(path)
    assert match in str(info.value)


def test_enrich_known_unknown_and_mismatched_assets():
    catalog = load_asset_catalog()
    row = enrich(EVENT, catalog, ingested_at_ms=NOW + 5)
    assert not isinstance(row, Rejected) and tuple(row) == READING_FIELDS
    assert (row["site_name"], row["asset_type"], row["ingested_at"]) == \
        ("Solar Farm Alpha", "inverter", NOW + 5)
    assert all(row[k] == EVENT[k] for k in READING_FIELDS if k in EVENT)
    unknown = dict(EVENT, asset_id="asset-999")
    for cat in (catalog, None):
        out = enrich(unknown, cat, ingested_at_ms=0)
        assert isinstance(out, Rejected)
        assert (out.stage, out.codes, out.event_id) == ("enrich", ("unknown_asset",), "e1")
        assert "asset-999" in out.reasons[0]
    row = enrich(unknown, catalog, ingested_at_ms=0, policy="pass_unenriched")
    assert not isinstance(row, Rejected)
    assert row["site_name"] is None and row["asset_id"] == "asset-999"
    moved = dict(EVENT, site_id="site-002")
    out = enrich(moved, catalog, ingested_at_ms=0, policy="pass_unenriched")
    assert isinstance(out, Rejected) and (out.codes, out.event_id) == (("site_mismatch",), "e1")
    assert "site-001" in out.reasons[0] and out.envelope is None


def test_refresh_emits_only_changed_catalogs_and_latest_wins(tmp_path):
    path = tmp_path / "assets.json"
    doc = {"sites": {"s": {"name": "S", "location": "L"}},
           "assets": {"a": {"site_id": "s", "asset_type": "t"}}}
    path.write_text(json.dumps(doc))
    first = refresh_catalog(path, None, now_ms=1)
    assert first is not None and len(first) == 1
    assert refresh_catalog(path, first.version, now_ms=2) is None
    doc["assets"]["b"] = {"site_id": "s", "asset_type": "t"}
    path.write_text(json.dumps(doc))
    second = refresh_catalog(path, first.version, now_ms=3)
    assert second is not None and second.version != first.version
    # Side inputs may deliver duplicated or accumulated panes in any order.
    assert latest_catalog([second, first, second, first]) is second
    assert latest_catalog([]) is None
    path.write_text("{broken")
    with pytest.raises(AssetCatalogError, match="assets.json"):
        refresh_catalog(path, second.version, now_ms=4)


# ---- dedup ----------------------------------------------------------------------------------

WINDOW = 60_000


def test_dedup_step_window_edges():
    assert dedup_step(None, 0, WINDOW) == (True, WINDOW)
    assert dedup_step(WINDOW, WINDOW - 1, WINDOW) == (False, WINDOW)
    assert dedup_step(WINDOW, WINDOW, WINDOW) == (True, 2 * WINDOW)


copies = st.lists(st.tuples(st.integers(0, WINDOW - 1), st.sampled_from("abcde")), max_size=30)


@settings(max_examples=200, deadline=None)
@given(copies, st.randoms())
def test_dedup_within_a_window_is_order_insensitive_and_idempotent(items, rnd):
    stream = [(ts, eid, eid) for ts, eid in items]
    once = first_copies(stream, WINDOW)
    # Every id appears exactly once: all copies fall inside one window.
    assert sorted(once) == sorted(set(eid for _, eid in items))
    shuffled = list(stream)
    rnd.shuffle(shuffled)
    assert sorted(first_copies(shuffled, WINDOW)) == sorted(once)
    again = [(0, eid, eid) for eid in once]
    assert first_copies(again, WINDOW) == once


def test_dedup_lets_a_copy_through_after_the_window():
    assert first_copies([(0, "a", 1), (59_999, "a", 2), (60_000, "a", 3), (60_001, "a", 4)],
                        WINDOW) == [1, 3]


# ---- alarms ---------------------------------------------------------------------------------

T = Thresholds(warning_low=-20, warning_high=80, critical_low=-30, critical_high=95,
               hysteresis=2)


def reading(ts, value, quality="GOOD", event_id=None):
    return {"timestamp": ts, "event_id": event_id or f"ev-{ts}", "site_id": "site-001",
            "asset_id": "asset-001", "sensor_id": "temp-001", "sensor_type": "TEMPERATURE",
            "value": float(value), "unit": "celsius", "quality_flag": quality,
            "site_name": "S", "asset_type": "inverter", "location": "L", "ingested_at": ts + 1}


def run(values, thresholds=T, quality=None):
    state, out = AlarmState(), []
    for i, v in enumerate(values):
        q = quality[i] if quality else "GOOD"
        state, transitions = step(state, reading(1000 * (i + 1), v, q), thresholds)
        out.extend(transitions)
    return state, out


def test_classify_bands():
    assert classify(80, "GOOD", T)[0] is None
    assert classify(80.1, "GOOD", T)[:2] == (WARNING, 80)
    assert classify(96, "GOOD", T)[:2] == (CRITICAL, 95)
    assert classify(-25, "GOOD", T)[:2] == (WARNING, -20)
    assert classify(-31, "GOOD", T)[:2] == (CRITICAL, -30)
    assert classify(20, "BAD", T)[0] == WARNING
    assert classify(20, "BAD", None)[0] == WARNING
    assert classify(1e9, "GOOD", None)[0] is None


def test_episode_raise_escalate_hysteresis_clear():
    state, out = run([70, 85, 86, 97, 99, 90, 79, 78.5, 78, 85])
    summary = [(t["state"], t["severity"], t["value"]) for t in out]
    assert summary == [(RAISED, WARNING, 85), (RAISED, CRITICAL, 97), (CLEARED, CRITICAL, 78),
                       (RAISED, WARNING, 85)]
    first_id = "asset-001:temp-001:2000"
    assert [t["alarm_id"] for t in out[:3]] == [first_id] * 3
    assert out[3]["alarm_id"] == "asset-001:temp-001:10000"
    assert out[2]["threshold"] == 78 and state.active


def test_low_band_and_quality_alarms():
    _, out = run([0, -25, -19, -17.5])
    assert [(t["state"], t["value"]) for t in out] == [(RAISED, -25), (CLEARED, -17.5)]
    _, out = run([20, 20, 20, 20], quality=["GOOD", "BAD", "BAD", "GOOD"])
    assert [(t["state"], t["reason"]) for t in out] == [(RAISED, "quality_flag BAD"),
                                                         (CLEARED, "value 20 back inside the band"
                                                          " (clear level -18)")]
    _, out = run([1e6, 20], thresholds=None, quality=["BAD", "GOOD"])
    assert [(t["state"], t["threshold"]) for t in out] == [(RAISED, None), (CLEARED, None)]


def test_out_of_order_readings_are_not_evaluated():
    state, out = step(AlarmState(), reading(5000, 85), T)
    later, none = step(state, reading(4000, 20), T)
    assert none == [] and later == state


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.floats(-50, 120), st.sampled_from(["GOOD", "BAD", "UNCERTAIN"])),
                max_size=40))
def test_alarm_invariants(readings):
    state, active = AlarmState(), None
    for i, (value, quality) in enumerate(readings):
        state, transitions = step(state, reading(1000 * (i + 1), value, quality), T)
        assert len(transitions) <= 1
        for t in transitions:
            if t["state"] == RAISED and active is None:
                active = t  # a new episode
            elif t["state"] == RAISED:
                # Only an escalation may raise inside an open episode, once, to CRITICAL.
                assert (active["severity"], t["severity"]) == (WARNING, CRITICAL)
                assert t["alarm_id"] == active["alarm_id"]
                active = t
            else:
                assert active is not None, "a clear without a raise"
                assert t["alarm_id"] == active["alarm_id"]
                assert t["severity"] == active["severity"]
                # Hysteresis: a clear happens only inside the narrowed band, with good quality.
                assert -18 <= value <= 78 and quality != "BAD"
                active = None
        if active is not None and not transitions:
            sev = classify(value, quality, T)[0]
            assert sev is None or sev == active["severity"] or sev == WARNING
        assert state.active == (active is not None)


def test_refresh_dofn_emits_on_change_and_keeps_the_last_good_catalog(tmp_path):
    from transforms.enrich import RefreshingAssetCatalog, _RefreshCatalogFn

    path = tmp_path / "assets.json"
    doc = {"sites": {"s": {"name": "S", "location": "L"}},
           "assets": {"a": {"site_id": "s", "asset_type": "t"}}}
    path.write_text(json.dumps(doc))
    fn = _RefreshCatalogFn(str(path))
    first = list(fn.process(0))
    assert len(first) == 1 and first[0].get("a") is not None
    assert list(fn.process(1)) == []                 # unchanged file: nothing new
    path.write_text("{broken")
    assert list(fn.process(2)) == []                 # broken file: previous stays in force
    doc["assets"]["b"] = {"site_id": "s", "asset_type": "t"}
    path.write_text(json.dumps(doc))
    (second,) = list(fn.process(3))
    assert second.get("b") is not None and second.version != first[0].version

    with pytest.raises(ValueError, match="asset_refresh_seconds"):
        RefreshingAssetCatalog(path, refresh_seconds=0)
    path.write_text("{broken")
    with pytest.raises(AssetCatalogError, match="assets.json"):
        RefreshingAssetCatalog(path, refresh_seconds=60)
