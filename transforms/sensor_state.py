"""Dedup and alarm detection in one keyed stage, keyed by sensor: one shuffle per batch.

The job used to shuffle every reading twice after enrichment: once keyed by
``event_id`` bucket into dedup, once keyed by sensor bucket into the alarm state
machine (each a pickle, a network hop through Flink and an unpickle of the full
row). Here one shuffle keyed by the *sensor's* bucket (transforms/buckets.py)
serves both, and one stateful DoFn does, per batch:

1. dedup (transforms.dedup's bucket state and logic, unchanged): the first copy
   of an ``event_id`` within the window passes, later copies are dropped;
2. the alarm state machine (transforms.alarms) over the kept readings, in order.

Why keying dedup by sensor bucket keeps its meaning: copies of a reading carry
the same site, asset and sensor, so they always meet in the same bucket, from
whichever partition or process they came. Only two *different* readings that
share an event_id but not a sensor are no longer compared (before, the second
was dropped as a "duplicate": a loss, not a dedup).

Why alarms keep their order: a sensor's readings come from one Kafka partition
(the edge places every asset on one partition, io_connectors.kafka_partition)
through one source subtask, and a keyed exchange keeps the order of one sender,
so the state machine sees them in order, as before. Dropped copies never reach
it; they would have changed nothing (a copy repeats a reading it has already
evaluated).

Outputs: main ``readings``: lists of kept rows (what the validated sinks take);
``alarms``: transition dicts (transforms.alarms.ALARM_FIELDS).
"""

from __future__ import annotations

import uuid
from typing import Any

import apache_beam as beam
from apache_beam.utils.timestamp import Duration

from transforms.alarms import ALARM_STATES_PARAM, _AttachThresholdsFn, advance_alarms
from transforms.buckets import BatchByBucket, unpack_batch
from transforms.dedup import _EXPIRE_TIMER_PARAM, _SEEN_PARAM, _VERSION_PARAM, _DedupBatchFn
from transforms.enrich import FileAssetCatalog, catalog_input

__all__ = ["ALARMS_TAG", "DedupAndDetectAlarms"]

ALARMS_TAG = "alarms"


class _SensorStateFn(_DedupBatchFn):
    """Dedup state and timer (inherited, with its expiry) plus the alarm state of a bucket."""

    def process(self, element: tuple[int, bytes],  # type: ignore[override]
                seen=_SEEN_PARAM, version=_VERSION_PARAM, timer=_EXPIRE_TIMER_PARAM,
                states=ALARM_STATES_PARAM):
        bucket, payload = element
        # items: (sensor_key, timestamp_ms, (row, thresholds)); dedup looks at event ids.
        items = unpack_batch(payload)
        kept = self.keep_first_copies(
            bucket, [(value[0]["event_id"], ts_ms, (key, ts_ms, value))
                     for key, ts_ms, value in items], seen, version, timer)
        if not kept:
            return
        yield [value[0] for _key, _ts, value in kept]
        for transition in advance_alarms(kept, states):
            yield beam.pvalue.TaggedOutput(ALARMS_TAG, transition)


class DedupAndDetectAlarms(beam.PTransform):
    """Lists of reading rows -> ``readings`` (lists of first copies) and ``alarms``
    (transitions), see the module docstring. Thresholds come from the asset catalog (a
    FileAssetCatalog or a side-input PCollection, as for transforms.alarms.DetectAlarms).
    """

    def __init__(self, catalogs: beam.PCollection | FileAssetCatalog,
                 window: float | Duration = 60, buckets: int = 64) -> None:
        super().__init__()
        seconds = window.micros / 1e6 if isinstance(window, Duration) else float(window)
        if seconds <= 0:
            raise ValueError(f"dedup window must be > 0 s, got {seconds} "
                             "(setting [pipeline] dedup_window_seconds)")
        self._catalogs = catalogs
        self._window_ms = int(seconds * 1000)
        self._buckets = buckets

    def expand(self, pcoll: beam.PCollection) -> Any:
        file_catalog, side = catalog_input(self._catalogs)
        # One scope per constructed transform (see transforms.dedup._BucketCopies).
        scope = uuid.uuid4().hex
        return (
            pcoll
            | "KeyBySensor" >> beam.ParDo(_AttachThresholdsFn(file_catalog), *side)
            | "Batch" >> BatchByBucket(self._buckets)
            | "DedupAndAlarms" >> beam.ParDo(
                _SensorStateFn(self._window_ms, scope)).with_outputs(ALARMS_TAG,
                                                                      main="readings")
        )
