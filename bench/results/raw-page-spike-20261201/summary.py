"""The P E E P and E P P E passes of ab-exec-http.sh and the G P P G pass of ab-exec-gc.sh
(G: /exec with orjson's parse under gc_paused; raw_first/raw_next and bucket_1m only) as one table (c1 and c8 p50 / p99 ms through the API,
QuestDB over PG wire p50 and /exec p50, load average before each run).
Run: .venv/bin/python bench/results/raw-page-spike-20261201/summary.py"""
import json
from pathlib import Path

HERE = Path(__file__).parent
runs = [("P", 1), ("E", 2), ("E", 3), ("P", 4), ("E", 5), ("P", 6), ("P", 7), ("E", 8),
        ("G", 9), ("P", 10), ("P", 11), ("G", 12)]
kinds = ("raw_first", "raw_next", "bucket_1m", "bucket_1h_90d_site")
data = {r: json.loads((HERE / f"query-dense-{r[0]}-run{r[1]}.json").read_text()) for r in runs}
print("arm run load_before  " + "  ".join(kinds))
for r in runs:
    d = data[r]
    q = d["query"]["dense"]
    print(f"{r[0]} {r[1]} load {d['context']['load_avg_before'][0]:.2f}")
    for k in kinds:
        if k not in q:
            continue
        v = q[k]
        print(f"   {k:20s} c1 {v['c1']['p50_ms']:6.1f} / {v['c1']['p99_ms']:6.1f}   "
              f"c8 {v['c8']['p50_ms']:6.1f} / {v['c8']['p99_ms']:7.1f}   "
              f"PG {v['db_p50_ms']:5.1f}  exec {v['db_http']['c1']['p50_ms']:5.1f}  "
              f"source {','.join(v['c1'].get('source') or [])}")
