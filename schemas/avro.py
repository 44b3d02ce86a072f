"""The project's Avro schemas (``schemas/*.avsc``): loading, parsing and caching.

``load_schema("telemetry-event")`` returns the fastavro-parsed schema, parsed
once per process. ``schema_text(name)`` returns the canonical JSON text to
register in the schema registry (subject ``<topic>-value``).

``telemetry-batch`` has no file of its own: it is composed from
``telemetry-event.avsc`` (a record holding an array of events), so the event's
shape has one definition. The edge writes one such record per batch of events
(one REST request's accepted events, what the bridge took in one go) so the job
handles one Kafka record per batch; see docs/decisions/0004.

The .avsc files are the one definition of the record shapes: ``field_names``,
``field_defaults`` and ``enum_symbols`` give the key tuples, defaults and enum
symbols that schemas.events, schemas.dead_letter, transforms.enrich and
transforms.alarms derive their constants from at import.
"""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path
from typing import Any

import fastavro

__all__ = [
    "SCHEMA_DIR",
    "TELEMETRY_EVENT",
    "TELEMETRY_BATCH",
    "TELEMETRY_BATCH_FULLNAME",
    "SENSOR_READING",
    "ALARM",
    "DEAD_LETTER",
    "SchemaFileError",
    "load_schema",
    "parse_schema",
    "schema_text",
    "field_names",
    "field_defaults",
    "enum_symbols",
]

_LOGGER = logging.getLogger(__name__)

SCHEMA_DIR = Path(__file__).resolve().parent

# Schema names (file stems) used across the project.
TELEMETRY_EVENT = "telemetry-event"   # raw_telemetry
TELEMETRY_BATCH = "telemetry-batch"   # raw_telemetry too: many events in one record
TELEMETRY_BATCH_FULLNAME = "com.dcmms.telemetry.TelemetryBatch"
SENSOR_READING = "sensor-reading"     # validated_telemetry
ALARM = "alarm"                       # alarms
DEAD_LETTER = "dead-letter"           # telemetry_dlq

ParsedSchema = dict[str, Any]


class SchemaFileError(ValueError):
    """An .avsc file is missing or invalid; the message names the file."""


def parse_schema(schema: str | dict[str, Any]) -> ParsedSchema:
    """Parse a schema given as JSON text or a dict (fresh named-type scope each time)."""
    raw = json.loads(schema) if isinstance(schema, str) else schema
    # named_schemas={} keeps each parse independent: two versions of one record
    # name must not collide in a shared registry of named types.
    return fastavro.parse_schema(raw, named_schemas={})


def _batch_of(item_schema: str) -> str:
    namespace, _, name = TELEMETRY_BATCH_FULLNAME.rpartition(".")
    return json.dumps({
        "type": "record", "name": name, "namespace": namespace,
        "doc": "Several telemetry events in one raw_telemetry record (written by the edge; "
               "the pipeline reads it like the same events one record each).",
        "fields": [{"name": "events", "type": {"type": "array",
                                               "items": json.loads(_load_json(item_schema))}}],
    })


# Schemas composed from others instead of read from a file of their own.
_COMPOSED = {TELEMETRY_BATCH: lambda: _batch_of(TELEMETRY_EVENT)}


@functools.cache
def _load_json(name: str) -> str:
    if name in _COMPOSED:
        return _COMPOSED[name]()
    path = SCHEMA_DIR / f"{name}.avsc"
    try:
        text = path.read_text(encoding="utf-8")
        json.loads(text)
    except (OSError, ValueError) as exc:
        raise SchemaFileError(f"cannot read Avro schema {path}: {exc}") from exc
    return text


@functools.cache
def load_schema(name: str) -> ParsedSchema:
    """The parsed schema ``schemas/<name>.avsc`` (cached)."""
    text = _load_json(name)
    try:
        return parse_schema(text)
    except Exception as exc:  # fastavro raises several types for a bad schema
        path = SCHEMA_DIR / f"{name}.avsc"
        raise SchemaFileError(f"invalid Avro schema {path}: {exc}") from exc


def schema_text(name: str) -> str:
    """Compact JSON text of ``schemas/<name>.avsc``, as registered in the registry."""
    return json.dumps(json.loads(_load_json(name)), separators=(",", ":"))


def _fields(name: str) -> list[dict[str, Any]]:
    return json.loads(_load_json(name))["fields"]


def field_names(name: str) -> tuple[str, ...]:
    """Top-level field names of ``schemas/<name>.avsc`` in declaration order: the keys (and
    their order) of the project's dicts of that record (call once, at import)."""
    return tuple(f["name"] for f in _fields(name))


def field_defaults(name: str) -> dict[str, Any]:
    """``{field: default}`` of the top-level fields of ``schemas/<name>.avsc`` that declare
    a default (what a reader fills in for a writer that lacks the field)."""
    return {f["name"]: f["default"] for f in _fields(name) if "default" in f}


def enum_symbols(name: str, field: str) -> tuple[str, ...]:
    """The symbols of the enum type of top-level field ``field`` of ``schemas/<name>.avsc``
    (SchemaFileError naming the file if it is not an enum field there)."""
    for f in _fields(name):
        if f["name"] == field:
            t = f["type"]
            if isinstance(t, dict) and t.get("type") == "enum":
                return tuple(t["symbols"])
            break
    raise SchemaFileError(f"{SCHEMA_DIR / (name + '.avsc')}: field {field!r} is not an "
                          "enum field")
