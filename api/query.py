"""Query blueprint: telemetry (raw, buckets, CSV), latest values, alarms, assets.

Views stay thin: :mod:`api.params` parses and whitelists, the store in
``app.extensions["dcmms_store"]`` (a :class:`api.questdb.TelemetryStore`)
runs the queries, and this module shapes responses.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request, stream_with_context

from api.alarm_acks import annotate as annotate_acks
from api.assets import AssetCatalogError, AssetDirectory
from api.auth import require_scope
from api.errors import ApiError
from api.params import (
    MAX_LIMIT,
    TelemetryQuery,
    encode_cursor,
    encode_key_cursor,
    parse_alarm_query,
    parse_asset_list_query,
    parse_latest_query,
    parse_telemetry_query,
)
from io_connectors.questdb_schema import SENSOR_READING_COLUMNS

__all__ = ["bp", "STORE_EXTENSION", "ASSETS_EXTENSION", "BUCKET_CSV_COLUMNS", "RAW_CSV_COLUMNS"]

_LOGGER = logging.getLogger(__name__)

STORE_EXTENSION = "dcmms_store"
# Response header naming where telemetry rows came from (also the JSON body's "source").
SOURCE_HEADER = "X-Data-Source"
ASSETS_EXTENSION = "dcmms_assets"

RAW_CSV_COLUMNS = SENSOR_READING_COLUMNS
BUCKET_CSV_COLUMNS = ("timestamp", "asset_id", "sensor_id", "sensor_type", "value")

bp = Blueprint("query", __name__)


def _store() -> Any:
    return current_app.extensions[STORE_EXTENSION]


def _cursor(q: Any, key: Sequence[Any] | None) -> str | None:
    return encode_cursor(key, q.start_us, q.end_us, q.fingerprint) if key else None


@bp.get("/api/v1/telemetry")
@require_scope("read")
def telemetry() -> Response:
    """Raw readings or time buckets, one page as JSON or the whole range as CSV."""
    q = parse_telemetry_query(request.args)
    after = q.cursor.key if q.cursor else None
    if q.fmt == "csv":
        return _csv_response(q, after)
    page = _store().readings(q, q.limit, after)
    source = getattr(page, "source", "raw")
    response = jsonify({"data": page.rows, "next_cursor": _cursor(q, page.next_key),
                        "source": source})
    response.headers[SOURCE_HEADER] = source
    return response


def _csv_text(rows: Sequence[Sequence[Any]]) -> str:
    """Rows as CSV lines (None as an empty field), one writer per chunk, not per row."""
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue()


def _csv_page(store: Any, q: TelemetryQuery, columns: Sequence[str], limit: int,
              after: Sequence[Any] | None,
              ) -> tuple[list[list[Any]], Sequence[Any] | None, str]:
    """One chunk of the export as value lists in ``columns`` order, the next key and
    the source of the rows.

    The real store returns value lists directly (:meth:`TelemetryStore.reading_rows`: no
    dict per row); a store without that method (test stand-ins) is read through
    ``readings``.
    """
    reading_rows = getattr(store, "reading_rows", None)
    if reading_rows is not None:
        page = reading_rows(q, limit, after)
        if tuple(page.columns) != tuple(columns):
            raise RuntimeError(f"CSV columns {page.columns} differ from {columns}")
        return page.rows, page.next_key, page.source
    page = store.readings(q, limit, after)
    return ([[row[c] for c in columns] for row in page.rows], page.next_key,
            getattr(page, "source", "raw"))


def _csv_response(q: TelemetryQuery, after: Sequence[Any] | None) -> Response:
    """Stream every row of the range (at most ``limit`` if given) in keyset-paged chunks.

    The first chunk is read before the response starts, so an unreachable
    QuestDB is still a proper 503. A chunk query failing later is logged and
    re-raised: the server then drops the connection without the final chunk, so
    the client sees a broken transfer, never a clean end that looks complete.
    """
    store = _store()
    columns = BUCKET_CSV_COLUMNS if q.bucketed else RAW_CSV_COLUMNS
    remaining = q.limit if q.limit_given else None
    first = _csv_page(store, q, columns, min(MAX_LIMIT, remaining or MAX_LIMIT), after)

    def generate() -> Iterator[str]:
        # The next chunk is queried in a thread while this one is formatted and sent:
        # QuestDB's scan (psycopg2 releases the GIL meanwhile) overlaps the Python
        # formatting. At most two chunks are in memory.
        nonlocal remaining
        rows, next_key, _source = first
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="csv-prefetch")
        try:
            yield _csv_text([columns])
            while True:
                if remaining is not None:
                    remaining -= len(rows)
                done = next_key is None or (remaining is not None and remaining <= 0)
                pending = None if done else pool.submit(
                    _csv_page, store, q, columns, min(MAX_LIMIT, remaining or MAX_LIMIT),
                    next_key)
                yield _csv_text(rows)
                if pending is None:
                    return
                try:
                    rows, next_key, _source = pending.result()
                except Exception:
                    _LOGGER.exception("CSV stream aborted: a chunk query failed")
                    raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    return Response(stream_with_context(generate()), mimetype="text/csv",
                    headers={"Content-Disposition": "attachment; filename=telemetry.csv",
                             SOURCE_HEADER: first[2]})


@bp.get("/api/v1/telemetry/latest")
@require_scope("read")
def latest() -> Response:
    """Latest reading of every sensor of an asset or a site."""
    q = parse_latest_query(request.args)
    return jsonify({"data": _store().latest(q), "next_cursor": None})


@bp.get("/api/v1/alarms")
@require_scope("read")
def alarms() -> Response:
    """Alarm transitions in a range, or the currently active alarms (``active=true``)."""
    q = parse_alarm_query(request.args)
    page = _store().alarms(q, q.cursor.key if q.cursor else None)
    annotate_acks(page.rows, q.active)  # acknowledged_by/_at; ACKNOWLEDGED when active
    return jsonify({"data": page.rows, "next_cursor": _cursor(q, page.next_key)})


def _catalog() -> AssetDirectory:
    return current_app.extensions[ASSETS_EXTENSION]


def _assets_unavailable(exc: AssetCatalogError) -> ApiError:
    _LOGGER.error("%s", exc)
    return ApiError(503, "assets_unavailable", str(exc), {"setting": "[pipeline] assets_file"},
                    {"Retry-After": "30"})


@bp.get("/api/v1/assets")
@require_scope("read")
def assets() -> Response:
    """A page of assets (asset_id order) with their metadata and alarm thresholds."""
    q = parse_asset_list_query(request.args)
    try:
        page = _catalog().page(q.limit, q.after)
    except AssetCatalogError as exc:
        raise _assets_unavailable(exc) from None
    next_cursor = encode_key_cursor(page.next_key, q.fingerprint) if page.next_key else None
    return jsonify({"data": page.rows, "next_cursor": next_cursor})


@bp.get("/api/v1/assets/<path:asset_id>")
@require_scope("read")
def asset(asset_id: str) -> Response:
    """One asset, or 404."""
    try:
        found = _catalog().get(asset_id)
    except AssetCatalogError as exc:
        raise _assets_unavailable(exc) from None
    if found is None:
        raise ApiError(404, "not_found", "unknown asset", {"asset_id": asset_id[:256]})
    return jsonify(found)
