"""QuestDB tables of the pipeline: the single definition the stack, the sinks and the API share.

Both tables are WAL tables partitioned by day with a 90-day TTL. DEDUP UPSERT
KEYS make every write idempotent, so the at-least-once sinks can retry freely.
"""

from __future__ import annotations

__all__ = ["SENSOR_READINGS", "ALARMS", "DDL_STATEMENTS", "SENSOR_READING_COLUMNS", "ALARM_COLUMNS"]

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

_SENSOR_READINGS_DDL = f"""
CREATE TABLE IF NOT EXISTS {SENSOR_READINGS} (
    timestamp TIMESTAMP,
    event_id VARCHAR,
    site_id SYMBOL CAPACITY 1024 CACHE INDEX,
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
