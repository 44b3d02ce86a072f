"""Early flush (transforms/flush.py): a small, old buffer leaves before its bundle ends.

The policy alone, then the two buffers that use it, driven by hand with a fake clock:
the batch before the keyed stage (transforms/buckets.py) and the QuestDB sink's rows.
"""

from __future__ import annotations

from typing import Any

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import Timestamp
from hypothesis import given
from hypothesis import strategies as st

from io_connectors import questdb_sink
from io_connectors.questdb_sink import _WriteToQuestDBFn, reading_row
from tests.unit.test_questdb_rows import READING
from transforms import buckets
from transforms.buckets import BatchByBucket, _BatchByBucketFn, unpack_batch
from transforms.flush import NEVER, EarlyFlush

WINDOW = GlobalWindow()


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("age,items", [(0, 0), (0, 100), (50, 0)])
def test_a_policy_with_a_zero_never_flushes(age: int, items: int) -> None:
    policy = EarlyFlush(age, items)
    assert not policy.enabled
    assert not policy.due(0.0, 1, 1e12)


def test_due_needs_the_age_and_at_most_max_items() -> None:
    policy = EarlyFlush(max_age_ms=50, max_items=10)
    assert not policy.due(100.0, 5, 149.9)     # too young
    assert policy.due(100.0, 5, 150.0)
    assert policy.due(100.0, 10, 500.0)
    assert not policy.due(100.0, 11, 500.0)    # a high rate keeps its bundle-sized batch
    assert not policy.due(100.0, 0, 500.0)     # nothing to send


@pytest.mark.parametrize("bad", [-1, 1.5, True, "50", None])
def test_bad_values_are_refused_naming_the_setting(bad: Any) -> None:
    with pytest.raises(ValueError, match=r"\[pipeline\] early_flush_ms"):
        EarlyFlush(max_age_ms=bad, max_items=10)
    with pytest.raises(ValueError, match=r"\[pipeline\] early_flush_max_items"):
        EarlyFlush(max_age_ms=10, max_items=bad)


def _batch_fn(monkeypatch: pytest.MonkeyPatch, early: EarlyFlush,
              buckets_n: int = 4) -> tuple[_BatchByBucketFn, FakeClock]:
    clock = FakeClock()
    monkeypatch.setattr(buckets, "monotonic_ms", clock)
    fn = _BatchByBucketFn(buckets_n, early)
    fn.start_bundle()
    return fn, clock


def _items(outputs: list[Any]) -> list[tuple[int, str, Any]]:
    """(bucket, key, value) of every item in emitted batches, in emission order."""
    return [(wv.value[0], key, value) for wv in outputs
            for key, _ts, value in unpack_batch(wv.value[1])]


def _process(fn: _BatchByBucketFn, element: list[tuple[str, Any]], ts_s: int = 1) -> list[Any]:
    return list(fn.process(element, timestamp=Timestamp(ts_s), window=WINDOW) or ())


def test_batch_leaves_within_the_bundle_once_its_oldest_item_is_old(monkeypatch) -> None:
    fn, clock = _batch_fn(monkeypatch, EarlyFlush(max_age_ms=50, max_items=10))
    assert _process(fn, [("a", 1), ("b", 2)]) == []
    clock.now = 30.0
    assert _process(fn, [("c", 3)]) == []
    clock.now = 50.0
    early = _process(fn, [("d", 4)], ts_s=2)
    assert sorted(key for _b, key, _v in _items(early)) == ["a", "b", "c", "d"]
    # Each batch carries the earliest timestamp of its items, as at the bundle's end.
    assert all(wv.timestamp == Timestamp(1) or wv.timestamp == Timestamp(2) for wv in early)
    # The age restarts with the next item: nothing is left for the bundle's end but "e".
    clock.now = 60.0
    assert _process(fn, [("e", 5)]) == []
    assert [key for _b, key, _v in _items(list(fn.finish_bundle()))] == ["e"]


def test_many_pending_items_wait_for_the_bundle_end(monkeypatch) -> None:
    fn, clock = _batch_fn(monkeypatch, EarlyFlush(max_age_ms=50, max_items=3))
    _process(fn, [("a", 1), ("b", 2)])
    clock.now = 100.0
    assert _process(fn, [("c", 3), ("d", 4)]) == []    # 4 pending > 3
    assert len(_items(list(fn.finish_bundle()))) == 4


def test_without_a_policy_nothing_leaves_before_the_bundle_end(monkeypatch) -> None:
    fn, clock = _batch_fn(monkeypatch, NEVER)
    _process(fn, [("a", 1)])
    clock.now = 10_000.0
    assert _process(fn, [("b", 2)]) == []
    assert len(_items(list(fn.finish_bundle()))) == 2


@given(st.lists(st.tuples(st.integers(0, 40),                      # ms since the last element
                          st.lists(st.integers(0, 30), min_size=0, max_size=4)),
                max_size=40),
       st.integers(1, 60), st.integers(1, 12))
def test_early_batches_hold_every_item_once_in_per_key_order(arrivals, age, max_items) -> None:
    with pytest.MonkeyPatch.context() as monkeypatch:
        fn, clock = _batch_fn(monkeypatch, EarlyFlush(age, max_items))
        out, sent, n = [], [], 0
        for gap, keys in arrivals:
            clock.now += gap
            element = []
            for k in keys:
                element.append((f"k{k}", n))
                sent.append((f"k{k}", n))
                n += 1
            out += _process(fn, element)
        out += list(fn.finish_bundle())
    got = _items(out)
    assert sorted((key, value) for _b, key, value in got) == sorted(sent)
    for key in {k for k, _v in sent}:   # a key's items keep their arrival order
        assert [v for _b, k, v in got if k == key] == [v for k, v in sent if k == key]
    assert all(b == buckets.bucket_of(k, 4) for b, k, _v in got)


class RecordingWriter:
    def __init__(self) -> None:
        self.writes: list[int] = []

    def write(self, rows: list[Any]) -> list[Any]:
        self.writes.append(len(rows))
        return []

    def close(self) -> None:
        pass


def _sink(monkeypatch, early: EarlyFlush) -> tuple[_WriteToQuestDBFn, FakeClock,
                                                  RecordingWriter]:
    clock = FakeClock()
    monkeypatch.setattr(questdb_sink, "monotonic_ms", clock)
    fn = _WriteToQuestDBFn("sensor_readings", "http::addr=x:1;", _row_of, 5000, 1.0, early)
    writer = RecordingWriter()
    fn._writer = writer   # the sender itself is tested in test_questdb_rows.py
    fn.start_bundle()
    return fn, clock, writer


def _row_of(record: dict) -> Any:
    return reading_row(record)


def _write(fn: _WriteToQuestDBFn, n: int) -> None:
    list(fn.process([dict(READING, event_id=f"e{i}") for i in range(n)],
                    timestamp=Timestamp(1), window=WINDOW))


def test_sink_commits_a_small_old_buffer_within_the_bundle(monkeypatch) -> None:
    fn, clock, writer = _sink(monkeypatch, EarlyFlush(max_age_ms=40, max_items=100))
    _write(fn, 3)
    clock.now = 39.0
    _write(fn, 2)
    assert writer.writes == []
    clock.now = 40.0
    _write(fn, 1)
    assert writer.writes == [6]
    list(fn.finish_bundle())
    assert writer.writes == [6]      # nothing left for the bundle's end


def test_sink_keeps_a_large_buffer_for_the_bundle_end(monkeypatch) -> None:
    fn, clock, writer = _sink(monkeypatch, EarlyFlush(max_age_ms=40, max_items=100))
    _write(fn, 80)
    clock.now = 100.0
    _write(fn, 30)                   # 110 pending > 100: a high rate, one commit per bundle
    assert writer.writes == []
    list(fn.finish_bundle())
    assert writer.writes == [110]


def test_sink_without_a_policy_commits_at_the_bundle_end(monkeypatch) -> None:
    fn, clock, writer = _sink(monkeypatch, NEVER)
    _write(fn, 2)
    clock.now = 10_000.0
    _write(fn, 2)
    assert writer.writes == []
    list(fn.finish_bundle())
    assert writer.writes == [4]


def test_early_batches_run_through_beam_with_every_item_once(monkeypatch) -> None:
    # A clock that jumps a second per look: every element finds its batch due, so the
    # batches leave from process() (with their element's window and earliest timestamp).
    ticks = iter(range(0, 10**9, 1000))
    monkeypatch.setattr(buckets, "monotonic_ms", lambda: float(next(ticks)))
    keys = [f"k{i}" for i in range(120)]
    records = [[(k, i) for i, k in enumerate(keys)][n:n + 3] for n in range(0, 120, 3)]
    with TestPipeline() as p:
        batches = (p | beam.Create(records, reshuffle=False)
                   | BatchByBucket(8, EarlyFlush(max_age_ms=1, max_items=10)))
        items = batches | beam.FlatMap(lambda kv: [(k, v) for k, _ts, v in unpack_batch(kv[1])])
        counts = batches | beam.combiners.Count.Globally()
        assert_that(items, equal_to([(k, i) for i, k in enumerate(keys)]), label="items")
        # More batches than buckets: they left within the bundle, not once at its end.
        assert_that(counts, lambda got: _more_than(got, 8), label="batches")


def _more_than(got: list[int], n: int) -> None:
    assert got and got[0] > n, got
