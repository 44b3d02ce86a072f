"""Keyed state at batch granularity: many logical keys share a few *bucket* keys.

Why: on the portable (Flink) runner every element that enters a stateful
Python DoFn crosses the Fn API on its own, and every new key costs a state
round trip and a timer. Keyed by ``event_id`` the dedup stage did one of each
per event and ran at ~900 events/s on two cores (docs/benchmarks.md). Here a
bundle's elements are grouped by ``bucket_of(key)`` and sent on as *one*
element per bucket: ``(bucket, [(key, timestamp_ms, value), ...])``. The
stateful stage then reads and writes state once per batch, and a logical key
always lands in the same bucket, so per-key semantics (and, on a shuffle that
keeps the order of one sender, per-key order) are unchanged.

:class:`BatchByBucket` buffers within a bundle and emits in ``finish_bundle``,
so batches never outlive a bundle: what a checkpoint covers is unchanged. The
emitted batch carries the earliest element timestamp of its items (it is never
later than any item, so it is never later than the watermark allowed).
"""

from __future__ import annotations

import zlib
from collections import defaultdict
from typing import Any

import apache_beam as beam
from apache_beam.utils.windowed_value import WindowedValue

__all__ = ["BatchByBucket", "bucket_of"]


def bucket_of(key: str, buckets: int) -> int:
    """Stable bucket of ``key`` (crc32: the same in every process and run, unlike hash())."""
    return zlib.crc32(key.encode("utf-8", "surrogatepass")) % buckets


class _BatchByBucketFn(beam.DoFn):

    def __init__(self, buckets: int) -> None:
        self._buckets = buckets
        self._pending: dict[tuple[int, Any], list[tuple[str, int, Any]]] = defaultdict(list)
        self._earliest: dict[tuple[int, Any], Any] = {}

    def start_bundle(self) -> None:
        self._pending = defaultdict(list)
        self._earliest = {}

    def process(self, element: tuple[str, Any],  # type: ignore[override]
                timestamp=beam.DoFn.TimestampParam, window=beam.DoFn.WindowParam):
        key, value = element
        slot = (bucket_of(key, self._buckets), window)
        self._pending[slot].append((key, timestamp.micros // 1000, value))
        earliest = self._earliest.get(slot)
        if earliest is None or timestamp < earliest:
            self._earliest[slot] = timestamp

    def finish_bundle(self):
        pending, earliest = self._pending, self._earliest
        self._pending, self._earliest = defaultdict(list), {}
        for (bucket, window), items in pending.items():
            yield WindowedValue((bucket, items), earliest[(bucket, window)], (window,))


class BatchByBucket(beam.PTransform):
    """``(key: str, value)`` -> ``(bucket: int, [(key, timestamp_ms, value), ...])`` per bundle.

    Items keep their arrival order within a batch; ``timestamp_ms`` is each
    element's own timestamp (its event time for the downstream stage).
    """

    def __init__(self, buckets: int) -> None:
        super().__init__()
        if not isinstance(buckets, int) or buckets < 1:
            raise ValueError(f"buckets must be a positive int, got {buckets!r} "
                             "(setting [pipeline] state_buckets)")
        self._buckets = buckets

    def expand(self, pcoll):
        return pcoll | "BatchByBucket" >> beam.ParDo(
            _BatchByBucketFn(self._buckets)).with_output_types(
                beam.typehints.KV[int, beam.typehints.Any])
