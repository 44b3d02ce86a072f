"""The rollups' raw tail (decision 0006, "Fourth pass"): which table answers which part of
a bucketed read, the SQL that recombines them, the freshness the store derives from
QuestDB's view status, and the page of buckets ordered in Python. Against a fake client;
tests/integration/test_query_rollup_tail.py compares the answers with QuestDB's."""

from __future__ import annotations

import re
import time
from datetime import datetime, timedelta
from typing import Any

import pytest

from api.params import parse_telemetry_query
from api.questdb import (
    ROLLUP_TAIL_MARGIN_S,
    TelemetryStore,
    bucket_parts,
    bucket_source_name,
    build_bucket_sql,
    rows_are_buckets,
)
from io_connectors.questdb_schema import ROLLUP_1H, ROLLUP_1M, SENSOR_READINGS

MIN, HOUR = 60_000_000, 3_600_000_000
T0 = 1_764_460_800_000_000  # 2025-11-30T00:00:00Z


class Args(dict):
    def getlist(self, key: str) -> list[str]:
        return [self[key]] if key in self else []


def _query(**params: str) -> Any:
    base = {"start_time": str(T0 // 1000), "end_time": str((T0 + 6 * HOUR) // 1000),
            "site_id": "s1", "interval": "1m"}
    return parse_telemetry_query(Args({**base, **params}))


@pytest.mark.parametrize("rollup,fresh,expected", [
    (None, None, [(SENSOR_READINGS, 0, 6)]),
    (ROLLUP_1M, None, [(ROLLUP_1M, 0, 6)]),
    # Mid-minute freshness: the 1-minute view up to the minute before it.
    (ROLLUP_1M, {ROLLUP_1M: 2 * HOUR + 30 * MIN + 17}, [(ROLLUP_1M, 0, 2.5),
                                                       (SENSOR_READINGS, 2.5, 6)]),
    (ROLLUP_1M, {ROLLUP_1M: -HOUR}, [(SENSOR_READINGS, 0, 6)]),
    (ROLLUP_1M, {ROLLUP_1M: 9 * HOUR}, [(ROLLUP_1M, 0, 6)]),
    (ROLLUP_1M, {}, [(SENSOR_READINGS, 0, 6)]),  # the view is not usable
    (ROLLUP_1H, {ROLLUP_1H: 2 * HOUR + 5 * MIN, ROLLUP_1M: 4 * HOUR + 90 * 1_000_000},
     [(ROLLUP_1H, 0, 2), (ROLLUP_1M, 2, 4 + 1 / 60), (SENSOR_READINGS, 4 + 1 / 60, 6)]),
    # The 1-hour view up to an hour edge exactly; the 1-minute view missing: raw after it.
    (ROLLUP_1H, {ROLLUP_1H: 3 * HOUR}, [(ROLLUP_1H, 0, 3), (SENSOR_READINGS, 3, 6)]),
    # The 1-hour view never refreshed (0): the 1-minute view from the start.
    (ROLLUP_1H, {ROLLUP_1H: 0, ROLLUP_1M: 5 * HOUR}, [(ROLLUP_1M, 0, 5),
                                                     (SENSOR_READINGS, 5, 6)]),
])
def test_bucket_parts_split_on_the_views_own_boundaries(rollup: str | None,
                                                        fresh: dict[str, int] | None,
                                                        expected: list[tuple[str, float, float]],
                                                        ) -> None:
    shifted = None if fresh is None else {k: T0 + v for k, v in fresh.items()}
    got = bucket_parts(T0, T0 + 6 * HOUR, rollup, shifted)
    assert got == [(t, T0 + round(a * HOUR), T0 + round(b * HOUR)) for t, a, b in expected]


def test_bucket_source_names_the_parts_coarsest_first() -> None:
    assert bucket_source_name([(ROLLUP_1H, 0, 1), (ROLLUP_1M, 1, 2), (SENSOR_READINGS, 2, 3)]) \
        == "rollup_1h+rollup_1m+raw"
    assert bucket_source_name([(ROLLUP_1M, 0, 1)]) == "rollup_1m"
    assert bucket_source_name([]) == "raw"


def test_union_sql_recombines_the_parts_with_one_placeholder_per_parameter() -> None:
    q = _query(interval="5m", agg="avg", asset_id="a'1")
    fresh = {ROLLUP_1M: T0 + 3 * HOUR, ROLLUP_1H: T0}
    sql, params = build_bucket_sql(q, 101, None, ROLLUP_1M, fresh)
    assert sql.count("%s") == len(params)
    assert "UNION ALL" in sql and ") timestamp(timestamp) SAMPLE BY 5m ALIGN TO CALENDAR" in sql
    assert "sum(value_sum) / sum(value_count) value" in sql
    assert re.search(r"FROM sensor_readings_1m WHERE timestamp >= %s AND timestamp < %s", sql)
    assert "FROM sensor_readings WHERE" in sql and "SAMPLE BY 1m ALIGN TO CALENDAR" in sql
    # Both parts keep the filters; the range splits at the freshness.
    assert params[:4] == [T0, T0 + 3 * HOUR, "a'1", "s1"]
    assert params[4:8] == [T0 + 3 * HOUR, T0 + 6 * HOUR, "a'1", "s1"]
    # Fully fresh: the single-table statement of before, sorted by QuestDB unless told.
    single, _ = build_bucket_sql(q, 101, None, ROLLUP_1M)
    assert "UNION" not in single and single.endswith(
        "ORDER BY timestamp ASC, asset_id ASC, sensor_id ASC LIMIT %s")
    unsorted, _ = build_bucket_sql(q, 101, None, ROLLUP_1M, sort_ties=False)
    assert unsorted.endswith("ORDER BY timestamp ASC LIMIT %s")


class StatusClient:
    """Answers the store's two status queries; records every SQL."""

    def __init__(self, rows: list[tuple[Any, ...]], hour_caught_up: bool) -> None:
        self.rows, self.hour_caught_up, self.sql = rows, hour_caught_up, []

    def query(self, sql: str, params: Any = (), fetch: bool = True, **_: Any) -> list[Any]:
        self.sql.append(sql)
        if "WHERE view_name" in sql:
            return [(ROLLUP_1H,)] if self.hour_caught_up else []
        return self.rows


def _status(refresh_1m: datetime, txns_1m: tuple[int, int],
            txns_1h: tuple[int, int] = (5, 5)) -> list[tuple[Any, ...]]:
    return [(ROLLUP_1M, "valid", refresh_1m, *txns_1m),
            (ROLLUP_1H, "valid", refresh_1m, *txns_1h)]


def test_freshness_is_the_last_refresh_less_the_margin_or_now_when_caught_up() -> None:
    refresh = datetime(2026, 11, 30, 12, 0, 0)
    refresh_us = int((refresh - datetime(1970, 1, 1)).total_seconds()) * 1_000_000
    margin = ROLLUP_TAIL_MARGIN_S * 1_000_000
    behind = TelemetryStore(StatusClient(_status(refresh, (10, 12)), True))  # type: ignore[arg-type]
    assert behind._freshness() == {ROLLUP_1M: refresh_us - margin, ROLLUP_1H: refresh_us - margin}
    assert behind.valid_rollups() == {ROLLUP_1M, ROLLUP_1H}
    before = int(time.time() * 1_000_000)
    caught = TelemetryStore(StatusClient(_status(refresh, (12, 12)), True))  # type: ignore[arg-type]
    fresh = caught._freshness()
    assert before - margin <= fresh[ROLLUP_1M] <= int(time.time() * 1_000_000) - margin


def test_the_hour_view_is_only_as_fresh_as_what_it_caught_up_with() -> None:
    first, later = datetime(2026, 11, 30, 12, 0, 0), datetime(2026, 11, 30, 12, 1, 0)
    client = StatusClient(_status(first, (10, 12)), hour_caught_up=False)
    store = TelemetryStore(client)  # type: ignore[arg-type]
    assert store._freshness()[ROLLUP_1H] == 0  # never seen caught up: not read
    client.rows, client.hour_caught_up = _status(first, (10, 12)), True
    store._rollups_checked = float("-inf")
    known = store._freshness()[ROLLUP_1H]
    assert known == store._freshness()[ROLLUP_1M] > 0
    # A newer 1-minute refresh the 1-hour view has not followed yet: it keeps the old value
    # and the status is asked again soon.
    client.rows, client.hour_caught_up = _status(later, (11, 13)), False
    store._rollups_checked = float("-inf")
    fresh = store._freshness()
    assert fresh[ROLLUP_1H] == known < fresh[ROLLUP_1M]
    assert store._rollups_ttl < 1


def test_an_invalid_view_has_no_freshness_and_is_not_read() -> None:
    rows = [(ROLLUP_1M, "invalid", datetime(2026, 11, 30), 1, 1),
            (ROLLUP_1H, "valid", datetime(2026, 11, 30), 1, 1)]
    store = TelemetryStore(StatusClient(rows, True))  # type: ignore[arg-type]
    assert store.valid_rollups() == {ROLLUP_1H}
    assert ROLLUP_1M not in store._freshness()


class BucketClient:
    """Serves bucket rows for the page path: the first query gets the rows in timestamp
    order with only part of the last bucket time's rows (as QuestDB may), a query of one
    bucket time gets all of that time's rows."""

    def __init__(self, rows: list[tuple[Any, ...]]) -> None:
        self.rows, self.sql = rows, []

    def query(self, sql: str, params: Any = (), fetch: bool = True, **_: Any) -> list[Any]:
        self.sql.append((sql, list(params)))
        assert "ORDER BY timestamp ASC LIMIT" in sql or "ORDER BY timestamp ASC" in sql
        if sql.endswith("LIMIT %s"):
            # QuestDB's order among rows sharing a timestamp is arbitrary: here the
            # reverse of the page's, so the cut at limit+1 keeps the wrong ones.
            return sorted(self.rows, key=lambda r: (r[0], tuple(-ord(c) for c in r[2] or "")))[
                :params[-1]]
        lo, hi = params[0], params[1]
        return [r for r in self.rows if lo <= _us(r[0]) < hi]


def _us(text: str) -> int:
    return int((datetime.fromisoformat(text) - datetime(1970, 1, 1)).total_seconds() * 1e6)


def _text(us: int) -> str:
    """QuestDB's TIMESTAMP text (six fraction digits)."""
    return (datetime(1970, 1, 1) + timedelta(microseconds=us)).strftime("%Y-%m-%d %H:%M:%S.%f")


@pytest.mark.parametrize("limit", [3, 4, 5, 6, 10, 11, 12])
def test_a_page_of_buckets_completes_the_rows_of_its_last_bucket_time(limit: int) -> None:
    rows = [(_text(T0 + m * MIN), "a1", f"sen-{k}", "POWER", float(m * 10 + k))
            for m in range(3) for k in range(4)]
    client = BucketClient(rows)
    store = TelemetryStore(client, rollups_enabled=False)  # type: ignore[arg-type]
    page = store.readings(_query(limit=str(limit)), limit, None)
    expected = sorted(rows, key=lambda r: (r[0], r[1], r[2]))
    assert [(r["timestamp"], r["sensor_id"]) for r in page.rows] == \
        [(r[0].replace(" ", "T")[:23] + "Z", r[2]) for r in expected[:limit]]
    assert (page.next_key is None) == (limit >= len(rows))
    if page.next_key is not None:
        last = expected[limit - 1]
        assert page.next_key == (_us(last[0]), last[1], last[2])


def test_a_bucket_with_a_null_sensor_id_sorts_first_among_its_time() -> None:
    rows = [(_text(T0), "a1", "sen-1", "POWER", 1.0), (_text(T0), "a1", None, "POWER", 2.0),
            (_text(T0), "a1", "sen-0", "POWER", 3.0)]
    store = TelemetryStore(BucketClient(rows), rollups_enabled=False)  # type: ignore[arg-type]
    page = store.readings(_query(limit="10"), 10, None)
    assert [r["sensor_id"] for r in page.rows] == [None, "sen-0", "sen-1"]


@pytest.mark.parametrize("params,rollup,fresh,plain", [
    ({}, ROLLUP_1M, None, True),                              # 1m from the 1-minute view
    ({"interval": "1h"}, ROLLUP_1H, None, True),              # 1h from the 1-hour view
    ({"interval": "5m"}, ROLLUP_1M, None, False),             # 5 view rows per bucket
    ({"fill": "null"}, ROLLUP_1M, None, False),               # fill needs SAMPLE BY
    ({}, ROLLUP_1M, {ROLLUP_1M: 2 * HOUR}, False),            # with a raw tail
    ({}, None, None, False),                                  # the raw rows
    ({"interval": "1h"}, ROLLUP_1H, {ROLLUP_1H: 2 * HOUR, ROLLUP_1M: 6 * HOUR}, False),
])
def test_view_rows_are_read_as_buckets_only_when_each_row_is_one(
        params: dict[str, str], rollup: str | None, fresh: dict[str, int] | None,
        plain: bool) -> None:
    q = _query(**params)
    parts = bucket_parts(q.start_us, q.end_us, rollup, fresh)
    assert rows_are_buckets(q, parts) is plain
    sql, values = build_bucket_sql(q, 10, None, rollup, fresh, sort_ties=False,
                                   rows_as_buckets=True)
    assert ("SAMPLE BY" not in sql) is plain
    assert sql.count("%s") == len(values)
    if plain:
        assert f"FROM {rollup} WHERE" in sql and "value_sum / value_count value" in sql
    # Without the flag the SQL is always the SAMPLE BY form (the CSV export's).
    assert "SAMPLE BY" in build_bucket_sql(q, 10, None, rollup, fresh)[0]


@pytest.mark.parametrize("agg,column", [("avg", "value_sum / value_count"),
                                        ("min", "value_min"), ("max", "value_max"),
                                        ("count", "row_count")])
def test_view_rows_as_buckets_take_the_aggregate_from_their_own_columns(agg: str,
                                                                        column: str) -> None:
    sql, _ = build_bucket_sql(_query(agg=agg), 10, None, ROLLUP_1M, None, rows_as_buckets=True)
    assert f"{column} value FROM {ROLLUP_1M}" in sql


class _TwoSitesClient:
    """A view page where one bucket came as two rows (its sensor changed site)."""

    def __init__(self) -> None:
        self.sql: list[str] = []

    def query(self, sql: str, params: Any = None, text_timestamps: bool = False) -> list[Any]:
        self.sql.append(sql)
        if "SAMPLE BY" in sql:
            return [("2025-11-30T00:00:00.000000Z", "a1", "s1", "POWER", 2.0)]
        return [("2025-11-30T00:00:00.000000Z", "a1", "s1", "POWER", 1.0),
                ("2025-11-30T00:00:00.000000Z", "a1", "s1", "POWER", 3.0)]


def test_a_bucket_that_came_as_two_view_rows_is_read_again_with_sample_by() -> None:
    client = _TwoSitesClient()
    store = TelemetryStore(client)  # type: ignore[arg-type]
    q = _query()
    rows = store._buckets(q, 100, None, ROLLUP_1M, None)
    assert rows == [("2025-11-30T00:00:00.000000Z", "a1", "s1", "POWER", 2.0)]
    assert ["SAMPLE BY" in sql for sql in client.sql] == [False, True]
