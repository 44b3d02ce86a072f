"""Acknowledging alarms: who saw an alarm and when, stored in QuestDB and served with alarms.

* ``POST /api/v1/alarms/<alarm_id>/acknowledge`` (write scope), optional JSON body
  ``{"by": "<name>", "note": "<text>"}``: stores an acknowledgement of the alarm
  episode ``alarm_id`` (all transitions of an episode share it). Without ``by`` the
  acknowledgement is recorded as ``api key <key id>``. 201 with the stored
  acknowledgement; acknowledging again is 200 with the first one (idempotent). 404 for
  an alarm id that has no transition.
* ``GET /api/v1/alarms`` (:mod:`api.query`) adds ``acknowledged_by`` and
  ``acknowledged_at`` to every row (null when not acknowledged), and with
  ``active=true`` an acknowledged active alarm has ``state`` ``ACKNOWLEDGED``.

Table ``alarm_acks`` (WAL, TTL 90 days like ``alarms``, one row per acknowledgement,
``DEDUP UPSERT KEYS(timestamp, alarm_id)``); created on first use by this module.
WAL tables apply writes asynchronously: a new acknowledgement may take a moment to
show in ``GET /api/v1/alarms``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from flask import Blueprint, Response, current_app, g, jsonify, request

from api.auth import require_scope
from api.errors import ApiError, BadParameter
from api.params import MAX_TEXT_LENGTH, format_timestamp

__all__ = ["ACK_TABLE", "ACKNOWLEDGED", "ACKS_EXTENSION", "AlarmAckStore", "annotate", "bp"]

_LOGGER = logging.getLogger(__name__)

ACKS_EXTENSION = "dcmms_alarm_acks"
ACK_TABLE = "alarm_acks"
ACKNOWLEDGED = "ACKNOWLEDGED"
MAX_NOTE = 1000

_DDL = f"""CREATE TABLE IF NOT EXISTS {ACK_TABLE} (
    timestamp TIMESTAMP,
    alarm_id VARCHAR,
    acknowledged_by VARCHAR,
    note VARCHAR,
    key_id SYMBOL CAPACITY 256 CACHE
) TIMESTAMP(timestamp) PARTITION BY DAY TTL 90 DAYS WAL
DEDUP UPSERT KEYS(timestamp, alarm_id)"""

bp = Blueprint("alarm_acks", __name__)


class AlarmAckStore:
    """Acknowledgements in QuestDB through an :class:`api.questdb.QuestDBClient`."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self._ready = False
        self._lock = threading.Lock()

    def _ensure_table(self) -> None:
        if self._ready:
            return
        with self._lock:
            if not self._ready:
                self.client.query(_DDL, (), fetch=False)
                self._ready = True

    def alarm_exists(self, alarm_id: str) -> bool:
        return bool(self.client.query(
            "SELECT alarm_id FROM alarms WHERE alarm_id = %s LIMIT 1", (alarm_id,)))

    def acknowledgements(self, alarm_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The first acknowledgement of each of ``alarm_ids`` that has one."""
        ids = sorted(set(alarm_ids))
        if not ids:
            return {}
        self._ensure_table()
        found: dict[str, dict[str, Any]] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            marks = ", ".join(["%s"] * len(chunk))
            rows = self.client.query(
                f"SELECT alarm_id, acknowledged_by, timestamp, note FROM {ACK_TABLE} "
                f"WHERE alarm_id IN ({marks}) ORDER BY timestamp", chunk)
            for alarm_id, by, at, note in rows:
                found.setdefault(alarm_id, {"alarm_id": alarm_id, "acknowledged_by": by,
                                            "acknowledged_at": format_timestamp(at),
                                            "note": note})
        return found

    def acknowledge(self, alarm_id: str, by: str, note: str | None, key_id: str) -> str:
        """Store one acknowledgement now; return its time (ISO 8601)."""
        self._ensure_table()
        at_us = time.time_ns() // 1000
        self.client.query(f"INSERT INTO {ACK_TABLE} VALUES (CAST(%s AS TIMESTAMP), %s, %s, "
                          f"%s, %s)", (at_us, alarm_id, by, note, key_id), fetch=False)
        return format_timestamp(datetime(1970, 1, 1) + timedelta(microseconds=at_us)) or ""


def annotate(rows: Sequence[dict[str, Any]], active: bool) -> None:
    """Add the acknowledgement fields to alarm rows in place (no store: left as they are)."""
    store: AlarmAckStore | None = current_app.extensions.get(ACKS_EXTENSION)
    if store is None or not rows:
        return
    try:
        acks = store.acknowledgements(str(r.get("alarm_id")) for r in rows)
    except ApiError:
        raise
    except Exception as exc:  # the alarms are still worth serving without their acks
        _LOGGER.warning("alarm acknowledgements not read: %s", exc)
        acks = {}
    for row in rows:
        ack = acks.get(str(row.get("alarm_id")))
        row["acknowledged_by"] = ack["acknowledged_by"] if ack else None
        row["acknowledged_at"] = ack["acknowledged_at"] if ack else None
        if active and ack:
            row["state"] = ACKNOWLEDGED


def _text(body: dict[str, Any], name: str, limit: int) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > limit:
        raise BadParameter(name, f"must be a non-empty string of at most {limit} characters")
    if any(ord(ch) < 32 and ch not in "\n\t" or ord(ch) == 127 for ch in value):
        raise BadParameter(name, "contains control characters")
    return value.strip()


@bp.post("/api/v1/alarms/<alarm_id>/acknowledge")
@require_scope("write")
def acknowledge(alarm_id: str) -> tuple[Response, int]:
    if len(alarm_id) > 512 or any(ord(ch) < 32 or ord(ch) == 127 for ch in alarm_id):
        raise BadParameter("alarm_id", "must be at most 512 characters without control "
                                       "characters")
    body: dict[str, Any] = {}
    if request.content_length:
        if request.content_length > 16 * 1024:
            raise ApiError(413, "payload_too_large", "body over 16384 bytes")
        if not request.is_json:
            raise ApiError(415, "unsupported_media_type", "Content-Type must be "
                                                          "application/json")
        parsed = request.get_json(silent=True)
        if not isinstance(parsed, dict):
            raise ApiError(400, "invalid_json", 'body must be a JSON object like '
                                                '{"by": "name", "note": "text"}')
        unknown = sorted(set(parsed) - {"by", "note"})
        if unknown:
            raise BadParameter(unknown[0], "unknown field", allowed=["by", "note"])
        body = parsed
    by = _text(body, "by", MAX_TEXT_LENGTH) or f"api key {g.api_key_id}"
    note = _text(body, "note", MAX_NOTE)
    store: AlarmAckStore | None = current_app.extensions.get(ACKS_EXTENSION)
    if store is None:
        raise ApiError(503, "service_unavailable", "alarm acknowledgements are not configured")
    existing = store.acknowledgements([alarm_id]).get(alarm_id)
    if existing is not None:
        return jsonify({**existing, "already_acknowledged": True}), 200
    if not store.alarm_exists(alarm_id):
        raise ApiError(404, "not_found", "no alarm with this id", {"alarm_id": alarm_id[:256]})
    at = store.acknowledge(alarm_id, by, note, g.api_key_id)
    return jsonify({"alarm_id": alarm_id, "acknowledged_by": by, "acknowledged_at": at,
                    "note": note, "already_acknowledged": False}), 201
