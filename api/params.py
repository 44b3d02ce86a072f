"""Parsing and whitelisting of query parameters: every request value is checked here.

Each parse function takes the request's query arguments (a multi-dict) and
returns a frozen dataclass, or raises :class:`api.errors.BadParameter` naming
the parameter. What comes out is safe to hand to :mod:`api.questdb`: filter
values (ids, and the whitelisted sensor type, severity and state) only ever
become bind parameters there, and every value that shapes the SQL text
(interval, aggregate, fill mode, order) is an entry of a fixed whitelist here.

Enum parameters (``order``, ``format``, ``interval``, ``agg``, ``fill``,
``sensor_type``, alarm ``severity`` and ``state``) follow one rule: the value
must be one of the canonical values exactly (case-sensitive, as stored and as
returned in rows); anything else is a 400 whose ``details.allowed`` lists the
values. Case is not folded because it changes meaning in places (QuestDB reads
``1M`` as a month, ``1m`` as a minute), and a filter that cannot match is
refused rather than answered with an empty list.

Time parameters accept ISO 8601 (``2026-01-02T03:04:05Z``, an offset, or no
offset meaning UTC) or integer epoch milliseconds. Ranges are half-open:
``start_time <= timestamp < end_time``. Defaults: ``end_time`` = now,
``start_time`` = ``end_time`` - 24 h.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from api.errors import BadParameter
from io_connectors.questdb_schema import ROLLUPS
from schemas.events import SENSOR_TYPES

__all__ = [
    "AGGREGATES",
    "ALARM_SEVERITIES",
    "ALARM_STATES",
    "ASSET_DEFAULT_LIMIT",
    "ASSET_MAX_LIMIT",
    "DEFAULT_LIMIT",
    "DEFAULT_RANGE_US",
    "FILLS",
    "FORMATS",
    "INTERVALS",
    "MAX_BUCKETS",
    "MAX_LIMIT",
    "MAX_RAW_RANGE_US",
    "ORDERS",
    "QUERYABLE_SENSOR_TYPES",
    "ROLLUP_AGGREGATES",
    "SOURCES",
    "AlarmQuery",
    "AssetListQuery",
    "Cursor",
    "LatestQuery",
    "TelemetryQuery",
    "decode_cursor",
    "decode_key_cursor",
    "encode_cursor",
    "encode_key_cursor",
    "format_timestamp",
    "parse_alarm_query",
    "parse_asset_list_query",
    "parse_latest_query",
    "parse_telemetry_query",
    "parse_time",
    "rollup_for",
    "to_micros",
]

US_PER_MS = 1_000
US_PER_S = 1_000_000
DEFAULT_LIMIT = 1000
MAX_LIMIT = 10_000
# An asset row (metadata and thresholds) is ~380 bytes: 100 per page is ~40 KB, and the
# cap keeps a page near the size of a default telemetry page.
ASSET_DEFAULT_LIMIT = 100
ASSET_MAX_LIMIT = 1000
DEFAULT_RANGE_US = 24 * 3600 * US_PER_S
# Raw reads are capped at 31 days per request (pages walk through it with the cursor).
MAX_RAW_RANGE_US = 31 * 24 * 3600 * US_PER_S
# Bucketed reads may span more time but at most this many buckets per series.
MAX_BUCKETS = 100_000
# Time values outside this window are certainly typos (and would overflow QuestDB's types).
_MIN_TIME_US = 0
_MAX_TIME_US = 4_102_444_800 * US_PER_S  # 2100-01-01
MAX_TEXT_LENGTH = 256

# interval name -> (SAMPLE BY unit text, length in microseconds). The text goes into SQL:
# it is taken from this table, never from the request.
INTERVALS: dict[str, tuple[str, int]] = {
    "1s": ("1s", US_PER_S),
    "10s": ("10s", 10 * US_PER_S),
    "1m": ("1m", 60 * US_PER_S),
    "5m": ("5m", 300 * US_PER_S),
    "15m": ("15m", 900 * US_PER_S),
    "1h": ("1h", 3600 * US_PER_S),
    "6h": ("6h", 6 * 3600 * US_PER_S),
    "1d": ("1d", 24 * 3600 * US_PER_S),
}
AGGREGATES = ("avg", "min", "max", "count", "first", "last")
FILLS = ("none", "null", "prev", "linear")
ORDERS = ("asc", "desc")
FORMATS = ("json", "csv")
# Where bucketed reads come from: ``auto`` (a rollup when one can answer exactly, else the
# raw rows), ``raw`` (always the raw rows), ``rollup`` (a rollup or a 400 saying why not).
SOURCES = ("auto", "raw", "rollup")
# Aggregates a rollup answers exactly (first/last need the raw rows' order).
ROLLUP_AGGREGATES = ("avg", "min", "max", "count")
# The symbols of schemas/alarm.avsc, as the alarm branch writes them.
ALARM_SEVERITIES = ("WARNING", "CRITICAL", "NO_DATA")
ALARM_STATES = ("RAISED", "CLEARED")
# Validation rejects UNKNOWN, so no stored reading has it: a filter on it could only be empty.
QUERYABLE_SENSOR_TYPES = tuple(t for t in SENSOR_TYPES if t != "UNKNOWN")

_EPOCH_MS = re.compile(r"^[0-9]{1,15}$")


class Args(Protocol):
    """The part of Werkzeug's MultiDict the parsers use."""

    def getlist(self, key: str) -> list[str]: ...

    def keys(self) -> Any: ...


@dataclass(frozen=True)
class Cursor:
    """Position after the last row of a page: its sort key, and the resolved time range."""

    key: tuple[Any, ...]
    start_us: int
    end_us: int


@dataclass(frozen=True)
class TelemetryQuery:
    asset_id: str | None
    site_id: str | None
    sensor_id: str | None
    sensor_type: str | None
    start_us: int
    end_us: int
    limit: int
    limit_given: bool
    order: str
    interval: str | None
    agg: str
    fill: str
    fmt: str
    cursor: Cursor | None
    fingerprint: str
    source: str = "auto"

    @property
    def bucketed(self) -> bool:
        return self.interval is not None

    @property
    def rollup(self) -> str | None:
        """The rollup that may answer this query (``source`` allowing), or None."""
        return None if self.source == "raw" else rollup_for(self)


@dataclass(frozen=True)
class LatestQuery:
    asset_id: str | None
    site_id: str | None
    sensor_type: str | None
    since_us: int = 0  # only readings at or after this time (now - max_age)


@dataclass(frozen=True)
class AlarmQuery:
    site_id: str | None
    asset_id: str | None
    sensor_id: str | None
    severity: str | None
    state: str | None
    active: bool
    start_us: int
    end_us: int
    limit: int
    order: str
    cursor: Cursor | None
    fingerprint: str


@dataclass(frozen=True)
class AssetListQuery:
    limit: int
    after: str | None  # the asset_id the page starts after (from the cursor)
    fingerprint: str


class _Reader:
    """Reads single-valued parameters and refuses unknown or repeated ones."""

    def __init__(self, args: Args, allowed: Sequence[str]) -> None:
        self._args = args
        unknown = sorted(set(args.keys()) - set(allowed))
        if unknown:
            raise BadParameter(unknown[0], "unknown parameter", allowed=sorted(allowed))

    def get(self, name: str) -> str | None:
        values = self._args.getlist(name)
        if not values:
            return None
        if len(values) > 1:
            raise BadParameter(name, "given more than once")
        return values[0]

    def text(self, name: str) -> str | None:
        value = self.get(name)
        if value is None:
            return None
        if not value.strip():
            raise BadParameter(name, "must not be empty")
        if len(value) > MAX_TEXT_LENGTH:
            raise BadParameter(name, f"longer than {MAX_TEXT_LENGTH} characters")
        # Control characters (NUL above all) are never part of an id and QuestDB
        # cannot store NUL in a string literal.
        if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
            raise BadParameter(name, "contains control characters")
        return value

    def choice(self, name: str, allowed: Sequence[str], default: str | None,
               hint: str = "") -> str | None:
        """An enum value: exactly one of ``allowed`` (the module docstring has the rule)."""
        value = self.get(name)
        if value is None:
            return default
        if value not in allowed:
            raise BadParameter(name, f"must be one of {', '.join(allowed)} (case-sensitive){hint}",
                               allowed=list(allowed))
        return value

    def limit(self, default: int = DEFAULT_LIMIT,
              maximum: int = MAX_LIMIT) -> tuple[int, bool]:
        """Page size and whether it was given; 400 naming the range when out of it."""
        value = self.get("limit")
        if value is None:
            return default, False
        # The length check keeps int() away from huge digit strings; isascii() because
        # isdigit() also accepts digits int() refuses ("¹", a ValueError, was a 500).
        if (not (value.isascii() and value.isdigit()) or len(value) > 6
                or not 1 <= int(value) <= maximum):
            raise BadParameter("limit", f"must be an integer from 1 to {maximum}",
                               minimum=1, maximum=maximum)
        return int(value), True

    def fingerprint(self, exclude: Sequence[str]) -> str:
        """A digest of the parameters that define the result set (a cursor is bound to it)."""
        items = sorted((k, self._args.getlist(k)) for k in self._args.keys() if k not in exclude)
        return hashlib.sha256(json.dumps(items).encode()).hexdigest()[:16]


def parse_time(value: str, name: str) -> int:
    """ISO 8601 or epoch milliseconds -> epoch microseconds (UTC)."""
    value = value.strip()
    if _EPOCH_MS.match(value):
        micros = int(value) * US_PER_MS
    else:
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise BadParameter(
                name, "must be ISO 8601 (e.g. 2026-01-02T03:04:05Z) or epoch milliseconds"
            ) from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        try:
            delta = parsed - datetime(1970, 1, 1, tzinfo=UTC)
        except OverflowError:
            raise BadParameter(name, "out of range") from None
        micros = (delta.days * 86_400 + delta.seconds) * US_PER_S + delta.microseconds
    if not _MIN_TIME_US <= micros < _MAX_TIME_US:
        raise BadParameter(name, "must be between 1970-01-01 and 2100-01-01")
    return micros


def _time_range(reader: _Reader, now_us: int | None) -> tuple[int, int]:
    now_us = int(time.time() * US_PER_S) if now_us is None else now_us
    start_text, end_text = reader.get("start_time"), reader.get("end_time")
    end_us = parse_time(end_text, "end_time") if end_text is not None else now_us
    start_us = (parse_time(start_text, "start_time") if start_text is not None
                else max(_MIN_TIME_US, end_us - DEFAULT_RANGE_US))
    if start_us >= end_us:
        raise BadParameter("start_time", "must be before end_time (the range is half-open)")
    return start_us, end_us


def _encode_body(body: dict[str, Any]) -> str:
    text = json.dumps({"v": 1, **body}, separators=(",", ":"))
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _decode_body(text: str, fingerprint: str) -> dict[str, Any]:
    """The JSON body of a cursor made for a query with this fingerprint."""
    if len(text) > 4096:
        raise BadParameter("cursor", "too long")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        body = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise BadParameter("cursor", "not a cursor returned by this API") from None
    if not isinstance(body, dict) or body.get("v") != 1:
        raise BadParameter("cursor", "not a cursor returned by this API")
    if body.get("q") != fingerprint:
        raise BadParameter("cursor", "belongs to a query with different parameters")
    return body


def _valid_key(key: Any, key_types: Sequence[type]) -> bool:
    return (isinstance(key, list) and len(key) == len(key_types)
            and all(type(v) is t for v, t in zip(key, key_types, strict=True))
            and all(len(v) <= 4 * MAX_TEXT_LENGTH and "\x00" not in v
                    for v in key if isinstance(v, str)))


def encode_cursor(key: Sequence[Any], start_us: int, end_us: int, fingerprint: str) -> str:
    """Opaque, URL-safe cursor text."""
    return _encode_body({"k": list(key), "s": start_us, "e": end_us, "q": fingerprint})


def decode_cursor(text: str, fingerprint: str, key_types: Sequence[type]) -> Cursor:
    """Check and decode a cursor made by :func:`encode_cursor` for the same query."""
    body = _decode_body(text, fingerprint)
    key, start_us, end_us = body.get("k"), body.get("s"), body.get("e")
    valid = (
        _valid_key(key, key_types)
        and all(type(v) is int for v in (start_us, end_us))
        and _MIN_TIME_US <= start_us < end_us <= _MAX_TIME_US
    )
    if not valid:
        raise BadParameter("cursor", "not a cursor returned by this API")
    return Cursor(tuple(key), start_us, end_us)


def encode_key_cursor(key: Sequence[Any], fingerprint: str) -> str:
    """Cursor text of a list without a time range (assets): the sort key only."""
    return _encode_body({"k": list(key), "q": fingerprint})


def decode_key_cursor(text: str, fingerprint: str, key_types: Sequence[type]) -> tuple[Any, ...]:
    """The sort key of a cursor made by :func:`encode_key_cursor` for the same query."""
    body = _decode_body(text, fingerprint)
    # A ranged cursor (it has "s") belongs to another endpoint.
    if "s" in body or not _valid_key(body.get("k"), key_types):
        raise BadParameter("cursor", "not a cursor returned by this API")
    return tuple(body["k"])


TELEMETRY_PARAMS = ("asset_id", "site_id", "sensor_id", "sensor_type", "start_time", "end_time",
                    "limit", "cursor", "order", "interval", "agg", "fill", "format", "source")
# Sort keys of a page: raw rows (timestamp, event_id); buckets (timestamp, asset_id, sensor_id).
RAW_KEY_TYPES = (int, str)
BUCKET_KEY_TYPES = (int, str, str)


def parse_telemetry_query(args: Args, now_us: int | None = None) -> TelemetryQuery:
    """Parameters of ``GET /api/v1/telemetry``."""
    r = _Reader(args, TELEMETRY_PARAMS)
    ids = {name: r.text(name) for name in ("asset_id", "site_id", "sensor_id")}
    ids["sensor_type"] = r.choice("sensor_type", QUERYABLE_SENSOR_TYPES, None)
    limit, limit_given = r.limit()
    order = r.choice("order", ORDERS, "asc")
    interval = r.choice("interval", tuple(INTERVALS), None)
    agg = r.choice("agg", AGGREGATES, None)
    fill = r.choice("fill", FILLS, None)
    fmt = r.choice("format", FORMATS, "json")
    source = r.choice("source", SOURCES, "auto") or "auto"
    if interval is None and agg is not None:
        raise BadParameter("agg", "needs an interval")
    if interval is None and fill is not None:
        raise BadParameter("fill", "needs an interval")
    fingerprint = r.fingerprint(exclude=("cursor", "limit", "format"))
    cursor_text = r.get("cursor")
    if cursor_text is not None:
        types = BUCKET_KEY_TYPES if interval else RAW_KEY_TYPES
        cursor = decode_cursor(cursor_text, fingerprint, types)
        # The cursor carries the range resolved on the first page, so a defaulted
        # end_time ("now") does not move while a client walks the pages.
        start_us, end_us = cursor.start_us, cursor.end_us
    else:
        cursor = None
        start_us, end_us = _time_range(r, now_us)
    span = end_us - start_us
    if interval is None and span > MAX_RAW_RANGE_US:
        raise BadParameter("start_time", "raw range longer than 31 days; narrow it or "
                           "use interval", max_days=31)
    if interval is not None and span // INTERVALS[interval][1] > MAX_BUCKETS:
        raise BadParameter("interval", f"more than {MAX_BUCKETS} buckets in the range; "
                           "use a longer interval or a shorter range", max_buckets=MAX_BUCKETS)
    q = TelemetryQuery(
        asset_id=ids["asset_id"], site_id=ids["site_id"], sensor_id=ids["sensor_id"],
        sensor_type=ids["sensor_type"], start_us=start_us, end_us=end_us, limit=limit,
        limit_given=limit_given, order=order or "asc", interval=interval,
        agg=agg or "avg", fill=fill or "none", fmt=fmt or "json", cursor=cursor,
        fingerprint=fingerprint, source=source,
    )
    if source == "rollup" and q.rollup is None:
        raise BadParameter("source", _no_rollup_reason(q), allowed=list(SOURCES))
    return q


def rollup_for(q: TelemetryQuery) -> str | None:
    """The coarsest rollup whose buckets tile this bucketed query exactly, or None.

    A rollup answers exactly when the aggregate can be combined from its columns
    (:data:`ROLLUP_AGGREGATES`; not avg with fill=linear), the interval is a whole
    number of its buckets, and both ends of the range lie on its bucket boundaries (a
    range starting mid-minute would count the whole minute). Later pages keep both
    properties: their ranges start (asc) or end (desc) on a bucket boundary of the
    interval.
    """
    if q.interval is None or q.agg not in ROLLUP_AGGREGATES:
        return None
    if q.fill == "linear" and q.agg == "avg":
        # QuestDB interpolates sum(value_sum) / sum(value_count) differently from
        # avg(value) (the rollup test saw other values in filled buckets).
        return None
    length_us = INTERVALS[q.interval][1]
    for view, seconds in sorted(ROLLUPS.items(), key=lambda item: -item[1]):
        unit = seconds * US_PER_S
        if length_us % unit == 0 and q.start_us % unit == 0 and q.end_us % unit == 0:
            return view
    return None


def _no_rollup_reason(q: TelemetryQuery) -> str:
    if q.interval is None:
        return "source=rollup needs an interval"
    if q.agg not in ROLLUP_AGGREGATES:
        return (f"source=rollup answers agg {', '.join(ROLLUP_AGGREGATES)} only; "
                f"{q.agg} needs source=raw or auto")
    if q.fill == "linear" and q.agg == "avg":
        return "source=rollup does not answer agg=avg with fill=linear; use source=auto or raw"
    return ("source=rollup needs an interval of whole minutes and start_time and end_time "
            "on whole minutes (UTC); use source=auto or raw")


_MAX_AGE = re.compile(r"^([1-9][0-9]{0,4})([mhd])$")
_AGE_UNIT_US = {"m": 60 * US_PER_S, "h": 3600 * US_PER_S, "d": 86_400 * US_PER_S}
DEFAULT_MAX_AGE = "24h"
MAX_MAX_AGE_US = 90 * 86_400 * US_PER_S  # the tables' TTL: nothing older exists


def parse_latest_query(args: Args, now_us: int | None = None) -> LatestQuery:
    """Parameters of ``GET /api/v1/telemetry/latest``: an asset or a site is required.

    ``max_age`` (``<n>m``, ``<n>h`` or ``<n>d``, default 24h, at most 90d) bounds how far
    back a sensor's latest reading is looked for: QuestDB then reads only that
    time range instead of all 90 days, and sensors silent for longer are left out.
    """
    r = _Reader(args, ("asset_id", "site_id", "sensor_type", "max_age"))
    asset_id, site_id = r.text("asset_id"), r.text("site_id")
    sensor_type = r.choice("sensor_type", QUERYABLE_SENSOR_TYPES, None)
    if asset_id is None and site_id is None:
        raise BadParameter("asset_id", "asset_id or site_id is required")
    max_age = r.get("max_age") or DEFAULT_MAX_AGE
    match = _MAX_AGE.match(max_age)
    if not match:
        raise BadParameter("max_age", "must look like 30m, 24h or 7d")
    age_us = int(match.group(1)) * _AGE_UNIT_US[match.group(2)]
    if age_us > MAX_MAX_AGE_US:
        raise BadParameter("max_age", "at most 90d (the retention)")
    now_us = int(time.time() * US_PER_S) if now_us is None else now_us
    return LatestQuery(asset_id, site_id, sensor_type, max(0, now_us - age_us))


ALARM_PARAMS = ("site_id", "asset_id", "sensor_id", "severity", "state", "active",
                "start_time", "end_time", "limit", "cursor", "order")
ALARM_KEY_TYPES = (int, str, str)


def _bool(reader: _Reader, name: str) -> bool:
    value = reader.get(name)
    if value is None:
        return False
    lowered = value.lower()
    if lowered in ("true", "1"):
        return True
    if lowered in ("false", "0"):
        return False
    raise BadParameter(name, "must be true or false")


def parse_alarm_query(args: Args, now_us: int | None = None) -> AlarmQuery:
    """Parameters of ``GET /api/v1/alarms``.

    With ``active=true`` the answer is the alarms whose latest transition is a
    raise (no time range, no cursor); otherwise the transitions in the range.
    """
    r = _Reader(args, ALARM_PARAMS)
    texts = {n: r.text(n) for n in ("site_id", "asset_id", "sensor_id")}
    severity = r.choice("severity", ALARM_SEVERITIES, None)
    # "ACTIVE" is the usual guess at a state: point at the parameter that means it.
    state = r.choice("state", ALARM_STATES, None, hint="; for current alarms use active=true")
    active = _bool(r, "active")
    if active and state == "CLEARED":
        raise BadParameter("state", "active=true lists alarms whose latest transition is "
                           "RAISED; state=CLEARED would never match")
    limit, _ = r.limit()
    order = r.choice("order", ORDERS, "asc") or "asc"
    fingerprint = r.fingerprint(exclude=("cursor", "limit"))
    cursor_text = r.get("cursor")
    if active and (cursor_text is not None or r.get("start_time") or r.get("end_time")):
        raise BadParameter("active", "active=true takes no start_time, end_time or cursor")
    if cursor_text is not None:
        cursor: Cursor | None = decode_cursor(cursor_text, fingerprint, ALARM_KEY_TYPES)
        assert cursor is not None
        start_us, end_us = cursor.start_us, cursor.end_us
    else:
        cursor = None
        start_us, end_us = _time_range(r, now_us)
    return AlarmQuery(
        site_id=texts["site_id"], asset_id=texts["asset_id"], sensor_id=texts["sensor_id"],
        severity=severity, state=state, active=active, start_us=start_us,
        end_us=end_us, limit=limit, order=order, cursor=cursor, fingerprint=fingerprint,
    )


ASSET_LIST_PARAMS = ("limit", "cursor")
ASSET_KEY_TYPES = (str,)


def parse_asset_list_query(args: Args) -> AssetListQuery:
    """Parameters of ``GET /api/v1/assets``: pages in asset_id order.

    The same ``limit`` and ``cursor`` as the other lists, with a smaller page
    (default :data:`ASSET_DEFAULT_LIMIT`, at most :data:`ASSET_MAX_LIMIT`). The
    catalog has no time range, so its cursor carries only the last asset_id.
    """
    r = _Reader(args, ASSET_LIST_PARAMS)
    limit, _ = r.limit(ASSET_DEFAULT_LIMIT, ASSET_MAX_LIMIT)
    fingerprint = r.fingerprint(exclude=("cursor", "limit"))
    cursor_text = r.get("cursor")
    after = None
    if cursor_text is not None:
        (after,) = decode_key_cursor(cursor_text, fingerprint, ASSET_KEY_TYPES)
    return AssetListQuery(limit=limit, after=after, fingerprint=fingerprint)


def format_timestamp(value: datetime | None) -> str | None:
    """QuestDB's naive-UTC datetime -> ISO 8601 with Z (milliseconds unless finer is needed)."""
    if value is None:
        return None
    if value.microsecond % 1000 == 0:
        return value.isoformat(timespec="milliseconds") + "Z"
    return value.isoformat(timespec="microseconds") + "Z"


def to_micros(value: datetime) -> int:
    """Naive-UTC (or aware) datetime -> epoch microseconds, exactly (no float)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    delta = value - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * US_PER_S + delta.microseconds
