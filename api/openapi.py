"""OpenAPI 3.1 description of every endpoint, and Swagger UI to read and try it.

``GET /api/v1/openapi.json`` is the document; ``GET /api/v1/docs/`` renders it
with Swagger UI, whose files come from the pinned ``flask-swagger-ui`` package
(Swagger UI's own dist files, served from this process: no CDN, works offline).
Swagger UI's online validator is switched off for the same reason. Its
"Authorize" button takes an API key for "Try it out"; the key stays in the page.

Both carry no data, so they are public by default (a browser cannot send a
bearer key to read the docs); set ``[api] public_docs = false`` to require the
read scope for them (and for the ``/api/v1`` index) too.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, Response, current_app, jsonify
from flask_swagger_ui import get_swaggerui_blueprint

from api.auth import authenticate
from api.errors import ApiError
from api.params import (
    AGGREGATES,
    ALARM_SEVERITIES,
    ALARM_STATES,
    ASSET_DEFAULT_LIMIT,
    ASSET_MAX_LIMIT,
    DEFAULT_LIMIT,
    FILLS,
    FORMATS,
    INTERVALS,
    MAX_BUCKETS,
    MAX_LIMIT,
    ORDERS,
    QUERYABLE_SENSOR_TYPES,
    SOURCES,
)

__all__ = ["DOCS_PATH", "OPENAPI_PATH", "PUBLIC_DOCS_CONFIG", "bp", "build_openapi",
           "guard_docs"]

_LOGGER = logging.getLogger(__name__)

PUBLIC_DOCS_CONFIG = "DCMMS_PUBLIC_DOCS"
OPENAPI_PATH = "/api/v1/openapi.json"
# Swagger UI's page is DOCS_PATH + "/" (Flask redirects DOCS_PATH there); its
# files are below it, so the page refers to them with local paths only.
DOCS_PATH = "/api/v1/docs"

bp = Blueprint("openapi", __name__)


def _param(name: str, description: str, schema: dict[str, Any], where: str = "query",
           required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": where, "required": required, "description": description,
            "schema": schema}


_STR = {"type": "string", "maxLength": 256}


def _enum(values: tuple[str, ...] | list[str], default: str | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string", "enum": list(values)}
    return schema if default is None else {**schema, "default": default}


_SENSOR_TYPE = _enum(QUERYABLE_SENSOR_TYPES)
_TIME = {"type": "string", "examples": ["2026-01-02T03:04:05Z", "1767323045000"]}


def _error(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _page(item_ref: str) -> dict[str, Any]:
    return {"type": "object", "required": ["data", "next_cursor"], "properties": {
        "data": {"type": "array", "items": {"$ref": item_ref}},
        "next_cursor": {"type": ["string", "null"],
                        "description": "Pass as cursor for the next page; null on the last."}}}


# A rollup read with its raw tail names its parts, coarsest first (api.questdb.bucket_parts).
_SOURCE_NAMES = ["raw", "rollup_1m", "rollup_1h", "rollup_1m+raw", "rollup_1h+rollup_1m",
                 "rollup_1h+raw", "rollup_1h+rollup_1m+raw"]


def _telemetry_page(item_ref: str) -> dict[str, Any]:
    page = _page(item_ref)
    page["properties"]["source"] = {**_enum(_SOURCE_NAMES),
                                    "description": "What the rows were read from."}
    return page


_READ_ERRORS = {
    "400": _error("A parameter is invalid; details.parameter names it, details.allowed lists "
                  "the values of an enum parameter, details.minimum/maximum bound limit."),
    "401": _error("Missing or invalid API key."),
    "403": _error("The key lacks the read scope."),
    "429": _error("Over the key's rate limit; see Retry-After."),
    "503": _error("QuestDB unreachable; see Retry-After."),
}

_TIME_PARAMS = [
    _param("start_time", "Inclusive start, ISO 8601 (no offset = UTC) or epoch ms. "
           "Default: end_time - 24 h.", _TIME),
    _param("end_time", "Exclusive end, ISO 8601 or epoch ms. Default: now.", _TIME),
]


def _limit_param(default: int, maximum: int, unit: str = "Rows") -> dict[str, Any]:
    return _param("limit", f"{unit} per page, 1..{maximum} (400 outside).",
                  {"type": "integer", "minimum": 1, "maximum": maximum, "default": default})


_CURSOR_PARAM = _param("cursor", "Opaque next_cursor of the previous page (same other "
                       "parameters; limit may change).", {"type": "string"})
_PAGE_PARAMS = [
    _limit_param(DEFAULT_LIMIT, MAX_LIMIT),
    _CURSOR_PARAM,
    _param("order", "Time order.", _enum(ORDERS, "asc")),
]

_ENUM_RULE = (
    "Enum parameters (order, format, interval, agg, fill, source, sensor_type, severity, state) "
    "take exactly one of the listed values, case-sensitive as they appear in rows (CRITICAL, "
    "not critical); any other value is a 400 whose details.allowed lists the values, never an "
    "empty result."
)

_TELEMETRY_GET_DESCRIPTION = (
    "Readings of the half-open range [start_time, end_time), keyset-paginated on "
    "(timestamp, event_id). Raw ranges are limited to 31 days. With `interval` the answer is "
    "one row per calendar-aligned bucket and (asset_id, sensor_id), ordered by "
    f"(timestamp, asset_id, sensor_id), at most {MAX_BUCKETS} buckets per series; "
    "`fill` fills empty buckets between the first and last bucket that has data. "
    "`format=csv` streams every row of the range (at most `limit` rows if given) "
    "instead of one page, the columns and values of the JSON rows in the same order, as "
    "RFC 4180 CSV in QuestDB's dialect: the header and every string quoted (quotes "
    "doubled), CRLF line ends, numbers in Java's text (`1.0E-5`), an empty field for null; "
    "a CSV parser reads it to the JSON values. A failure after the first byte ends the "
    "transfer without its final chunk (a broken response, never a clean truncated one). "
    "Unknown or repeated parameters are refused (400). "
    "Buckets of whole minutes over a range on whole minutes (UTC) with agg avg, min, max or "
    "count (not avg with fill=linear) are read from a rollup (QuestDB materialized views of "
    "1-minute and 1-hour sum/count/min/max per sensor, the 1-minute one refreshed once a "
    "minute): the same values as the raw rows give, from ~60x (1 minute) or ~3,600x (1 hour, "
    "at 1 Hz) fewer rows. The buckets of rows newer than the last refresh (less a 2-minute "
    "margin) are computed from the raw rows in the same query, so a reading is counted as "
    "soon as it is stored; only a reading stored more than 2 minutes after its own timestamp "
    "(a backlog) reaches the rollup's answer after the next refresh, up to a minute later "
    "(`source=raw` always has it). `source` in the body and the X-Data-Source header say what "
    "was read (raw, rollup_1m, rollup_1h, or the parts of a read with its raw tail, coarsest "
    "first, such as rollup_1m+raw); the 1-minute rollup keeps 90 days like the raw rows, "
    "the 1-hour rollup 2 years, so older buckets exist only there."
)

_ASSET_LIST_DESCRIPTION = (
    "Assets in asset_id order, keyset-paginated like the other lists: at most `limit` per page "
    f"(default {ASSET_DEFAULT_LIMIT}), and `next_cursor` is passed as `cursor` for the next "
    "page until it is null. An asset added or removed while pages are walked does not shift "
    "the others. Before it was paginated this endpoint returned every asset in one response; "
    "the {data, next_cursor} envelope is unchanged, so a client that follows next_cursor still "
    f"gets every asset (limit={ASSET_MAX_LIMIT} fetches up to {ASSET_MAX_LIMIT} in one page)."
)

_INGEST_DESCRIPTION = (
    "A JSON array of telemetry events (a single object is also accepted), each validated on "
    "its own. `event_id` is optional: when missing it is derived deterministically from "
    "(site_id, asset_id, sensor_id, timestamp) so retries create no duplicates. The 202 is sent "
    "only after Kafka acknowledged every accepted event. Needs the write scope."
)


def build_openapi() -> dict[str, Any]:
    """The OpenAPI 3.1 document (a fresh dict every call)."""
    ids = [*[_param(n, f"Only rows with this {n}.", _STR)
             for n in ("asset_id", "site_id", "sensor_id")],
           _param("sensor_type", "Only rows of this sensor type.", _SENSOR_TYPE)]
    telemetry_get = {
        "summary": "Query readings: raw, time buckets or CSV",
        "description": _TELEMETRY_GET_DESCRIPTION,
        "operationId": "queryTelemetry",
        "parameters": [
            *ids, *_TIME_PARAMS, *_PAGE_PARAMS,
            _param("interval", "Bucket length (m is minute; there is no month).",
                   _enum(list(INTERVALS))),
            _param("agg", "Aggregate per bucket (needs interval).", _enum(AGGREGATES, "avg")),
            _param("fill", "Gap filling of empty buckets (needs interval).",
                   _enum(FILLS, "none")),
            _param("format", "Response format.", _enum(FORMATS, "json")),
            _param("source", "Where buckets come from: auto (a rollup when it gives the same "
                   "values, else the raw rows), raw (always the raw rows), rollup (a rollup, "
                   "or 400 naming why it cannot answer, also when the deployment has the rollups "
                   "off ([questdb] rollups = false); 503 if QuestDB reports it invalid).",
                   _enum(SOURCES, "auto")),
        ],
        "responses": {
            "200": {"description": "One page (JSON) or the whole range (CSV).",
                    "headers": {"X-Data-Source": {
                        "description": "raw, rollup_1m, rollup_1h or the parts of a rollup "
                                       "read with its raw tail, e.g. rollup_1m+raw (also "
                                       "the body's source).",
                        "schema": _enum(_SOURCE_NAMES)}},
                    "content": {
                        "application/json": {"schema": {"oneOf": [
                            _telemetry_page("#/components/schemas/Reading"),
                            _telemetry_page("#/components/schemas/Bucket")]}},
                        "text/csv": {"schema": {"type": "string"}}}},
            **_READ_ERRORS},
    }
    telemetry_post = {
        "summary": "Ingest readings",
        "description": _INGEST_DESCRIPTION,
        "operationId": "ingestTelemetry",
        "requestBody": {"required": True, "content": {"application/json": {"schema": {
            "oneOf": [{"$ref": "#/components/schemas/TelemetryEvent"},
                      {"type": "array", "items": {"$ref": "#/components/schemas/TelemetryEvent"}}]
        }}}},
        "responses": {
            "202": {"description": "At least one event accepted (and acknowledged by Kafka).",
                    "content": {"application/json": {"schema": {
                        "$ref": "#/components/schemas/IngestResult"}}}},
            "400": {"description": "No event accepted (same body as 202), or unparseable JSON.",
                    "content": {"application/json": {"schema": {
                        "$ref": "#/components/schemas/IngestResult"}}}},
            "401": _error("Missing or invalid API key."),
            "403": _error("The key lacks the write scope."),
            "413": _error("Body or event count over the documented limits."),
            "415": _error("Content-Type is not application/json."),
            "429": _error("Over the key's rate limit; see Retry-After."),
            "503": _error("Kafka unavailable: nothing was accepted; retry after Retry-After."),
        },
    }
    latest = {
        "summary": "Latest reading of every sensor of an asset or a site",
        "operationId": "latestTelemetry",
        "parameters": [_param("asset_id", "Asset (this or site_id is required).", _STR),
                       _param("site_id", "Site (this or asset_id is required).", _STR),
                       _param("sensor_type", "Only sensors of this type.", _SENSOR_TYPE),
                       _param("max_age", "Look back this far for each sensor's latest reading "
                              "(<n>m, <n>h or <n>d, at most 90d); sensors silent for longer are "
                              "not listed.", {"type": "string", "default": "24h",
                                              "pattern": "^[1-9][0-9]{0,4}[mhd]$"})],
        "responses": {"200": {"description": "One row per (asset_id, sensor_id).", "content": {
            "application/json": {"schema": _page("#/components/schemas/Reading")}}},
            **_READ_ERRORS},
    }
    alarms = {
        "summary": "Alarm transitions, or the currently active alarms",
        "description": "Transitions in [start_time, end_time), keyset-paginated on "
                       "(timestamp, alarm_id, state). With active=true: alarms whose latest "
                       "transition is RAISED, newest first, no range and no cursor (so "
                       "state=CLEARED with it is a 400); an acknowledged one has state "
                       "ACKNOWLEDGED (POST /api/v1/alarms/{alarm_id}/acknowledge).",
        "operationId": "listAlarms",
        "parameters": [
            *[_param(n, f"Only alarms with this {n}.", _STR)
              for n in ("site_id", "asset_id", "sensor_id")],
            _param("severity", "Only transitions of this severity.", _enum(ALARM_SEVERITIES)),
            _param("state", "Only transitions to this state (there is no ACTIVE state: use "
                   "active=true).", _enum(ALARM_STATES)),
            _param("active", "Only currently active alarms (true/false or 1/0).",
                   {"type": "boolean", "default": False}),
            *_TIME_PARAMS, *_PAGE_PARAMS],
        "responses": {"200": {"description": "A page of alarm rows.", "content": {
            "application/json": {"schema": _page("#/components/schemas/Alarm")}}},
            **_READ_ERRORS},
    }
    asset_list = {
        "summary": "Assets with metadata and thresholds, a page at a time",
        "description": _ASSET_LIST_DESCRIPTION, "operationId": "listAssets",
        "parameters": [_limit_param(ASSET_DEFAULT_LIMIT, ASSET_MAX_LIMIT, "Assets"),
                       _CURSOR_PARAM],
        "responses": {"200": {"description": "A page of assets.", "content": {
            "application/json": {"schema": _page("#/components/schemas/Asset")}}},
            **_READ_ERRORS}}
    asset_one = {
        "summary": "One asset with metadata and thresholds", "operationId": "getAsset",
        "parameters": [_param("asset_id", "Asset id.", _STR, "path", True)],
        "responses": {"200": {"description": "The asset.", "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/Asset"}}}},
            "404": _error("Unknown asset."), **_READ_ERRORS}}
    plain = {"security": []}
    return {
        "openapi": "3.1.0",
        "info": {"title": "dCMMS telemetry API", "version": "1.0.0",
                 "description": "Ingest and query telemetry of renewable-energy assets. Every "
                                "/api route needs `Authorization: Bearer <api key>`; errors are "
                                "JSON {code, message, details}; timestamps are ISO 8601 UTC. "
                                "Lists are pages {data, next_cursor}. " + _ENUM_RULE},
        # Relative: the server that serves this document (any port, any profile), so
        # Swagger UI's "Try it out" calls the same origin instead of a fixed address.
        "servers": [{"url": "/", "description": "this server"}],
        "security": [{"bearer": []}],
        "paths": {
            "/api/v1/telemetry": {"get": telemetry_get, "post": telemetry_post},
            "/api/v1/telemetry/latest": {"get": latest},
            "/api/v1/telemetry/stream": {"get": _stream_operation()},
            "/api/v1/alarms": {"get": alarms},
            "/api/v1/assets": {"get": asset_list},
            "/api/v1/assets/{asset_id}": {"get": asset_one},
            **_operations_paths(),
            OPENAPI_PATH: {"get": {"summary": "This document", **plain,
                                   "responses": {"200": {"description": "OpenAPI"}}}},
            f"{DOCS_PATH}/": {"get": {
                "summary": "This document in Swagger UI (HTML; its files are below this path)",
                **plain, "responses": {"200": {"description": "HTML"}}}},
            "/": {"get": {"summary": "Landing page: links to the docs, health and metrics",
                          **plain, "responses": {"200": {"description": "HTML"}}}},
            "/api": {"get": {"summary": "Redirects to /api/v1", **plain,
                             "responses": {"308": {"description": "to /api/v1"}}}},
            "/api/v1": {"get": {"summary": "Index of the API's links (JSON)", **plain,
                                "responses": {"200": {"description": "links"}}}},
            "/healthz": {"get": {"summary": "Process is up", **plain,
                                 "responses": {"200": {"description": "ok"}}}},
            "/readyz": {"get": {"summary": "QuestDB and Kafka reachable", **plain,
                                "responses": {"200": {"description": "ready"},
                                              "503": {"description": "a dependency failed"}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", **plain,
                                 "responses": {"200": {"description": "text exposition"}}}},
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "API key; scopes read / write"}},
            "schemas": _SCHEMAS,
        },
    }


def _stream_operation() -> dict[str, Any]:
    """GET /api/v1/telemetry/stream (api.stream)."""
    return {
        "summary": "Live stream of an asset's validated readings and alarm transitions "
                   "(Server-Sent Events)",
        "operationId": "streamTelemetry",
        "description": "Readings of validated_telemetry (event: reading, data: a Reading "
                       "as JSON) and alarm transitions of the alarms topic (event: alarm, "
                       "data: an Alarm as JSON, the fields of schemas/alarm.avsc) of "
                       "asset_id as they arrive. Each event's id is the stream position in "
                       "both topics: 'r<partition>:<next offset>' for every partition of "
                       "the readings topic, then 'a<partition>:<next offset>' for every "
                       "partition of the alarms topic, comma separated; reconnect with it "
                       "in Last-Event-ID to resume right after it in both. An id of bare "
                       "'<partition>:<offset>' pairs (the reading-only stream's) resumes "
                       "the readings; alarms then start at the end. Without Last-Event-ID "
                       "the stream starts with new events. A ': heartbeat' comment "
                       "every [api] stream_heartbeat_s (15 s) of silence. A slow client "
                       "gets 'event: dropped' (data {\"dropped\": n}) instead of the "
                       "events that did not fit its queue ([api] stream_queue_size). At "
                       "most [api] stream_max_per_key open streams per key and API worker "
                       "process (429 too_many_streams beyond); each holds one server "
                       "thread, so this stays below [api] threads.",
        "parameters": [
            _param("asset_id", "Asset (required; must be in the asset catalog).", _STR,
                   required=True),
            _param("Last-Event-ID", "Resume after this event id (as sent by the stream).",
                   {"type": "string", "maxLength": 4096,
                    "pattern": "^[ra]?[0-9]+:[0-9]+(,[ra]?[0-9]+:[0-9]+)*$"}, where="header"),
        ],
        "responses": {
            "200": {"description": "An endless text/event-stream.",
                    "content": {"text/event-stream": {"schema": {"type": "string"}}}},
            "400": _error("asset_id missing, an unknown parameter, or a malformed "
                          "Last-Event-ID (details.parameter names it)."),
            "401": _error("Missing or invalid API key."),
            "403": _error("The key lacks the read scope."),
            "404": _error("asset_id is not in the asset catalog."),
            "429": _error("Over the key's rate limit, or too_many_streams: the key already "
                          "has [api] stream_max_per_key open streams; see Retry-After."),
            "503": _error("Kafka or the asset catalog unreachable; see Retry-After."),
        },
    }


def _operations_paths() -> dict[str, Any]:
    """Dead letters and replay (api.dead_letters), alarm acknowledgement (api.alarm_acks)."""
    from api.dead_letters import (
        DEFAULT_LIST_LIMIT,
        DEFAULT_SCAN,
        MAX_LIST_LIMIT,
        MAX_REPLAY_IDS,
        MAX_SCAN,
    )
    from schemas.dead_letter import SOURCES, STAGES

    filters = [
        _param("stage", "Only dead letters of this stage.", _enum(STAGES)),
        _param("source", "Only dead letters from this source.", _enum(SOURCES)),
        _param("reason", "A reason class as listed in summary.by_reason (exact), or text "
               "contained in a reason.", _STR),
        _param("event_id", "Only dead letters of this event id.", _STR),
        _param("since", "failed_at at or after (ISO 8601 or epoch ms).", _TIME),
        _param("until", "failed_at before (ISO 8601 or epoch ms).", _TIME),
    ]
    write_errors = {
        "400": _error("A field is invalid; details.parameter names it."),
        "401": _error("Missing or invalid API key."),
        "403": _error("The key lacks the write scope."),
        "413": _error("Body too large."),
        "415": _error("Content-Type is not application/json."),
        "429": _error("Over the key's rate limit; see Retry-After."),
        "503": _error("Kafka, the schema registry or QuestDB unreachable; see Retry-After."),
    }
    return {
        "/api/v1/dead-letters": {"get": {
            "summary": "Newest dead letters with their payload and reasons, filtered",
            "description": "Reads the newest `scan` records of each partition of the dead-letter "
                           "topic (telemetry_dlq), newest first; `summary` counts the matching "
                           "ones by stage, by reason class and per minute. Each item's `id` "
                           "(`<partition>:<offset>`) names it for replay.",
            "operationId": "listDeadLetters",
            "parameters": [*filters,
                           _limit_param(DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT, "Dead letters"),
                           _param("scan", f"Records read per partition, 1..{MAX_SCAN}.",
                                  {"type": "integer", "minimum": 1, "maximum": MAX_SCAN,
                                   "default": DEFAULT_SCAN})],
            "responses": {"200": {"description": "Matching dead letters and their summary.",
                                  "content": {"application/json": {"schema": {
                                      "$ref": "#/components/schemas/DeadLetterList"}}}},
                          **_READ_ERRORS}}},
        "/api/v1/dead-letters/replay": {"post": {
            "summary": "Replay dead letters to raw_telemetry (idempotent)",
            "description": "Re-publishes the readings held by the dead letters named in `ids`, "
                           "or by every dead letter matching the filters with `all: true`, "
                           "after they pass the edge's validation again (only valid Avro is "
                           "written). Each event keeps its event_id, and the pipeline stores "
                           "an event id once, so replaying twice stores each event once. "
                           "Undecodable originals (stage decode) and still-invalid readings are "
                           "listed under `skipped` with the reason. Needs the write scope.",
            "operationId": "replayDeadLetters",
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "oneOf": [
                    {"type": "object", "required": ["ids"], "additionalProperties": False,
                     "properties": {"ids": {"type": "array", "minItems": 1,
                                            "maxItems": MAX_REPLAY_IDS,
                                            "items": {"type": "string",
                                                      "pattern": "^[0-9]+:[0-9]+$"}}}},
                    {"type": "object", "required": ["all"], "additionalProperties": False,
                     "properties": {"all": {"const": True}, "stage": _enum(STAGES),
                                    "source": _enum(SOURCES), "reason": _STR,
                                    "event_id": _STR, "since": _TIME, "until": _TIME,
                                    "scan": {"type": "integer", "minimum": 1,
                                             "maximum": MAX_SCAN}}}]}}}},
            "responses": {"200": {"description": "What was replayed, skipped and why.",
                                  "content": {"application/json": {"schema": {
                                      "$ref": "#/components/schemas/ReplayResult"}}}},
                          **write_errors}}},
        "/api/v1/alarms/{alarm_id}/acknowledge": {"post": {
            "summary": "Acknowledge an alarm (who and when)",
            "description": "Stores an acknowledgement of the alarm episode `alarm_id`; "
                           "GET /api/v1/alarms then shows acknowledged_by / acknowledged_at "
                           "and, with active=true, state ACKNOWLEDGED. Without `by` the "
                           "acknowledgement is recorded as the API key's id. Acknowledging "
                           "again answers 200 with the first acknowledgement.",
            "operationId": "acknowledgeAlarm",
            "parameters": [_param("alarm_id", "Alarm id (asset:sensor:start ms).", _STR,
                                  "path", True)],
            "requestBody": {"required": False, "content": {"application/json": {"schema": {
                "type": "object", "additionalProperties": False, "properties": {
                    "by": {**_STR, "description": "Who acknowledges"},
                    "note": {"type": "string", "maxLength": 1000}}}}}},
            "responses": {
                "201": {"description": "Acknowledged now.", "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/Acknowledgement"}}}},
                "200": {"description": "Already acknowledged: the first acknowledgement.",
                        "content": {"application/json": {"schema": {
                            "$ref": "#/components/schemas/Acknowledgement"}}}},
                "404": _error("No alarm with this id."), **write_errors}}},
    }


_TS = {"type": "string", "format": "date-time", "description": "ISO 8601 UTC (Z)"}
_NSTR = {"type": ["string", "null"]}
_NNUM = {"type": ["number", "null"]}
_SCHEMAS: dict[str, Any] = {
    "Error": {"type": "object", "required": ["code", "message", "details"], "properties": {
        "code": {"type": "string"}, "message": {"type": "string"},
        "details": {"type": "object"}}},
    "Reading": {"type": "object", "properties": {
        "timestamp": _TS, "event_id": {"type": "string"}, "site_id": _NSTR, "asset_id": _NSTR,
        "sensor_id": _NSTR, "sensor_type": _NSTR, "value": _NNUM, "unit": _NSTR,
        "quality_flag": _NSTR, "site_name": _NSTR, "asset_type": _NSTR, "location": _NSTR,
        "ingested_at": {"type": ["string", "null"], "format": "date-time"}}},
    "Bucket": {"type": "object", "properties": {
        "timestamp": {**_TS, "description": "bucket start"}, "asset_id": _NSTR,
        "sensor_id": _NSTR, "sensor_type": _NSTR, "value": _NNUM}},
    "Alarm": {"type": "object", "properties": {
        "timestamp": _TS, "alarm_id": {"type": "string"}, "site_id": _NSTR, "asset_id": _NSTR,
        "sensor_id": _NSTR, "sensor_type": _NSTR,
        "severity": {**_NSTR, "description": "WARNING, CRITICAL, or NO_DATA: the sensor was "
                     "silent longer than its max_silence_s (value = seconds of silence, "
                     "threshold = max_silence_s, event_id empty on the raise)"},
        "state": _NSTR,
        "value": _NNUM, "threshold": _NNUM, "reason": _NSTR, "event_id": _NSTR,
        "ingested_at": {"type": ["string", "null"], "format": "date-time"},
        "acknowledged_by": _NSTR,
        "acknowledged_at": {"type": ["string", "null"], "format": "date-time"}}},
    "Asset": {"type": "object", "required": ["asset_id"], "additionalProperties": True,
              "properties": {"asset_id": {"type": "string"}, "site_id": {"type": "string"},
                             "thresholds": {"type": "object", "description": (
                                 "Per sensor type: warning_low/high, critical_low/high, "
                                 "hysteresis, and max_silence_s (seconds without a reading "
                                 "before a NO_DATA alarm; null: none)")}}},
    "TelemetryEvent": {"type": "object",
                       "required": ["timestamp", "site_id", "asset_id", "sensor_id",
                                    "sensor_type", "value", "unit"],
                       "properties": {
                           "event_id": {"type": "string"},
                           "timestamp": {"type": "integer", "description": "epoch ms"},
                           "site_id": {"type": "string"}, "asset_id": {"type": "string"},
                           "sensor_id": {"type": "string"},
                           "sensor_type": {"type": "string",
                                           "examples": ["TEMPERATURE", "VOLTAGE", "POWER"]},
                           "value": {"type": "number"}, "unit": {"type": "string"},
                           "quality_flag": {"type": "string",
                                            "examples": ["GOOD", "BAD", "UNCERTAIN"]}}},
    "DeadLetter": {"type": "object", "additionalProperties": True, "properties": {
        "id": {"type": "string", "description": "<partition>:<offset> in telemetry_dlq"},
        "stage": {"type": "string"}, "reasons": {"type": "array", "items": {"type": "string"}},
        "reason": {"type": "string", "description": "reason class of the first reason"},
        "source": _NSTR, "original_format": _NSTR, "topic": _NSTR, "event_id": _NSTR,
        "failed_at": {"type": ["integer", "null"], "description": "epoch ms"},
        "payload": {"type": ["object", "null"],
                    "description": "original bytes: {text} or {base64}, bytes, truncated"}}},
    "DeadLetterList": {"type": "object", "properties": {
        "data": {"type": "array", "items": {"$ref": "#/components/schemas/DeadLetter"}},
        "matched": {"type": "integer"}, "scanned": {"type": "integer"},
        "summary": {"type": "object"}, "next_cursor": {"type": "null"}}},
    "ReplayResult": {"type": "object", "properties": {
        "requested": {"type": "integer"},
        "replayed": {"type": "array", "items": {"type": "string"}},
        "events_published": {"type": "integer"},
        "event_ids": {"type": "array", "items": {"type": "string"}},
        "skipped": {"type": "array", "items": {"type": "object"}},
        "failed": {"type": "array", "items": {"type": "object"}},
        "not_found": {"type": "array", "items": {"type": "string"}}}},
    "Acknowledgement": {"type": "object", "properties": {
        "alarm_id": {"type": "string"}, "acknowledged_by": {"type": "string"},
        "acknowledged_at": _TS, "note": _NSTR, "already_acknowledged": {"type": "boolean"}}},
    "IngestResult": {"type": "object", "required": ["accepted", "rejected"], "properties": {
        "accepted": {"type": "integer"},
        "rejected": {"type": "array", "items": {"type": "object", "properties": {
            "index": {"type": "integer"},
            "errors": {"type": "array", "items": {"type": "string"}}}}}}},
}


def guard_docs() -> None:
    """Nothing when the docs are public (``[api] public_docs``), else the read scope."""
    if not current_app.config.get(PUBLIC_DOCS_CONFIG, True):
        key = authenticate()
        if "read" not in key.scopes:
            raise ApiError(403, "forbidden", "API key lacks the 'read' scope",
                           {"required_scope": "read"})


@bp.get(OPENAPI_PATH)
def openapi_json() -> Response:
    guard_docs()
    return jsonify(build_openapi())


def _swagger_ui() -> Blueprint:
    ui = get_swaggerui_blueprint(DOCS_PATH, OPENAPI_PATH, config={
        "app_name": "dCMMS telemetry API",
        # The default fetches a badge from validator.swagger.io: nothing may leave the machine.
        "validatorUrl": None,
        "displayRequestDuration": True,
        # Without the standalone top bar (a field to load other documents, a link out).
        "layout": "BaseLayout",
        # No OAuth here; a fixed local path instead of one built from the Host header.
        "oauth2RedirectUrl": f"{DOCS_PATH}/oauth2-redirect.html",
    })
    ui.before_request(guard_docs)
    return ui


bp.register_blueprint(_swagger_ui())
