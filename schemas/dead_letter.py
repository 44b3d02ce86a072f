"""Dead-letter records (``schemas/dead-letter.avsc``, topic ``telemetry_dlq``).

Every stage that rejects a record (pipeline decode/validate/enrich, sinks, the
MQTT bridge, the REST ingest) builds it with :func:`make_dead_letter`, so the
shape is one: a dict with exactly :data:`DEAD_LETTER_FIELDS`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

from schemas.avro import DEAD_LETTER, enum_symbols, field_names

__all__ = ["DEAD_LETTER_FIELDS", "STAGES", "SOURCES", "make_dead_letter"]

_LOGGER = logging.getLogger(__name__)

# Derived from dead-letter.avsc; make_dead_letter's dict literal has exactly these keys
# (unit test tests/unit/test_schemas_wire.py).
DEAD_LETTER_FIELDS = field_names(DEAD_LETTER)
STAGES = enum_symbols(DEAD_LETTER, "stage")
SOURCES = ("kafka", "mqtt", "http", "pipeline")
ORIGINAL_FORMATS = ("avro-confluent", "json", "unknown")


def _as_bytes(value: Any) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace")
    return repr(value).encode("utf-8", "backslashreplace")


def make_dead_letter(
    stage: str,
    reasons: Iterable[str],
    original: Any,
    *,
    source: str = "kafka",
    original_format: str = "unknown",
    topic: str | None = None,
    partition: int | None = None,
    offset: int | None = None,
    key: Any = None,
    event_id: str | None = None,
    failed_at_ms: int | None = None,
) -> dict[str, Any]:
    """A dead-letter dict. ``original`` (bytes preferred) and ``key`` are coerced to bytes;
    an unknown stage becomes "unknown" and empty reasons get a placeholder, so building
    a dead letter itself never fails on odd input."""
    reasons_list = [str(r) for r in reasons] or ["no reason given"]
    if stage not in STAGES:
        reasons_list.append(f"(stage {stage!r} is not a known stage)")
        stage = "unknown"
    return {
        "stage": stage,
        "reasons": reasons_list,
        "original": _as_bytes(original) or b"",
        "original_format": original_format,
        "source": source,
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "key": _as_bytes(key),
        "event_id": event_id,
        "failed_at": int(time.time() * 1000) if failed_at_ms is None else int(failed_at_ms),
    }
