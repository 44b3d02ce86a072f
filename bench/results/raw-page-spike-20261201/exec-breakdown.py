"""Eleventh session, issue 12: one 1-minute bucket page (dense asset-day) read over PG wire
and over /exec (api.questdb_pages of commit b7d0f68, reverted after it), then the store's steps on the rows:
duplicate-key check, sort, rows_json; medians of 20 alternating pairs in ms.
Run: .venv/bin/python bench/results/raw-page-spike-20261201/exec-breakdown.py bucket_1m"""
import os, random, statistics, sys, time
sys.path.insert(0, os.getcwd())
from api.params import parse_telemetry_query
from api import questdb as Q
from api.questdb_pages import QuestDBPageReader
from api.rows_json import rows_json
from bench.query_dense import _manifest_path, _read_manifest, _requests_for
from config.settings import load_settings
class Args(dict):
    def getlist(self, key): return [self[key]] if key in self else []
s = load_settings(); manifest = _read_manifest(_manifest_path(s))
client = Q.QuestDBClient(s.questdb.host, s.questdb.pg_port, s.questdb.pg_user, s.questdb.pg_password)
reader = QuestDBPageReader(s.questdb.host, s.questdb.http_port)
st = Q.TelemetryStore(client)
rng = random.Random(5)
T = {k: [] for k in ("pg_q","pg_check","pg_sort","pg_json","ex_q","ex_check","ex_sort","ex_json")}
for i in range(23):
    q = parse_telemetry_query(Args(_requests_for(sys.argv[1], rng, manifest, time.time()).params))
    view = st._bucket_source(q); fresh = st._freshness()
    sql, params = Q.build_bucket_sql(q, q.limit+1, None, view, fresh, sort_ties=False, rows_as_buckets=True)
    for w in (("pg","ex") if i%2 else ("ex","pg")):
        t0=time.perf_counter()
        r = client.query(sql, params, text_timestamps=True) if w=="pg" else reader.query(sql, params)
        t1=time.perf_counter(); len(set(map(Q._BUCKET_IDENTITY, r))); t2=time.perf_counter()
        r.sort(key=Q._BUCKET_KEY); t3=time.perf_counter(); rows_json(Q._BUCKET_COLUMNS, r[:10000]); t4=time.perf_counter()
        if i>=3:
            for k,v in zip(("q","check","sort","json"),(t1-t0,t2-t1,t3-t2,t4-t3)): T[f"{w}_{k}"].append(v*1000)
print({k: round(statistics.median(v),1) for k,v in T.items()})
