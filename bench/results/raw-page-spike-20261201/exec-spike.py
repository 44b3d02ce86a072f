"""Spike (eleventh session, issue 12): rows of the API's page queries read through QuestDB's
HTTP /exec and parsed by orjson, against psycopg2 over PG wire (execute + fetchall), the same
SQL (the store's, parameters inlined), a raw first page and a 1-minute bucket page of a dense
asset-day, alternating; 20 timed pairs per kind after 3 warm-up ones.
Run: .venv/bin/python bench/results/raw-page-spike-20261201/exec-spike.py
"""
import os
import random
import statistics
import sys
import time

import orjson
import psycopg2
import urllib3

sys.path.insert(0, os.getcwd())
from api import questdb as Q  # noqa: E402
from api.params import parse_telemetry_query  # noqa: E402
from bench.query_dense import _manifest_path, _read_manifest, _requests_for  # noqa: E402
from config.settings import load_settings  # noqa: E402


class Args(dict):
    def getlist(self, key):
        return [self[key]] if key in self else []


settings = load_settings()
manifest = _read_manifest(_manifest_path(settings))
conn = psycopg2.connect(host=settings.questdb.host, port=settings.questdb.pg_port,
                        user=settings.questdb.pg_user, password=settings.questdb.pg_password,
                        dbname="qdb")
conn.autocommit = True
cur = conn.cursor()
http = urllib3.HTTPConnectionPool(settings.questdb.host, settings.questdb.http_port, maxsize=1)
store = Q.TelemetryStore(Q.QuestDBClient(settings.questdb.host, settings.questdb.pg_port,
                                         settings.questdb.pg_user, settings.questdb.pg_password))
rng = random.Random(7)


def sql_for(kind):
    q = parse_telemetry_query(Args(_requests_for(kind, rng, manifest, time.time()).params))
    if kind == "raw":
        sql, params = Q.build_raw_sql(q, q.limit + 1, None, sort_ties=False)
    else:
        view = store._bucket_source(q)
        sql, params = Q.build_bucket_sql(q, q.limit + 1, None, view, store._freshness(),
                                         sort_ties=False, rows_as_buckets=True)
    return cur.mogrify(sql, Q._adapt(params)).decode()


def pg(sql):
    cur.execute(sql)
    return cur.fetchall()


def exec_(sql):
    r = http.request("GET", "/exec", fields={"query": sql}, preload_content=True)
    body = orjson.loads(r.data)
    return body["dataset"]


for kind in ("raw", "bucket_1m"):
    t = {"pg": [], "exec": []}
    for i in range(23):
        sql = sql_for(kind)
        for way in (("pg", "exec") if i % 2 else ("exec", "pg")):
            t0 = time.perf_counter()
            rows = pg(sql) if way == "pg" else exec_(sql)
            dt = (time.perf_counter() - t0) * 1000
            if i >= 3:
                t[way].append(dt)
        if i == 0:
            print(kind, "rows", len(rows), "first", rows[0])
    print(kind, {w: {"p50": round(statistics.median(v), 1), "max": round(max(v), 1)}
                 for w, v in t.items()}, "load", [round(x, 2) for x in os.getloadavg()])
