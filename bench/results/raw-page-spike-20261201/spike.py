"""Spike (eleventh session, issue 12): where a dense raw first page's time goes, and two
ways to cut it, timed in-process against the loaded dense fleet (no HTTP).

  current  TelemetryStore.readings (probe query + bounded read) + RowPage.json_data
  noprobe  one read ORDER BY timestamp LIMIT limit+1 (QuestDB stops at the limit), the
           rows of the last timestamp read again whole, ties sorted, rows_json
  sqljson  as noprobe, but QuestDB prints each row's JSON object (concat in the SELECT):
           the API only joins the strings

Interleaved, one request of each per round, 3 warm-up rounds. Prints a JSON summary.
Run: .venv/bin/python bench/results/raw-page-spike-20261201/spike.py [rounds]
"""

from __future__ import annotations

import json
import os
import random
import statistics
import sys
import time

sys.path.insert(0, os.getcwd())

from api.params import parse_telemetry_query  # noqa: E402
from api.questdb import (  # noqa: E402
    SENSOR_READING_COLUMNS,
    QuestDBClient,
    TelemetryStore,
    _raw_where,
    timestamp_micros,
)
from api.rows_json import rows_json  # noqa: E402
from bench.query_dense import _manifest_path, _read_manifest, _requests_for  # noqa: E402
from config.settings import load_settings  # noqa: E402
from io_connectors.questdb_schema import SENSOR_READINGS  # noqa: E402


class Args(dict):
    def getlist(self, key):
        return [self[key]] if key in self else []


class Timed(QuestDBClient):
    spent = 0.0

    def query(self, *a, **k):
        t0 = time.perf_counter()
        try:
            return super().query(*a, **k)
        finally:
            Timed.spent += time.perf_counter() - t0


def _json_expr(column: str) -> str:
    """The JSON of one column, printed by QuestDB (spike: no escaping, ids are plain;
    QuestDB's || takes a null as '', hence the CASE)."""
    key = f'"{column}":'
    if column in ("timestamp", "ingested_at"):
        text = (f"'\"' || to_str({column}, 'yyyy-MM-ddTHH:mm:ss.SSS') || "
                f"CASE WHEN cast({column} as long) %% 1000 = 0 THEN '' "
                f"ELSE lpad(cast(cast({column} as long) %% 1000 as string), 3, '0') END || 'Z\"'")
    elif column == "value":
        text = f"cast({column} as string)"
    else:
        text = f"'\"' || {column} || '\"'"
    return f"'{key}' || CASE WHEN {column} IS NULL THEN 'null' ELSE {text} END"


def sqljson_select() -> str:
    parts = [_json_expr(c) for c in SENSOR_READING_COLUMNS]
    return "'{' || " + " || ',' || ".join(parts) + " || '}' j, timestamp, event_id"


def noprobe(client: QuestDBClient, q, limit: int, json_in_sql: bool) -> bytes:
    where, params = _raw_where(q, None)
    select = sqljson_select() if json_in_sql else ", ".join(SENSOR_READING_COLUMNS)
    sql = f"SELECT {select} FROM {SENSOR_READINGS} WHERE {where} ORDER BY timestamp LIMIT %s"
    rows = client.query(sql, [*params, limit + 1], text_timestamps=True)
    ts_col = 1 if json_in_sql else 0
    if len(rows) > limit:
        last = rows[-1][ts_col]
        rows = [r for r in rows if r[ts_col] != last]
        at = timestamp_micros(last)
        where2, params2 = _raw_where(q, None, floor_us=at, ceil_us=at + 1)
        rows += client.query(f"SELECT {select} FROM {SENSOR_READINGS} WHERE {where2}",
                             params2, text_timestamps=True)
    key = (lambda r: (r[1], r[2])) if json_in_sql else (lambda r: (r[0], r[1]))
    rows.sort(key=key)
    del rows[limit + 1:]
    page = rows[:limit]
    if json_in_sql:
        return ("[" + ",".join(r[0] for r in page) + "]").encode()
    return rows_json(SENSOR_READING_COLUMNS, page)


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    settings = load_settings()
    manifest = _read_manifest(_manifest_path(settings))
    client = Timed(settings.questdb.host, settings.questdb.pg_port,
                   settings.questdb.pg_user, settings.questdb.pg_password)
    store = TelemetryStore(client, rollups_enabled=True)
    rng = random.Random(11)
    ways = ("current", "noprobe", "sqljson")
    total = {w: [] for w in ways}
    db = {w: [] for w in ways}
    sizes = {w: 0 for w in ways}
    checked = False
    for i in range(rounds + 3):
        req = _requests_for("raw", rng, manifest, time.time())
        q = parse_telemetry_query(Args(req.params))
        outs = {}
        for w in (ways if i % 2 else ways[::-1]):
            Timed.spent = 0.0
            t0 = time.perf_counter()
            if w == "current":
                out = store.readings(q, q.limit, None).json_data()
            else:
                out = noprobe(client, q, q.limit, w == "sqljson")
            dt = time.perf_counter() - t0
            outs[w] = out
            if i >= 3:
                total[w].append(dt * 1000)
                db[w].append(Timed.spent * 1000)
                sizes[w] = len(out)
        cur = json.loads(outs["current"])
        same_rows = json.loads(outs["noprobe"]) == cur
        sql_rows = json.loads(outs["sqljson"])
        same_sql = [(r["timestamp"], r["event_id"]) for r in sql_rows] == \
            [(r["timestamp"], r["event_id"]) for r in cur]
        if not same_rows or not same_sql:
            print(f"MISMATCH round {i}: noprobe {same_rows} sqljson keys {same_sql}", flush=True)
        if not checked:
            print("current row 0:", json.dumps(cur[0]))
            print("sqljson row 0:", json.dumps(sql_rows[0]))
            checked = True

    def stats(xs):
        xs = sorted(xs)
        return {"p50": round(statistics.median(xs), 1),
                "p95": round(xs[int(0.95 * (len(xs) - 1))], 1), "max": round(xs[-1], 1)}

    print(json.dumps({"rounds": rounds, "load_avg": os.getloadavg(),
                      **{w: {"total_ms": stats(total[w]), "questdb_ms": stats(db[w]),
                             "bytes": sizes[w]} for w in ways}}, indent=1))


if __name__ == "__main__":
    main()
