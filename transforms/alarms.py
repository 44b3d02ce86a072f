"""Alarm detection: a per-sensor state machine over reading rows, kept in Beam state.

Pure core: :func:`step` ``(state, reading, thresholds) -> (new_state, transitions)``.

* A reading is *out of band* when its value is beyond a threshold
  (strictly above ``*_high`` or strictly below ``*_low``): CRITICAL beyond a
  critical threshold, else WARNING beyond a warning threshold. Quality BAD is
  out of band at WARNING severity (the higher of the two severities wins).
* No active alarm + out of band -> one RAISED transition; the episode's
  ``alarm_id`` is ``<asset_id>:<sensor_id>:<episode start timestamp ms>``
  (deterministic, so a replay produces the same ids and QuestDB dedups them).
* Active WARNING + CRITICAL reading -> one more RAISED transition (severity
  CRITICAL, same alarm_id): the escalation. An active CRITICAL alarm stays
  CRITICAL until it clears (no de-escalation rows, no flapping).
* Further out-of-band readings emit nothing: the alarms topic is not flooded.
* An active alarm CLEARS (one CLEARED row, severity of the episode) when
  quality is not BAD and the value is back inside the band narrowed by the
  hysteresis: ``low + h <= value <= high - h`` (low/high = warning bound, or
  the critical bound when no warning bound is set). Between the threshold and
  the clear level the alarm stays active silently.
* Out-of-order readings (timestamp older than the latest evaluated reading of
  the sensor) are not evaluated (counted as ``alarm_readings_out_of_order``):
  episodes follow event time and one late reading cannot reopen or close one.
  The reading itself is still stored by the other branch.

No-data (inactivity) alarms, severity ``NO_DATA`` (docs/pipeline.md, "No-data alarms"):

* Each reading that reaches the state machine (in or out of order) records when
  it *arrived* (``seen_ms``, the worker's clock, once per batch) and its sensor
  type's ``max_silence_s`` from the catalog (schemas/assets.py). That is part of
  the per-sensor tuple the stage already writes for every batch: no extra state
  access per reading.
* :func:`scan_silences` (run by one processing-time timer per bucket key, every
  ``[pipeline] no_data_check_seconds``) raises one NO_DATA RAISED per sensor
  silent longer than its ``max_silence_s``. ``alarm_id`` is
  ``<asset_id>:<sensor_id>:<arrival ms of the last reading>`` (the episode starts
  when the silence did), the row's ``timestamp`` is when the silence went over the
  limit, ``value`` the silence in seconds then, ``threshold`` the limit,
  ``event_id`` empty (no reading caused it). Only sensors that have reported are
  known, so a sensor that never reported never alarms.
* The next reading of that sensor CLEARS it (same alarm_id, severity NO_DATA,
  the reading's value, event_id and ingested_at) before it is evaluated against
  its thresholds as usual; its ``timestamp`` is the reading's, but never before
  the raise (the query API takes an alarm's latest transition by timestamp).
* Silence is only counted while the job runs. Each bucket remembers its last
  scan; a scan that finds the previous one more than ``gap_ms`` ago (the job was
  down and restored from a checkpoint, or stalled) gives every sensor not yet
  alarmed a fresh full interval from that moment (counted as
  ``no_data_deferred_after_gap``): no alarm storm after an outage of the job.

Transitions are dicts with exactly :data:`ALARM_FIELDS` (the fields of
schemas/alarm.avsc, = io_connectors.questdb_schema.ALARM_COLUMNS). State is
per ``site_id/asset_id/sensor_id``, held in keyed state of the sensor's bucket
(transforms/buckets.py: one state read and write per batch of readings, not
per reading), so it is checkpointed by the runner and survives a restart from
checkpoint. A sensor always maps to the same bucket, and its readings come
from one Kafka partition through one chain of operators, so they reach the
state machine in order.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
from apache_beam.coders import BytesCoder
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec

from schemas.assets import AssetCatalog, Thresholds
from schemas.avro import ALARM, field_names
from transforms.buckets import BatchByBucket, unpack_batch
from transforms.common import counter
from transforms.enrich import FileAssetCatalog, _CatalogUser, catalog_input

__all__ = [
    "ALARM_FIELDS",
    "WARNING",
    "CRITICAL",
    "RAISED",
    "CLEARED",
    "NO_DATA",
    "BUCKET_META",
    "AlarmState",
    "classify",
    "clears",
    "step",
    "scan_silences",
    "observe_batch",
    "sensor_key",
    "advance_alarms",
    "check_silences",
    "forget_scans",
    "attach_thresholds",
    "ALARM_STATES_PARAM",
    "DetectAlarms",
]

_LOGGER = logging.getLogger(__name__)

# Derived from alarm.avsc; the dict literals of _transition and _no_data_raised have exactly
# these keys in this order (unit test tests/unit/test_schemas_wire.py).
ALARM_FIELDS = field_names(ALARM)
# The enum symbols of alarm.avsc's severity and state (each named: the state machine's logic
# depends on each one; the unit test checks they are the schema's symbols).
WARNING, CRITICAL, NO_DATA = "WARNING", "CRITICAL", "NO_DATA"
RAISED, CLEARED = "RAISED", "CLEARED"
_RANK = {None: 0, WARNING: 1, CRITICAL: 2}
# Key of a bucket's scan bookkeeping ``(last_scan_ms, resumed_ms)`` in its state dict; no
# sensor key is empty (they are "site/asset/sensor").
BUCKET_META = ""
_INF = float("inf")


@dataclass(frozen=True)
class AlarmState:
    """Per-sensor state: the active threshold episode (if any), the last evaluated
    timestamp, and for no-data alarms: when the last reading arrived (worker clock, ms),
    the sensor's ``max_silence_s`` and type then, and when its NO_DATA alarm was raised
    (None: none active)."""

    alarm_id: str | None = None
    severity: str | None = None
    last_ts: int | None = None
    seen_ms: int | None = None
    max_silence_s: float | None = None
    sensor_type: str | None = None
    no_data_since: int | None = None

    @property
    def active(self) -> bool:
        return self.alarm_id is not None

    def to_tuple(self) -> tuple[Any, ...]:
        return (self.alarm_id, self.severity, self.last_ts, self.seen_ms, self.max_silence_s,
                self.sensor_type, self.no_data_since)

    @classmethod
    def from_tuple(cls, data: tuple[Any, ...] | None) -> AlarmState:
        # A 3-tuple (state layout 4, before no-data alarms) reads as "never seen".
        return cls() if data is None else cls(*data)


def classify(value: float, quality: str, t: Thresholds | None
             ) -> tuple[str | None, float | None, str]:
    """``(severity or None, threshold crossed or None, reason)`` of one reading."""
    severity: str | None = None
    threshold: float | None = None
    reason = ""
    if t is not None:
        if t.critical_high is not None and value > t.critical_high:
            severity, threshold, reason = CRITICAL, t.critical_high, \
                f"value {value:g} above critical_high {t.critical_high:g}"
        elif t.critical_low is not None and value < t.critical_low:
            severity, threshold, reason = CRITICAL, t.critical_low, \
                f"value {value:g} below critical_low {t.critical_low:g}"
        elif t.warning_high is not None and value > t.warning_high:
            severity, threshold, reason = WARNING, t.warning_high, \
                f"value {value:g} above warning_high {t.warning_high:g}"
        elif t.warning_low is not None and value < t.warning_low:
            severity, threshold, reason = WARNING, t.warning_low, \
                f"value {value:g} below warning_low {t.warning_low:g}"
    if quality == "BAD" and severity is None:
        severity, reason = WARNING, "quality_flag BAD"
    return severity, threshold, reason


def _clear_band(t: Thresholds | None) -> tuple[float, float]:
    if t is None:
        return -_INF, _INF
    low = t.warning_low if t.warning_low is not None else t.critical_low
    high = t.warning_high if t.warning_high is not None else t.critical_high
    return (-_INF if low is None else low + t.hysteresis,
            _INF if high is None else high - t.hysteresis)


def clears(value: float, quality: str, t: Thresholds | None) -> tuple[bool, float | None]:
    """``(clears, clear level)``: whether an active alarm clears on this reading."""
    low, high = _clear_band(t)
    if quality == "BAD" or not low <= value <= high:
        return False, None
    # Report the bound nearest to the value as the clear level (null if unbounded).
    level = high if abs(high - value) <= abs(value - low) else low
    return True, (None if level in (_INF, -_INF) else level)


def _alarm_row(*, timestamp: int, alarm_id: str, site_id: str, asset_id: str, sensor_id: str,
               sensor_type: str, severity: str, state: str, value: float,
               threshold: float | None, reason: str, event_id: str, ingested_at: int
               ) -> dict[str, Any]:
    """The one builder of alarm transition dicts (keys: :data:`ALARM_FIELDS`, checked by a
    unit test against alarm.avsc)."""
    return {
        "timestamp": timestamp,
        "alarm_id": alarm_id,
        "site_id": site_id,
        "asset_id": asset_id,
        "sensor_id": sensor_id,
        "sensor_type": sensor_type,
        "severity": severity,
        "state": state,
        "value": value,
        "threshold": threshold,
        "reason": reason,
        "event_id": event_id,
        "ingested_at": ingested_at,
    }


def _transition(reading: Mapping[str, Any], alarm_id: str, severity: str, state: str,
                threshold: float | None, reason: str) -> dict[str, Any]:
    return _alarm_row(
        timestamp=reading["timestamp"], alarm_id=alarm_id, site_id=reading["site_id"],
        asset_id=reading["asset_id"], sensor_id=reading["sensor_id"],
        sensor_type=reading["sensor_type"], severity=severity, state=state,
        value=reading["value"], threshold=threshold, reason=reason,
        event_id=reading["event_id"], ingested_at=reading["ingested_at"])


def _no_data_cleared(state: AlarmState, reading: Mapping[str, Any], now_ms: int
                     ) -> dict[str, Any]:
    assert state.no_data_since is not None and state.seen_ms is not None
    row = _transition(reading, f"{reading['asset_id']}:{reading['sensor_id']}:{state.seen_ms}",
                      NO_DATA, CLEARED, state.max_silence_s,
                      f"readings resumed after {(now_ms - state.seen_ms) / 1000:.0f} s of silence")
    # Never before the raise: an alarm's current state is its latest transition by timestamp.
    row["timestamp"] = max(reading["timestamp"], state.no_data_since + 1)
    return row


def step(state: AlarmState, reading: Mapping[str, Any], thresholds: Thresholds | None,
         now_ms: int | None = None) -> tuple[AlarmState, list[dict[str, Any]]]:
    """Advance one sensor's state by one reading row (see the module docstring).

    ``now_ms``: when the reading arrived (worker clock); it records the sensor's last
    arrival and clears an active NO_DATA alarm. None (transforms.alarms.DetectAlarms):
    threshold alarms only, the no-data fields are left as they are.
    """
    transitions: list[dict[str, Any]] = []
    if now_ms is None:
        seen, limit, kind, since = (state.seen_ms, state.max_silence_s, state.sensor_type,
                                    state.no_data_since)
    else:
        if state.no_data_since is not None:
            transitions.append(_no_data_cleared(state, reading, now_ms))
        seen, kind, since = now_ms, reading["sensor_type"], None
        limit = thresholds.max_silence_s if thresholds is not None else None
    ts = reading["timestamp"]
    if state.last_ts is not None and ts < state.last_ts:
        # Not evaluated against thresholds, but the sensor is alive.
        return (AlarmState(state.alarm_id, state.severity, state.last_ts, seen, limit, kind,
                           since), transitions)
    value, quality = reading["value"], reading["quality_flag"]
    severity, threshold, reason = classify(value, quality, thresholds)
    if not state.active:
        if severity is None:
            return AlarmState(None, None, ts, seen, limit, kind, since), transitions
        alarm_id = f"{reading['asset_id']}:{reading['sensor_id']}:{ts}"
        transitions.append(_transition(reading, alarm_id, severity, RAISED, threshold, reason))
        return AlarmState(alarm_id, severity, ts, seen, limit, kind, since), transitions
    assert state.alarm_id is not None and state.severity is not None
    if _RANK[severity] > _RANK[state.severity]:
        transitions.append(_transition(reading, state.alarm_id, severity, RAISED, threshold,
                                       f"escalated to {severity}: {reason}"))
        return AlarmState(state.alarm_id, severity, ts, seen, limit, kind, since), transitions
    cleared, level = clears(value, quality, thresholds)
    if cleared:
        transitions.append(_transition(
            reading, state.alarm_id, state.severity, CLEARED, level,
            f"value {value:g} back inside the band"
            + (f" (clear level {level:g})" if level is not None else "")))
        return AlarmState(None, None, ts, seen, limit, kind, since), transitions
    return AlarmState(state.alarm_id, state.severity, ts, seen, limit, kind, since), transitions


def _no_data_raised(key: str, state: AlarmState, due_ms: int, now_ms: int) -> dict[str, Any]:
    assert state.seen_ms is not None and state.max_silence_s is not None
    site_id, asset_id, sensor_id = key.split("/")   # ids never hold "/" (schemas.validation)
    silent_s = (due_ms - state.seen_ms) / 1000
    return _alarm_row(
        timestamp=due_ms, alarm_id=f"{asset_id}:{sensor_id}:{state.seen_ms}", site_id=site_id,
        asset_id=asset_id, sensor_id=sensor_id, sensor_type=state.sensor_type or "UNKNOWN",
        severity=NO_DATA, state=RAISED, value=silent_s, threshold=state.max_silence_s,
        reason=f"no reading for {silent_s:g} s (max_silence_s {state.max_silence_s:g})",
        event_id="", ingested_at=now_ms)


def scan_silences(stored: dict[str, tuple[Any, ...]], now_ms: int, gap_ms: int
                  ) -> tuple[list[dict[str, Any]], int]:
    """One bucket's no-data check at ``now_ms``: NO_DATA RAISED transitions of the sensors
    silent longer than their ``max_silence_s``, and how many due sensors were deferred
    because the previous scan is more than ``gap_ms`` ago. Updates ``stored`` (the bucket's
    ``{sensor_key: AlarmState tuple}`` plus its :data:`BUCKET_META`) in place.

    A sensor is due at ``max(seen_ms, resumed_ms) + max_silence_s``; ``resumed_ms`` is when
    the bucket's scans last resumed after a gap (silence during the gap is not counted).
    """
    last_scan, resumed = stored.get(BUCKET_META, (None, 0))
    gap = last_scan is not None and now_ms - last_scan > gap_ms
    if gap:
        resumed = now_ms
    raised: list[dict[str, Any]] = []
    deferred = 0
    for key, data in stored.items():   # values are replaced in place: the size never changes
        if key == BUCKET_META or len(data) < 7 or data[4] is None or data[6] is not None:
            continue
        state = AlarmState.from_tuple(data)
        assert state.seen_ms is not None and state.max_silence_s is not None
        limit_ms = round(state.max_silence_s * 1000)
        due = max(state.seen_ms, resumed) + limit_ms
        if due > now_ms:
            if gap and state.seen_ms + limit_ms <= now_ms:
                deferred += 1   # overdue only because the job was not running
            continue
        stored[key] = AlarmState(*data[:6], due).to_tuple()
        raised.append(_no_data_raised(key, state, due, now_ms))
    stored[BUCKET_META] = (now_ms, resumed)
    return raised, deferred


def sensor_key(reading: Mapping[str, Any]) -> str:
    return f"{reading['site_id']}/{reading['asset_id']}/{reading['sensor_id']}"


def attach_thresholds(rows: Iterable[dict[str, Any]], catalog: AssetCatalog | None
                      ) -> list[tuple[str, tuple[dict[str, Any], Thresholds | None]]]:
    """``(sensor_key, (row, thresholds))`` of each row, thresholds from ``catalog``."""
    keyed = []
    for row in rows:
        asset = catalog.get(row["asset_id"]) if catalog is not None else None
        thresholds = asset.thresholds.get(row["sensor_type"]) if asset is not None else None
        keyed.append((sensor_key(row), (row, thresholds)))
    return keyed


class _AttachThresholdsFn(_CatalogUser, beam.DoFn):
    def __init__(self, file_catalog: FileAssetCatalog | None = None) -> None:
        self._file = file_catalog
        self._last_side: Any = None
        self._catalog: AssetCatalog | None = None

    def process(self, rows: list[dict[str, Any]],  # type: ignore[override]
                catalogs: Sequence[AssetCatalog] | None = None):
        yield attach_thresholds(rows, self._current(catalogs))


# One state per bucket of sensors (transforms/buckets.py): {sensor_key: AlarmState tuple}
# plus, once no-data scans run, {BUCKET_META: (last_scan_ms, resumed_ms)} (state layout 5),
# a dict of tuples of primitives (independent of this module's class layout), stored pickled
# as bytes: the SDK's state cache weighs a cached value by walking its object graph, a bytes
# object in O(1) (see transforms/dedup.py).
ALARM_STATES = ReadModifyWriteStateSpec("alarm_states", BytesCoder())
ALARM_STATES_PARAM = beam.DoFn.StateParam(ALARM_STATES)


def _counter_name(t: Mapping[str, Any], was_active: bool) -> str:
    """The counter of one transition of :func:`step`, from its severity and state and from
    whether the sensor's threshold alarm was active before the reading (``was_active``):
    step raises a threshold alarm over an active one only to escalate it. Never from the
    ``reason`` text, which is for people."""
    if t["severity"] == NO_DATA:
        return "alarms_no_data_cleared" if t["state"] == CLEARED else "alarms_no_data_raised"
    if t["state"] == CLEARED:
        return "alarms_cleared"
    return "alarms_escalated" if was_active else "alarms_raised"


def observe_batch(stored: dict[str, tuple[Any, ...]],
                  items: Iterable[tuple[str, Any, tuple[dict[str, Any], Thresholds | None]]],
                  now_ms: int | None = None) -> tuple[bool, list[dict[str, Any]]]:
    """Run a bucket's state machines over ``items`` ``(sensor_key, _, (row, thresholds))`` in
    order, updating ``stored`` in place; ``(changed, transitions)``. ``now_ms``: see
    :func:`step` (one value per batch: the arrival time of its readings)."""
    changed = False
    out_of_order = 0
    transitions: list[dict[str, Any]] = []
    for key, _ts_ms, (row, thresholds) in items:
        data = stored.get(key)
        current = AlarmState.from_tuple(data)
        if current.last_ts is not None and row["timestamp"] < current.last_ts:
            out_of_order += 1
        new, emitted = step(current, row, thresholds, now_ms)
        new_data = new.to_tuple()
        if new_data != data:
            changed = True
            stored[key] = new_data
        if emitted:
            for t in emitted:
                counter(_counter_name(t, current.active)).inc()
            transitions.extend(emitted)
    if out_of_order:
        counter("alarm_readings_out_of_order").inc(out_of_order)
    return changed, transitions


def advance_alarms(items: Iterable[tuple[str, Any, tuple[dict[str, Any], Thresholds | None]]],
                   states, now_ms: int | None = None) -> tuple[list[dict[str, Any]], bool]:
    """:func:`observe_batch` over a bucket's value state ``states`` (read once, written only
    on change); ``(transitions, new)``, ``new`` when the bucket had no scan bookkeeping yet
    and ``now_ms`` is given: the caller arms the bucket's no-data timer. The bookkeeping
    starts at ``now_ms`` as a resumption: silence before it (e.g. while no-data alarms were
    turned off) is not counted. Shared by DetectAlarms and transforms.sensor_state."""
    blob = states.read()
    stored: dict[str, tuple[Any, ...]] = pickle.loads(blob) if blob else {}
    changed, transitions = observe_batch(stored, items, now_ms)
    new = now_ms is not None and BUCKET_META not in stored
    if new:
        stored[BUCKET_META] = (now_ms, now_ms)
    if changed or new:
        states.write(pickle.dumps(stored, protocol=pickle.HIGHEST_PROTOCOL))
    return transitions, new


def forget_scans(states) -> None:
    """Drop a bucket's scan bookkeeping (no-data alarms turned off while its timer was set):
    the next batch after they are turned on again re-arms the timer."""
    blob = states.read()
    stored: dict[str, tuple[Any, ...]] = pickle.loads(blob) if blob else {}
    if stored.pop(BUCKET_META, None) is not None:
        states.write(pickle.dumps(stored, protocol=pickle.HIGHEST_PROTOCOL))


def check_silences(states, now_ms: int, gap_ms: int) -> list[dict[str, Any]]:
    """:func:`scan_silences` over a bucket's value state (the no-data timer's work)."""
    blob = states.read()
    stored: dict[str, tuple[Any, ...]] = pickle.loads(blob) if blob else {}
    raised, deferred = scan_silences(stored, now_ms, gap_ms)
    states.write(pickle.dumps(stored, protocol=pickle.HIGHEST_PROTOCOL))
    counter("no_data_scans").inc()   # shows the timers fire: one per bucket per period
    if raised:
        counter("alarms_no_data_raised").inc(len(raised))
    if deferred:
        counter("no_data_deferred_after_gap").inc(deferred)
    return raised


class _DetectAlarmsFn(beam.DoFn):

    def process(self, element: tuple[int, bytes],  # type: ignore[override]
                states=ALARM_STATES_PARAM):
        _bucket, payload = element
        yield from advance_alarms(unpack_batch(payload), states)[0]


class DetectAlarms(beam.PTransform):
    """Lists of reading rows -> alarm transitions; thresholds come from the asset catalog
    (a FileAssetCatalog or a side-input PCollection, see transforms.enrich)."""

    def __init__(self, catalogs: beam.PCollection | FileAssetCatalog, buckets: int = 64) -> None:
        super().__init__()
        self._catalogs = catalogs
        self._buckets = buckets

    def expand(self, pcoll):
        file_catalog, side = catalog_input(self._catalogs)
        return (
            pcoll
            | "KeyBySensor" >> beam.ParDo(_AttachThresholdsFn(file_catalog), *side)
            | "Batch" >> BatchByBucket(self._buckets)
            | "StateMachine" >> beam.ParDo(_DetectAlarmsFn())
        )
