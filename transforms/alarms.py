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

Transitions are dicts with exactly :data:`ALARM_FIELDS` (=
io_connectors.questdb_schema.ALARM_COLUMNS and schemas/alarm.avsc). State is
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
from transforms.buckets import BatchByBucket, unpack_batch
from transforms.common import counter
from transforms.enrich import FileAssetCatalog, _CatalogUser, catalog_input

__all__ = [
    "ALARM_FIELDS",
    "WARNING",
    "CRITICAL",
    "RAISED",
    "CLEARED",
    "AlarmState",
    "classify",
    "clears",
    "step",
    "sensor_key",
    "advance_alarms",
    "attach_thresholds",
    "ALARM_STATES_PARAM",
    "DetectAlarms",
]

_LOGGER = logging.getLogger(__name__)

ALARM_FIELDS = (
    "timestamp", "alarm_id", "site_id", "asset_id", "sensor_id", "sensor_type", "severity",
    "state", "value", "threshold", "reason", "event_id", "ingested_at",
)
WARNING, CRITICAL = "WARNING", "CRITICAL"
RAISED, CLEARED = "RAISED", "CLEARED"
_RANK = {None: 0, WARNING: 1, CRITICAL: 2}
_INF = float("inf")


@dataclass(frozen=True)
class AlarmState:
    """Per-sensor state: the active episode (if any) and the last evaluated timestamp."""

    alarm_id: str | None = None
    severity: str | None = None
    last_ts: int | None = None

    @property
    def active(self) -> bool:
        return self.alarm_id is not None

    def to_tuple(self) -> tuple[str | None, str | None, int | None]:
        return self.alarm_id, self.severity, self.last_ts

    @classmethod
    def from_tuple(cls, data: tuple[Any, ...] | None) -> AlarmState:
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


def _transition(reading: Mapping[str, Any], alarm_id: str, severity: str, state: str,
                threshold: float | None, reason: str) -> dict[str, Any]:
    return {
        "timestamp": reading["timestamp"],
        "alarm_id": alarm_id,
        "site_id": reading["site_id"],
        "asset_id": reading["asset_id"],
        "sensor_id": reading["sensor_id"],
        "sensor_type": reading["sensor_type"],
        "severity": severity,
        "state": state,
        "value": reading["value"],
        "threshold": threshold,
        "reason": reason,
        "event_id": reading["event_id"],
        "ingested_at": reading["ingested_at"],
    }


def step(state: AlarmState, reading: Mapping[str, Any], thresholds: Thresholds | None
         ) -> tuple[AlarmState, list[dict[str, Any]]]:
    """Advance one sensor's state by one reading row (see the module docstring)."""
    ts = reading["timestamp"]
    if state.last_ts is not None and ts < state.last_ts:
        return state, []
    value, quality = reading["value"], reading["quality_flag"]
    severity, threshold, reason = classify(value, quality, thresholds)
    if not state.active:
        if severity is None:
            return AlarmState(last_ts=ts), []
        alarm_id = f"{reading['asset_id']}:{reading['sensor_id']}:{ts}"
        return (AlarmState(alarm_id, severity, ts),
                [_transition(reading, alarm_id, severity, RAISED, threshold, reason)])
    assert state.alarm_id is not None and state.severity is not None
    if _RANK[severity] > _RANK[state.severity]:
        return (AlarmState(state.alarm_id, severity, ts),
                [_transition(reading, state.alarm_id, severity, RAISED, threshold,
                             f"escalated to {severity}: {reason}")])
    cleared, level = clears(value, quality, thresholds)
    if cleared:
        return (AlarmState(last_ts=ts),
                [_transition(reading, state.alarm_id, state.severity, CLEARED, level,
                             f"value {value:g} back inside the band"
                             + (f" (clear level {level:g})" if level is not None else ""))])
    return AlarmState(state.alarm_id, state.severity, ts), []


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


# One state per bucket of sensors (transforms/buckets.py): {sensor_key: AlarmState tuple},
# a dict of tuples of primitives (independent of this module's class layout), stored pickled
# as bytes: the SDK's state cache weighs a cached value by walking its object graph, a bytes
# object in O(1) (see transforms/dedup.py).
ALARM_STATES = ReadModifyWriteStateSpec("alarm_states", BytesCoder())
ALARM_STATES_PARAM = beam.DoFn.StateParam(ALARM_STATES)


def advance_alarms(items: Iterable[tuple[str, Any, tuple[dict[str, Any], Thresholds | None]]],
                   states) -> list[dict[str, Any]]:
    """Run a bucket's state machines over ``items`` ``(sensor_key, _, (row, thresholds))`` in
    order; the transitions. ``states`` is the bucket's value state (written only on change);
    shared by DetectAlarms and transforms.sensor_state."""
    blob = states.read()
    stored: dict[str, tuple[Any, ...]] = pickle.loads(blob) if blob else {}
    changed = False
    out_of_order = 0
    transitions: list[dict[str, Any]] = []
    for key, _ts_ms, (row, thresholds) in items:
        current = AlarmState.from_tuple(stored.get(key))
        if current.last_ts is not None and row["timestamp"] < current.last_ts:
            out_of_order += 1
        new, emitted = step(current, row, thresholds)
        if new != current:
            changed = True
            stored[key] = new.to_tuple()
        for t in emitted:
            counter("alarms_cleared" if t["state"] == CLEARED else
                    "alarms_escalated" if t["reason"].startswith("escalated") else
                    "alarms_raised").inc()
        transitions.extend(emitted)
    if out_of_order:
        counter("alarm_readings_out_of_order").inc(out_of_order)
    if changed:
        states.write(pickle.dumps(stored, protocol=pickle.HIGHEST_PROTOCOL))
    return transitions


class _DetectAlarmsFn(beam.DoFn):

    def process(self, element: tuple[int, bytes],  # type: ignore[override]
                states=ALARM_STATES_PARAM):
        _bucket, payload = element
        yield from advance_alarms(unpack_batch(payload), states)


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
