"""Drop repeated copies of a reading: by ``event_id`` within a 1-minute event-time window.

The first copy of an event_id passes at once (no waiting for a window to
close); copies whose element timestamp is less than ``window`` after the first
copy's are dropped and counted (``duplicates_dropped``). Event ids live in
keyed state spread over a fixed number of bucket keys (transforms/buckets.py:
one state access per batch, not per event), checkpointed with the job, so
dedup holds across a restart and whichever Kafka partition a copy came
through. A processing-time timer drops an entry one window after the kept copy
was read, so state stays bounded (counted as ``dedup_state_expired``); a copy
read after that passes (QuestDB's DEDUP keys absorb it, see below). Why not an
event-time timer: see the comment above ``_SEEN``.

"Event time" is the element timestamp set by the source: for Kafka that is the
record timestamp, i.e. when the edge produced the copy. Retries of one reading
therefore dedupe when they reach Kafka within a minute of each other. Later
copies pass here and are made idempotent by QuestDB's DEDUP UPSERT
KEYS(timestamp, event_id).
"""

from __future__ import annotations

import logging
import pickle
import secrets
import threading
import uuid
from collections.abc import Iterable
from typing import Any

import apache_beam as beam
from apache_beam.coders import BytesCoder, VarIntCoder
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import (
    BagStateSpec,
    ReadModifyWriteStateSpec,
    TimerSpec,
    on_timer,
)
from apache_beam.utils.timestamp import Duration, Timestamp

from transforms.buckets import BatchByBucket, unpack_batch
from transforms.common import counter, wall_clock_ms

__all__ = ["DeduplicateByEventId", "dedup_step", "first_copies"]

_LOGGER = logging.getLogger(__name__)


def dedup_step(expiry_ms: int | None, timestamp_ms: int, window_ms: int
               ) -> tuple[bool, int | None]:
    """Pure: ``(keep, new_expiry_ms)`` for one copy of a key whose window ends at ``expiry_ms``.

    A copy is kept when the key has no open window (never seen, or the window
    has ended); keeping it opens a new window ending ``window_ms`` later.
    """
    if expiry_ms is None or timestamp_ms >= expiry_ms:
        return True, timestamp_ms + window_ms
    return False, expiry_ms


def first_copies(copies: Iterable[tuple[int, str, Any]], window_ms: int) -> list[Any]:
    """Reference model of the transform over ``(timestamp_ms, event_id, payload)`` in
    arrival order: the payloads that pass (used by the property tests)."""
    expiry: dict[str, int] = {}
    kept = []
    for ts, event_id, payload in copies:
        keep, new_expiry = dedup_step(expiry.get(event_id), ts, window_ms)
        if keep:
            assert new_expiry is not None
            expiry[event_id] = new_expiry
            kept.append(payload)
    return kept


# State of one bucket key (see transforms/buckets.py for why buckets):
# * _SEEN: a bag of chunks, each a list of (event_id, expiry_ms, seen_at_ms) appended per
#   batch: an append costs only the new entries (a value state holding a dict would be
#   re-encoded whole on every write);
# * _VERSION: a random token rewritten whenever _SEEN changes. Each worker process keeps a
#   decoded copy of a bucket's entries (a dict, for O(1) lookups) tagged with the token it
#   reflects; a copy whose token differs from the state's (another process wrote the bucket,
#   a failed bundle's writes were discarded, the job was restored from a checkpoint) is
#   rebuilt from _SEEN. The copy is only ever a cache of committed state.
# * _EXPIRE: a processing-time timer that drops entries one window after they were seen.
# Processing time, not the watermark: on the Flink runner the watermark after the KafkaIO
# source stays at -inf while any partition of the topic has never had a record (checked with
# /jobs/<id>/vertices/<id>/watermarks), so event-time timers never fired and the state of
# every event_id ever seen was kept. The keep/drop decision still uses event time.
# Chunks are stored pickled (bytes): the SDK's state cache weighs every cached value by
# walking its object graph, which cost a third of the worker's time with lists of tuples
# (py-spy, docs/decisions/0003); a bytes object is weighed in O(1).
_SEEN = BagStateSpec("seen", BytesCoder())
_VERSION = ReadModifyWriteStateSpec("version", VarIntCoder())
_EXPIRE_TIMER = TimerSpec("expire", TimeDomain.REAL_TIME)
# Beam's DoFn parameters are declared as defaults; module-level singletons keep that explicit.
_SEEN_PARAM = beam.DoFn.StateParam(_SEEN)
_VERSION_PARAM = beam.DoFn.StateParam(_VERSION)
_EXPIRE_TIMER_PARAM = beam.DoFn.TimerParam(_EXPIRE_TIMER)

# event_id -> (expiry_ms, seen_at_ms): the decoded entries of one bucket.
_Entries = dict[str, tuple[int, int]]
_DIRTY = 0   # a version no state ever holds (see _new_version)


class _BucketCopies:
    """Per-process decoded copies of bucket state, tagged with the version they reflect.

    Shared by every instance of one dedup step in the process (the SDK may run a stage's
    bundles on several DoFn instances, and alternate them); ``scope`` keeps two jobs on one
    worker pool apart. Keys of one bucket are processed by one bundle at a time (keyed
    state), so a bucket's dict is never mutated concurrently.
    """

    _registry: dict[tuple[str, int], tuple[int, _Entries]] = {}
    _lock = threading.Lock()

    @classmethod
    def get(cls, scope: str, bucket: int, version: int | None) -> _Entries | None:
        with cls._lock:
            copy = cls._registry.get((scope, bucket))
        if copy is None or version is None or copy[0] != version:
            return None
        return copy[1]

    @classmethod
    def put(cls, scope: str, bucket: int, version: int, entries: _Entries) -> None:
        with cls._lock:
            cls._registry[(scope, bucket)] = (version, entries)

    @classmethod
    def checkout(cls, scope: str, bucket: int) -> None:
        """Mark a bucket's copy as being changed: until ``put`` records the version that
        holds the change, it matches no state (a bundle failing in between leaves it dirty,
        and the next reader rebuilds it from committed state)."""
        with cls._lock:
            copy = cls._registry.get((scope, bucket))
            if copy is not None:
                cls._registry[(scope, bucket)] = (_DIRTY, copy[1])


def _encode_chunk(chunk: list[tuple[str, int, int]]) -> bytes:
    return pickle.dumps(chunk, protocol=pickle.HIGHEST_PROTOCOL)


def _decode_entries(chunks: Iterable[bytes]) -> _Entries:
    # No expiry here: a rebuilt copy must decide exactly like the cached one it replaces;
    # only expire() drops (and counts) entries.
    entries: _Entries = {}
    for chunk in chunks:
        for event_id, expiry_ms, seen_ms in pickle.loads(chunk):
            entries[event_id] = (expiry_ms, seen_ms)
    return entries


def _new_version() -> int:
    return secrets.randbits(62) + 1   # never _DIRTY


class _DedupBatchFn(beam.DoFn):

    def __init__(self, window_ms: int, scope: str) -> None:
        self._window_ms = window_ms
        self._scope = scope

    def _entries(self, bucket: int, seen, version) -> tuple[_Entries, int | None]:
        current = version.read()
        entries = _BucketCopies.get(self._scope, bucket, current)
        if entries is None:
            entries = _decode_entries(seen.read())
            counter("dedup_state_loads").inc()
        return entries, current

    def process(self, element: tuple[int, bytes],  # type: ignore[override]
                seen=_SEEN_PARAM, version=_VERSION_PARAM, timer=_EXPIRE_TIMER_PARAM):
        bucket, payload = element
        kept = self.keep_first_copies(bucket, unpack_batch(payload), seen, version, timer)
        if kept:
            yield kept

    def keep_first_copies(self, bucket: int, items: Iterable[tuple[str, int, Any]],
                          seen, version, timer) -> list[Any]:
        """The values of ``items`` ``(event_id, timestamp_ms, value)`` that are first copies,
        in order; records them in the bucket's state (shared with transforms.sensor_state)."""
        entries, current = self._entries(bucket, seen, version)
        _BucketCopies.checkout(self._scope, bucket)
        now_ms = _now_ms()
        added: list[tuple[str, int, int]] = []
        dropped = 0
        kept: list[Any] = []
        for event_id, ts_ms, value in items:
            known = entries.get(event_id)
            keep, new_expiry = dedup_step(known[0] if known else None, ts_ms, self._window_ms)
            if keep and new_expiry is not None:
                entries[event_id] = (new_expiry, now_ms)
                added.append((event_id, new_expiry, now_ms))
                kept.append(value)
            else:
                dropped += 1
        if dropped:
            counter("duplicates_dropped").inc(dropped)
        if added:
            seen.add(_encode_chunk(added))
            new = _new_version()
            version.write(new)
            if current is None:
                # The bucket had no state: arm its expiry (kept armed by expire() while it
                # holds entries). Re-arming on every batch would postpone it forever.
                timer.set(Timestamp(micros=_expiry_due(now_ms, self._window_ms) * 1000))
            _BucketCopies.put(self._scope, bucket, new, entries)
        elif current is not None:
            _BucketCopies.put(self._scope, bucket, current, entries)   # unchanged
        return kept

    @on_timer(_EXPIRE_TIMER)
    def expire(self, key=beam.DoFn.KeyParam, seen=_SEEN_PARAM, version=_VERSION_PARAM,
               timer=_EXPIRE_TIMER_PARAM):
        self.expire_bucket(key, seen, version, timer)

    def expire_bucket(self, key: int, seen, version, timer) -> None:
        entries, _current = self._entries(key, seen, version)
        _BucketCopies.checkout(self._scope, key)
        now_ms = _now_ms()
        live = {e: v for e, v in entries.items() if v[1] + self._window_ms > now_ms}
        expired = len(entries) - len(live)
        if expired:
            counter("dedup_state_expired").inc(expired)  # visible proof state stays bounded
        seen.clear()
        if live:
            seen.add(_encode_chunk([(e, expiry, seen_ms) for e, (expiry, seen_ms) in live.items()]))
            oldest = min(seen_ms for _x, seen_ms in live.values())
            timer.set(Timestamp(micros=_expiry_due(oldest, self._window_ms) * 1000))
            new = _new_version()
            version.write(new)
            _BucketCopies.put(self._scope, key, new, live)
        else:
            version.clear()
            _BucketCopies.put(self._scope, key, _DIRTY, {})


def _expiry_due(oldest_seen_ms: int, window_ms: int) -> int:
    """When a bucket's expiry timer fires: half a window after its oldest entry is due.

    An expiry rewrites every live entry of the bucket. Fired as soon as the oldest entry
    is due, it ran once per batch under steady load (each batch's entries fall due one
    after another), rewriting a minute of entries each time: drains got slower the longer
    the job ran (decision 0004). With the slack a bucket is rewritten at most about every
    half window; entries live up to 1.5 windows in state, which only makes dedup catch
    more late copies (the keep/drop decision still uses each entry's event-time expiry).
    """
    return oldest_seen_ms + window_ms + window_ms // 2


# The wall clock of the expiry and no-data timers (tests replace it here).
_now_ms = wall_clock_ms


def _key_by_event_id(rows: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [(row["event_id"], row) for row in rows]


class DeduplicateByEventId(beam.PTransform):
    """Lists of rows (dicts with ``event_id``) -> lists of the same rows without repeated
    copies.

    The kept rows of each batch leave as one list (the project's sinks take
    lists, one call per batch instead of per row); flatten with
    ``beam.FlatMap(lambda rows: rows)`` where single rows are wanted.

    ``buckets``: how many state keys the event ids are spread over
    (transforms/buckets.py); more buckets = smaller state per key and more
    parallelism, fewer = bigger batches.
    """

    def __init__(self, window: float | Duration = 60, buckets: int = 64) -> None:
        super().__init__()
        seconds = window.micros / 1e6 if isinstance(window, Duration) else float(window)
        if seconds <= 0:
            raise ValueError(f"dedup window must be > 0 s, got {seconds} "
                             "(setting [pipeline] dedup_window_seconds)")
        self._window_ms = int(seconds * 1000)
        self._buckets = buckets

    def expand(self, pcoll):
        # One scope per constructed transform: a job's processes share bucket copies; two
        # jobs on one worker pool never do.
        scope = uuid.uuid4().hex
        return (
            pcoll
            | "KeyByEventId" >> beam.Map(_key_by_event_id)
            | "Batch" >> BatchByBucket(self._buckets)
            | "DropRepeats" >> beam.ParDo(_DedupBatchFn(self._window_ms, scope))
        )
