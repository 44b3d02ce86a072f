"""Eleventh session, issue 12: the 1-minute bucket page's Python steps on the same rows, warm
(repeated on one list: set check, sort of a copy) and fresh (a new fetch each time: query, check,
sort, rows_json, then the whole store page), medians in ms. Needs spike.py next to it.
Run: .venv/bin/python bench/results/raw-page-spike-20261201/fresh-vs-warm.py"""
import sys, os, time, random, statistics
sys.path.insert(0, os.getcwd())
import importlib.util
spec=importlib.util.spec_from_file_location('spike',os.path.join(os.path.dirname(os.path.abspath(__file__)), 'spike.py')); m=importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
from api.params import parse_telemetry_query
from api import questdb as Q
from config.settings import load_settings
s=load_settings(); man=m._read_manifest(m._manifest_path(s))
c=m.Timed(s.questdb.host,s.questdb.pg_port,s.questdb.pg_user,s.questdb.pg_password)
st=Q.TelemetryStore(c)
rng=random.Random(3)
q=parse_telemetry_query(m.Args(m._requests_for("bucket_1m", rng, man, time.time()).params))
view=st._bucket_source(q); fresh=st._freshness()
sql, params = Q.build_bucket_sql(q, q.limit+1, None, view, fresh, sort_ties=False, rows_as_buckets=True)
rows=c.query(sql, params, text_timestamps=True)
print(len(rows), rows[:3], rows[10:13])
def t(f, n=20):
    xs=[]
    for _ in range(n):
        t0=time.perf_counter(); f(); xs.append((time.perf_counter()-t0)*1000)
    return round(statistics.median(xs),2)
print("set check", t(lambda: len(set(map(Q._BUCKET_IDENTITY, rows)))))
print("sort copy", t(lambda: list(rows).sort(key=Q._BUCKET_KEY)))
print("copy", t(lambda: list(rows)))
print("query", t(lambda: c.query(sql, params, text_timestamps=True), 10))
import psycopg2
conn=psycopg2.connect(host='127.0.0.1',port=8812,user='admin',password='quest',dbname='qdb'); conn.autocommit=True
cur=conn.cursor()
full=cur.mogrify(sql, Q._adapt(params))
def ex(): cur.execute(full)
def exf(): cur.execute(full); cur.fetchall()
print("execute only", t(ex,10), "execute+fetchall", t(exf,10))
from api.rows_json import rows_json
T={k:[] for k in ("query","check","sort","json","readings_total")}
for i in range(15):
    t0=time.perf_counter(); r=c.query(sql, params, text_timestamps=True); t1=time.perf_counter()
    len(set(map(Q._BUCKET_IDENTITY, r))); t2=time.perf_counter()
    r.sort(key=Q._BUCKET_KEY); t3=time.perf_counter()
    rows_json(Q._BUCKET_COLUMNS, r[:10000]); t4=time.perf_counter()
    st.readings(q, q.limit, None); t5=time.perf_counter()
    for k,v in zip(T,(t1-t0,t2-t1,t3-t2,t4-t3,t5-t4)): T[k].append(v*1000)
for k,v in T.items(): print(k, round(statistics.median(v),1))
