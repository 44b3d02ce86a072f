"""Spike: QuestDB's own time for the 1-minute bucket page of a dense asset-day, variants."""
import sys, time, statistics, psycopg2
conn = psycopg2.connect(host="127.0.0.1", port=8812, user="admin", password="quest", dbname="qdb"); conn.autocommit = True
cur = conn.cursor()
lo, hi = "'2026-11-28T00:00:00.000000Z'", "'2026-11-29T00:00:00.000000Z'"
asset = "'qdense-asset-01-01'"
W = f"WHERE timestamp >= {lo} AND timestamp < {hi} AND asset_id = {asset}"
V = {
 "current": f"SELECT timestamp, asset_id, sensor_id, sensor_type, value FROM (SELECT timestamp, asset_id, sensor_id, sensor_type, sum(value_sum) / sum(value_count) value FROM sensor_readings_1m {W} SAMPLE BY 1m ALIGN TO CALENDAR) ORDER BY timestamp LIMIT 10000",
 "current_ties": f"SELECT timestamp, asset_id, sensor_id, sensor_type, value FROM (SELECT timestamp, asset_id, sensor_id, sensor_type, sum(value_sum) / sum(value_count) value FROM sensor_readings_1m {W} SAMPLE BY 1m ALIGN TO CALENDAR) ORDER BY timestamp, asset_id, sensor_id LIMIT 10000",
 "plain": f"SELECT timestamp, asset_id, sensor_id, sensor_type, value_sum / value_count value FROM sensor_readings_1m {W} LIMIT 10000",
 "plain_order": f"SELECT timestamp, asset_id, sensor_id, sensor_type, value_sum / value_count value FROM sensor_readings_1m {W} ORDER BY timestamp LIMIT 10000",
 "count_only": f"SELECT count() FROM sensor_readings_1m {W}",
}
n = int(sys.argv[1]) if len(sys.argv) > 1 else 30
for name, sql in V.items():
    ex, fe = [], []
    for i in range(n):
        t0 = time.perf_counter(); cur.execute(sql); t1 = time.perf_counter(); rows = cur.fetchall(); t2 = time.perf_counter()
        ex.append((t1 - t0) * 1000); fe.append((t2 - t1) * 1000)
    ex.sort()
    print(f"{name:14s} rows {len(rows):6d} execute p50 {statistics.median(ex):6.1f} p95 {ex[int(.95*n)]:6.1f} ms; fetchall p50 {statistics.median(fe):5.1f} ms")
