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

No-data alarms (transforms.alarms, docs/pipeline.md): each batch records when
its readings arrived inside the alarm state it already writes, and ONE
processing-time timer per bucket key (not per sensor) scans the bucket every
``no_data_check_seconds`` for sensors silent longer than their catalog's
``max_silence_s``. The timer is armed when a bucket first gets alarm state and
re-arms itself, so a batch never sets it; timers and state are checkpointed
together. ``no_data_check_seconds=0`` turns the timer (and so NO_DATA alarms) off.

Outputs: main ``readings``: lists of kept rows (what the validated sinks take);
``alarms``: transition dicts (transforms.alarms.ALARM_FIELDS).
"""

from __future__ import annotations

import uuid
from typing import Any

import apache_beam as beam
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import TimerSpec, on_timer
from apache_beam.utils.timestamp import Duration, Timestamp

from transforms.alarms import (
    ALARM_STATES_PARAM,
    _AttachThresholdsFn,
    advance_alarms,
    check_silences,
    forget_scans,
)
from transforms.buckets import BatchByBucket, unpack_batch
from transforms.dedup import (
    _EXPIRE_TIMER_PARAM,
    _SEEN_PARAM,
    _VERSION_PARAM,
    _DedupBatchFn,
    _now_ms,
)
from transforms.enrich import FileAssetCatalog, catalog_input
from transforms.flush import NEVER, EarlyFlush

__all__ = ["ALARMS_TAG", "DedupAndDetectAlarms"]

ALARMS_TAG = "alarms"

# The bucket's no-data scan (see the module docstring). Processing time: silence is measured
# on the worker's clock, and the watermark after the Kafka source may not advance (dedup).
_NO_DATA_TIMER = TimerSpec("no_data", TimeDomain.REAL_TIME)
_NO_DATA_TIMER_PARAM = beam.DoFn.TimerParam(_NO_DATA_TIMER)


class _SensorStateFn(_DedupBatchFn):
    """Dedup state and timer (inherited, with its expiry) plus the alarm state of a bucket
    and its no-data timer."""

    def __init__(self, window_ms: int, scope: str, check_ms: int = 0) -> None:
        super().__init__(window_ms, scope)
        self._check_ms = check_ms

    def process(self, element: tuple[int, bytes],  # type: ignore[override]
                seen=_SEEN_PARAM, version=_VERSION_PARAM, timer=_EXPIRE_TIMER_PARAM,
                states=ALARM_STATES_PARAM, no_data=_NO_DATA_TIMER_PARAM):
        bucket, payload = element
        # items: (sensor_key, timestamp_ms, (row, thresholds)); dedup looks at event ids.
        items = unpack_batch(payload)
        kept = self.keep_first_copies(
            bucket, [(value[0]["event_id"], ts_ms, (key, ts_ms, value))
                     for key, ts_ms, value in items], seen, version, timer)
        if not kept:
            return
        yield [value[0] for _key, _ts, value in kept]
        check_ms = self._check_ms
        now_ms = _now_ms() if check_ms > 0 else None
        transitions, new_bucket = advance_alarms(kept, states, now_ms)
        if new_bucket:
            assert now_ms is not None
            no_data.set(Timestamp(micros=(now_ms + check_ms) * 1000))
        for transition in transitions:
            yield beam.pvalue.TaggedOutput(ALARMS_TAG, transition)

    @on_timer(_NO_DATA_TIMER)
    def check_no_data(self, states=ALARM_STATES_PARAM, no_data=_NO_DATA_TIMER_PARAM):
        check_ms = self._check_ms
        if check_ms <= 0:
            # Turned off since the timer was set (a restored job): let it lapse, and let the
            # bucket's next batch re-arm it if they are turned on again.
            forget_scans(states)
            return
        now_ms = _now_ms()
        # A scan that finds the previous one more than 3 periods ago: the job was down (or
        # stalled); silence in between is not the sensors' (transforms.alarms.scan_silences).
        raised = check_silences(states, now_ms, 3 * check_ms)
        no_data.set(Timestamp(micros=(now_ms + check_ms) * 1000))
        for transition in raised:
            yield beam.pvalue.TaggedOutput(ALARMS_TAG, transition)


class DedupAndDetectAlarms(beam.PTransform):
    """Lists of reading rows -> ``readings`` (lists of first copies) and ``alarms``
    (transitions), see the module docstring. Thresholds come from the asset catalog (a
    FileAssetCatalog or a side-input PCollection, as for transforms.alarms.DetectAlarms).
    """

    def __init__(self, catalogs: beam.PCollection | FileAssetCatalog,
                 window: float | Duration = 60, buckets: int = 64,
                 no_data_check_seconds: float = 15.0, early: EarlyFlush = NEVER) -> None:
        super().__init__()
        seconds = window.micros / 1e6 if isinstance(window, Duration) else float(window)
        if seconds <= 0:
            raise ValueError(f"dedup window must be > 0 s, got {seconds} "
                             "(setting [pipeline] dedup_window_seconds)")
        if not no_data_check_seconds >= 0:   # also refuses NaN
            raise ValueError(f"no-data check period must be >= 0 s (0 = off), got "
                             f"{no_data_check_seconds} (setting [pipeline] "
                             "no_data_check_seconds)")
        self._catalogs = catalogs
        self._window_ms = int(seconds * 1000)
        self._buckets = buckets
        self._check_ms = int(no_data_check_seconds * 1000)
        self._early = early

    def expand(self, pcoll: beam.PCollection) -> Any:
        file_catalog, side = catalog_input(self._catalogs)
        # One scope per constructed transform (see transforms.dedup._BucketCopies).
        scope = uuid.uuid4().hex
        return (
            pcoll
            | "KeyBySensor" >> beam.ParDo(_AttachThresholdsFn(file_catalog), *side)
            | "Batch" >> BatchByBucket(self._buckets, self._early)
            | "DedupAndAlarms" >> beam.ParDo(
                _SensorStateFn(self._window_ms, scope, self._check_ms)).with_outputs(
                    ALARMS_TAG, main="readings")
        )
