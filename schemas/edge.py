"""Pure helpers of the ingestion edge: payload (+ MQTT topic) -> event or reasons.

Shared by the MQTT bridge and REST ingest so both paths accept and reject
exactly the same things. No network, no Flask, no Kafka here.

* :func:`parse_topic` splits ``telemetry/{site_id}/{asset_id}/{sensor_type}``;
* :func:`event_from_mqtt` decodes an MQTT payload, checks it against its topic
  (fields missing from the payload are taken from the topic; fields that
  contradict it are an error), then validates;
* :func:`event_from_item` validates one item of a REST request body;
* both derive a missing ``event_id`` deterministically (see
  :func:`schemas.events.derive_event_id`) and run the one shared validation,
  :func:`schemas.validation.validate_event`;
* :func:`dead_letter` builds a ``schemas/dead-letter.avsc`` record.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from schemas.validation import SensorRules, validate_event

__all__ = [
    "EdgeResult",
    "SUBSCRIPTION_FILTER",
    "TOPIC_PREFIX",
    "dead_letter",
    "event_from_item",
    "event_from_mqtt",
    "parse_topic",
]

_LOGGER = logging.getLogger(__name__)

TOPIC_PREFIX = "telemetry"
# site / asset / sensor type: exactly three levels below the prefix.
SUBSCRIPTION_FILTER = f"{TOPIC_PREFIX}/+/+/+"
# Fields the topic determines; a payload may repeat them but not contradict them.
_TOPIC_FIELDS = ("site_id", "asset_id", "sensor_type")


@dataclass(frozen=True)
class EdgeResult:
    """Either a valid ``event`` (ready for Avro encoding) or the ``errors`` (non-empty).

    ``codes`` runs parallel to ``errors``: a short, bounded code per error
    (``value.out_of_range``, ``payload.not_json``) for metrics labels.
    """

    event: dict[str, Any] | None
    errors: tuple[str, ...] = ()
    codes: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.event is not None and not self.errors


def parse_topic(topic: str) -> tuple[str, str, str]:
    """``telemetry/{site}/{asset}/{sensor_type}`` -> (site_id, asset_id, sensor_type).

    Raises ValueError with a readable reason for any other shape.
    """
    parts = topic.split("/")
    if len(parts) != 4 or parts[0] != TOPIC_PREFIX:
        raise ValueError(f"MQTT topic {topic!r} is not {TOPIC_PREFIX}/<site_id>/<asset_id>/"
                         "<sensor_type>")
    _, site_id, asset_id, sensor_type = parts
    if not site_id or not asset_id or not sensor_type:
        raise ValueError(f"MQTT topic {topic!r} has an empty level")
    return site_id, asset_id, sensor_type


def event_from_mqtt(payload: bytes, topic: str, *, now_ms: int, rules: SensorRules) -> EdgeResult:
    """Decode, check against the topic, complete and validate one MQTT message."""
    try:
        site_id, asset_id, sensor_type = parse_topic(topic)
    except ValueError as exc:
        return EdgeResult(None, (str(exc),), ("topic.invalid",))
    try:
        raw = json.loads(payload)
    except (UnicodeDecodeError, ValueError) as exc:
        return EdgeResult(None, (f"payload is not valid UTF-8 JSON: {exc}",),
                          ("payload.not_json",))
    except RecursionError:
        return EdgeResult(None, ("payload is not valid JSON: nested too deeply",),
                          ("payload.not_json",))
    if not isinstance(raw, dict):
        return EdgeResult(None, (f"payload must be a JSON object, got {type(raw).__name__}",),
                          ("payload.type",))

    from_topic = {"site_id": site_id, "asset_id": asset_id, "sensor_type": sensor_type}
    errors: list[str] = []
    codes: list[str] = []
    for name in _TOPIC_FIELDS:
        if name not in raw or raw[name] is None:
            raw[name] = from_topic[name].upper() if name == "sensor_type" else from_topic[name]
            continue
        given = raw[name]
        expected = from_topic[name]
        same = (isinstance(given, str) and
                (given.upper() == expected.upper() if name == "sensor_type"
                 else given == expected))
        if not same:
            errors.append(f"{name} {given!r} contradicts the MQTT topic {topic!r} "
                          f"(expected {expected!r})")
            codes.append(f"{name}.topic_mismatch")
    if errors:
        return EdgeResult(None, tuple(errors), tuple(codes))
    raw["source"] = "mqtt"  # the edge knows the path; a client cannot claim another
    return _complete_and_validate(raw, now_ms=now_ms, rules=rules)


def event_from_item(item: Any, *, now_ms: int, rules: SensorRules) -> EdgeResult:
    """Validate one item of a REST body (any JSON value)."""
    if not isinstance(item, dict):
        return EdgeResult(None, (f"item must be a JSON object, got {_json_type(item)}",),
                          ("event.type",))
    raw = dict(item)
    raw["source"] = "http"
    return _complete_and_validate(raw, now_ms=now_ms, rules=rules)


def dead_letter(*, stage: str, reasons: list[str] | tuple[str, ...], original: bytes,
                source: str, topic: str | None, failed_at_ms: int,
                event_id: str | None = None, original_format: str = "json",
                key: bytes | None = None) -> dict[str, Any]:
    """A record for ``telemetry_dlq`` following ``schemas/dead-letter.avsc``."""
    return {
        "stage": stage,
        "reasons": [str(r) for r in reasons] or ["unspecified"],
        "original": bytes(original),
        "original_format": original_format,
        "source": source,
        "topic": topic,
        "partition": None,
        "offset": None,
        "key": key,
        "event_id": event_id,
        "failed_at": int(failed_at_ms),
    }


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return type(value).__name__


def _complete_and_validate(raw: dict[str, Any], *, now_ms: int, rules: SensorRules
                           ) -> EdgeResult:
    # validate_event derives a missing event_id from the normalised fields, so
    # a REST retry and an MQTT resend of the same reading get the same id.
    result = validate_event(raw, now_ms=now_ms, rules=rules)
    if result.event is None:
        return EdgeResult(None, tuple(result.reasons) or ("event: invalid",),
                          tuple(result.codes) or ("event.invalid",))
    return EdgeResult(result.event, ())
