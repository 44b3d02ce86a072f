"""QuestDB tables of the pipeline: the single definition the stack, the sinks and the API share.

Both tables are WAL tables partitioned by day with a 90-day TTL. DEDUP UPSERT
KEYS make every write idempotent, so the at-least-once sinks can retry freely.
"""

from __future__ import annotations

__all__ = ["SENSOR_READINGS", "ALARMS", "DDL_STATEMENTS", "MIGRATIONS", "SENSOR_READING_COLUMNS",
           "ALARM_COLUMNS"]

SENSOR_READINGS = "sensor_readings"
ALARMS = "alarms"

# Column order of sensor_readings (designated timestamp first).
SENSOR_READING_COLUMNS = (
    "timestamp", "event_id", "site_id", "asset_id", "sensor_id", "sensor_type", "value",
    "unit", "quality_flag", "site_name", "asset_type", "location", "ingested_at",
)

ALARM_COLUMNS = (
    "timestamp", "alarm_id", "site_id", "asset_id", "sensor_id", "sensor_type", "severity",
    "state", "value", "threshold", "reason", "event_id", "ingested_at",
)

# Only asset_id is indexed. Every commit of the job lands out of order (readings carry
# their sensors' clocks), and an out-of-order commit rewrites each index's tail: with the
# site_id index too a 750-row commit cost QuestDB 54.5 ms of CPU, without it 43.8
# (bench/results/questdb-commits-20261130T125650Z.json), ~0.1 core at the job's ~10
# commits/s. No query kind of the dense query benchmark got slower without it
# (docs/benchmarks.md, "Dense queries": a site filter scans the time range's site_id
# column, which is small); asset_id's index is what an asset-day query needs.
_SENSOR_READINGS_DDL = f"""
CREATE TABLE IF NOT EXISTS {SENSOR_READINGS} (
    timestamp TIMESTAMP,
    event_id VARCHAR,
    site_id SYMBOL CAPACITY 1024 CACHE,
    asset_id SYMBOL CAPACITY 65536 CACHE INDEX,
    sensor_id SYMBOL CAPACITY 262144 CACHE,
    sensor_type SYMBOL CAPACITY 64 CACHE,
    value DOUBLE,
    unit SYMBOL CAPACITY 64 CACHE,
    quality_flag SYMBOL CAPACITY 16 CACHE,
    site_name VARCHAR,
    asset_type SYMBOL CAPACITY 256 CACHE,
    location VARCHAR,
    ingested_at TIMESTAMP
) TIMESTAMP(timestamp) PARTITION BY DAY TTL 90 DAYS WAL
DEDUP UPSERT KEYS(timestamp, event_id)
"""

_ALARMS_DDL = f"""
CREATE TABLE IF NOT EXISTS {ALARMS} (
    timestamp TIMESTAMP,
    alarm_id VARCHAR,
    site_id SYMBOL CAPACITY 1024 CACHE,
    asset_id SYMBOL CAPACITY 65536 CACHE,
    sensor_id SYMBOL CAPACITY 262144 CACHE,
    sensor_type SYMBOL CAPACITY 64 CACHE,
    severity SYMBOL CAPACITY 16 CACHE,
    state SYMBOL CAPACITY 8 CACHE,
    value DOUBLE,
    threshold DOUBLE,
    reason VARCHAR,
    event_id VARCHAR,
    ingested_at TIMESTAMP
) TIMESTAMP(timestamp) PARTITION BY DAY TTL 90 DAYS WAL
DEDUP UPSERT KEYS(timestamp, alarm_id, state)
"""

DDL_STATEMENTS = (_SENSOR_READINGS_DDL.strip(), _ALARMS_DDL.strip())

# Run after DDL_STATEMENTS on every start; each is idempotent. They bring tables created by
# an earlier version to the DDL above (CREATE TABLE IF NOT EXISTS leaves them as they are).
MIGRATIONS = (
    # Before 2026-11-30 site_id was indexed too (see above).
    f"ALTER TABLE {SENSOR_READINGS} ALTER COLUMN site_id DROP INDEX",
)
