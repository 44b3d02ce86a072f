"""QuestDB tables of the pipeline: the single definition the stack, the sinks and the API share.

Both tables are WAL tables partitioned by day with a 90-day TTL. DEDUP UPSERT
KEYS make every write idempotent, so the at-least-once sinks can retry freely.

Two rollups of sensor_readings are QuestDB materialized views (issue 16, part 2):
1-minute and 1-hour buckets per sensor with the sum, count, min and max of ``value``
(an average over several buckets is ``sum(value_sum) / sum(value_count)``, never an
average of averages). The 1-minute view is refreshed incrementally by a timer, once a
minute (``REFRESH EVERY 1m``: an ``IMMEDIATE`` refresh after every commit cost QuestDB CPU
on each written row); the 1-hour view is built on the 1-minute one (cascading, refreshed
after each of its commits), so a refresh reads at most 60 rows per sensor and hour, not
the raw rows of the hour. The API reads the buckets newer than the last refresh from the
raw rows (the "raw tail", :mod:`api.questdb`; decision 0006, "Fourth pass").
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SENSOR_READINGS", "ALARMS", "DDL_STATEMENTS", "MIGRATIONS", "asset_index_statement",
           "SENSOR_READING_COLUMNS", "ALARM_COLUMNS", "ROLLUP_1M", "ROLLUP_1H", "ROLLUPS",
           "ROLLUP_COLUMNS", "ROLLUP_STATEMENTS", "ROLLUP_REFRESH_EVERY", "Column", "TABLE_COLUMNS",
           "SYMBOL_COLUMNS"]

SENSOR_READINGS = "sensor_readings"
ALARMS = "alarms"
ROLLUP_1M = "sensor_readings_1m"
ROLLUP_1H = "sensor_readings_1h"
# view -> bucket length in seconds, finest first.
ROLLUPS = {ROLLUP_1M: 60, ROLLUP_1H: 3600}
# The 1-minute view's refresh timer (QuestDB 9.3.1 accepts no unit shorter than m).
ROLLUP_REFRESH_EVERY = "1m"

@dataclass(frozen=True)
class Column:
    """One column of a pipeline table: the single definition its DDL, the sink's ILP rows
    (which columns are SYMBOLs) and the API's column lists are derived from."""

    name: str
    type: str                        # QuestDB type: TIMESTAMP, VARCHAR, SYMBOL, DOUBLE
    capacity: int | None = None      # SYMBOL only: expected distinct values
    index: bool = False              # SYMBOL only: a bitmap index

    def ddl(self) -> str:
        if self.type != "SYMBOL":
            return f"{self.name} {self.type}"
        return f"{self.name} SYMBOL CAPACITY {self.capacity} CACHE{' INDEX' if self.index else ''}"


def _symbol(name: str, capacity: int, index: bool = False) -> Column:
    return Column(name, "SYMBOL", capacity, index)


# Only asset_id is indexed. Every commit of the job lands out of order (readings carry
# their sensors' clocks), and an out-of-order commit rewrites each index's tail: with the
# site_id index too a 750-row commit cost QuestDB 54.5 ms of CPU, without it 43.8
# (bench/results/questdb-commits-20261130T125650Z.json), ~0.1 core at the job's ~10
# commits/s. No query kind of the dense query benchmark got slower without it
# (docs/benchmarks.md, "Dense queries": a site filter scans the time range's site_id
# column, which is small); asset_id's index is what an asset-day query needs. The table is
# created with it; on every start `[questdb] asset_id_index` adds or drops it to match
# (runners/stack/questdb.py, sync_asset_index).
# Designated timestamp first; the order is the column order of the table.
_SENSOR_READINGS_SPEC = (
    Column("timestamp", "TIMESTAMP"),
    Column("event_id", "VARCHAR"),
    _symbol("site_id", 1024),
    _symbol("asset_id", 65536, index=True),
    _symbol("sensor_id", 262144),
    _symbol("sensor_type", 64),
    Column("value", "DOUBLE"),
    _symbol("unit", 64),
    _symbol("quality_flag", 16),
    Column("site_name", "VARCHAR"),
    _symbol("asset_type", 256),
    Column("location", "VARCHAR"),
    Column("ingested_at", "TIMESTAMP"),
)

_ALARMS_SPEC = (
    Column("timestamp", "TIMESTAMP"),
    Column("alarm_id", "VARCHAR"),
    _symbol("site_id", 1024),
    _symbol("asset_id", 65536),
    _symbol("sensor_id", 262144),
    _symbol("sensor_type", 64),
    _symbol("severity", 16),
    _symbol("state", 8),
    Column("value", "DOUBLE"),
    Column("threshold", "DOUBLE"),
    Column("reason", "VARCHAR"),
    Column("event_id", "VARCHAR"),
    Column("ingested_at", "TIMESTAMP"),
)

TABLE_COLUMNS: dict[str, tuple[Column, ...]] = {
    SENSOR_READINGS: _SENSOR_READINGS_SPEC,
    ALARMS: _ALARMS_SPEC,
}
SYMBOL_COLUMNS: dict[str, frozenset[str]] = {
    table: frozenset(c.name for c in spec if c.type == "SYMBOL")
    for table, spec in TABLE_COLUMNS.items()
}
SENSOR_READING_COLUMNS = tuple(c.name for c in _SENSOR_READINGS_SPEC)
ALARM_COLUMNS = tuple(c.name for c in _ALARMS_SPEC)


def _table_ddl(table: str, dedup_keys: str) -> str:
    columns = ",\n".join(f"    {c.ddl()}" for c in TABLE_COLUMNS[table])
    return (f"CREATE TABLE IF NOT EXISTS {table} (\n{columns}\n"
            f") TIMESTAMP(timestamp) PARTITION BY DAY TTL 90 DAYS WAL\n"
            f"DEDUP UPSERT KEYS({dedup_keys})")


# Columns of both rollups. value_count counts non-null values (what avg() divides by),
# row_count every row (what the API's agg=count returns, count() on the raw rows).
ROLLUP_COLUMNS = ("timestamp", "site_id", "asset_id", "sensor_id", "sensor_type", "value_sum",
                  "value_count", "row_count", "value_min", "value_max")

# Retention: the 1-minute rollup as long as the raw rows (90 days), the 1-hour rollup two
# years. QuestDB's TTL drops whole partitions once their end is older than the TTL,
# measured from the newest row of the table capped at the wall clock; it must be a
# multiple of the partition size (units HOURS, DAYS, WEEKS, MONTHS, YEARS). A partition
# dropped by the TTL of a base table does not invalidate a view (checked on 9.3.1): the
# 1-hour view keeps its rows after the 1-minute view has dropped theirs. asset_id is
# indexed as in sensor_readings: a dense asset-day of 1-minute buckets read 846,659 rows of
# the view's day without it (36-191 ms), 14,400 through it (~30 ms, mostly the transfer).
_ROLLUP_1M_DDL = f"""
CREATE MATERIALIZED VIEW IF NOT EXISTS {ROLLUP_1M} REFRESH EVERY {ROLLUP_REFRESH_EVERY} AS (
    SELECT timestamp, site_id, asset_id, sensor_id, sensor_type,
           sum(value) value_sum, count(value) value_count, count() row_count,
           min(value) value_min, max(value) value_max
    FROM {SENSOR_READINGS}
    SAMPLE BY 1m
), INDEX (asset_id) PARTITION BY DAY TTL 90 DAYS
"""

_ROLLUP_1H_DDL = f"""
CREATE MATERIALIZED VIEW IF NOT EXISTS {ROLLUP_1H} AS (
    SELECT timestamp, site_id, asset_id, sensor_id, sensor_type,
           sum(value_sum) value_sum, sum(value_count) value_count, sum(row_count) row_count,
           min(value_min) value_min, max(value_max) value_max
    FROM {ROLLUP_1M}
    SAMPLE BY 1h
), INDEX (asset_id) PARTITION BY MONTH TTL 2 YEARS
"""

# A 1-minute view created before the timer (IMMEDIATE) is switched to it; idempotent.
_ROLLUP_1M_TIMER = f"ALTER MATERIALIZED VIEW {ROLLUP_1M} SET REFRESH EVERY {ROLLUP_REFRESH_EVERY}"

ROLLUP_STATEMENTS = (_ROLLUP_1M_DDL.strip(), _ROLLUP_1M_TIMER, _ROLLUP_1H_DDL.strip())

DDL_STATEMENTS = (_table_ddl(SENSOR_READINGS, "timestamp, event_id"),
                  _table_ddl(ALARMS, "timestamp, alarm_id, state"))



def asset_index_statement(indexed: bool, table: str = SENSOR_READINGS) -> str:
    """The ALTER that gives ``table``'s asset_id the index ``[questdb] asset_id_index`` asks
    for (runners/stack/questdb.py issues it on start only when the column differs). Why a
    setting: the index serves raw pages of an asset and costs ~40 % of every out-of-order
    commit (docs/decisions/0004-throughput.md, ninth and tenth sessions)."""
    return f"ALTER TABLE {table} ALTER COLUMN asset_id {'ADD' if indexed else 'DROP'} INDEX"


# Run after DDL_STATEMENTS on every start; each is idempotent. They bring tables created by
# an earlier version to the DDL above (CREATE TABLE IF NOT EXISTS leaves them as they are).
MIGRATIONS = (
    # Before 2026-11-30 site_id was indexed too (see above).
    f"ALTER TABLE {SENSOR_READINGS} ALTER COLUMN site_id DROP INDEX",
)

# The rollups are created on start with ``[questdb] rollups = true`` (the default;
# runners/stack/questdb.py). The 1-minute view refreshes on a timer: an IMMEDIATE refresh
# cost QuestDB CPU on the ingest path (docs/decisions/0006, "Fourth pass").
# IF NOT EXISTS: an existing view is kept (QuestDB has no CREATE OR REPLACE for them; a
# changed definition needs a DROP first). On a filled table the first
# refresh reads every raw row once (176M rows on the dense bench stack: see
# docs/benchmarks.md, "Dense queries"). Turning the setting off later does not drop them.
