"""Spike (eleventh session, issue 12): the dense raw page read by connectorx (Rust, PG wire
simple protocol, into Arrow) and printed by polars write_json (Rust), against psycopg2 +
api.rows_json, same SQL, 20 timed pairs after 3 warm-up ones. Needs polars and connectorx on
sys.path (pip install --target /tmp/spikelib polars connectorx); not a project dependency."""
import sys, time, statistics, io
sys.path.insert(0, '/tmp/spikelib'); sys.path.insert(0, '/work/main')
import connectorx as cx, polars as pl, psycopg2, orjson
from api.questdb import QuestDBClient
from api.rows_json import rows_json
from io_connectors.questdb_schema import SENSOR_READING_COLUMNS
uri = "postgresql://admin:quest@127.0.0.1:8812/qdb"
def sql(day):
    return (f"SELECT * FROM sensor_readings WHERE timestamp >= '2026-11-{day}T00:00:00.000000Z' AND timestamp < '2026-11-{day+1}T00:00:00.000000Z' "
       "AND asset_id = 'qdense-asset-02-08' ORDER BY timestamp LIMIT 10001")
c = QuestDBClient("127.0.0.1", 8812, "admin", "quest")
ts = pl.col("timestamp")
def fmt(col):
    c_ = pl.col(col)
    return (pl.when(c_.dt.microsecond() % 1000 == 0).then(c_.dt.strftime("%Y-%m-%dT%H:%M:%S%.3fZ"))
            .otherwise(c_.dt.strftime("%Y-%m-%dT%H:%M:%S%.6fZ")).alias(col))
T = {k: [] for k in ("cx_fetch", "pl_json", "pg_fetch", "rows_json")}
for i in range(23):
    d = 24 + i % 6
    t0 = time.perf_counter(); df = cx.read_sql(uri, sql(d), protocol="simple", return_type="polars"); t1 = time.perf_counter()
    out = df.with_columns(fmt("timestamp"), fmt("ingested_at"),
                          pl.when(pl.col("value").is_finite()).then(pl.col("value")).alias("value")).write_json()
    t2 = time.perf_counter()
    rows = c.query(sql(d), text_timestamps=True); t3 = time.perf_counter()
    ref = rows_json(SENSOR_READING_COLUMNS, rows); t4 = time.perf_counter()
    if i >= 3:
        for k, v in zip(T, (t1-t0, t2-t1, t3-t2, t4-t3)): T[k].append(v*1000)
    if i == 3:
        a, b = orjson.loads(out), orjson.loads(ref)
        print("equal parsed:", a == b, "same bytes:", out.encode() == ref if isinstance(out, str) else out == ref)
        print(out[:400]); print(ref[:400])
for k, v in T.items(): print(k, "p50", round(statistics.median(v),1), "max", round(max(v),1))
