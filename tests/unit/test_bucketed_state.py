"""Batch-level keyed state (transforms/buckets.py) and the dedup/alarm DoFns built on it.

The DoFns are driven directly with in-memory stand-ins for Beam's state and
timer objects, so a *failed bundle* can be simulated exactly: its state writes
are discarded while the worker process (and its decoded bucket copies) lives on.
"""

from __future__ import annotations

import copy
import pickle
from typing import Any

import apache_beam as beam
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.utils.timestamp import Timestamp
from hypothesis import given
from hypothesis import strategies as st

from transforms import dedup
from transforms.alarms import _DetectAlarmsFn, sensor_key
from transforms.buckets import BatchByBucket, bucket_of, unpack_batch
from transforms.dedup import _DedupBatchFn, first_copies

WINDOW_MS = 60_000


class FakeBag:
    def __init__(self) -> None:
        self.items: list[Any] = []

    def read(self) -> list[Any]:
        return list(self.items)

    def add(self, value: Any) -> None:
        self.items.append(copy.deepcopy(value))

    def clear(self) -> None:
        self.items = []


class FakeValue:
    def __init__(self) -> None:
        self.value: Any = None

    def read(self) -> Any:
        return self.value

    def write(self, value: Any) -> None:
        self.value = copy.deepcopy(value)

    def clear(self) -> None:
        self.value = None


class FakeTimer:
    def __init__(self) -> None:
        self.at: Timestamp | None = None

    def set(self, at: Timestamp) -> None:
        self.at = at


class BucketState:
    """The state of one bucket key; ``snapshot``/``restore`` model a discarded bundle."""

    def __init__(self) -> None:
        self.seen, self.version, self.timer = FakeBag(), FakeValue(), FakeTimer()

    def snapshot(self) -> tuple[list[Any], Any]:
        return copy.deepcopy(self.seen.items), self.version.value

    def restore(self, snap: tuple[list[Any], Any]) -> None:
        self.seen.items, self.version.value = copy.deepcopy(snap[0]), snap[1]


def run_batch(fn: _DedupBatchFn, state: BucketState, bucket: int,
              items: list[tuple[str, int, Any]]) -> list[Any]:
    """The rows kept from ``items`` (the DoFn yields them as one list per batch)."""
    payload = pickle.dumps(items)   # BatchByBucket's output shape
    return [row for rows in fn.process((bucket, payload), seen=state.seen,
                                       version=state.version, timer=state.timer) for row in rows]


def test_bucket_of_is_stable_and_in_range():
    assert bucket_of("evt-1", 64) == bucket_of("evt-1", 64)
    assert {bucket_of(f"e{i}", 8) for i in range(1000)} == set(range(8))
    # crc32, not hash(): the same in every process (PYTHONHASHSEED does not matter)
    assert bucket_of("abc", 1_000_000) == 891568578 % 1_000_000


def test_batch_by_bucket_groups_every_element_once():
    keys = [f"k{i}" for i in range(200)]
    with TestPipeline() as p:
        # Elements are lists of (key, value) pairs (one per Kafka record in the job).
        records = [[(k, i) for i, k in enumerate(keys)][n:n + 7] for n in range(0, 200, 7)]
        batches = (p | beam.Create(records, reshuffle=False) | BatchByBucket(16))
        flat = batches | beam.FlatMap(
            lambda kv: [(kv[0] == bucket_of(key, 16), key, value) for key, value in
                        ((k, v) for k, _ts, v in unpack_batch(kv[1]))])
        assert_that(flat, equal_to([(True, k, i) for i, k in enumerate(keys)]))


def test_dedup_drops_copies_inside_the_window_only():
    fn, state = _DedupBatchFn(WINDOW_MS, "scope-window"), BucketState()
    assert run_batch(fn, state, 1, [("a", 0, "a0"), ("b", 5, "b0"), ("a", 30_000, "a1")]) \
        == ["a0", "b0"]
    assert run_batch(fn, state, 1, [("a", 59_999, "a2"), ("a", 60_000, "a3")]) == ["a3"]
    assert state.timer.at is not None   # the bucket's expiry was armed


@given(st.lists(st.tuples(st.integers(0, 200_000), st.sampled_from("abcdef")), max_size=60),
       st.integers(1, 7))
def test_dedup_batches_match_the_reference_model(copies, batch_size):
    """However the stream is cut into batches, the kept copies are those of first_copies."""
    fn, state = _DedupBatchFn(WINDOW_MS, f"scope-model-{batch_size}"), BucketState()
    dedup._BucketCopies._registry.clear()
    stream = [(ts, eid, (eid, ts, n)) for n, (ts, eid) in enumerate(copies)]
    kept = []
    for i in range(0, len(stream), batch_size):
        kept += run_batch(fn, state, 0, [(eid, ts, row) for ts, eid, row in
                                         stream[i:i + batch_size]])
    assert kept == first_copies(stream, WINDOW_MS)


def test_failed_bundle_never_leaves_a_stale_copy():
    """A bundle whose state writes are discarded must not make its events look seen: the
    replay (Flink restarts from the checkpoint) has to pass them again."""
    fn, state = _DedupBatchFn(WINDOW_MS, "scope-failure"), BucketState()
    run_batch(fn, state, 3, [("a", 0, "a")])
    before = state.snapshot()
    assert run_batch(fn, state, 3, [("b", 10, "b")]) == ["b"]
    state.restore(before)                       # that bundle failed: its writes are gone
    assert run_batch(fn, state, 3, [("b", 10, "b"), ("a", 20, "a-copy")]) == ["b"]


def test_failure_in_the_middle_of_a_batch_never_leaves_a_stale_copy():
    """Sinks run inside the batch's yields: an exception there ends the bundle mid-batch."""
    fn, state = _DedupBatchFn(WINDOW_MS, "scope-midway"), BucketState()
    run_batch(fn, state, 3, [("a", 0, "a")])
    before = state.snapshot()
    gen = fn.process((3, pickle.dumps([("b", 10, "b"), ("c", 11, "c")])), seen=state.seen,
                     version=state.version, timer=state.timer)
    assert next(gen) == ["b", "c"]
    gen.close()                                 # the sink raised: nothing was written
    state.restore(before)
    assert run_batch(fn, state, 3, [("b", 10, "b"), ("c", 11, "c")]) == ["b", "c"]


def test_another_process_writing_the_bucket_forces_a_reload():
    state = BucketState()
    first, second = _DedupBatchFn(WINDOW_MS, "scope-shared"), _DedupBatchFn(WINDOW_MS,
                                                                            "scope-shared")
    run_batch(first, state, 4, [("a", 0, "a")])
    # Another process (its own copy registry) adds "b"; ours still holds version N.
    registry = dict(dedup._BucketCopies._registry)
    run_batch(second, state, 4, [("b", 5, "b")])
    dedup._BucketCopies._registry.clear()
    dedup._BucketCopies._registry.update(registry)
    assert run_batch(first, state, 4, [("b", 6, "b-copy"), ("c", 7, "c")]) == ["c"]


def test_expiry_drops_entries_a_window_after_they_were_seen(monkeypatch):
    clock = [1_000_000]
    monkeypatch.setattr(dedup, "_now_ms", lambda: clock[0])
    fn, state = _DedupBatchFn(WINDOW_MS, "scope-expiry"), BucketState()
    slack = WINDOW_MS // 2   # the timer fires half a window late: one rewrite per half window
    run_batch(fn, state, 5, [("a", 0, "a")])
    assert state.timer.at == Timestamp(micros=(1_000_000 + WINDOW_MS + slack) * 1000)
    clock[0] += 30_000
    run_batch(fn, state, 5, [("b", 1, "b")])
    # later batches do not move the timer: it stays where the bucket's oldest entry put it
    assert state.timer.at == Timestamp(micros=(1_000_000 + WINDOW_MS + slack) * 1000)
    clock[0] += 31_000                          # "a" is 61 s old, "b" 31 s
    fn.expire(key=5, seen=state.seen, version=state.version, timer=state.timer)
    assert [e for chunk in state.seen.items for e, _x, _s in pickle.loads(chunk)] == ["b"]
    assert state.timer.at == Timestamp(micros=(1_030_000 + WINDOW_MS + slack) * 1000)
    clock[0] += 30_000
    fn.expire(key=5, seen=state.seen, version=state.version, timer=state.timer)
    assert state.seen.items == [] and state.version.value is None
    # an event seen again after its entry expired passes (QuestDB's DEDUP keys absorb it)
    assert run_batch(fn, state, 5, [("a", 10, "a-late")]) == ["a-late"]


def test_expiry_rewrites_a_bucket_once_per_half_window_under_steady_load(monkeypatch):
    """One batch a second for 3 minutes: the bucket is rewritten every ~30 s, not per batch."""
    clock = [1_000_000]
    monkeypatch.setattr(dedup, "_now_ms", lambda: clock[0])
    fn, state = _DedupBatchFn(WINDOW_MS, "scope-steady"), BucketState()
    expiries = 0
    for second in range(180):
        clock[0] = 1_000_000 + second * 1000
        while state.timer.at is not None and state.timer.at.micros // 1000 <= clock[0]:
            expiries += 1
            fired_at = state.timer.at
            fn.expire(key=9, seen=state.seen, version=state.version, timer=state.timer)
            assert state.timer.at != fired_at
        run_batch(fn, state, 9, [(f"e{second}", second * 1000, second)])
    assert 3 <= expiries <= 5
    live = {e for chunk in state.seen.items for e, _x, _s in pickle.loads(chunk)}
    assert {f"e{s}" for s in range(120, 180)} <= live and len(live) <= 90


def _reading(eid: str, sensor: str, ts: int, value: float) -> dict[str, Any]:
    return {"event_id": eid, "timestamp": ts, "site_id": "s", "asset_id": "a",
            "sensor_id": sensor, "sensor_type": "TEMPERATURE", "value": value,
            "unit": "celsius", "quality_flag": "GOOD", "ingested_at": ts}


def test_alarm_batch_tracks_each_sensor_and_writes_only_changes():
    from schemas.assets import Thresholds

    t = Thresholds(warning_high=80.0, critical_high=95.0, hysteresis=2.0)
    readings = [_reading("1", "x", 1, 85.0), _reading("2", "y", 1, 20.0),
                _reading("3", "x", 2, 70.0), _reading("4", "y", 2, 99.0)]
    items = [(sensor_key(r), r["timestamp"], (r, t)) for r in readings]
    states = FakeValue()
    out = list(_DetectAlarmsFn().process((0, pickle.dumps(items)), states=states))
    assert [(a["sensor_id"], a["state"], a["severity"]) for a in out] == [
        ("x", "RAISED", "WARNING"), ("x", "CLEARED", "WARNING"), ("y", "RAISED", "CRITICAL")]
    stored = states.read()
    assert set(pickle.loads(stored)) == {sensor_key(readings[0]), sensor_key(readings[1])}
    out = list(_DetectAlarmsFn().process((0, pickle.dumps([(sensor_key(readings[3]), 1, (
        _reading("5", "y", 0, 50.0), t))])), states=states))
    assert out == [] and states.read() is stored   # out of order: no change, nothing written


def test_rebuilt_copy_decides_like_the_cached_one(monkeypatch):
    """A process that rebuilds a bucket from state (restore, another worker) must keep and drop
    exactly what the process holding the cached copy would, until expire() runs."""
    clock = [1_000_000]
    monkeypatch.setattr(dedup, "_now_ms", lambda: clock[0])
    state = BucketState()
    run_batch(_DedupBatchFn(WINDOW_MS, "scope-rebuild-a"), state, 6, [("a", 0, "a")])
    clock[0] += WINDOW_MS + 5_000               # seen > 1 window ago; its timer not run yet
    batch = [("a", 30_000, "a-copy"), ("b", 30_001, "b")]   # "a" copy inside event window
    cached = copy.deepcopy(state)
    assert run_batch(_DedupBatchFn(WINDOW_MS, "scope-rebuild-a"), cached, 6, batch) == ["b"]
    rebuilt = _DedupBatchFn(WINDOW_MS, "scope-rebuild-b")   # no copy in this scope: reload
    assert run_batch(rebuilt, state, 6, batch) == ["b"]


def test_sensor_state_drops_copies_and_runs_alarms_on_first_copies_only():
    """transforms/sensor_state.py: dedup and the alarm machine of one sensor bucket."""
    from schemas.assets import Thresholds
    from transforms.sensor_state import ALARMS_TAG, _SensorStateFn

    t = Thresholds(warning_high=80.0, critical_high=95.0, hysteresis=2.0)
    fn, state, alarm_states = _SensorStateFn(WINDOW_MS, "scope-sensor"), BucketState(), \
        FakeValue()

    def run(readings: list[dict[str, Any]]) -> tuple[list[str], list[tuple[str, str]]]:
        items = [(sensor_key(r), r["timestamp"], (r, t)) for r in readings]
        kept, alarms = [], []
        for out in fn.process((7, pickle.dumps(items)), seen=state.seen, version=state.version,
                              timer=state.timer, states=alarm_states):
            if isinstance(out, beam.pvalue.TaggedOutput):
                assert out.tag == ALARMS_TAG
                alarms.append((out.value["event_id"], out.value["state"]))
            else:
                kept.extend(r["event_id"] for r in out)
        return kept, alarms

    assert run([_reading("1", "x", 1, 85.0), _reading("2", "x", 2, 86.0),
                _reading("1", "x", 1, 85.0)]) == (["1", "2"], [("1", "RAISED")])
    # a copy in a later batch is dropped and changes no alarm; a new reading clears it
    assert run([_reading("2", "x", 2, 86.0), _reading("3", "x", 3, 20.0)]) == \
        (["3"], [("3", "CLEARED")])
    # copies only: nothing out, no alarm state written
    before = alarm_states.read()
    assert run([_reading("3", "x", 3, 20.0)]) == ([], [])
    assert alarm_states.read() is before
