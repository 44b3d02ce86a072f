"""Telemetry event helpers: field names, enum symbols, deterministic event ids, JSON <-> Avro.

The event dict used everywhere (edge, pipeline, tests) has exactly the fields
of ``schemas/telemetry-event.avsc`` (:data:`EVENT_FIELDS`); enums are plain
strings, the timestamp is epoch milliseconds. Such a dict is both valid JSON
and a valid fastavro record, so "conversion" is only about defaults and bytes.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Mapping
from typing import Any

from schemas.avro import TELEMETRY_EVENT, enum_symbols, field_defaults, field_names

__all__ = [
    "EVENT_FIELDS",
    "SENSOR_TYPES",
    "QUALITY_FLAGS",
    "EVENT_ID_NAMESPACE",
    "derive_event_id",
    "event_from_avro",
    "event_to_json_bytes",
    "event_from_json_bytes",
]

_LOGGER = logging.getLogger(__name__)

# Derived from telemetry-event.avsc (the one definition of the event's shape).
EVENT_FIELDS = field_names(TELEMETRY_EVENT)
SENSOR_TYPES = enum_symbols(TELEMETRY_EVENT, "sensor_type")
QUALITY_FLAGS = enum_symbols(TELEMETRY_EVENT, "quality_flag")
_DEFAULTS: Mapping[str, Any] = field_defaults(TELEMETRY_EVENT)

# Fixed namespace: changing it would change every derived id and defeat dedup of retries.
EVENT_ID_NAMESPACE = uuid.UUID("6f1c2a4e-8d3b-5b7a-9c11-d0c3a5e7f901")


def derive_event_id(site_id: str, asset_id: str, sensor_id: str, timestamp_ms: int) -> str:
    """Deterministic event id (UUIDv5 text) for clients that omit one.

    A retried batch yields the same ids, so dedup and QuestDB's DEDUP keys drop
    the copies. Two readings of one sensor at the same millisecond collide by
    design: they are the same reading.
    """
    # \x1f (unit separator) cannot occur in validated ids, so the join is unambiguous.
    name = f"{site_id}\x1f{asset_id}\x1f{sensor_id}\x1f{int(timestamp_ms)}"
    return str(uuid.uuid5(EVENT_ID_NAMESPACE, name))


def event_from_avro(record: Mapping[str, Any]) -> dict[str, Any]:
    """An event dict from a decoded Avro record (fields missing in old writers get defaults)."""
    return {name: record.get(name, _DEFAULTS.get(name)) for name in EVENT_FIELDS}


def event_to_json_bytes(event: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON of an event (for dead letters and logs)."""
    return json.dumps(dict(event), separators=(",", ":"), ensure_ascii=False,
                      default=repr).encode("utf-8")


def event_from_json_bytes(data: bytes) -> Any:
    """Parse JSON bytes; raises ValueError (incl. UnicodeDecodeError) on bad input.

    The result is unvalidated: pass it to schemas.validation.validate_event.
    """
    return json.loads(data)
