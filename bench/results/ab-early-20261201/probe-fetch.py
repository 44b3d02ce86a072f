"""How long the benchmark probe's visibility query takes through the API, next to a load."""
import json, statistics, sys, time, requests
sys.path.insert(0, "/work/wt-lead")
from config.settings import load_settings
from bench.probes import api_endpoint, PROBE_ASSET
s = load_settings(); base, key = api_endpoint(s)
sess = requests.Session(); sess.headers["Authorization"] = f"Bearer {key}"
since = int(time.time() * 1000) - 30_000
out = []
for i in range(150):
    t0 = time.perf_counter()
    r = sess.get(f"{base}/api/v1/telemetry", params={"asset_id": PROBE_ASSET[1], "sensor_id": "probe-x-mqtt",
                 "start_time": str(since), "end_time": str(int(time.time()*1000)+600_000), "limit": "10000"}, timeout=10)
    r.raise_for_status()
    out.append((time.perf_counter() - t0) * 1000)
    time.sleep(0.1)
out.sort()
q = lambda p: out[min(len(out)-1, int(p*len(out)))]
res = {"n": len(out), "p50_ms": round(q(0.5),1), "p95_ms": round(q(0.95),1), "p99_ms": round(q(0.99),1), "mean_ms": round(statistics.mean(out),1)}
print(json.dumps(res))
