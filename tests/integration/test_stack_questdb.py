"""The stack's QuestDB: the pipeline's tables as DESIGN.md defines them, ILP writes, PG-wire reads.

Runs against the running stack ([questdb] settings); fails with a clear message
when QuestDB is unreachable. Test rows use a unique asset id, so they never
mix with other data.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import psycopg2
import pytest
from questdb import TimestampNanos

from config.settings import load_settings
from io_connectors.questdb_http import as_dicts, questdb_http_url
from io_connectors.questdb_schema import (
    ALARMS,
    DDL_STATEMENTS,
    MIGRATIONS,
    ROLLUP_1H,
    ROLLUP_1M,
    ROLLUP_COLUMNS,
    SENSOR_READING_COLUMNS,
    SENSOR_READINGS,
)
from runners.stack.questdb import sync_asset_index
from tests.integration.conftest import qdb_exec, questdb_pg, questdb_sender

pytestmark = pytest.mark.integration

SETTINGS = load_settings()
SEED_QUERY = ("SELECT * FROM sensor_readings WHERE asset_id='asset-001' "
              "ORDER BY timestamp DESC LIMIT 100;")


def _exec(sql: str) -> dict[str, Any]:
    return qdb_exec(SETTINGS, sql)


def _rows(sql: str) -> list[dict[str, Any]]:
    return as_dicts(_exec(sql))


def _poll(fn: Callable[[], Any], timeout_s: float = 20.0) -> Any:
    """WAL tables apply writes asynchronously: retry until ``fn`` returns something truthy."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = fn()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.2)


@pytest.fixture(scope="module", autouse=True)
def _questdb_up() -> None:
    _exec("SELECT 1")      # fails the module with the settings to check when unreachable


@pytest.mark.parametrize("table", [SENSOR_READINGS, ALARMS])
def test_table_partitioning_wal_dedup_ttl(table: str) -> None:
    rows = _rows("SELECT table_name, designatedTimestamp, partitionBy, walEnabled, dedup, "
                 "ttlValue, ttlUnit FROM tables()")
    meta = {r["table_name"]: r for r in rows}
    assert table in meta, f"table {table} missing; tables: {sorted(meta)}"
    m = meta[table]
    assert (m["designatedTimestamp"], m["partitionBy"], m["walEnabled"], m["dedup"]) == \
        ("timestamp", "DAY", True, True)
    assert (m["ttlValue"], m["ttlUnit"]) == (90, "DAY")


def test_dedup_keys_and_indexes_of_sensor_readings() -> None:
    cols = {r["column"]: r for r in _rows(f"SELECT \"column\", type, indexed, upsertKey "
                                          f"FROM table_columns('{SENSOR_READINGS}')")}
    assert list(cols) == list(SENSOR_READING_COLUMNS)
    assert {c for c, r in cols.items() if r["upsertKey"]} == {"timestamp", "event_id"}
    assert cols["event_id"]["type"] == "VARCHAR"
    # `up` gave asset_id the index [questdb] asset_id_index asks for; nothing else has one.
    expected = {"asset_id"} if SETTINGS.questdb.asset_id_index else set()
    assert {c for c, r in cols.items() if r["indexed"]} == expected


def test_migrations_drop_the_site_index_of_an_older_table_and_keep_its_rows() -> None:
    """A sensor_readings table made by an earlier version (site_id indexed) is brought to
    today's DDL by the migrations every `up` runs; its rows stay, and running them again
    changes nothing."""
    old_ddl = DDL_STATEMENTS[0].replace("site_id SYMBOL CAPACITY 1024 CACHE,",
                                        "site_id SYMBOL CAPACITY 1024 CACHE INDEX,")
    assert old_ddl != DDL_STATEMENTS[0]
    table = f"migrate_{uuid.uuid4().hex[:8]}"
    # The table's own migrations (ALTERs of sensor_readings).
    migrations = [m.replace(f"TABLE {SENSOR_READINGS} ", f"TABLE {table} ") for m in MIGRATIONS
                  if m.startswith(f"ALTER TABLE {SENSOR_READINGS} ")]
    assert all(f"TABLE {table} " in m for m in migrations)
    _exec(old_ddl.replace(f"EXISTS {SENSOR_READINGS} ", f"EXISTS {table} "))
    try:
        _exec(f"INSERT INTO {table} (timestamp, event_id, site_id, asset_id, sensor_id) "
              "VALUES (now(), 'e1', 's1', 'a1', 'x1')")

        def indexed() -> set[str]:
            return {r["column"] for r in _rows(f"SELECT \"column\", indexed FROM "
                                               f"table_columns('{table}')") if r["indexed"]}

        assert indexed() == {"site_id", "asset_id"}
        for _ in range(2):
            for statement in migrations:
                _exec(statement)
            assert _poll(lambda: indexed() == {"asset_id"}, 30), indexed()
        assert _poll(lambda: _exec(f"SELECT count() FROM {table}")["dataset"][0][0] == 1, 30)
    finally:
        _exec(f"DROP TABLE IF EXISTS {table}")


def test_asset_index_setting_adds_and_drops_the_index_only_when_it_differs() -> None:
    """[questdb] asset_id_index: what `up` runs on every start drops the asset_id index of a
    table that has it and adds it back; a second start with the same setting issues no ALTER.
    The rows stay and the table stays writable (QuestDB applies a WAL table's ALTER
    asynchronously: a failing one would suspend the table)."""
    table = f"asset_index_{uuid.uuid4().hex[:8]}"
    _exec(DDL_STATEMENTS[0].replace(f"EXISTS {SENSOR_READINGS} ", f"EXISTS {table} "))
    base_url = questdb_http_url(SETTINGS.questdb.host, SETTINGS.questdb.http_port)

    def indexed() -> set[str]:
        return {r["column"] for r in _rows(f"SELECT \"column\", indexed FROM "
                                           f"table_columns('{table}')") if r["indexed"]}

    def count() -> int:
        return _exec(f"SELECT count() FROM {table}")["dataset"][0][0]

    try:
        assert indexed() == {"asset_id"}
        assert sync_asset_index(base_url, True, table) is False
        for n, (setting, expected) in enumerate(((False, set()), (True, {"asset_id"}))):
            assert sync_asset_index(base_url, setting, table) is True
            _exec(f"INSERT INTO {table} (timestamp, event_id, site_id, asset_id, sensor_id) "
                  f"VALUES (now(), 'e{n}', 's1', 'a1', 'x1')")
            assert _poll(lambda e=expected: indexed() == e, 30), indexed()
            assert sync_asset_index(base_url, setting, table) is False
            assert _poll(lambda n=n: count() == n + 1, 30), count()
        suspended = _rows(f"SELECT suspended FROM wal_tables() WHERE name = '{table}'")
        assert suspended == [{"suspended": False}]
    finally:
        _exec(f"DROP TABLE IF EXISTS {table}")


def test_rollup_views_exist_with_their_retention() -> None:
    """`up` created both rollups ([questdb] rollups, on in the test profile): the 1-minute
    one from sensor_readings, refreshed by a 1-minute timer and kept 90 days, the 1-hour one
    from it, refreshed after each of its commits and kept 2 years."""
    views = {r["view_name"]: r for r in _rows("SELECT view_name, refresh_type, "
                                              "base_table_name, view_status, timer_interval, "
                                              "timer_interval_unit FROM materialized_views()")}
    assert {v: (views[v]["base_table_name"], views[v]["refresh_type"], views[v]["view_status"])
            for v in (ROLLUP_1M, ROLLUP_1H)} == {
        ROLLUP_1M: (SENSOR_READINGS, "timer", "valid"),
        ROLLUP_1H: (ROLLUP_1M, "immediate", "valid")}
    assert (views[ROLLUP_1M]["timer_interval"], views[ROLLUP_1M]["timer_interval_unit"]) == (
        1, "MINUTE")
    tables = {r["table_name"]: r for r in _rows("SELECT table_name, partitionBy, ttlValue, "
                                                "ttlUnit FROM tables()")}
    assert (tables[ROLLUP_1M]["partitionBy"], tables[ROLLUP_1M]["ttlValue"],
            tables[ROLLUP_1M]["ttlUnit"]) == ("DAY", 90, "DAY")
    assert (tables[ROLLUP_1H]["partitionBy"], tables[ROLLUP_1H]["ttlValue"],
            tables[ROLLUP_1H]["ttlUnit"]) == ("MONTH", 2, "YEAR")
    for view in (ROLLUP_1M, ROLLUP_1H):
        cols = {r["column"]: r for r in _rows(f"SELECT \"column\", indexed "
                                              f"FROM table_columns('{view}')")}
        assert tuple(cols) == ROLLUP_COLUMNS
        assert {c for c, r in cols.items() if r["indexed"]} == {"asset_id"}


# Properties of tables() that DDL sets (not the statistics QuestDB also reports there).
_TABLE_PROPERTIES = frozenset({"designatedTimestamp", "partitionBy", "walEnabled", "dedup",
                               "ttlValue", "ttlUnit", "directoryName"})


def _wal_applied(timeout_s: float = 30.0) -> None:
    """Wait until both tables have applied every WAL transaction committed so far."""
    def pending() -> list[dict[str, Any]]:
        return [r for r in _rows("SELECT name, writerTxn, sequencerTxn FROM wal_tables()")
                if r["name"] in (SENSOR_READINGS, ALARMS) and r["writerTxn"] < r["sequencerTxn"]]

    assert _poll(lambda: not pending(), timeout_s), f"WAL not applied: {pending()}"


def test_ddl_is_idempotent() -> None:
    """Re-running the DDL (every `up` does) changes no column, key or partitioning and
    keeps every row: it must never drop or recreate a table."""
    def snapshot() -> dict[str, Any]:
        out: dict[str, Any] = {}
        for table in (SENSOR_READINGS, ALARMS):
            out[f"{table} columns"] = _rows(f"SHOW COLUMNS FROM {table}")
            out[f"{table} table"] = [
                {k: v for k, v in row.items() if k in _TABLE_PROPERTIES}
                for row in _rows(f"SELECT * FROM tables() WHERE table_name = '{table}'")]
            out[f"{table} rows"] = _exec(f"SELECT count() FROM {table}")["dataset"][0][0]
        return out

    _wal_applied()
    before = snapshot()
    assert all(before[f"{t} table"] and "partitionBy" in before[f"{t} table"][0]
               for t in (SENSOR_READINGS, ALARMS)), before
    for statement in (*DDL_STATEMENTS, *MIGRATIONS):
        _exec(statement)
    _wal_applied()
    assert snapshot() == before


def test_ilp_http_write_then_pg_read_and_dedup() -> None:
    asset = f"test-asset-{uuid.uuid4().hex[:10]}"
    event_id = str(uuid.uuid4())
    ts = TimestampNanos(time.time_ns() // 1000 * 1000)
    with questdb_sender(SETTINGS) as sender:
        buf = sender.new_buffer()
        # The same reading twice: DEDUP UPSERT KEYS(timestamp, event_id) keeps one row.
        for value in (1.5, 2.5):
            buf.row(SENSOR_READINGS,
                    symbols={"site_id": "test-site", "asset_id": asset, "sensor_id": "s1",
                             "sensor_type": "TEMPERATURE", "unit": "C",
                             "quality_flag": "GOOD"},
                    columns={"event_id": event_id, "value": value,
                             "ingested_at": TimestampNanos.now()},
                    at=ts)
        sender.flush(buf)
        assert len(buf) == 0, "flush must clear the buffer only after success"

    def read() -> list[tuple[Any, ...]]:
        with questdb_pg(SETTINGS, connect_timeout=5) as conn, conn.cursor() as cur:
            cur.execute("SELECT event_id, value, timestamp FROM sensor_readings "
                        "WHERE asset_id = %s", (asset,))
            return cur.fetchall()

    rows = _poll(read)
    assert len(rows) == 1, f"expected one deduplicated row for {asset}, got {rows}"
    assert rows[0][0] == event_id and rows[0][1] == 2.5  # upsert: the last write wins
    written = datetime.fromtimestamp(ts.value / 1e9, tz=UTC).replace(tzinfo=None)
    assert abs((rows[0][2] - written).total_seconds()) < 1e-3


def test_pg_wire_refuses_wrong_password() -> None:
    questdb_pg(SETTINGS, connect_timeout=5).close()  # reachable: the configured one is let in
    q = SETTINGS.questdb
    with pytest.raises(psycopg2.OperationalError):
        psycopg2.connect(host=q.host, port=q.pg_port, dbname="qdb", user=q.pg_user,
                         password="not-the-password-" + uuid.uuid4().hex, connect_timeout=5)


def test_seed_query_through_exec() -> None:
    body = _exec(SEED_QUERY)
    assert [c["name"] for c in body["columns"]] == list(SENSOR_READING_COLUMNS)
    assert body["count"] <= 100
