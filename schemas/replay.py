"""What replaying a dead letter would send to ``raw_telemetry``: pure, no IO.

A dead letter (``schemas/dead-letter.avsc``) keeps the original bytes of what was
rejected. Replay turns them back into telemetry events and re-publishes them, after
the operator fixed the cause (the asset catalog, the sensor rules). Only events that
pass the edge's validation again are re-published, as the project's Avro, so a replay
never writes anything to the topic that a producer could not have written:

* ``original_format`` ``json`` (MQTT payloads, REST items, items of a pipeline batch):
  parsed and validated like the edge does (an MQTT payload with its MQTT topic);
* ``avro-confluent`` (single records read from Kafka): decoded with the schema
  registry (``decode_avro``), then validated the same way;
* stage ``decode`` (undecodable bytes) and anything else: not replayable, with a reason.

Idempotency: a replayed event keeps its ``event_id`` (an edge reject without one gets
the same deterministic id it would have got, :func:`schemas.events.derive_event_id`).
The pipeline drops a second copy within its dedup window, and QuestDB's
``DEDUP UPSERT KEYS(timestamp, event_id)`` stores one row whenever it arrives, so
replaying the same dead letter twice stores the event once.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from schemas.edge import event_from_item, event_from_mqtt
from schemas.events import event_from_avro
from schemas.validation import SensorRules, validate_event

__all__ = ["REPLAYABLE_FORMATS", "ReplayPlan", "plan_replay"]

_LOGGER = logging.getLogger(__name__)

REPLAYABLE_FORMATS = ("json", "avro-confluent")


@dataclass(frozen=True)
class ReplayPlan:
    """The events one dead letter yields (maybe none) and, if none, why not."""

    events: tuple[dict[str, Any], ...] = ()
    skipped: str | None = None
    codes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return bool(self.events)


def _skip(reason: str, *codes: str) -> ReplayPlan:
    return ReplayPlan((), reason, tuple(codes))


def _validated(raw: Any, now_ms: int, rules: SensorRules) -> ReplayPlan:
    if not isinstance(raw, dict):
        return _skip(f"original is a JSON {type(raw).__name__}, not an event object",
                     "event.type")
    result = validate_event(dict(raw), now_ms=now_ms, rules=rules)
    if result.event is None:
        return _skip("still invalid: " + "; ".join(result.reasons), *result.codes)
    return ReplayPlan((result.event,))


def plan_replay(dead_letter: Mapping[str, Any], *, now_ms: int, rules: SensorRules,
                decode_avro: Callable[[bytes], Mapping[str, Any]] | None = None) -> ReplayPlan:
    """The events to re-publish for ``dead_letter``; never raises on odd input.

    ``decode_avro(bytes) -> record`` decodes Confluent-framed Avro (it may raise
    ValueError for undecodable bytes); without it Avro originals are skipped.
    """
    stage = dead_letter.get("stage")
    fmt = dead_letter.get("original_format")
    original = dead_letter.get("original")
    if not isinstance(original, bytes | bytearray) or not original:
        return _skip("the dead letter holds no original bytes", "original.missing")
    original = bytes(original)
    if stage == "decode":
        return _skip("rejected at decode: the original bytes are not a decodable record; "
                     "only valid Avro is ever written to raw_telemetry", "stage.decode")
    if fmt == "avro-confluent":
        if decode_avro is None:
            return _skip("Avro original but no schema registry to decode it", "avro.no_registry")
        try:
            record = decode_avro(original)
        except Exception as exc:  # undecodable bytes or an unknown schema id
            return _skip(f"Avro original undecodable: {exc}", "avro.undecodable")
        if isinstance(record.get("events"), list):  # a whole TelemetryBatch record
            events: list[dict[str, Any]] = []
            reasons: list[str] = []
            for item in record["events"]:
                plan = _validated(event_from_avro(item), now_ms, rules)
                events.extend(plan.events)
                if plan.skipped:
                    reasons.append(plan.skipped)
            if not events:
                return _skip("; ".join(reasons) or "empty batch", "batch.invalid")
            return ReplayPlan(tuple(events))
        return _validated(event_from_avro(record), now_ms, rules)
    if fmt == "json":
        source = dead_letter.get("source")
        topic = dead_letter.get("topic")
        if source == "mqtt" and isinstance(topic, str):
            result = event_from_mqtt(original, topic, now_ms=now_ms, rules=rules)
            if result.event is None:
                return _skip("still invalid: " + "; ".join(result.errors), *result.codes)
            return ReplayPlan((result.event,))
        try:
            raw = json.loads(original)
        except (UnicodeDecodeError, ValueError) as exc:
            return _skip(f"original is not valid JSON: {exc}", "payload.not_json")
        except RecursionError:
            return _skip("original is not valid JSON: nested too deeply", "payload.not_json")
        if source == "http":
            result = event_from_item(raw, now_ms=now_ms, rules=rules)
            if result.event is None:
                return _skip("still invalid: " + "; ".join(result.errors), *result.codes)
            return ReplayPlan((result.event,))
        return _validated(raw, now_ms, rules)
    return _skip(f"original format {fmt!r} cannot be replayed (replayable: "
                 f"{', '.join(REPLAYABLE_FORMATS)})", "format.unknown")
