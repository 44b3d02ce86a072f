"""The one module of the API that talks to QuestDB: PG wire (psycopg2, small pool) for
every JSON answer, QuestDB's HTTP ``/exp`` for the CSV export.

Three layers, each usable alone:

* ``build_*_sql`` — pure functions from a parsed query (:mod:`api.params`) to
  ``(sql, params)``. The SQL text is assembled only from constants and from
  whitelisted tokens (interval, aggregate, fill, order); every request value is
  a parameter.
* :class:`QuestDBClient` — a thread-safe pool of PG-wire connections, created
  lazily (after gunicorn forks) and renewed after a fork or a broken connection.
  Connection failures become :class:`api.errors.ServiceUnavailable` (503).
* :class:`QuestDBExporter` — QuestDB's CSV export (``GET /exp``), streamed. ``/exp``
  takes no bind parameters: :func:`build_export_sql` inlines the same builders'
  parameters with :func:`sql_literal` (decision 0006, "Third pass").
* :class:`TelemetryStore` — what the views call: pages of rows (QuestDB's tuples,
  printed to JSON by :mod:`api.rows_json` without a dict per row) plus the sort key of
  the last row, for the cursor. Unit tests replace this class with a fake.

Why a custom string adapter: psycopg2 interpolates parameters on the client
and, because QuestDB does not announce ``standard_conforming_strings``, it
doubles backslashes, which QuestDB then takes literally (``a\\b`` would never
match). :class:`_Text` quotes the standard way with :func:`sql_literal` (only ``'`` is
doubled), which is exactly QuestDB's literal syntax; NUL is refused earlier by
:mod:`api.params` (and by :func:`sql_literal`).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import operator
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg2
import psycopg2.extensions
import requests

from api.errors import BadParameter, ServiceUnavailable
from api.params import (
    INTERVALS,
    AlarmQuery,
    LatestQuery,
    TelemetryQuery,
    to_micros,
)
from api.rows_json import CONVERTERS, json_bytes, json_timestamp, rows_json
from io_connectors.questdb_schema import (
    ALARM_COLUMNS,
    ALARMS,
    ROLLUP_1H,
    ROLLUP_1M,
    ROLLUPS,
    SENSOR_READING_COLUMNS,
    SENSOR_READINGS,
)

__all__ = [
    "ALARM_STATE_RAISED",
    "SOURCE_NAMES",
    "CsvExport",
    "Page",
    "QuestDBClient",
    "QuestDBExporter",
    "RowPage",
    "TelemetryStore",
    "build_active_alarms_sql",
    "build_alarms_sql",
    "bucket_parts",
    "bucket_source_name",
    "bucket_sources",
    "build_bucket_sql",
    "build_export_sql",
    "build_raw_export_sql",
    "export_days",
    "inline_sql",
    "build_latest_rollup_sql",
    "build_latest_sql",
    "build_raw_probe_sql",
    "build_raw_sql",
    "json_timestamp",
    "sql_literal",
    "timestamp_micros",
    "unescape_exp_csv",
]

_LOGGER = logging.getLogger(__name__)

# The state value the alarm branch writes for a raise (alarms.state symbol).
ALARM_STATE_RAISED = "RAISED"

_AGG_SQL = {
    "avg": "avg(value)",
    "min": "min(value)",
    "max": "max(value)",
    "count": "count()",
    "first": "first(value)",
    "last": "last(value)",
}
# The same aggregates from a rollup's columns (io_connectors/questdb_schema.py): an
# average is the sum of sums over the sum of counts, never an average of averages.
_ROLLUP_AGG_SQL = {
    "avg": "sum(value_sum) / sum(value_count)",
    "min": "min(value_min)",
    "max": "max(value_max)",
    "count": "sum(row_count)",
}
# The same aggregates from one rollup row: when the interval is the view's own bucket, each
# row of the view is one bucket already (unless a sensor's site changed within a bucket:
# the view groups by site_id too, see TelemetryStore._buckets).
_ROLLUP_ROW_SQL = {
    "avg": "value_sum / value_count",
    "min": "value_min",
    "max": "value_max",
    "count": "row_count",
}
# What a response's ``source`` says for each table.
SOURCE_NAMES = {SENSOR_READINGS: "raw", ROLLUP_1M: "rollup_1m", ROLLUP_1H: "rollup_1h"}
_FILL_SQL = {"none": "", "null": " FILL(NULL)", "prev": " FILL(PREV)", "linear": " FILL(LINEAR)"}
_ORDER_SQL = {"asc": "ASC", "desc": "DESC"}
_BUCKET_COLUMNS = ("timestamp", "asset_id", "sensor_id", "sensor_type", "value")


def sql_literal(value: str | int) -> str:
    """One request value as a QuestDB SQL literal: text in single quotes with every ``'``
    doubled (standard SQL, QuestDB's syntax; a backslash is an ordinary character there),
    an integer as its digits. The only place a value becomes SQL text (the PG-wire
    adapter :class:`_Text` and :func:`inline_sql` both call it)."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise TypeError(f"no SQL literal for {type(value).__name__}")
    if isinstance(value, int):
        return str(value)
    if "\x00" in value:  # api.params refuses control characters; QuestDB cannot store NUL
        raise ValueError("NUL in a SQL literal")
    return "'" + value.replace("'", "''") + "'"


def inline_sql(sql: str, params: Sequence[str | int]) -> str:
    """A builder's ``(sql, params)`` as one SQL text (for ``/exp``, which takes no bind
    parameters): each ``%s`` replaced by :func:`sql_literal` of its parameter. The SQL
    text of the builders holds no other ``%``."""
    parts = sql.split("%s")
    if len(parts) != len(params) + 1 or any("%" in part for part in parts):
        raise ValueError(f"{len(parts) - 1} placeholders for {len(params)} parameters")
    out = [parts[0]]
    for value, part in zip(params, parts[1:], strict=True):
        out += [sql_literal(value), part]
    return "".join(out)


class _Text:
    """A str parameter quoted as a standard SQL literal (see the module docstring)."""

    __slots__ = ("value",)

    def __init__(self, value: str) -> None:
        self.value = value

    def __conform__(self, proto: Any) -> _Text | None:
        return self if proto is psycopg2.extensions.ISQLQuote else None

    def getquoted(self) -> bytes:
        return sql_literal(self.value).encode("utf-8")


def _adapt(params: Sequence[Any]) -> tuple[Any, ...]:
    return tuple(_Text(p) if isinstance(p, str) else p for p in params)


def _filters(pairs: Sequence[tuple[str, str | None]]) -> tuple[str, list[Any]]:
    """``AND col = %s`` for each given value; column names are constants of the caller."""
    sql, params = "", []
    for column, value in pairs:
        if value is not None:
            # QuestDB 9.3.1 misses rows when an *indexed* symbol is compared with a
            # literal holding an escaped quote ('a''b'); comparing the text works.
            target = f"{column}::varchar" if "'" in value else column
            sql += f" AND {target} = %s"
            params.append(value)
    return sql, params


def _keyset(columns: Sequence[str], key: Sequence[Any], order: str) -> tuple[str, list[Any]]:
    """Rows strictly after ``key`` in (columns...) order: ``(a > x) OR (a = x AND b > y) ...``."""
    op = ">" if order == "asc" else "<"
    terms, params = [], []
    for i, column in enumerate(columns):
        eqs = [f"{c} = %s" for c in columns[:i]]
        terms.append("(" + " AND ".join([*eqs, f"{column} {op} %s"]) + ")")
        params.extend([*key[:i], key[i]])
    return " AND (" + " OR ".join(terms) + ")", params


def _range(start_us: int, end_us: int, order: str,
           key: Sequence[Any] | None) -> tuple[str, list[Any]]:
    """Designated-timestamp range first (QuestDB prunes partitions), narrowed by a cursor."""
    if key is not None:
        if order == "asc":
            start_us = max(start_us, key[0])
        else:
            end_us = min(end_us, key[0] + 1)
    return "timestamp >= %s AND timestamp < %s", [start_us, end_us]


def _reading_filters(q: TelemetryQuery) -> tuple[str, list[Any]]:
    return _filters([("asset_id", q.asset_id), ("site_id", q.site_id),
                     ("sensor_id", q.sensor_id), ("sensor_type", q.sensor_type)])


def _raw_where(q: TelemetryQuery, after: Sequence[Any] | None,
               floor_us: int | None = None,
               ceil_us: int | None = None) -> tuple[str, list[Any]]:
    """WHERE clause of raw reads: time range (raised to ``floor_us``, lowered to
    ``ceil_us``), filters, keyset."""
    where, params = _range(q.start_us, q.end_us, q.order, after)
    if floor_us is not None:
        params[0] = max(params[0], floor_us)
    if ceil_us is not None:
        params[1] = min(params[1], ceil_us)
    extra, extra_params = _reading_filters(q)
    where += extra
    params += extra_params
    if after is not None:
        keyset, keyset_params = _keyset(("timestamp", "event_id"), after, q.order)
        where += keyset
        params += keyset_params
    return where, params


def build_raw_probe_sql(q: TelemetryQuery, limit: int,
                        after: Sequence[Any] | None) -> tuple[str, list[Any]]:
    """The timestamp of the ``limit``-th matching row in time order (no row: fewer match).

    QuestDB walks a designated timestamp either way cheaply, but a sort on
    (timestamp, event_id) makes it sort the whole range (225 ms for a site over
    31 days; an asset-day at 10 sensors x 1 Hz is 864,000 rows). The stamp
    returned here bounds the range the real query has to sort to about ``limit``
    rows. One row comes back (``LIMIT limit-1, limit``), not ``limit`` stamps.
    """
    # Same rows as the real query: without the keyset, rows of the cursor's
    # timestamp already returned would shift the bound.
    where, params = _raw_where(q, after)
    sql = (f"SELECT timestamp FROM {SENSOR_READINGS} WHERE {where} "
           f"ORDER BY timestamp {_ORDER_SQL[q.order]} LIMIT %s, %s")
    return sql, [*params, limit - 1, limit]


def build_raw_sql(q: TelemetryQuery, limit: int | None, after: Sequence[Any] | None,
                  floor_us: int | None = None, ceil_us: int | None = None,
                  sort_ties: bool = True) -> tuple[str, list[Any]]:
    """Raw readings in (timestamp, event_id) order, after the keyset ``after``.

    At most ``limit`` rows (None: no LIMIT). ``floor_us`` raises the lower time bound,
    ``ceil_us`` lowers the upper one (see :func:`build_raw_probe_sql`).
    ``sort_ties=False``: rows in designated-timestamp order only (QuestDB's scan order,
    no sort); the caller orders rows sharing a timestamp by event_id
    (:meth:`TelemetryStore._readings`).
    """
    where, params = _raw_where(q, after, floor_us, ceil_us)
    direction = _ORDER_SQL[q.order]
    order = f"timestamp {direction}" + (f", event_id {direction}" if sort_ties else "")
    sql = (f"SELECT {', '.join(SENSOR_READING_COLUMNS)} FROM {SENSOR_READINGS} "
           f"WHERE {where} ORDER BY {order}")
    return (sql, params) if limit is None else (sql + " LIMIT %s", [*params, limit])


_RAW_KEY = operator.itemgetter(0, 1)


def _raw_sort_key(row: Sequence[Any]) -> tuple[str, str]:
    """(timestamp text, event_id): QuestDB's timestamp text has a fixed width (six
    fraction digits), so it sorts like the time; a null event_id sorts first, as in SQL."""
    return row[0], row[1] or ""


# How late a reading may be applied to QuestDB after its timestamp (the pipeline's lag and
# QuestDB's WAL apply) and still be found by the raw tail: the rollups are trusted only for
# rows older than this before their last refresh (TelemetryStore._freshness).
ROLLUP_TAIL_MARGIN_S = 120
# The columns every part of a rollup read gives (a view's own; the raw tail's computed).
_ROLLUP_PART_SQL = ("timestamp, asset_id, sensor_id, sensor_type, value_sum, value_count, "
                    "row_count, value_min, value_max")
_RAW_PART_SQL = ("timestamp, asset_id, sensor_id, sensor_type, sum(value) value_sum, "
                 "count(value) value_count, count() row_count, min(value) value_min, "
                 "max(value) value_max")


def _floor(us: int, unit_us: int) -> int:
    return us - us % unit_us


def bucket_parts(lo: int, hi: int, rollup: str | None,
                 fresh: dict[str, int] | None = None) -> list[tuple[str, int, int]]:
    """Which table answers which part of the time range ``[lo, hi)`` of a bucketed read:
    ``(table, from_us, to_us)`` in time order, empty parts left out.

    ``rollup`` None: the raw rows. Otherwise the rollup for the rows older than its
    freshness and the raw rows (1-minute buckets of them) for the newer ones: ``fresh``
    maps each usable view to the time before which it holds every row
    (:meth:`TelemetryStore._freshness`; None: both hold everything). A view missing from
    ``fresh`` is not read. With the 1-hour rollup the hours it holds come from it, the
    minutes after them from the 1-minute rollup, the rest from the raw rows. The parts
    split on minute (hour) boundaries, which are boundaries of every bucket of a
    rollup-eligible interval too (:func:`api.params.rollup_for`), so each bucket is
    recombined exactly (sum of sums, count of counts, min of mins, max of maxes).
    """
    if rollup is None:
        return [(SENSOR_READINGS, lo, hi)] if lo < hi else []
    if rollup not in ROLLUPS:
        raise ValueError(f"not a rollup: {rollup}")
    everything = {view: hi for view in ROLLUPS} if fresh is None else fresh

    def until(view: str, floor_from: int) -> int:
        """End of the part a view can answer, from ``floor_from`` on."""
        if view not in everything:
            return floor_from
        unit = ROLLUPS[view] * 1_000_000
        return min(hi, max(floor_from, _floor(everything[view], unit)))

    parts: list[tuple[str, int, int]] = []
    split = lo
    if rollup == ROLLUP_1H:
        hours_to = until(ROLLUP_1H, lo)
        parts.append((ROLLUP_1H, lo, hours_to))
        split = hours_to
    minutes_to = until(ROLLUP_1M, split)
    parts.append((ROLLUP_1M, split, minutes_to))
    parts.append((SENSOR_READINGS, minutes_to, hi))
    return [part for part in parts if part[1] < part[2]]


def bucket_source_name(parts: Sequence[tuple[str, int, int]]) -> str:
    """What a bucketed read says it read (``source``, X-Data-Source): the tables of its
    parts, coarsest first (``rollup_1h+rollup_1m+raw``); ``raw`` for an empty range."""
    return "+".join(SOURCE_NAMES[table] for table, _, _ in parts) or "raw"


def _bucket_range(q: TelemetryQuery, after: Sequence[Any] | None) -> tuple[int, int]:
    """The time range a bucketed page reads: the query's, narrowed by the cursor without
    fill (see :func:`build_bucket_sql`)."""
    assert q.interval is not None
    lo, hi = q.start_us, q.end_us
    if after is not None and q.fill == "none":
        if q.order == "asc":
            # The cursor's bucket starts at after[0]: never read rows before start_time.
            lo = max(q.start_us, after[0])
        else:
            # desc: the cursor's bucket holds rows up to the bucket's end, not its start.
            hi = min(q.end_us, after[0] + INTERVALS[q.interval][1])
    return lo, hi


def bucket_sources(q: TelemetryQuery, after: Sequence[Any] | None, rollup: str | None,
                   fresh: dict[str, int] | None = None) -> str:
    """:func:`bucket_source_name` of the page :func:`build_bucket_sql` reads."""
    return bucket_source_name(bucket_parts(*_bucket_range(q, after), rollup, fresh))


def build_bucket_sql(q: TelemetryQuery, limit: int | None, after: Sequence[Any] | None,
                     rollup: str | None = None, fresh: dict[str, int] | None = None,
                     sort_ties: bool = True, rows_as_buckets: bool = False,
                     ) -> tuple[str, list[Any]]:
    """Time buckets per (asset_id, sensor_id) with SAMPLE BY ... ALIGN TO CALENDAR.

    At most ``limit`` buckets (None: no LIMIT). ``rollup``: read that rollup view
    (:data:`io_connectors.questdb_schema.ROLLUPS`; the caller checked
    :func:`api.params.rollup_for`) instead of the raw rows. Its buckets tile the
    requested ones, so the same SAMPLE BY over it gives the same buckets; the aggregate
    is recombined from its columns (``_ROLLUP_AGG_SQL``). ``fresh``: how far each view
    is complete; the newer rows come from the raw rows (:func:`bucket_parts`: the parts
    are one ``UNION ALL`` in time order, under the same SAMPLE BY).

    Pages are ordered by (timestamp, asset_id, sensor_id); ``sort_ties=False`` orders by
    timestamp only (QuestDB's scan order, no sort) and the caller orders the buckets
    sharing a timestamp (:meth:`TelemetryStore._readings`). Without fill a later
    page starts its scan at the cursor's bucket (buckets are calendar-aligned, so
    that bucket is computed from the same rows). With fill the scan always starts
    at ``start_time``: QuestDB fills only between a series' first and last bucket
    with data, so filled buckets must not depend on where a page begins.

    ``rows_as_buckets``: when the page is read from one rollup view whose bucket is the
    interval, without fill, its rows are selected as they are (no SAMPLE BY: QuestDB's
    execute 25 -> 16 ms p50 and 73 -> 29 ms p95 for a dense asset-day of 1-minute
    buckets, decision 0006 "Sixth pass"). The caller must check that no bucket key came
    twice (a sensor whose site changed within a bucket has two rows in the view).
    """
    assert q.interval is not None
    lo, hi = _bucket_range(q, after)
    filters, filter_params = _reading_filters(q)
    parts = bucket_parts(lo, hi, rollup, fresh)
    sample = f"SAMPLE BY {INTERVALS[q.interval][0]}{_FILL_SQL[q.fill]} ALIGN TO CALENDAR"
    params: list[Any] = []
    if rows_as_buckets and rows_are_buckets(q, parts):
        inner = (f"SELECT timestamp, asset_id, sensor_id, sensor_type, "
                 f"{_ROLLUP_ROW_SQL[q.agg]} value FROM {parts[0][0]} "
                 f"WHERE timestamp >= %s AND timestamp < %s{filters}")
        params += [lo, hi, *filter_params]
    elif len(parts) <= 1:
        table = parts[0][0] if parts else (rollup or SENSOR_READINGS)
        agg_sql = _AGG_SQL[q.agg] if table == SENSOR_READINGS else _ROLLUP_AGG_SQL[q.agg]
        inner = (f"SELECT timestamp, asset_id, sensor_id, sensor_type, {agg_sql} value "
                 f"FROM {table} WHERE timestamp >= %s AND timestamp < %s{filters} {sample}")
        params += [lo, hi, *filter_params]
    else:
        selects = []
        for table, part_lo, part_hi in parts:
            where = f"WHERE timestamp >= %s AND timestamp < %s{filters}"
            if table == SENSOR_READINGS:
                selects.append(f"SELECT {_RAW_PART_SQL} FROM {table} {where} "
                               f"SAMPLE BY 1m ALIGN TO CALENDAR")
            else:
                selects.append(f"SELECT {_ROLLUP_PART_SQL} FROM {table} {where}")
            params += [part_lo, part_hi, *filter_params]
        union = " UNION ALL ".join(f"({select})" for select in selects)
        # The parts cover consecutive time ranges, each in timestamp order: the union is
        # in timestamp order and may be the designated timestamp of the SAMPLE BY.
        inner = (f"SELECT timestamp, asset_id, sensor_id, sensor_type, "
                 f"{_ROLLUP_AGG_SQL[q.agg]} value FROM ({union}) timestamp(timestamp) {sample}")
    outer_where = ""
    if after is not None:
        keyset, keyset_params = _keyset(("timestamp", "asset_id", "sensor_id"), after, q.order)
        outer_where = " WHERE" + keyset[len(" AND"):]
        params += keyset_params
    d = _ORDER_SQL[q.order]
    order = f"timestamp {d}" + (f", asset_id {d}, sensor_id {d}" if sort_ties else "")
    sql = (f"SELECT {', '.join(_BUCKET_COLUMNS)} FROM ({inner}){outer_where} ORDER BY {order}")
    return (sql, params) if limit is None else (sql + " LIMIT %s", [*params, limit])


def rows_are_buckets(q: TelemetryQuery, parts: Sequence[tuple[str, int, int]]) -> bool:
    """Whether each row of the one rollup part is one of ``q``'s buckets: the page reads a
    single view (no raw tail), the interval is that view's bucket and there is no fill."""
    return (q.fill == "none" and len(parts) == 1 and parts[0][0] in ROLLUPS
            and q.agg in _ROLLUP_ROW_SQL
            and ROLLUPS[parts[0][0]] * 1_000_000 == INTERVALS[q.interval][1])


_BUCKET_KEY = operator.itemgetter(0, 1, 2)
# A bucket's identity in a page: the SAMPLE BY's keys (timestamp, asset_id, sensor_id,
# sensor_type).
_BUCKET_IDENTITY = operator.itemgetter(0, 1, 2, 3)


def _bucket_sort_key(row: Sequence[Any]) -> tuple[str, str, str]:
    """(timestamp text, asset_id, sensor_id) of a bucket row (see :func:`_raw_sort_key`)."""
    return row[0], row[1] or "", row[2] or ""


# TIMESTAMP columns of the CSV export as the JSON prints them (json_timestamp: milliseconds
# unless finer is needed, ``Z``); QuestDB's to_str gives ``Z`` for UTC, a null stays null.
_EXPORT_TIMESTAMP = ("CASE WHEN {0} % 1000 = 0 THEN to_str({0}, 'yyyy-MM-ddTHH:mm:ss.SSSZ') "
                     "ELSE to_str({0}, 'yyyy-MM-ddTHH:mm:ss.SSSUUUZ') END {0}")
_EXPORT_TIMESTAMPS = ("timestamp", "ingested_at")


def build_export_sql(q: TelemetryQuery, after: Sequence[Any] | None,
                     rollup: str | None = None,
                     fresh: dict[str, int] | None = None) -> tuple[tuple[str, ...], str]:
    """The CSV export's columns and its one SQL text (no bind parameters: ``/exp``).

    The same rows in the same order as the JSON pages (:func:`build_raw_sql` with the
    (timestamp, event_id) sort, or :func:`build_bucket_sql`), after the cursor's key
    ``after``, at most ``q.limit`` rows when a limit was given, every value inlined by
    :func:`inline_sql`. Timestamps are formatted in SQL as the JSON prints them; the
    other columns are QuestDB's text (decision 0006, "Third pass").
    """
    limit = q.limit if q.limit_given else None
    if q.bucketed:
        columns = _BUCKET_COLUMNS
        sql, params = build_bucket_sql(q, limit, after, rollup, fresh)
    else:
        columns = SENSOR_READING_COLUMNS
        sql, params = build_raw_sql(q, limit, after)
    return columns, _export_select(columns, sql, params)


def _export_select(columns: Sequence[str], sql: str, params: Sequence[Any]) -> str:
    select = ", ".join(_EXPORT_TIMESTAMP.format(c) if c in _EXPORT_TIMESTAMPS else c
                       for c in columns)
    return f"SELECT {select} FROM ({inline_sql(sql, params)})"


_DAY_US = 86_400_000_000


def export_days(q: TelemetryQuery, after: Sequence[Any] | None) -> list[tuple[int, int]]:
    """The UTC days a raw CSV export reads, ``(from_us, to_us)`` in the export's order: the
    query's range (narrowed by the cursor's key ``after`` as :func:`build_raw_sql` narrows
    it) cut at every midnight. One part for a range within a day or an empty one."""
    lo, hi = q.start_us, q.end_us
    if after is not None:
        if q.order == "asc":
            lo = max(lo, after[0])
        else:
            hi = min(hi, after[0] + 1)
    if hi - lo <= 0:
        return [(lo, hi)]
    days = [(max(lo, day), min(hi, day + _DAY_US))
            for day in range(lo - lo % _DAY_US, hi, _DAY_US)]
    return days if q.order == "asc" else days[::-1]


def build_raw_export_sql(q: TelemetryQuery, after: Sequence[Any] | None, from_us: int,
                         to_us: int, limit: int | None) -> str:
    """The raw CSV export's SQL text for the rows of ``[from_us, to_us)`` (one of
    :func:`export_days`), at most ``limit`` of them (None: all): :func:`build_export_sql`'s
    statement for that part of the range."""
    sql, params = build_raw_sql(q, limit, after, floor_us=from_us, ceil_us=to_us)
    return _export_select(SENSOR_READING_COLUMNS, sql, params)


def build_latest_sql(q: LatestQuery, floor_us: int | None = None,
                     ceil_us: int | None = None) -> tuple[str, list[Any]]:
    """Latest reading of every (asset_id, sensor_id) of an asset or a site.

    ``floor_us`` raises the lower time bound (never below ``max_age``), ``ceil_us`` adds
    an upper one: :meth:`TelemetryStore.latest` narrows the scan with the rollups.
    """
    # The time bound first: without it QuestDB reads every row of the site (all 90 days).
    # LATEST ON ... PARTITION BY two symbols cannot stop early: it reads the whole range.
    where, params = _filters([("asset_id", q.asset_id), ("site_id", q.site_id),
                              ("sensor_type", q.sensor_type)])
    bounds = "timestamp >= %s" + (" AND timestamp < %s" if ceil_us is not None else "")
    bound_params = [max(q.since_us, floor_us or 0)] + ([ceil_us] if ceil_us is not None else [])
    sql = (f"SELECT {', '.join(SENSOR_READING_COLUMNS)} FROM {SENSOR_READINGS} "
           f"WHERE {bounds}{where} LATEST ON timestamp PARTITION BY asset_id, sensor_id")
    return sql, [*bound_params, *params]


def build_latest_rollup_sql(q: LatestQuery, view: str,
                            floor_us: int) -> tuple[str, list[Any]]:
    """The last bucket with data of every (asset_id, sensor_id) in a rollup view, from
    ``floor_us`` on: ``(timestamp, asset_id, sensor_id)`` rows."""
    if view not in ROLLUPS:
        raise ValueError(f"not a rollup: {view}")
    where, params = _filters([("asset_id", q.asset_id), ("site_id", q.site_id),
                              ("sensor_type", q.sensor_type)])
    sql = (f"SELECT timestamp, asset_id, sensor_id FROM {view} WHERE timestamp >= %s{where} "
           f"LATEST ON timestamp PARTITION BY asset_id, sensor_id")
    return sql, [floor_us, *params]


def build_alarms_sql(q: AlarmQuery, limit: int,
                     after: Sequence[Any] | None) -> tuple[str, list[Any]]:
    """Alarm transitions in the range, in (timestamp, alarm_id, state) order."""
    where, params = _range(q.start_us, q.end_us, q.order, after)
    extra, extra_params = _filters([
        ("site_id", q.site_id), ("asset_id", q.asset_id), ("sensor_id", q.sensor_id),
        ("severity", q.severity), ("state", q.state)])
    where += extra
    params += extra_params
    if after is not None:
        keyset, keyset_params = _keyset(("timestamp", "alarm_id", "state"), after, q.order)
        where += keyset
        params += keyset_params
    d = _ORDER_SQL[q.order]
    sql = (f"SELECT {', '.join(ALARM_COLUMNS)} FROM {ALARMS} WHERE {where} "
           f"ORDER BY timestamp {d}, alarm_id {d}, state {d} LIMIT %s")
    return sql, [*params, limit]


def build_active_alarms_sql(q: AlarmQuery, limit: int) -> tuple[str, list[Any]]:
    """Alarms whose latest transition is a raise.

    Only filters that are fixed for an alarm (site, asset, sensor) go inside
    LATEST ON; severity and state are checked on the latest transition itself.
    """
    inner_where, params = _filters([("site_id", q.site_id), ("asset_id", q.asset_id),
                                    ("sensor_id", q.sensor_id)])
    inner = f"SELECT {', '.join(ALARM_COLUMNS)} FROM {ALARMS}"
    if inner_where:
        inner += f" WHERE {inner_where[len(' AND '):]}"
    inner += " LATEST ON timestamp PARTITION BY alarm_id"
    outer, outer_params = _filters([("state", ALARM_STATE_RAISED), ("severity", q.severity),
                                    ("state", q.state)])
    sql = (f"SELECT {', '.join(ALARM_COLUMNS)} FROM ({inner}) WHERE {outer[len(' AND '):]} "
           f"ORDER BY timestamp DESC, alarm_id DESC LIMIT %s")
    return sql, [*params, *outer_params, limit]


class QuestDBClient:
    """A small pool of PG-wire connections to QuestDB, safe across threads and forks."""

    def __init__(self, host: str, port: int, user: str, password: str,
                 database: str = "qdb", max_connections: int = 4,
                 connect_timeout: float = 3.0, acquire_timeout: float = 5.0) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self._dsn = dict(host=host, port=port, user=user, password=password, dbname=database,
                         connect_timeout=max(1, int(connect_timeout)))
        self.address = f"{host}:{port}"
        self._max = max_connections
        self._acquire_timeout = acquire_timeout
        self._pid = -1
        self._lock = threading.Lock()
        self._idle: list[Any] = []
        self._slots = threading.BoundedSemaphore(max_connections)

    def _reset_after_fork(self) -> None:
        # Connections inherited from a parent process must not be shared: drop them.
        if self._pid != os.getpid():
            with self._lock:
                self._idle = []
                self._slots = threading.BoundedSemaphore(self._max)
                self._pid = os.getpid()

    def _connect(self) -> Any:
        try:
            conn = psycopg2.connect(**self._dsn)
        except psycopg2.OperationalError as exc:
            raise ServiceUnavailable(f"QuestDB at {self.address} is unreachable",
                                     dependency="questdb", error=str(exc).strip()[:200]) from None
        conn.autocommit = True
        return conn

    def query(self, sql: str, params: Sequence[Any] = (),
              fetch: bool = True, *, text_timestamps: bool = False) -> list[tuple[Any, ...]]:
        """Run one SELECT and return all its rows (``fetch=False``: a statement, no rows).

        ``text_timestamps``: TIMESTAMP columns come back as QuestDB's text
        (``2026-11-30 10:00:00.123456``) instead of datetimes; see :func:`json_timestamp`.
        """
        self._reset_after_fork()
        slots = self._slots
        if not slots.acquire(timeout=self._acquire_timeout):
            raise ServiceUnavailable("all QuestDB connections are busy", dependency="questdb")
        try:
            for attempt in (1, 2):
                with self._lock:
                    conn = self._idle.pop() if self._idle and attempt == 1 else None
                reused = conn is not None
                if conn is None:
                    conn = self._connect()
                try:
                    with conn.cursor() as cur:
                        if text_timestamps:
                            psycopg2.extensions.register_type(_TIMESTAMP_TEXT, cur)
                        cur.execute(sql, _adapt(params))
                        rows = cur.fetchall() if fetch else []
                except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
                    conn.close()
                    if reused and attempt == 1:
                        # A stale pooled connection (QuestDB restarted, or closed it after
                        # being idle): so are the other idle ones, most likely. Drop them and
                        # retry on a fresh connection (the retry never takes a pooled one).
                        with self._lock:
                            stale, self._idle = self._idle, []
                        for other in stale:
                            other.close()
                        continue
                    raise ServiceUnavailable(
                        f"QuestDB at {self.address} failed during a query",
                        dependency="questdb", error=str(exc).strip()[:200]) from None
                except BaseException:
                    conn.close()
                    raise
                with self._lock:
                    self._idle.append(conn)
                return rows
            raise AssertionError("unreachable")
        finally:
            slots.release()

    def ping(self) -> None:
        """Raise :class:`ServiceUnavailable` unless QuestDB answers a trivial query."""
        self.query("SELECT 1")

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


@dataclass(frozen=True)
class CsvExport:
    """A CSV export under way: its columns (the header), where the rows come from (raw,
    rollup_1m, rollup_1h) and the body, already started (see :class:`QuestDBExporter`)."""

    columns: tuple[str, ...]
    source: str
    chunks: Iterator[bytes]


# QuestDB's /exp escapes text inside its quoted CSV fields as JSON does (a backslash as
# ``\\``, TAB as ``\t``, other control characters as ``\n``, ``\r``, ``\b``, ``\f`` or
# ``\u00XX``; quotes are doubled, CSV's way). Outside strings (numbers, timestamps, the
# header) there is never a backslash, so every backslash of the body starts an escape.
# The second alternative is an escape cut off at the end of a chunk (completed by the next).
_EXP_ESCAPE = re.compile(rb"\\(u[0-9a-fA-F]{4}|[^u])|\\(?:u[0-9a-fA-F]{0,3})?\Z")
_EXP_UNESCAPED = {b"\\": b"\\", b"t": b"\t", b"n": b"\n", b"r": b"\r", b"b": b"\b",
                  b"f": b"\f", b"/": b"/", b'"': b'"'}


def _unescape_exp(buf: bytes) -> tuple[bytes, bytes]:
    """``buf`` with its escapes undone, and an escape cut off at its end (held back)."""
    tail: list[bytes] = []

    def unescape(match: re.Match[bytes]) -> bytes:
        code = match.group(1)
        if code is None:
            tail.append(match.group(0))
            return b""
        if len(code) == 5:
            return chr(int(code[1:], 16)).encode("utf-8")
        return _EXP_UNESCAPED.get(code, match.group(0))

    return _EXP_ESCAPE.sub(unescape, buf), (tail[0] if tail else b"")


def unescape_exp_csv(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """QuestDB's ``/exp`` CSV with its JSON-style escapes undone (see ``_EXP_ESCAPE``), so
    a CSV parser reads every string as stored. A chunk without a backslash (nearly all:
    a C-level scan) passes unchanged; an escape split between chunks is completed from
    the next chunk."""
    held = b""
    for chunk in chunks:
        buf = held + chunk if held else chunk
        if b"\\" not in buf:
            held = b""
            yield buf
            continue
        out, held = _unescape_exp(buf)
        if out:
            yield out
    if held:  # an escape cut off by the end of the body: QuestDB never sends one
        yield held


class QuestDBExporter:
    """QuestDB's CSV export, ``GET /exp?query=...``, streamed through in large chunks.

    The API's CSV is QuestDB's dialect (RFC 4180: strings and the header quoted, quotes
    doubled, CRLF line ends, Java's number text such as ``1.0E-5``, an empty field for
    null, NaN and infinities), which a CSV parser reads to the values of the JSON format;
    the SQL (:func:`build_export_sql`) formats the timestamps as the JSON does. Python
    only forwards bytes: ~10 MB/s formatting rows here against QuestDB's ~47 MB/s
    (decision 0006, "Third pass").

    :meth:`stream` reads the first chunk before it returns, so QuestDB unreachable, an
    error answer or a failure before the first byte is a 503 (naming the setting) while
    the API can still send a status. ``read_timeout_s`` bounds each wait for QuestDB
    (its first byte comes after its scan, and after the sort for rows sharing a
    timestamp). A failure later (QuestDB gone, a read timeout) is logged and re-raised
    from the body iterator: the server then drops the connection without the final
    chunk, so the client sees a broken transfer, never a clean, truncated 200. At most
    one chunk (``chunk_bytes``) is held per export.
    """

    def __init__(self, host: str, http_port: int, read_timeout_s: float = 60.0,
                 connect_timeout_s: float = 3.0, chunk_bytes: int = 256 * 1024) -> None:
        self.address = f"{host}:{http_port}"
        self._url = f"http://{host}:{http_port}/exp"
        self._timeout = (connect_timeout_s, read_timeout_s)
        self._chunk_bytes = chunk_bytes

    def stream(self, sql: str) -> Iterator[bytes]:
        """The CSV body of ``sql`` as byte chunks; the first one is already read."""
        chunks = unescape_exp_csv(self._chunks(self._open(sql)))
        first = next(chunks, b"")  # raises the 503 of a failure before the first byte
        return self._prepend(first, chunks)

    def stream_parts(self, parts: Sequence[Callable[[int | None], str]],
                     limit: int | None = None) -> Iterator[bytes]:
        """The CSV bodies of several statements one after the other, as one CSV: QuestDB's
        header line once (the first part's), then each part's rows in turn (the raw
        export's UTC days, :func:`export_days`). ``parts[i](remaining)`` is the i-th SQL
        text for at most ``remaining`` more rows (None: no ``limit``); once ``limit`` rows
        are sent no further part is asked. Rows are counted by their line ends in
        QuestDB's text, where a line end inside a string is escaped (``\\n``).

        Like :meth:`stream`, the first part is read up to its first chunk before this
        returns (a failure there is a 503); a later part that fails, even before its first
        byte, is logged and re-raised from the body, so the client sees a broken transfer.
        """
        if not parts:
            raise ValueError("no statement to export")
        lines = [0]  # line ends passed on: the header and every row
        first_part = self._open(parts[0](limit))

        def raw() -> Iterator[bytes]:
            yield from self._counted(self._chunks(first_part), lines, skip_header=False)
            for i, part in enumerate(parts[1:], start=2):
                remaining = None if limit is None else limit - (lines[0] - 1)
                if remaining is not None and remaining <= 0:
                    return
                try:
                    resp = self._open(part(remaining))
                except ServiceUnavailable as exc:
                    _LOGGER.error("CSV export aborted before its part %d of %d: %s (%s); the "
                                  "client sees a broken transfer", i, len(parts), exc.message,
                                  exc.details.get("error"))
                    raise
                yield from self._counted(self._chunks(resp), lines, skip_header=True)

        chunks = unescape_exp_csv(raw())
        first = next(chunks, b"")  # raises the 503 of a failure before the first byte
        return self._prepend(first, chunks)

    @staticmethod
    def _counted(chunks: Iterator[bytes], lines: list[int],
                 skip_header: bool) -> Iterator[bytes]:
        """``chunks`` (QuestDB's text, before :func:`unescape_exp_csv`) without their first
        line if ``skip_header``, the line ends passed on added to ``lines[0]``."""
        for chunk in chunks:
            if skip_header:
                end = chunk.find(b"\n")
                if end < 0:  # the header goes on in the next chunk
                    continue
                chunk, skip_header = chunk[end + 1:], False
            lines[0] += chunk.count(b"\n")
            if chunk:
                yield chunk

    def _open(self, sql: str) -> requests.Response:
        """QuestDB's answer to ``/exp`` of ``sql``, its status checked (body not read)."""
        try:
            # identity: no gzip to undo; the bytes go to the client as they come.
            resp = requests.get(self._url, params={"query": sql}, stream=True,
                                timeout=self._timeout, headers={"Accept-Encoding": "identity"})
        except requests.RequestException as exc:
            raise self._unavailable("is unreachable", exc) from None
        if resp.status_code == 429:  # QuestDB's limit of concurrent exports
            detail = resp.text[:300]
            resp.close()
            raise ServiceUnavailable(
                f"QuestDB at {self.address} is running its maximum of concurrent CSV exports "
                "(its http.export.connection.limit: [questdb] export_connection_limit); "
                "retry shortly", retry_after=1, dependency="questdb", error=detail)
        if resp.status_code != 200:
            detail = resp.text[:300]
            resp.close()
            _LOGGER.error("QuestDB at %s refused a CSV export (HTTP %s): %s; SQL: %s",
                          self.address, resp.status_code, detail, sql[:500])
            raise ServiceUnavailable(
                f"QuestDB at {self.address} refused the CSV export (HTTP {resp.status_code}; "
                "[questdb] host, http_port)", dependency="questdb", error=detail)
        return resp

    def _unavailable(self, what: str, exc: Exception) -> ServiceUnavailable:
        return ServiceUnavailable(
            f"QuestDB at {self.address} {what} (CSV export over HTTP: [questdb] host, "
            "http_port)", dependency="questdb", error=str(exc).strip()[:200])

    def _chunks(self, resp: requests.Response) -> Iterator[bytes]:
        sent = False
        try:
            for chunk in resp.iter_content(self._chunk_bytes):
                yield chunk
                sent = True
        except requests.RequestException as exc:
            if not sent:
                raise self._unavailable("failed before the first byte", exc) from None
            _LOGGER.error("CSV export aborted mid-stream (QuestDB at %s): %s; the client "
                          "sees a broken transfer", self.address, exc)
            raise
        finally:
            resp.close()

    @staticmethod
    def _prepend(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
        try:
            yield first
            yield from rest
        finally:
            rest.close()  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Page:
    """JSON-ready rows and the sort key of the row after which the next page starts."""

    rows: list[dict[str, Any]]
    next_key: tuple[Any, ...] | None
    source: str = "raw"  # where the rows came from: raw, rollup_1m or rollup_1h

    def json_data(self) -> bytes:
        """The rows as a JSON array (the response's ``data``)."""
        return json_bytes(self.rows)


@dataclass(frozen=True)
class RowPage:
    """A page of QuestDB's rows as they came (tuples in ``columns`` order, timestamps as
    QuestDB's text): :meth:`json_data` prints them straight to JSON
    (:func:`api.rows_json.rows_json`, the same text as the dicts), :attr:`rows` builds
    the dicts only when asked."""

    columns: tuple[str, ...]
    tuples: list[tuple[Any, ...]]
    next_key: tuple[Any, ...] | None
    source: str = "raw"

    @functools.cached_property
    def rows(self) -> list[dict[str, Any]]:
        return _records(self.columns, self.tuples)

    def json_data(self) -> bytes:
        return rows_json(self.columns, self.tuples)


# TIMESTAMP (OID 1114) as the text QuestDB sends, for the row paths of the store: a page
# of 10,000 readings held 20,000 datetimes that were parsed only to be printed again.
_TIMESTAMP_TEXT = psycopg2.extensions.new_type((1114,), "DCMMS_TIMESTAMP_TEXT",
                                               lambda value, _cursor: value)


def timestamp_micros(value: datetime | str) -> int:
    """Epoch microseconds of a TIMESTAMP given as a datetime or as QuestDB's text."""
    return to_micros(datetime.fromisoformat(value) if isinstance(value, str) else value)


@functools.lru_cache(maxsize=16)
def _record_builder(columns: tuple[str, ...]) -> Any:
    """``row -> {column: JSON value}`` for one column tuple, as a generated dict display.

    The hot path of every JSON page (10,000 rows of 13 columns): a dict display with
    constant keys builds a row in half the time of ``dict(zip(...))`` plus a conversion
    loop (14 vs 29 ms per 10,000 readings, measured). The generated source holds only
    the column names of this module's constants (never request values).
    """
    if not all(c.isidentifier() for c in columns):
        raise ValueError(f"not a column name: {columns}")
    fields, names = [], {}
    for i, column in enumerate(columns):
        if column in CONVERTERS:
            names[f"_convert{i}"] = CONVERTERS[column]
            fields.append(f"{column!r}: _convert{i}(row[{i}])")
        else:
            fields.append(f"{column!r}: row[{i}]")
    return eval(f"lambda row: {{{', '.join(fields)}}}", names)  # noqa: S307


def _records(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[dict[str, Any]]:
    return list(map(_record_builder(tuple(columns)), rows))


def _next_key(columns: Sequence[str], rows: list[tuple[Any, ...]], limit: int,
              key_columns: Sequence[str]) -> tuple[Any, ...] | None:
    """``rows`` was fetched with LIMIT limit+1: a surplus row means another page exists."""
    if len(rows) <= limit or limit <= 0:
        return None
    last = dict(zip(columns, rows[limit - 1], strict=True))
    return tuple(timestamp_micros(last[c]) if c == "timestamp" else last[c]
                 for c in key_columns)


def _page(columns: Sequence[str], rows: list[tuple[Any, ...]], limit: int,
          key_columns: Sequence[str]) -> Page:
    next_key = _next_key(columns, rows, limit, key_columns)
    return Page(_records(columns, rows[:limit]), next_key)


# How long the list of usable rollups (and their freshness) is reused before QuestDB is
# asked again; while the 1-hour view has not caught up with the 1-minute one, this short.
ROLLUP_STATUS_TTL_S = 5.0
_ROLLUP_STATUS_CATCHUP_TTL_S = 0.5
# Latest values (TelemetryStore._latest_via_rollups): a sensor whose last minute with data
# is this much older than the site's newest is "stale" and looked up in its own minute;
# with more distinct stale minutes than _MAX_STALE_QUERIES one query covers them all.
_STALE_US = 10 * 60 * 1_000_000
_MAX_STALE_QUERIES = 8


class TelemetryStore:
    """Queries of the API over a :class:`QuestDBClient`."""

    def __init__(self, client: QuestDBClient, rollups_enabled: bool = True,
                 exporter: QuestDBExporter | None = None) -> None:
        self.client = client
        self.exporter = exporter  # the CSV export (QuestDB's /exp)
        # [questdb] rollups: with the views off by configuration, QuestDB is never asked
        # about them and source=rollup is the caller's error (400), not an outage (503).
        self.rollups_enabled = rollups_enabled
        self._rollups: frozenset[str] = frozenset()
        self._fresh: dict[str, int] = {}
        self._fresh_1h_known = 0  # the 1-minute freshness the 1-hour view last caught up with
        self._rollups_checked = -math.inf
        self._rollups_ttl = ROLLUP_STATUS_TTL_S
        self._rollups_lock = threading.Lock()

    def valid_rollups(self) -> frozenset[str]:
        """The rollup views QuestDB reports as ``valid`` (cached for a few seconds).

        A view QuestDB invalidated (a TRUNCATE or UPDATE of sensor_readings, a schema
        change) or one that does not exist is not used: its buckets come from the raw
        rows until ``REFRESH MATERIALIZED VIEW <name> FULL`` has rebuilt it.
        """
        if not self.rollups_enabled:
            return frozenset()
        self._check_rollups()
        return self._rollups

    def _freshness(self) -> dict[str, int]:
        """For each usable view, the time (epoch us) before which it holds every raw row:
        the buckets of newer rows are read from the raw rows (:func:`bucket_parts`).

        The 1-minute view is refreshed by a timer: it holds the rows QuestDB had applied
        when its last refresh started, unless it has seen every transaction of
        sensor_readings (then: the rows applied when QuestDB was asked). Rows applied
        later are trusted to carry timestamps at most :data:`ROLLUP_TAIL_MARGIN_S` older
        than that moment (a reading applied later than that after its own time, e.g. an
        edge backlog, is in the rollup's answer only after the next refresh, <= 1 minute
        later; ``source=raw`` always reads it). The 1-hour view (refreshed after each
        commit of the 1-minute view) is as fresh as the 1-minute view was when the
        1-hour view last had seen all of its commits.
        """
        if not self.rollups_enabled:
            return {}
        self._check_rollups()
        return self._fresh

    def _check_rollups(self) -> None:
        now = time.monotonic()
        if now - self._rollups_checked < self._rollups_ttl:
            return
        with self._rollups_lock:
            if now - self._rollups_checked < self._rollups_ttl:
                return
            asked_us = int(time.time() * 1_000_000)
            try:
                rows = self.client.query(
                    "SELECT view_name, view_status, last_refresh_start_timestamp, "
                    "refresh_base_table_txn, base_table_txn FROM materialized_views()")
            except psycopg2.Error as exc:  # e.g. a QuestDB without materialized views
                _LOGGER.warning("rollup status unavailable, reading raw rows: %s", exc)
                rows = []
            status = {row[0]: row for row in rows if row[0] in ROLLUPS and row[1] == "valid"}
            margin = ROLLUP_TAIL_MARGIN_S * 1_000_000
            fresh: dict[str, int] = {}
            ttl = ROLLUP_STATUS_TTL_S
            if ROLLUP_1M in status:
                _, _, started, refresh_txn, base_txn = status[ROLLUP_1M]
                caught_up = refresh_txn is not None and base_txn is not None \
                    and refresh_txn >= base_txn
                anchor = asked_us if caught_up else (
                    to_micros(started) if isinstance(started, datetime) else 0)
                fresh[ROLLUP_1M] = max(0, anchor - margin)
            if ROLLUP_1H in status:
                # Asked after the 1-minute view's state above: if the 1-hour view has seen
                # every commit of the 1-minute view now, it holds at least that state.
                # Refreshes only move forward: what it caught up with is remembered.
                caught = []
                if ROLLUP_1M in fresh:
                    try:
                        caught = self.client.query(
                            "SELECT view_name FROM materialized_views() WHERE view_name = %s "
                            "AND refresh_base_table_txn >= base_table_txn", (ROLLUP_1H,))
                    except psycopg2.Error as exc:
                        _LOGGER.warning("rollup status unavailable: %s", exc)
                if caught:
                    self._fresh_1h_known = max(self._fresh_1h_known, fresh[ROLLUP_1M])
                else:
                    ttl = _ROLLUP_STATUS_CATCHUP_TTL_S
                fresh[ROLLUP_1H] = self._fresh_1h_known
            self._rollups = frozenset(status)
            self._fresh = fresh
            self._rollups_ttl = ttl
            self._rollups_checked = time.monotonic()

    def _bucket_source(self, q: TelemetryQuery) -> str | None:
        """The rollup view to read, or None for the raw rows."""
        view = q.rollup
        if view is None:
            return None
        if view in self.valid_rollups():
            return view
        if q.source == "rollup" and not self.rollups_enabled:
            raise BadParameter("source", "the rollup views are off on this deployment "
                               "([questdb] rollups = false); use source=auto or raw",
                               allowed=["auto", "raw"])
        if q.source == "rollup":
            raise ServiceUnavailable(f"the rollup {view} is not usable now (QuestDB reports it "
                                     "missing or invalid); use source=auto or raw",
                                     dependency="questdb")
        return None

    def _readings(self, q: TelemetryQuery, limit: int, after: Sequence[Any] | None,
                  ) -> tuple[tuple[str, ...], list[tuple[Any, ...]], tuple[Any, ...] | None, str]:
        """Columns, at most ``limit`` rows (timestamps as text), the next page's key and
        the source (``raw``, ``rollup_1m``, ``rollup_1h``, or the parts of a rollup read
        with its raw tail such as ``rollup_1m+raw``: :func:`bucket_source_name`)."""
        if q.bucketed:
            view = self._bucket_source(q)
            fresh = self._freshness() if view is not None else None
            rows = self._buckets(q, limit, after, view, fresh)
            key = _next_key(_BUCKET_COLUMNS, rows, limit, ("timestamp", "asset_id", "sensor_id"))
            return (_BUCKET_COLUMNS, rows[:limit], key,
                    bucket_sources(q, after, view, fresh))
        floor_us = ceil_us = None
        probe_sql, probe_params = build_raw_probe_sql(q, limit + 1, after)
        stamps = self.client.query(probe_sql, probe_params, text_timestamps=True)
        if stamps:
            # More than limit rows match; the first limit+1 in time order all lie at or
            # before (asc) / at or after (desc) this stamp, so the read stops there.
            bound = timestamp_micros(stamps[0][0])
            if q.order == "desc":
                floor_us = bound
            else:
                ceil_us = bound + 1
        # Without a probe row the whole range holds at most `limit` rows. Either way the
        # range is bounded to about limit+1 rows plus the ties at the bound: QuestDB sends
        # them in timestamp order (its scan order, no sort), and the rows sharing a
        # timestamp are put in event_id order here. QuestDB's own sort on (timestamp,
        # event_id) cost 48 of the page's ~63 ms on a dense asset-day, against 25 without
        # it and ~2 ms for this sort of nearly ordered rows (decision 0006).
        sql, params = build_raw_sql(q, None, after, floor_us, ceil_us, sort_ties=False)
        rows = self.client.query(sql, params, text_timestamps=True)
        try:  # C-level key; a null event_id (None against text) takes the function
            rows.sort(key=_RAW_KEY, reverse=q.order == "desc")
        except TypeError:
            rows.sort(key=_raw_sort_key, reverse=q.order == "desc")
        del rows[limit + 1:]
        key = _next_key(SENSOR_READING_COLUMNS, rows, limit, ("timestamp", "event_id"))
        return SENSOR_READING_COLUMNS, rows[:limit], key, "raw"

    def _bucket_rows(self, q: TelemetryQuery, limit: int | None, after: Sequence[Any] | None,
                     view: str | None, fresh: dict[str, int] | None) -> list[tuple[Any, ...]]:
        """Buckets in timestamp order only (see :meth:`_buckets`). The view's rows are taken
        as the buckets when they are (:func:`rows_are_buckets`), unless a bucket key comes
        twice: then the same page is read again with SAMPLE BY, which merges them."""
        sql, params = build_bucket_sql(q, limit, after, view, fresh, sort_ties=False,
                                       rows_as_buckets=True)
        rows = self.client.query(sql, params, text_timestamps=True)
        if (view is not None and rows_are_buckets(q, bucket_parts(*_bucket_range(q, after),
                                                                  view, fresh))
                and len(set(map(_BUCKET_IDENTITY, rows))) != len(rows)):
            sql, params = build_bucket_sql(q, limit, after, view, fresh, sort_ties=False)
            rows = self.client.query(sql, params, text_timestamps=True)
        return rows

    def _buckets(self, q: TelemetryQuery, limit: int, after: Sequence[Any] | None,
                 view: str | None, fresh: dict[str, int] | None) -> list[tuple[Any, ...]]:
        """At most limit+1 buckets in (timestamp, asset_id, sensor_id) order.

        Without fill QuestDB returns them in timestamp order only (no sort: ~20 of the ~60
        ms of a dense asset-day of 1-minute buckets went to QuestDB's sort on the three
        columns) and they are ordered here. Rows sharing the last timestamp of the
        limit+1 may be an arbitrary part of that bucket time's rows: when the page needs
        some of them, that one bucket time is read whole (a second, small query; the
        bucket is calendar-aligned, so it is computed from the same rows). With fill
        QuestDB sorts (a filled bucket depends on the whole range).
        """
        if q.fill != "none":
            sql, params = build_bucket_sql(q, limit + 1, after, view, fresh)
            return self.client.query(sql, params, text_timestamps=True)
        rows = self._bucket_rows(q, limit + 1, after, view, fresh)
        if len(rows) > limit:
            # Some of the rows at the last bucket time are here; the page (limit rows and
            # one more, the sign of a next page) needs them all unless the earlier rows
            # fill it.
            last = rows[-1][0]
            before = [row for row in rows if row[0] != last]
            if len(before) < limit:
                # (timestamp text fixed-width: != is the time's inequality.)
                at_us = timestamp_micros(last)
                one = dataclasses.replace(q, start_us=max(q.start_us, at_us),
                                          end_us=min(q.end_us, at_us + INTERVALS[q.interval][1]))
                rows = before + [row for row in self._bucket_rows(one, None, after, view,
                                                                  fresh)
                                 if row[0] == last]
        try:  # C-level key (~2 ms per 10,000 rows against ~6 with the function)
            rows.sort(key=_BUCKET_KEY, reverse=q.order == "desc")
        except TypeError:  # a null asset_id or sensor_id: None sorts first, as in SQL
            rows.sort(key=_bucket_sort_key, reverse=q.order == "desc")
        del rows[limit + 1:]
        return rows

    def readings(self, q: TelemetryQuery, limit: int, after: Sequence[Any] | None) -> RowPage:
        columns, rows, key, source = self._readings(q, limit, after)
        return RowPage(columns, rows, key, source)

    def export(self, q: TelemetryQuery, after: Sequence[Any] | None) -> CsvExport:
        """The CSV export of the whole range (or ``q.limit`` rows) after ``after``: QuestDB's
        own ``/exp`` text, streamed (:class:`QuestDBExporter`).

        Raises (before any byte is sent) what the JSON path raises for the same query,
        503 when QuestDB cannot be reached or refuses the export."""
        if self.exporter is None:
            raise ServiceUnavailable("the CSV export is not configured (no QuestDB HTTP "
                                     "address: [questdb] host, http_port)", dependency="questdb")
        if not q.bucketed and len(days := export_days(q, after)) > 1:
            # One /exp per UTC day, in order: QuestDB sorts a day's rows on (timestamp,
            # event_id), never a whole month's at once (decision 0006, "Fifth pass").
            parts = [functools.partial(build_raw_export_sql, q, after, lo, hi)
                     for lo, hi in days]
            limit = q.limit if q.limit_given else None
            return CsvExport(SENSOR_READING_COLUMNS, "raw",
                             self.exporter.stream_parts(parts, limit))
        view = self._bucket_source(q) if q.bucketed else None
        fresh = self._freshness() if view is not None else None
        columns, sql = build_export_sql(q, after, view, fresh)
        source = bucket_sources(q, after, view, fresh) if q.bucketed else "raw"
        return CsvExport(columns, source, self.exporter.stream(sql))

    def latest(self, q: LatestQuery) -> list[dict[str, Any]]:
        rows = None
        if all(view in self.valid_rollups() for view in ROLLUPS):
            rows = self._latest_via_rollups(q)
        if rows is None:
            sql, params = build_latest_sql(q)
            rows = self.client.query(sql, params, text_timestamps=True)
        return _records(SENSOR_READING_COLUMNS, sorted(rows, key=lambda r: (r[3] or "",
                                                                            r[4] or "")))

    def _latest_via_rollups(self, q: LatestQuery) -> list[tuple[Any, ...]] | None:
        """The latest raw row of every sensor, reading the raw rows of minutes only.

        ``LATEST ON`` over the raw rows reads the whole ``max_age`` window (24 h of a
        dense site: 8.6M rows, ~230 ms). Instead: each sensor's last hour with data from
        the 1-hour rollup, from the earliest of those its last minute from the 1-minute
        rollup, then the raw rows from the earliest *recent* last minute on (all sensors,
        so rows the rollups have not seen yet are found too), and for each sensor silent
        for longer (:data:`_STALE_US`) the raw rows of its own last minute. None (the
        caller reads the raw window) when the rollups know no sensor in the window.

        A sensor whose only readings in the window are older than the recent minutes and
        arrived within the rollups' refresh lag (typically well under a second) can be
        reported with its previous reading until the rollup has caught up.
        """
        hour, minute = ROLLUPS[ROLLUP_1H] * 1_000_000, ROLLUPS[ROLLUP_1M] * 1_000_000
        sql, params = build_latest_rollup_sql(q, ROLLUP_1H, q.since_us - q.since_us % hour)
        hours = self.client.query(sql, params, text_timestamps=True)
        if not hours:
            return None
        start = min(timestamp_micros(r[0]) for r in hours)
        sql, params = build_latest_rollup_sql(
            q, ROLLUP_1M, max(start, q.since_us - q.since_us % minute))
        last = {(r[1], r[2]): timestamp_micros(r[0])
                for r in self.client.query(sql, params, text_timestamps=True)}
        if not last:
            return None
        newest = max(last.values())
        recent_from = min(m for m in last.values() if m >= newest - _STALE_US)
        sql, params = build_latest_sql(q, floor_us=recent_from)
        found = {(r[3], r[4]): r for r in self.client.query(sql, params, text_timestamps=True)}
        stale = sorted({m for key, m in last.items() if key not in found}, reverse=True)
        if len(stale) > _MAX_STALE_QUERIES:
            windows = [(stale[-1], recent_from)]
        else:
            windows = [(m, m + minute) for m in stale]
        for lo, hi in windows:  # newest first: the first row found for a sensor is its latest
            sql, params = build_latest_sql(q, floor_us=lo, ceil_us=hi)
            for r in self.client.query(sql, params, text_timestamps=True):
                if (r[3], r[4]) in last:  # a sensor the rollups do not know: not its latest
                    found.setdefault((r[3], r[4]), r)
        return list(found.values())

    def alarms(self, q: AlarmQuery, after: Sequence[Any] | None) -> Page:
        if q.active:
            sql, params = build_active_alarms_sql(q, q.limit)
            return Page(_records(ALARM_COLUMNS, self.client.query(sql, params)), None)
        sql, params = build_alarms_sql(q, q.limit + 1, after)
        rows = self.client.query(sql, params)
        return _page(ALARM_COLUMNS, rows, q.limit, ("timestamp", "alarm_id", "state"))

    def ping(self) -> None:
        self.client.ping()
