"""Dead letters over HTTP: list them and replay them to ``raw_telemetry``.

* ``GET /api/v1/dead-letters`` (read scope) — the newest dead letters of
  ``telemetry_dlq`` (up to ``scan`` per partition, default 500), newest first,
  filtered by ``stage``, ``source``, ``reason`` (a reason class as listed in the
  summary, or a substring of a reason), ``event_id``, ``since``/``until``
  (``failed_at``), at most ``limit``; with a summary by stage, reason and minute.
* ``POST /api/v1/dead-letters/replay`` (write scope) — body
  ``{"ids": ["<partition>:<offset>", ...]}`` or ``{"all": true, <filters>}``:
  re-publishes their events (see :mod:`schemas.replay`: idempotent, only
  valid events, as Avro) and answers what was replayed, skipped (with why)
  and failed. 200 even when nothing could be replayed: the body says why.

The Kafka consumer, registry client and producer are made on first use in each
process (they must not cross gunicorn's fork). Tests put a store object with
``recent``, ``by_ids`` and ``replay`` into ``app.extensions[EXTENSION]``.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request

from api.auth import require_scope
from api.errors import ApiError, BadParameter, ServiceUnavailable
from api.params import US_PER_MS, _Reader, parse_time
from schemas.dead_letter import SOURCES, STAGES
from schemas.dead_letter_query import (
    DeadLetterFilter,
    filter_dead_letters,
    parse_record_id,
    summarize,
)

__all__ = ["EXTENSION", "LIST_PARAMS", "MAX_REPLAY_IDS", "bp", "dead_letter_store",
           "parse_filter"]

_LOGGER = logging.getLogger(__name__)

EXTENSION = "dcmms_dead_letters"
LIST_PARAMS = ("stage", "source", "reason", "event_id", "since", "until", "limit", "scan")
FILTER_KEYS = ("stage", "source", "reason", "event_id", "since", "until")
DEFAULT_SCAN = 500
MAX_SCAN = 5000
DEFAULT_LIST_LIMIT = 200
MAX_LIST_LIMIT = 2000
MAX_REPLAY_IDS = 1000
MAX_BODY_BYTES = 256 * 1024

bp = Blueprint("dead_letters", __name__)
_lock = threading.Lock()


def _build_store() -> Any:
    from io_connectors.dead_letter_store import DeadLetterStore
    from io_connectors.kafka_inspect import KafkaInspector
    from io_connectors.raw_producer import EdgeTarget, build_raw_producer
    from io_connectors.schema_registry import RegistrySchemas
    from schemas.validation import load_sensor_rules

    settings = current_app.config["DCMMS_SETTINGS"]
    target = EdgeTarget.from_settings(settings)
    registry = RegistrySchemas(settings.schema_registry.url)
    producer: list[Any] = []
    rules_file = settings.pipeline.sensor_rules_file

    def make_producer() -> Any:
        with _lock:
            if not producer:
                producer.append(build_raw_producer(target, client_id="dcmms-replay"))
            return producer[0]

    return DeadLetterStore(KafkaInspector(target.bootstrap_servers), target.dlq_topic,
                           registry, make_producer,
                           # Read on every replay: the operator may just have fixed the rules.
                           lambda: load_sensor_rules(rules_file))


def dead_letter_store() -> Any:
    """This process's store (made on first use; a test may have put a fake there)."""
    holder = current_app.extensions.setdefault(EXTENSION, {})
    if not isinstance(holder, dict):  # a test's fake store
        return holder
    with _lock:
        if holder.get("pid") != os.getpid():
            try:
                holder["store"] = _build_store()
            except Exception as exc:
                _LOGGER.error("dead-letter store unavailable: %s", exc)
                raise ServiceUnavailable("dead letters unavailable (Kafka or schema registry): "
                                         f"{exc}", retry_after=5) from None
            holder["pid"] = os.getpid()
        return holder["store"]


def _time(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise BadParameter(name, "must be ISO 8601 or epoch milliseconds")
    return parse_time(str(value), name) // US_PER_MS


def _text(value: Any, name: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > 256:
        raise BadParameter(name, "must be a non-empty string of at most 256 characters")
    return value


def parse_filter(values: dict[str, Any]) -> DeadLetterFilter:
    """A :class:`DeadLetterFilter` from query parameters or a JSON body; 400 on bad values."""
    stage = _text(values.get("stage"), "stage")
    if stage is not None and stage not in STAGES:
        raise BadParameter("stage", f"must be one of {', '.join(STAGES)}", allowed=list(STAGES))
    source = _text(values.get("source"), "source")
    if source is not None and source not in SOURCES:
        raise BadParameter("source", f"must be one of {', '.join(SOURCES)}",
                           allowed=list(SOURCES))
    return DeadLetterFilter(stage=stage, source=source,
                            reason=_text(values.get("reason"), "reason"),
                            event_id=_text(values.get("event_id"), "event_id"),
                            since_ms=_time(values.get("since"), "since"),
                            until_ms=_time(values.get("until"), "until"))


def _int_param(reader: _Reader, name: str, default: int, maximum: int) -> int:
    value = reader.get(name)
    if value is None:
        return default
    if not (value.isascii() and value.isdigit()) or len(value) > 6 \
            or not 1 <= int(value) <= maximum:
        raise BadParameter(name, f"must be an integer from 1 to {maximum}",
                           minimum=1, maximum=maximum)
    return int(value)


def _strip(item: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in item.items() if k != "original_bytes"}


@bp.get("/api/v1/dead-letters")
@require_scope("read")
def list_dead_letters() -> Response:
    reader = _Reader(request.args, LIST_PARAMS)
    flt = parse_filter({k: reader.get(k) for k in FILTER_KEYS})
    limit = _int_param(reader, "limit", DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT)
    scan = _int_param(reader, "scan", DEFAULT_SCAN, MAX_SCAN)
    items = _recent(scan)
    matched = filter_dead_letters(items, flt)
    return jsonify({"data": [_strip(dict(i)) for i in matched[:limit]],
                    "matched": len(matched), "scanned": len(items),
                    "summary": summarize(matched), "next_cursor": None})


def _recent(scan: int, with_original: bool = False) -> list[dict[str, Any]]:
    from io_connectors.kafka_inspect import KafkaUnavailable

    try:
        return dead_letter_store().recent(scan, with_original=with_original)
    except KafkaUnavailable as exc:
        raise ServiceUnavailable(str(exc)) from None


def _replay_body() -> dict[str, Any]:
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise ApiError(413, "payload_too_large", f"body over {MAX_BODY_BYTES} bytes")
    if not request.is_json:
        raise ApiError(415, "unsupported_media_type", "Content-Type must be application/json")
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_json",
                       'body must be a JSON object: {"ids": [...]} or {"all": true, ...}')
    allowed = {"ids", "all", "scan", *FILTER_KEYS}
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise BadParameter(unknown[0], "unknown field", allowed=sorted(allowed))
    return body


@bp.post("/api/v1/dead-letters/replay")
@require_scope("write")
def replay() -> Response:
    body = _replay_body()
    ids_given = "ids" in body
    replay_all = body.get("all", False)
    if not isinstance(replay_all, bool):
        raise BadParameter("all", "must be true or false")
    if ids_given == replay_all:
        raise BadParameter("ids", 'give either "ids" (a list of "<partition>:<offset>") or '
                                  '"all": true with optional filters, not both or neither')
    store = dead_letter_store()
    if ids_given:
        ids = body["ids"]
        if not isinstance(ids, list) or not ids or len(ids) > MAX_REPLAY_IDS:
            raise BadParameter("ids", f"must be a list of 1 to {MAX_REPLAY_IDS} ids")
        if any(k in body for k in (*FILTER_KEYS, "scan")):
            raise BadParameter("ids", "filters apply to all=true only")
        try:
            wanted = list(dict.fromkeys(parse_record_id(i) for i in ids))
        except ValueError as exc:
            raise BadParameter("ids", str(exc)) from None
        items = store.by_ids(wanted)
        found = {item["id"] for item in items}
        missing = [f"{p}:{o}" for p, o in wanted if f"{p}:{o}" not in found]
        result = store.replay(items, requested=len(wanted))
        result.not_found = missing
    else:
        flt = parse_filter(body)
        scan = body.get("scan", DEFAULT_SCAN)
        if isinstance(scan, bool) or not isinstance(scan, int) or not 1 <= scan <= MAX_SCAN:
            raise BadParameter("scan", f"must be an integer from 1 to {MAX_SCAN}")
        items = [dict(i) for i in filter_dead_letters(_recent(scan, with_original=True), flt)]
        result = store.replay(items)
    return jsonify(result.as_dict())
