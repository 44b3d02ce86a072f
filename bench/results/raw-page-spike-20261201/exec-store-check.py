"""Eleventh session, issue 12 (needs the code of commit b7d0f68, reverted after it):
TelemetryStore pages read over PG wire and over /exec
(api.questdb_pages) on the loaded dense fleet: the same bytes and the same next-page key for
every kind (raw first and next pages, bucket pages from both views), and each way's time
in-process (query + page printing, no HTTP), alternating, 20 requests per kind after 3
warm-up ones. Run: .venv/bin/python bench/results/raw-page-spike-20261201/exec-store-check.py
"""
import os
import random
import statistics
import sys
import time

sys.path.insert(0, os.getcwd())
from api.params import Cursor, parse_telemetry_query  # noqa: E402,F401
from api.questdb import QuestDBClient, TelemetryStore  # noqa: E402
from api.questdb_pages import QuestDBPageReader  # noqa: E402
from bench.query_dense import _manifest_path, _read_manifest, _requests_for  # noqa: E402
from config.settings import load_settings  # noqa: E402


class Args(dict):
    def getlist(self, key):
        return [self[key]] if key in self else []


s = load_settings()
manifest = _read_manifest(_manifest_path(s))
client = QuestDBClient(s.questdb.host, s.questdb.pg_port, s.questdb.pg_user, s.questdb.pg_password)
ways = {"pgwire": TelemetryStore(client),
        "exec": TelemetryStore(client, page_reader=QuestDBPageReader(s.questdb.host,
                                                                     s.questdb.http_port))}
rng = random.Random(13)
mismatches = 0
for kind in ("raw", "raw_next", "bucket_1m", "bucket_1h_7d", "bucket_1h_90d_site"):
    t = {w: [] for w in ways}
    for i in range(23):
        q = parse_telemetry_query(Args(_requests_for("raw" if kind == "raw_next" else kind, rng,
                                                     manifest, time.time()).params))
        after = None
        if kind == "raw_next":
            after = ways["pgwire"].readings(q, q.limit, None).next_key
        out = {}
        for w in (tuple(ways) if i % 2 else tuple(ways)[::-1]):
            t0 = time.perf_counter()
            page = ways[w].readings(q, q.limit, after)
            body = page.json_data()
            if i >= 3:
                t[w].append((time.perf_counter() - t0) * 1000)
            out[w] = (body, page.next_key, page.source)
        if out["pgwire"] != out["exec"]:
            mismatches += 1
            print(kind, i, "MISMATCH", out["pgwire"][1:], out["exec"][1:],
                  len(out["pgwire"][0]), len(out["exec"][0]))
    print(kind, {w: {"p50": round(statistics.median(v), 1), "max": round(max(v), 1)}
                 for w, v in t.items()}, "bytes", len(out["exec"][0]), "source", out["exec"][2],
          "load", [round(x, 2) for x in os.getloadavg()], flush=True)
print("mismatches", mismatches)
