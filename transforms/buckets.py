"""Keyed state at batch granularity: many logical keys share a few *bucket* keys.

Why: on the portable (Flink) runner every element that enters a stateful
Python DoFn crosses the Fn API on its own, and every new key costs a state
round trip and a timer. Keyed by ``event_id`` the dedup stage did one of each
per event and ran at ~900 events/s on two cores (docs/decisions/0003). Here
the items of a bundle's elements (each element a *list* of ``(key, value)``
pairs: the job carries one list per Kafka record, see transforms.decode) are
grouped by ``bucket_of(key)`` and sent on as *one* element per bucket:
``(bucket, payload)``, where ``payload`` is the list ``[(key, timestamp_ms,
value), ...]`` pickled (:func:`unpack_batch` reads it): a shuffle then moves
one bytes object per batch, which costs far less than Beam's generic coder
walking every dict of every item on both sides (py-spy, decision 0004). The
stateful stage then reads and writes state once per batch, and a logical key
always lands in the same bucket, so per-key semantics (and, on a shuffle that
keeps the order of one sender, per-key order) are unchanged.

:class:`BatchByBucket` buffers within a bundle and emits in ``finish_bundle``,
so batches never outlive a bundle: what a checkpoint covers is unchanged. The
emitted batch carries the earliest element timestamp of its items (it is never
later than any item, so it is never later than the watermark allowed).

An :class:`~transforms.flush.EarlyFlush` policy may also emit *within* a bundle: when the oldest
pending item has waited ``max_age_ms`` and few items are pending. At low rates a
reading then no longer waits for the end of the bundle (decision 0004, seventh
session); at high rates the pending count passes ``max_items`` before the age
does, so batches stay as large as the bundle and cost no more state round trips.
"""

from __future__ import annotations

import pickle
import zlib
from collections import defaultdict
from typing import Any

import apache_beam as beam
from apache_beam.utils.windowed_value import WindowedValue

from transforms.flush import NEVER, EarlyFlush, monotonic_ms

__all__ = ["BatchByBucket", "bucket_of", "unpack_batch"]

BatchItems = list[tuple[str, int, Any]]


def bucket_of(key: str, buckets: int) -> int:
    """Stable bucket of ``key`` (crc32: the same in every process and run, unlike hash())."""
    return zlib.crc32(key.encode("utf-8", "surrogatepass")) % buckets


def unpack_batch(payload: bytes) -> BatchItems:
    """The ``[(key, timestamp_ms, value), ...]`` of one :class:`BatchByBucket` output."""
    return pickle.loads(payload)


class _BatchByBucketFn(beam.DoFn):

    def __init__(self, buckets: int, early: EarlyFlush = NEVER) -> None:
        self._buckets = buckets
        self._early = early
        self._pending: dict[tuple[int, Any], list[tuple[str, int, Any]]] = defaultdict(list)
        self._earliest: dict[tuple[int, Any], Any] = {}
        self._count = 0
        self._oldest_ms = 0.0

    def start_bundle(self) -> None:
        self._pending = defaultdict(list)
        self._earliest = {}
        self._count = 0

    def process(self, element: list[tuple[str, Any]],  # type: ignore[override]
                timestamp=beam.DoFn.TimestampParam, window=beam.DoFn.WindowParam):
        buckets, pending, earliest = self._buckets, self._pending, self._earliest
        # Timestamp and window belong to the element: every item of it shares them.
        ts_ms = timestamp.micros // 1000
        touched = set()
        for key, value in element:
            bucket = bucket_of(key, buckets)
            pending[(bucket, window)].append((key, ts_ms, value))
            touched.add(bucket)
        for bucket in touched:
            first = earliest.get((bucket, window))
            if first is None or timestamp < first:
                earliest[(bucket, window)] = timestamp
        if self._early.enabled and element:
            now = monotonic_ms()
            if not self._count:
                self._oldest_ms = now
            self._count += len(element)
            if self._early.due(self._oldest_ms, self._count, now):
                yield from self._emit()

    def finish_bundle(self):
        yield from self._emit()

    def _emit(self):
        pending, earliest = self._pending, self._earliest
        self._pending, self._earliest, self._count = defaultdict(list), {}, 0
        for (bucket, window), items in pending.items():
            payload = pickle.dumps(items, protocol=pickle.HIGHEST_PROTOCOL)
            yield WindowedValue((bucket, payload), earliest[(bucket, window)], (window,))


class BatchByBucket(beam.PTransform):
    """Lists of ``(key: str, value)`` -> ``(bucket: int, payload: bytes)`` per bundle, the
    payload holding ``[(key, timestamp_ms, value), ...]`` (read it with :func:`unpack_batch`).

    Items keep their arrival order within a batch; ``timestamp_ms`` is the
    timestamp of the element that carried the item (its event time for the
    downstream stage). ``early`` may emit a bundle's items in several batches
    (:class:`EarlyFlush`), in order.
    """

    def __init__(self, buckets: int, early: EarlyFlush = NEVER) -> None:
        super().__init__()
        if not isinstance(buckets, int) or buckets < 1:
            raise ValueError(f"buckets must be a positive int, got {buckets!r} "
                             "(setting [pipeline] state_buckets)")
        self._buckets = buckets
        self._early = early

    def expand(self, pcoll):
        return pcoll | "BatchByBucket" >> beam.ParDo(
            _BatchByBucketFn(self._buckets, self._early)).with_output_types(
                beam.typehints.KV[int, bytes])
