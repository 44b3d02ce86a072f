"""Dense query benchmark: fleet-density data, 1 and 8 concurrent clients, API vs QuestDB.

``python -m bench.query_dense [--load-only] [--max-load-seconds S] [--no-index-compare]``

Data (loaded over ILP/HTTP with QuestDB's official client, never through the API):

* the *dense* fleet ``qdense``: 2 sites x 10 assets x 10 sensors (200 sensors), one
  reading per sensor per second for 7 days ending at load time: 120,960,000 rows;
* the *sparse* fleet ``qbench`` of bench/query_bench.py (20 sites x 25 assets x 8
  sensors, 50M rows over 89.5 days) when it is not already there, written in the same
  pass so that every commit appends in timestamp order (QuestDB's fast path; rows
  written into an already filled day are merged out of order at several times the cost).

Both together are >= 150M rows in sensor_readings (the project's DDL,
io_connectors/questdb_schema.py). A load is resumable: ``<run_dir>/bench/query-dense.json``
records what was sent; a later run continues from there (DEDUP UPSERT KEYS make a
re-sent row harmless) or reuses the data when it is complete. ``--max-load-seconds``
stops sending after that long (then waits for QuestDB to apply what was sent), so a long
load can run in slices under the machine lock.

Query kinds (each with 1 client and with 8 concurrent client processes; p50/p95/p99 and
requests/s), through the running API and, for the very same SQL, straight to QuestDB
over PG wire (psycopg2, what the API uses) and over HTTP ``/exec``:

1. ``raw_first`` / ``raw_next``: first page (limit 10,000) of one dense asset-day, then
   the next page by its cursor;
2. ``bucket_1m``: 1-minute buckets over one dense asset-day (``agg`` avg, min, max in turn;
   14,400 buckets, the first page of 10,000);
3. ``bucket_1h_7d``: 1-hour buckets over the 7 days of one dense asset (1,680 buckets);
4. ``latest_site``: the latest value of every sensor (100) of a dense site;
5. ``csv_day``: CSV export of one dense sensor-day (86,400 rows): time to last byte, MB/s
   and the API workers' RSS during the exports.

Optionally (default on) the same SQL against a copy of one dense day in a table without
the SYMBOL indexes (``index_compare``). Writes ``bench/results/query-dense-<UTC>.json``
with the keys of latest.json's ``query.dense`` (see docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import math
import multiprocessing
import os
import platform
import random
import re
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from questdb.ingress import Sender, TimestampNanos

from api.auth import configured_api_key
from bench.query_bench import Fleet
from bench.query_common import (
    api_session,
    ilp_conf,
    latency_stats,
    pg_connect,
    sensor_symbols,
    timed_get,
)
from config.settings import REPO_ROOT, Settings, load_settings
from io_connectors.questdb_http import questdb_exec, questdb_http_url
from io_connectors.questdb_schema import DDL_STATEMENTS, SENSOR_READINGS

__all__ = ["DenseFleet", "load", "measure", "main"]

_LOGGER = logging.getLogger("bench.query_dense")

DAY_S = 86_400
NS = 1_000_000_000
DENSE_DAYS = 7
SPARSE = Fleet("qbench", 20, 25, 8)     # the harness's sparse query fleet (bench/harness.py)
SPARSE_ROWS = 50_000_000                 # what `make bench` (full) loads
SPARSE_DAYS = 89.5
FLUSH_BYTES = 16 * 1024 * 1024


def say(msg: str) -> None:
    print(f"[query-dense {time.strftime('%H:%M:%S')}] {msg}", flush=True)


@dataclass(frozen=True)
class DenseFleet(Fleet):
    """``sites`` x ``assets_per_site`` x ``sensors_per_asset`` sensors at 1 Hz (the sparse
    fleet's sensor kinds; ids numbered from 1)."""

    prefix: str = "qdense"
    sites: int = 2
    assets_per_site: int = 10
    sensors_per_asset: int = 10

    def site(self, s: int) -> str:
        return f"{self.prefix}-site-{s + 1:02d}"

    def asset(self, s: int, a: int) -> str:
        return f"{self.prefix}-asset-{s + 1:02d}-{a + 1:02d}"

    def assets(self) -> list[str]:
        return [self.asset(s, a) for s in range(self.sites) for a in range(self.assets_per_site)]

    def rows(self, days: int = DENSE_DAYS) -> int:
        return self.sensor_count * days * DAY_S


DENSE = DenseFleet()


# -- QuestDB helpers -------------------------------------------------------------------

def _http(settings: Settings) -> str:
    return questdb_http_url(settings.questdb.host,
                            settings.questdb.http_port)


def qdb_exec(settings: Settings, sql: str, timeout: float = 300.0) -> list[list[Any]]:
    return questdb_exec(_http(settings), sql, timeout_s=timeout).get("dataset", [])


def wait_applied(settings: Settings, table: str = SENSOR_READINGS,
                 timeout_s: float = 3600.0) -> float:
    """Wait until QuestDB has applied every committed WAL transaction of ``table``."""
    t0 = time.monotonic()
    last_say = t0
    while True:
        rows = qdb_exec(settings, f"SELECT writerTxn, sequencerTxn, suspended FROM wal_tables() "
                                  f"WHERE name = '{table}'")
        if not rows:
            return time.monotonic() - t0
        writer, sequencer, suspended = rows[0]
        if suspended:
            raise RuntimeError(f"QuestDB suspended the WAL of {table}: see its log "
                               f"(<run_dir>/logs/questdb.log)")
        if writer >= sequencer:
            return time.monotonic() - t0
        if time.monotonic() - last_say > 10:
            say(f"waiting for QuestDB to apply the WAL of {table}: txn {writer} of {sequencer}")
            last_say = time.monotonic()
        if time.monotonic() - t0 > timeout_s:
            raise TimeoutError(f"WAL of {table} not applied after {timeout_s:.0f} s")
        time.sleep(1.0)


def fleet_counts(settings: Settings) -> dict[str, Any]:
    """Rows, first and last timestamp of the dense and the sparse fleet."""
    out: dict[str, Any] = {}
    for name, sites in (("dense", [DENSE.site(s) for s in range(DENSE.sites)]),
                        ("sparse", [SPARSE.site(s) for s in range(SPARSE.sites)])):
        in_list = ",".join(f"'{s}'" for s in sites)
        row = qdb_exec(settings, f"SELECT count(), min(timestamp), max(timestamp) FROM "
                                 f"{SENSOR_READINGS} WHERE site_id IN ({in_list})")[0]
        out[name] = {"rows": int(row[0]), "min": row[1], "max": row[2]}
    return out


# -- load ------------------------------------------------------------------------------

def _manifest_path(settings: Settings) -> Path:
    return settings.stack.run_dir / "bench" / "query-dense.json"


def _read_manifest(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=2))
    tmp.replace(path)


class _SparseStream:
    """Rows of query_bench.load's grid: row i at start + int(i * step), sensor i % n."""

    def __init__(self, rows: int, start_ns: int, span_ns: int, prefix: str) -> None:
        self.rows = rows
        self.start_ns = start_ns
        self.step_ns = span_ns / rows
        self.prefix = prefix
        sensors = SPARSE.sensors()
        self.n = len(sensors)
        self.symbols = sensor_symbols(sensors)
        self.i = 0

    def ts(self, i: int) -> int:
        return self.start_ns + int(i * self.step_ns)

    def seek(self, t_ns: int) -> None:
        """First row at or after ``t_ns``."""
        i = max(0, min(self.rows, math.ceil((t_ns - self.start_ns) / self.step_ns)))
        while i > 0 and self.ts(i - 1) >= t_ns:
            i -= 1
        while i < self.rows and self.ts(i) < t_ns:
            i += 1
        self.i = i

    def emit_until(self, buf: Any, t_ns: int) -> int:
        """Add every row before ``t_ns``; return how many."""
        i, n, start, step = self.i, self.n, self.start_ns, self.step_ns
        symbols, prefix, end = self.symbols, self.prefix, self.rows
        first = i
        while i < end:
            ts = start + int(i * step)
            if ts >= t_ns:
                break
            j = i % n
            buf.row(SENSOR_READINGS, symbols=symbols[j],
                    columns={"event_id": f"{prefix}-{i}", "value": (i % 1000) * 0.1 + j},
                    at=TimestampNanos(ts))
            i += 1
        self.i = i
        return i - first


def _plan(settings: Settings, force_sparse: bool) -> dict[str, Any]:
    """What to load: a new manifest, the stored one (resume), or nothing."""
    path = _manifest_path(settings)
    manifest = _read_manifest(path)
    counts = fleet_counts(settings)
    target_dense = DENSE.rows()
    sparse_before = ((manifest or {}).get("sparse") or {}).get("rows_before", 0)
    if manifest and manifest.get("dense_rows") == target_dense:
        if manifest.get("complete") and counts["dense"]["rows"] >= target_dense:
            manifest["reused"] = True
            return manifest
        # Rows of this plan are in the table (not a table created anew since): resume.
        started = counts["dense"]["rows"] > 0 or counts["sparse"]["rows"] > sparse_before
        if not manifest.get("complete") and started:
            say(f"resuming the load of {path} from "
                f"{_iso(manifest['sent_until_ns'] // 1000)} "
                f"({counts['dense']['rows']:,} dense rows visible)")
            manifest["reused"] = False
            return manifest
    end_s = int(time.time()) // 60 * 60
    sparse_there = counts["sparse"]["rows"]
    load_sparse = force_sparse or sparse_there < SPARSE_ROWS
    manifest = {
        "end_ns": end_s * NS,
        "dense_start_ns": (end_s - DENSE_DAYS * DAY_S) * NS,
        "dense_rows": target_dense,
        "dense_fleet": {"prefix": DENSE.prefix, "sites": DENSE.sites,
                        "assets_per_site": DENSE.assets_per_site,
                        "sensors_per_asset": DENSE.sensors_per_asset, "hz": 1},
        "sparse": None,
        "complete": False,
        "reused": False,
    }
    if load_sparse:
        span_ns = int(SPARSE_DAYS * DAY_S) * NS
        manifest["sparse"] = {"rows": SPARSE_ROWS, "start_ns": end_s * NS - span_ns,
                              "span_ns": span_ns, "prefix": f"qbench{end_s * 1000}",
                              "rows_before": sparse_there}
        manifest["sent_until_ns"] = end_s * NS - span_ns
    else:
        say(f"reusing {sparse_there:,} sparse qbench rows already in {SENSOR_READINGS}; the "
            f"dense days are merged next to them (out of order: slower than a fresh load)")
        manifest["sent_until_ns"] = manifest["dense_start_ns"]
    _write_manifest(path, manifest)
    return manifest


def _iso(us: int) -> str:
    return dt.datetime.fromtimestamp(us / 1e6, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def load(settings: Settings, max_seconds: float | None = None,
         force_sparse: bool = False) -> dict[str, Any]:
    """Load (or resume, or reuse) the dense fleet and, if missing, the sparse one.

    Returns the manifest with ``complete`` and, when rows were sent in this call, ``run``
    (rows sent, seconds, rows/s).
    """
    qdb_exec(settings, DDL_STATEMENTS[0])  # idempotent: the project's own table
    manifest = _plan(settings, force_sparse)
    if manifest.get("complete"):
        return manifest
    path = _manifest_path(settings)
    end_ns, dense_start = manifest["end_ns"], manifest["dense_start_ns"]
    sparse = None
    if manifest["sparse"]:
        sp = manifest["sparse"]
        sparse = _SparseStream(sp["rows"], sp["start_ns"], sp["span_ns"], sp["prefix"])
    t_ns = manifest["sent_until_ns"]
    total = manifest["dense_rows"] + (manifest["sparse"]["rows"] if sparse else 0)
    done_before = _rows_before(manifest, t_ns)
    sensors = DENSE.sensors()
    symbols = sensor_symbols(sensors)
    base = [10.0 * (j % 10) + 1.0 for j in range(len(sensors))]
    offset_ns = NS // len(sensors)  # sensor j of a second reports at +j x 5 ms
    ids = [f"{DENSE.prefix}-{j:03d}-" for j in range(len(sensors))]
    conf = ilp_conf(settings, request_timeout=300000, retry_timeout=60000)
    t0 = time.monotonic()
    sent = 0
    last_say = t0
    stopped_early = False
    say(f"loading from {_iso(t_ns // 1000)} to {_iso(end_ns // 1000)}: "
        f"{total - done_before:,} of {total:,} rows to send")
    with Sender.from_conf(conf) as sender:
        buf = sender.new_buffer()

        def flush(until_ns: int) -> None:
            nonlocal last_say
            if len(buf):
                sender.flush(buf)  # clears the buffer only on success
            manifest["sent_until_ns"] = until_ns
            _write_manifest(path, manifest)
            now = time.monotonic()
            if now - last_say >= 10:
                last_say = now
                done = _rows_before(manifest, until_ns)
                rate = sent / (now - t0)
                eta = (total - done) / rate if rate else float("inf")
                say(f"sent {done:,} of {total:,} rows ({100 * done / total:.0f} %), "
                    f"{rate:,.0f} rows/s, data time {_iso(until_ns // 1000)}, "
                    f"ETA {eta / 60:.1f} min")

        # Sparse-only stretch before the dense days: 6-hour windows.
        if sparse is not None:
            sparse.seek(t_ns)
            while t_ns < dense_start:
                w1 = min(dense_start, t_ns + 6 * 3600 * NS)
                sent += sparse.emit_until(buf, w1)
                if len(buf) >= FLUSH_BYTES or w1 == dense_start:
                    flush(w1)
                t_ns = w1
                if max_seconds and time.monotonic() - t0 > max_seconds:
                    stopped_early = True
                    break
        # Dense days, second by second, sparse rows of the same second after them (one
        # commit holds whole seconds, so commits never overlap in time).
        if not stopped_early:
            if sparse is not None:
                sparse.seek(t_ns)
            s = t_ns // NS
            end_s = end_ns // NS
            while s < end_s:
                at = s * NS
                tail = s % 100_000
                for j in range(len(symbols)):
                    buf.row(SENSOR_READINGS, symbols=symbols[j],
                            columns={"event_id": f"{ids[j]}{s}",
                                     "value": base[j] + (tail + 7 * j) % 997 * 0.01},
                            at=TimestampNanos(at + j * offset_ns))
                sent += len(symbols)
                s += 1
                if sparse is not None:
                    sent += sparse.emit_until(buf, s * NS)
                if len(buf) >= FLUSH_BYTES:
                    flush(s * NS)
                    if max_seconds and time.monotonic() - t0 > max_seconds:
                        stopped_early = True
                        break
            if not stopped_early:
                flush(end_ns)
    send_s = time.monotonic() - t0
    say(f"sent {sent:,} rows in {send_s:.0f} s ({sent / max(send_s, 1e-9):,.0f} rows/s); "
        f"waiting for QuestDB to apply them")
    apply_s = wait_applied(settings)
    manifest["complete"] = not stopped_early
    run = {"rows_sent": sent, "send_s": round(send_s, 1), "apply_wait_s": round(apply_s, 1),
           "rows_per_s": round(sent / (send_s + apply_s)) if sent else None}
    manifest.setdefault("runs", []).append(run)
    _write_manifest(path, manifest)
    manifest["run"] = run
    if stopped_early:
        so_far = _rows_before(manifest, manifest["sent_until_ns"])
        say(f"stopped after --max-load-seconds; {so_far:,} of {total:,} rows sent so far: "
            f"run again to continue")
    return manifest


def _rows_before(manifest: dict[str, Any], t_ns: int) -> int:
    """Rows of the planned load with a timestamp before ``t_ns`` (progress and ETA)."""
    dense = max(0, min(t_ns, manifest["end_ns"]) - manifest["dense_start_ns"]) // NS
    n = dense * DENSE.sensor_count
    sp = manifest.get("sparse")
    if sp:
        n += max(0, min(sp["rows"], math.ceil((t_ns - sp["start_ns"]) * sp["rows"]
                                             / sp["span_ns"])))
    return n



# -- measurement -----------------------------------------------------------------------

KINDS = ("raw_first", "raw_next", "bucket_1m", "bucket_1h_7d", "latest_site", "csv_day",
         "bucket_1m_raw", "bucket_1h_90d_sensor", "bucket_1h_90d_sensor_raw",
         "bucket_1h_90d_site", "bucket_1h_90d_site_raw")
# Request kinds measured by default (the *_raw twins of the rollup kinds read the raw rows,
# source=raw, for the comparison: seconds per request over 90 days, ask for them by name).
DEFAULT_KINDS = ("raw_first", "raw_next", "bucket_1m", "bucket_1h_7d", "latest_site",
                 "csv_day", "bucket_1h_90d_sensor", "bucket_1h_90d_site")
_AGGS = ("avg", "min", "max")


@dataclass(frozen=True)
class Request:
    """One API request of a kind (``raw`` makes two: first page, then next by cursor)."""

    kind: str        # raw, bucket_1m, bucket_1h_7d, latest_site, csv_day, bucket_1h_90d_*
    path: str
    params: dict[str, str]


def _requests_for(kind: str, rng: random.Random, manifest: dict[str, Any],
                  now_s: float) -> Request:
    end_s, start_s = manifest["end_ns"] // NS, manifest["dense_start_ns"] // NS
    first_day, last_day = -(-start_s // DAY_S), end_s // DAY_S - 1  # whole UTC days
    day = rng.randint(first_day, last_day)
    s, a = rng.randrange(DENSE.sites), rng.randrange(DENSE.assets_per_site)
    day_range = {"start_time": str(day * DAY_S * 1000), "end_time": str((day + 1) * DAY_S * 1000)}
    if kind == "raw":
        return Request(kind, "/api/v1/telemetry",
                       {"asset_id": DENSE.asset(s, a), **day_range, "limit": "10000"})
    if kind in ("bucket_1m", "bucket_1m_raw"):
        return Request(kind, "/api/v1/telemetry",
                       {"asset_id": DENSE.asset(s, a), **day_range, "interval": "1m",
                        "agg": rng.choice(_AGGS), "limit": "10000",
                        **({"source": "raw"} if kind.endswith("_raw") else {})})
    if kind.startswith("bucket_1h_90d_"):
        # 90 whole UTC days ending with the last whole hour of the dense data (the dense
        # fleet has 7 of them, the rest of the range is empty for it): a chart's range.
        end_h = end_s - end_s % 3600
        target = ({"sensor_id": DENSE.sensor(s, a, rng.randrange(DENSE.sensors_per_asset))}
                  if "_sensor" in kind else {"site_id": DENSE.site(s)})
        return Request(kind, "/api/v1/telemetry",
                       {**target, "start_time": str((end_h - 90 * DAY_S) * 1000),
                        "end_time": str(end_h * 1000), "interval": "1h",
                        "agg": rng.choice(_AGGS), "limit": "10000",
                        **({"source": "raw"} if kind.endswith("_raw") else {})})
    if kind == "bucket_1h_7d":
        return Request(kind, "/api/v1/telemetry",
                       {"asset_id": DENSE.asset(s, a), "start_time": str(start_s * 1000),
                        "end_time": str(end_s * 1000), "interval": "1h",
                        "agg": rng.choice(_AGGS), "limit": "10000"})
    if kind == "latest_site":
        hours = max(24, math.ceil((now_s - end_s) / 3600) + 1)
        return Request(kind, "/api/v1/telemetry/latest",
                       {"site_id": DENSE.site(s), "max_age": f"{hours}h"})
    if kind == "csv_day":
        k = rng.randrange(DENSE.sensors_per_asset)
        return Request(kind, "/api/v1/telemetry",
                       {"sensor_id": DENSE.sensor(s, a, k), **day_range, "format": "csv"})
    raise ValueError(kind)


def _api_call(session: requests.Session, base_url: str, req: Request,
              count_rows: bool) -> list[tuple[str, float, int, int, str]]:
    """Samples (kind, seconds to last byte, bytes, rows or -1, the response's
    X-Data-Source) of one request."""
    url = base_url + req.path
    if req.kind == "csv_day":
        t0 = time.perf_counter()
        with session.get(url, params=req.params, timeout=120, stream=True) as r:
            _check(r, req)
            size, newlines = 0, 0
            for chunk in r.iter_content(256 * 1024):
                size += len(chunk)
                if count_rows:
                    newlines += chunk.count(b"\n")
            source = r.headers.get("X-Data-Source", "")
        return [("csv_day", time.perf_counter() - t0, size, newlines - 1 if count_rows else -1,
                 source)]
    r, elapsed = timed_get(session, url, req.params, req.kind)
    body = r.content
    source = r.headers.get("X-Data-Source", "")
    if req.kind != "raw" and not count_rows:
        return [(req.kind, elapsed, len(body), -1, source)]
    doc = json.loads(body)
    name = "raw_first" if req.kind == "raw" else req.kind
    out = [(name, elapsed, len(body), len(doc["data"]), source)]
    if req.kind == "raw":
        if not doc["next_cursor"]:
            raise RuntimeError(f"raw_first: no next_cursor for {req.params}")
        r2, elapsed2 = timed_get(session, url, {**req.params, "cursor": doc["next_cursor"]},
                                 req.kind)
        n2 = len(json.loads(r2.content)["data"]) if count_rows else -1
        out.append(("raw_next", elapsed2, len(r2.content), n2,
                    r2.headers.get("X-Data-Source", "")))
    return out


def _check(r: requests.Response, req: Request) -> None:
    if r.status_code != 200:
        raise RuntimeError(f"{req.kind}: HTTP {r.status_code} for {req.params}: {r.text[:300]}")


class _TimingClient:
    """Stands in for api.questdb.QuestDBClient: runs the store's SQL and times it.

    ``pg``: psycopg2 execute + fetchall (PG wire and decoding, what the API does);
    ``http``: the same SQL text (parameters inlined by psycopg2, as the API sends it)
    through QuestDB's ``/exec``, body read but not parsed. ``table`` replaces
    sensor_readings (the index comparison).
    """

    def __init__(self, settings: Settings, http: bool = False, table: str | None = None) -> None:
        self.conn = pg_connect(settings)
        # Not io_connectors.questdb_http.questdb_exec: this times the transport alone
        # (body read, not parsed), the figure compared with PG wire.
        self.http_url = f"{_http(settings)}/exec" if http else None
        self.session = requests.Session()
        self.table = table
        self.pg_s = 0.0
        self.http_s = 0.0
        self.queries = 0

    def query(self, sql: str, params: Sequence[Any] = (), fetch: bool = True,
              **_options: Any) -> list[tuple[Any, ...]]:
        """psycopg2 with its default type casting (datetimes), whatever the store asks."""
        from api.questdb import _adapt

        if self.table:
            sql = sql.replace(f" {SENSOR_READINGS} ", f" {self.table} ")
        with self.conn.cursor() as cur:
            t0 = time.perf_counter()
            cur.execute(sql, _adapt(params))
            rows = cur.fetchall()
            self.pg_s += time.perf_counter() - t0
            text = cur.mogrify(sql, _adapt(params)).decode() if self.http_url else None
        self.queries += 1
        if text is not None:
            t0 = time.perf_counter()
            r = self.session.get(self.http_url, params={"query": text, "count": "false"},
                                 timeout=120)
            r.content  # noqa: B018 - read the whole body
            self.http_s += time.perf_counter() - t0
            if r.status_code != 200:
                raise RuntimeError(f"/exec: HTTP {r.status_code}: {r.text[:300]}")
        return rows

    def reset(self) -> None:
        self.pg_s = self.http_s = 0.0
        self.queries = 0

    def close(self) -> None:
        self.conn.close()


def _db_call(store: Any, client: _TimingClient, req: Request) -> list[tuple[str, float, float]]:
    """Samples (kind, pg seconds, http seconds) of the SQL one API request runs."""
    from werkzeug.datastructures import MultiDict

    from api.params import parse_latest_query, parse_telemetry_query

    client.reset()
    if req.kind == "latest_site":
        store.latest(parse_latest_query(MultiDict(req.params)))
        return [(req.kind, client.pg_s, client.http_s)]
    q = parse_telemetry_query(MultiDict(req.params))
    if req.kind == "csv_day":  # the one query the API's CSV export sends to QuestDB's /exp
        from api.questdb import build_export_sql

        _columns, sql = build_export_sql(q, None)
        client.query(sql.replace("%", "%%"))  # no parameters: a literal % for psycopg2
        return [(req.kind, client.pg_s, client.http_s)]
    page = store.readings(q, q.limit, None)
    out = [("raw_first" if req.kind == "raw" else req.kind, client.pg_s, client.http_s)]
    if req.kind == "raw":
        client.reset()
        store.readings(q, q.limit, page.next_key)
        out.append(("raw_next", client.pg_s, client.http_s))
    return out


def _client_worker(job: dict[str, Any]) -> dict[str, Any]:
    """One benchmark client (a process of its own for c8): run its requests, time each."""
    settings = load_settings()
    reqs: list[Request] = job["requests"]
    samples: list[tuple[Any, ...]] = []
    if job["target"] == "api":
        session = api_session(job["api_key"])
        def call(r: Request) -> list[tuple[Any, ...]]:
            return _api_call(session, job["base_url"], r, job["count_rows"])
    else:
        from api.questdb import TelemetryStore

        client = _TimingClient(settings, http=job["target"] == "db_http", table=job.get("table"))
        store = TelemetryStore(client)  # type: ignore[arg-type]
        def call(r: Request) -> list[tuple[Any, ...]]:
            return _db_call(store, client, r)
    for r in reqs[:job["warmup"]]:
        call(r)
    start = time.monotonic()
    for r in reqs[job["warmup"]:]:
        samples.extend(call(r))
    return {"samples": samples, "start": start, "end": time.monotonic()}


class _RssSampler:
    """Summed RSS of the API's gunicorn workers, sampled every 50 ms in a thread."""

    def __init__(self, settings: Settings) -> None:
        import threading

        import psutil

        self._procs: list[Any] = []
        pidfile = settings.stack.run_dir / "pids" / "api.pid"
        try:
            pid = int(json.loads(pidfile.read_text())["pid"])
            self._procs = psutil.Process(pid).children(recursive=True)
        except (OSError, ValueError, KeyError, psutil.Error):
            pass
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _rss(self) -> float:
        total = 0
        for p in self._procs:
            try:
                total += p.memory_info().rss
            except Exception:  # noqa: BLE001 - a worker that exits is skipped
                pass
        return total / 2**20

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(self._rss())
            self._stop.wait(0.05)

    def __enter__(self) -> _RssSampler:
        if self._procs:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def summary(self) -> dict[str, Any] | None:
        if not self.samples:
            return None
        return {"workers": len(self._procs), "first_mb": round(self.samples[0], 1),
                "peak_mb": round(max(self.samples), 1), "last_mb": round(self.samples[-1], 1)}


def _run_clients(jobs: list[dict[str, Any]]) -> tuple[list[tuple[Any, ...]], float]:
    if len(jobs) == 1:
        results = [_client_worker(jobs[0])]
    else:
        with multiprocessing.get_context("fork").Pool(len(jobs)) as pool:
            results = pool.map(_client_worker, jobs)
    samples = [s for r in results for s in r["samples"]]
    wall = max(r["end"] for r in results) - min(r["start"] for r in results)
    return samples, wall


def measure(settings: Settings, manifest: dict[str, Any], base_url: str, api_key: str,
            n1: int, n8: int, seed: int = 1, kinds: Sequence[str] | None = None,
            c8: bool = True) -> dict[str, Any]:
    """Every kind through the API and straight to QuestDB, with 1 and 8 clients."""
    now_s = time.time()
    rng = random.Random(seed)
    wanted = tuple(kinds or DEFAULT_KINDS)
    request_kinds = tuple(("raw" if k in ("raw_first", "raw_next") else k) for k in KINDS
                          if k in wanted and k != "raw_next" or (k == "raw_first"
                                                                 and "raw_next" in wanted))
    out: dict[str, Any] = {}
    for rk in request_kinds:
        csv = rk == "csv_day"
        c1_n, c8_n = (max(3, n1 // 4), max(2, n8 // 4)) if csv else (n1, n8)
        warm = 2 if csv else 5
        c1_reqs = [_requests_for(rk, rng, manifest, now_s) for _ in range(warm + c1_n)]
        c8_reqs = [[_requests_for(rk, rng, manifest, now_s) for _ in range(2 + c8_n)]
                   for _ in range(8)]
        common = {"base_url": base_url, "api_key": api_key}
        figures: dict[str, dict[str, Any]] = {}
        runs = (("api", "c1", [{**common, "target": "api", "requests": c1_reqs, "warmup": warm,
                                "count_rows": True}]),
                ("api", "c8", [{**common, "target": "api", "requests": r, "warmup": 2,
                                "count_rows": False} for r in c8_reqs]),
                ("db_http", "c1", [{"target": "db_http", "requests": c1_reqs, "warmup": warm}]),
                ("db", "c8", [{"target": "db", "requests": r, "warmup": 2} for r in c8_reqs]))
        if not c8:
            runs = tuple(run for run in runs if run[1] != "c8")
        for target, conc, jobs in runs:
            say(f"{rk}: {target} {conc} ({sum(len(j['requests']) - j['warmup'] for j in jobs)}"
                f" requests)")
            rss = _RssSampler(settings) if target == "api" and csv else None
            if rss:
                with rss:
                    samples, wall = _run_clients(jobs)
            else:
                samples, wall = _run_clients(jobs)
            for name in {s[0] for s in samples}:
                mine = [s for s in samples if s[0] == name]
                entry = figures.setdefault(name, {})
                if target == "api":
                    st = {**latency_stats([s[1] for s in mine]),
                          "rps": round(len(mine) / wall, 1) if wall > 0 else None,
                          "bytes_mean": round(statistics.fmean(s[2] for s in mine))}
                    if mine[0][3] >= 0:
                        st["rows_mean"] = round(statistics.fmean(s[3] for s in mine), 1)
                    st["source"] = sorted({s[4] for s in mine})  # X-Data-Source seen
                    if csv:
                        mbps = sorted(s[2] / 2**20 / s[1] for s in mine)
                        st["mb_per_s_p50"] = round(mbps[len(mbps) // 2], 1)
                        st["mb_per_s_min"] = round(mbps[0], 1)
                        st["rss"] = rss.summary() if rss else None
                    entry[conc] = st
                else:
                    entry.setdefault("db", {})[conc] = latency_stats([s[1] for s in mine])
                    if target == "db_http":
                        entry.setdefault("db_http", {})[conc] = latency_stats(
                            [s[2] for s in mine])
        for name, entry in figures.items():
            db1 = entry.get("db", {}).get("c1") or {}
            entry["db_p50_ms"] = db1.get("p50_ms")
            entry["db_p99_ms"] = db1.get("p99_ms")
            api1 = entry.get("c1") or {}
            if api1.get("p50_ms") and db1.get("p50_ms"):
                entry["overhead_p50"] = round(api1["p50_ms"] / db1["p50_ms"], 2)
            out[name] = entry
            say(f"{name}: api c1 p50/p99 {api1.get('p50_ms')}/{api1.get('p99_ms')} ms, "
                f"c8 p50/p99 {entry.get('c8', {}).get('p50_ms')}/"
                f"{entry.get('c8', {}).get('p99_ms')} ms; QuestDB PG p50/p99 "
                f"{db1.get('p50_ms')}/{db1.get('p99_ms')} ms, /exec p50 "
                f"{(entry.get('db_http') or {}).get('c1', {}).get('p50_ms')} ms")
    return out


# -- QuestDB's own CSV export and the index comparison ---------------------------------

def exp_csv(settings: Settings, manifest: dict[str, Any], n: int, seed: int = 2) -> dict[str, Any]:
    """QuestDB's /exp (its own CSV export) of one dense sensor-day, one query, streamed."""
    from api.params import MAX_LIMIT  # noqa: F401 - same range as the API's export
    from io_connectors.questdb_schema import SENSOR_READING_COLUMNS

    rng = random.Random(seed)
    session = requests.Session()
    times, sizes = [], []
    for i in range(n + 1):
        req = _requests_for("csv_day", rng, manifest, time.time())
        p = req.params
        sql = (f"SELECT {', '.join(SENSOR_READING_COLUMNS)} FROM {SENSOR_READINGS} "
               f"WHERE timestamp >= {int(p['start_time']) * 1000} AND timestamp < "
               f"{int(p['end_time']) * 1000} AND sensor_id = '{p['sensor_id']}' "
               f"ORDER BY timestamp, event_id")
        t0 = time.perf_counter()
        with session.get(f"{_http(settings)}/exp", params={"query": sql}, stream=True,
                         timeout=120) as r:
            if r.status_code != 200:
                raise RuntimeError(f"/exp: HTTP {r.status_code}: {r.text[:300]}")
            size = sum(len(c) for c in r.iter_content(256 * 1024))
        if i:  # the first is a warm-up
            times.append(time.perf_counter() - t0)
            sizes.append(size)
    mbps = sorted(s / 2**20 / t for s, t in zip(sizes, times, strict=True))
    return {**latency_stats(times), "bytes_mean": round(statistics.fmean(sizes)),
            "mb_per_s_p50": round(mbps[len(mbps) // 2], 1)}


def index_compare(settings: Settings, manifest: dict[str, Any], n: int) -> dict[str, Any]:
    """The same SQL against two copies of one dense day: the production DDL and no indexes.

    The copies hold one full UTC day of sensor_readings (dense and sparse rows), alike but
    for the SYMBOL indexes: both (site_id, asset_id: the production DDL), site_id only, none.
    Dropped afterwards.
    """
    end_s = manifest["end_ns"] // NS
    day = end_s // DAY_S - 1
    lo, hi = day * DAY_S * 1_000_000, (day + 1) * DAY_S * 1_000_000
    ddl = DDL_STATEMENTS[0]
    no_asset = re.sub(r"(asset_id SYMBOL[^,\n]*) INDEX", r"\1", ddl)
    variants = {"indexed": ddl, "no_asset_index": no_asset,
                "no_index": ddl.replace(" CACHE INDEX", " CACHE")}
    if variants["no_index"] == ddl or no_asset == ddl:
        raise RuntimeError("sensor_readings DDL has no asset_id '... INDEX': "
                           "update index_compare")
    rng = random.Random(3)
    now_s = time.time()
    hours = math.ceil((now_s - day * DAY_S) / 3600)

    def reqs() -> list[Request]:
        out = []
        for _ in range(n + 3):
            s, a = rng.randrange(DENSE.sites), rng.randrange(DENSE.assets_per_site)
            k = rng.randrange(DENSE.sensors_per_asset)
            rng_day = {"start_time": str(day * DAY_S * 1000),
                       "end_time": str((day + 1) * DAY_S * 1000)}
            asset = DENSE.asset(s, a)
            out += [Request("raw", "", {"asset_id": asset, **rng_day, "limit": "10000"}),
                    Request("bucket_1m", "", {"asset_id": asset, **rng_day, "interval": "1m",
                                              "agg": rng.choice(_AGGS), "limit": "10000"}),
                    Request("bucket_1h_day", "", {"asset_id": asset, **rng_day,
                                                  "interval": "1h", "agg": "avg"}),
                    Request("latest_site", "", {"site_id": DENSE.site(s),
                                                "max_age": f"{hours}h"}),
                    Request("csv_day", "", {"sensor_id": DENSE.sensor(s, a, k), **rng_day,
                                            "format": "csv"})]
        return out

    requests_list = reqs()
    result: dict[str, Any] = {"day": _iso(lo), "indexed_columns": ["site_id", "asset_id"]}
    for name, variant_ddl in variants.items():
        table = f"bench_{name}_readings"
        qdb_exec(settings, f"DROP TABLE IF EXISTS {table}")
        qdb_exec(settings, variant_ddl.replace(f"EXISTS {SENSOR_READINGS} (",
                                               f"EXISTS {table} (", 1))
        say(f"index comparison: copying {_iso(lo)[:10]} into {table}")
        t0 = time.monotonic()
        qdb_exec(settings, f"INSERT INTO {table} SELECT * FROM {SENSOR_READINGS} "
                           f"WHERE timestamp >= {lo} AND timestamp < {hi}", timeout=1800)
        wait_applied(settings, table)
        rows = qdb_exec(settings, f"SELECT count() FROM {table}")[0][0]
        copy_s = time.monotonic() - t0
        say(f"index comparison: {rows:,} rows in {table} ({copy_s:.0f} s); timing")
        from api.questdb import TelemetryStore

        client = _TimingClient(settings, table=table)
        store = TelemetryStore(client)  # type: ignore[arg-type]
        samples: list[tuple[str, float, float]] = []
        for i, r in enumerate(requests_list):
            got = _db_call(store, client, r)
            if i >= 15:  # 3 rounds of 5 kinds warm up
                samples += got
        client.close()
        figures = {k: latency_stats([s[1] for s in samples if s[0] == k])
                   for k in sorted({s[0] for s in samples})}
        result[name] = {"rows": rows, "copy_s": round(copy_s, 1), "db": figures}
        qdb_exec(settings, f"DROP TABLE IF EXISTS {table}")
    for name in ("no_asset_index", "no_index"):
        result[f"ratio_p50_{name}_over_indexed"] = {
            k: round(result[name]["db"][k]["p50_ms"] / result["indexed"]["db"][k]["p50_ms"], 2)
            for k in result["indexed"]["db"] if result["indexed"]["db"][k]["p50_ms"]}
    return result


def rollup_sizes(settings: Settings) -> dict[str, Any]:
    """Rows of each rollup view and its state (io_connectors/questdb_schema.py)."""
    from io_connectors.questdb_schema import ROLLUPS

    out: dict[str, Any] = {}
    try:
        status = {r[0]: r[1] for r in qdb_exec(
            settings, "SELECT view_name, view_status FROM materialized_views()")}
        for view in ROLLUPS:
            rows = qdb_exec(settings, f"SELECT count() FROM {view}")[0][0] if view in status \
                else None
            root = settings.stack.run_dir / "data" / "questdb" / "db"
            size = sum(int(subprocess.run(["du", "-sb", str(d)], capture_output=True,
                                          text=True, check=True).stdout.split()[0])
                       for d in root.glob(f"{view}~*"))
            out[view] = {"rows": rows, "status": status.get(view),
                         "gb": round(size / 1e9, 2)}
    except (RuntimeError, OSError, subprocess.CalledProcessError, ValueError) as exc:
        out["error"] = str(exc)[:300]
    return out


def disk_usage(settings: Settings) -> dict[str, Any]:
    """Bytes of sensor_readings on disk (its QuestDB table directory) and of the run dir."""
    root = settings.stack.run_dir / "data" / "questdb" / "db"
    dirs = sorted(root.glob(f"{SENSOR_READINGS}~*")) if root.is_dir() else []

    def du(path: Path) -> int | None:
        try:
            out = subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True,
                                 check=True).stdout
            return int(out.split()[0])
        except (OSError, subprocess.CalledProcessError, ValueError):
            return None

    table_bytes = sum(du(d) or 0 for d in dirs) if dirs else None
    return {"table_dir": [str(d) for d in dirs], "table_bytes": table_bytes,
            "table_gb": round(table_bytes / 1e9, 2) if table_bytes else None}


# -- what the rollups cost the writes ---------------------------------------------------

def _questdb_cpu_s(settings: Settings) -> float:
    """User + system CPU seconds of the stack's QuestDB process so far."""
    import psutil

    pidfile = settings.stack.run_dir / "pids" / "questdb.pid"
    times = psutil.Process(int(json.loads(pidfile.read_text())["pid"])).cpu_times()
    return times.user + times.system


ROLLUP_COST_VARIANTS = ("plain", "rollups_immediate", "rollups")
# QuestDB's own counters (/metrics on its min HTTP port) recorded with each variant: rows
# written to WAL (the views' refreshes write theirs there too) and rows physically written
# when applying them (out-of-order rewrites included).
_WAL_METRICS = ("questdb_wal_written_rows_total", "questdb_wal_apply_written_rows_total",
                "questdb_wal_apply_physically_written_rows_total")


def _questdb_metrics(settings: Settings) -> dict[str, float]:
    """The WAL counters of QuestDB's /metrics (empty if it cannot be read)."""
    url = (f"http://{settings.questdb.host}:"
           f"{settings.questdb.min_http_port}/metrics")
    try:
        text = requests.get(url, timeout=5).text
    except requests.RequestException:
        return {}
    out = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in _WAL_METRICS:
            out[name] = float(value)
    return out


def rollup_cost(settings: Settings, seconds: float = 20.0, rate: int = 5000,
                commits_per_s: int = 10,
                variants: Sequence[str] = ("plain", "rollups"),
                settle_s: float = 75.0) -> dict[str, Any]:
    """QuestDB CPU per written row into a copy of sensor_readings without and with the two
    rollup views (the project's DDL, renamed), in the pipeline's shape: ``commits_per_s``
    ILP/HTTP commits a second of 200 sensors' readings stamped within the last second
    (out of order, as the job's commits land). Counted over the same window for every
    variant: the load and ``settle_s`` after it, longer if the WAL or the views have not
    caught up by then (a timer view catches up within a minute). Scratch tables, dropped
    afterwards. Variants: ``plain`` (no
    view), ``rollups`` (the project's DDL: the 1-minute view on a 1-minute timer, the
    1-hour one after each commit of it), ``rollups_immediate`` (both refreshed after every
    commit of their base, QuestDB's default and the DDL before decision 0006's fourth
    pass), ``rollup_1m_only`` (the 1-minute view alone, on its timer).
    """
    from io_connectors.questdb_schema import ROLLUP_1H, ROLLUP_1M, ROLLUP_STATEMENTS

    out: dict[str, Any] = {"seconds": seconds, "rate": rate, "commits_per_s": commits_per_s,
                           "settle_s": settle_s}
    conf = ilp_conf(settings)
    # Scratch names of this run only: a timer view created under the name of one dropped
    # moments before never refreshed on 9.3.1 while QuestDB burned ~1.7 cores (decision
    # 0006, "Fourth pass").
    run = uuid.uuid4().hex[:6]
    for variant in variants:
        table = f"qrollup_cost_{variant}_{run}"
        views = {ROLLUP_1M: f"{table}_1m", ROLLUP_1H: f"{table}_1h"}
        for view in views.values():
            qdb_exec(settings, f"DROP MATERIALIZED VIEW IF EXISTS {view}")
        qdb_exec(settings, f"DROP TABLE IF EXISTS {table}")
        qdb_exec(settings, DDL_STATEMENTS[0].replace(f"EXISTS {SENSOR_READINGS} ",
                                                     f"EXISTS {table} "))
        if variant != "plain":
            statements = [ddl for ddl in ROLLUP_STATEMENTS
                          if variant != "rollup_1m_only" or ROLLUP_1H not in ddl]
            for ddl in statements:
                for name, new in (*views.items(), (SENSOR_READINGS, table)):
                    ddl = re.sub(rf"\b{name}\b", new, ddl)
                if variant == "rollups_immediate":
                    if ddl.startswith("ALTER"):
                        continue
                    ddl = re.sub(r" REFRESH EVERY \S+", "", ddl)
                qdb_exec(settings, ddl)
            if variant == "rollup_1m_only":
                del views[ROLLUP_1H]
        rng = random.Random(7)
        per_commit = rate // commits_per_s
        sent = 0
        metrics0 = _questdb_metrics(settings)
        cpu0 = _questdb_cpu_s(settings)
        t0 = time.monotonic()
        with Sender.from_conf(conf) as sender:
            while time.monotonic() - t0 < seconds:
                tick = t0 + (sent // per_commit + 1) / commits_per_s
                now_ns = time.time_ns()
                buf = sender.new_buffer()
                for i in range(per_commit):
                    k = rng.randrange(200)
                    buf.row(table, symbols={"site_id": f"qrc-site-{k // 100}",
                                            "asset_id": f"qrc-asset-{k // 10}",
                                            "sensor_id": f"qrc-sensor-{k}",
                                            "sensor_type": "POWER"},
                            columns={"event_id": f"qrc-{variant}-{sent + i}",
                                     "value": rng.uniform(0, 100)},
                            at=TimestampNanos(now_ns - rng.randrange(NS)))
                sender.flush(buf)
                sent += per_commit
                time.sleep(max(0.0, tick - time.monotonic()))
        wall = time.monotonic() - t0
        wait_applied(settings, table, timeout_s=300)
        if variant != "plain":
            deadline = time.monotonic() + 300
            while True:
                got = {v: qdb_exec(settings, f"SELECT sum(row_count) FROM {v}")[0][0]
                       for v in views.values()}
                if all(n == sent for n in got.values()) or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            out[f"{variant}_views_rows"] = got
        caught_up_s = time.monotonic() - t0 - wall
        # The same window for every variant (a timer view catches up to a minute after the
        # last write; QuestDB's idle CPU over that minute is counted for all of them).
        time.sleep(max(0.0, t0 + wall + settle_s - time.monotonic()))
        window = time.monotonic() - t0
        cpu = _questdb_cpu_s(settings) - cpu0
        metrics1 = _questdb_metrics(settings)
        out[variant] = {"rows": sent, "send_s": round(wall, 1), "questdb_cpu_s": round(cpu, 2),
                        "us_per_row": round(cpu / sent * 1e6, 1),
                        "caught_up_s": round(caught_up_s, 1), "window_s": round(window, 1),
                        "metrics_per_row": {k: round((metrics1[k] - metrics0[k]) / sent, 2)
                                            for k in metrics1 if k in metrics0}}
        say(f"rollup cost, {variant}: {sent} rows in {wall:.1f} s, QuestDB {cpu:.2f} CPU s "
            f"({cpu / sent * 1e6:.1f} us/row)")
        for view in views.values():
            qdb_exec(settings, f"DROP MATERIALIZED VIEW IF EXISTS {view}")
        qdb_exec(settings, f"DROP TABLE IF EXISTS {table}")
    if "plain" in out:
        for variant in variants:
            if variant != "plain":
                out[variant]["extra_us_per_row"] = round(
                    out[variant]["us_per_row"] - out["plain"]["us_per_row"], 1)
    return out


# -- the bucket page: QuestDB's sort against the store's (decision 0006, fourth pass) -------

def bucket_sort_ab(settings: Settings, manifest: dict[str, Any], n: int) -> dict[str, Any]:
    """``bucket_1m`` pages (1-minute buckets of a dense asset-day, 10,000 rows) built in the
    API's process two ways, alternating request by request so both see the same load:
    ``questdb_sort`` (QuestDB orders on timestamp, asset_id, sensor_id; the store before
    the fourth pass) and ``store`` (:meth:`TelemetryStore.readings`: timestamp order from
    QuestDB, ties ordered in Python). Both include the rows -> dicts step; no HTTP."""
    from api.params import parse_telemetry_query
    from api.questdb import (
        _BUCKET_COLUMNS,
        QuestDBClient,
        TelemetryStore,
        _records,
        build_bucket_sql,
    )

    class _Args(dict):
        def getlist(self, key: str) -> list[str]:
            return [self[key]] if key in self else []

    client = QuestDBClient(settings.questdb.host, settings.questdb.pg_port,
                           settings.questdb.pg_user, settings.questdb.pg_password)
    store = TelemetryStore(client, rollups_enabled=True)
    rng = random.Random(5)
    times: dict[str, list[float]] = {"questdb_sort": [], "store": []}
    sources = set()
    for i in range(n + 3):
        q = parse_telemetry_query(_Args(_requests_for("bucket_1m", rng, manifest,
                                                      time.time()).params))
        view = store._bucket_source(q)
        fresh = store._freshness() if view else None
        for way in (("questdb_sort", "store") if i % 2 else ("store", "questdb_sort")):
            t0 = time.perf_counter()
            if way == "store":
                page = store.readings(q, q.limit, None)
                sources.add(page.source)
            else:
                sql, params = build_bucket_sql(q, q.limit + 1, None, view, fresh)
                _records(_BUCKET_COLUMNS, client.query(sql, params, text_timestamps=True)[:q.limit])
            if i >= 3:  # warm-up
                times[way].append(time.perf_counter() - t0)
    client.close()
    return {"n": n, "sources": sorted(sources),
            **{way: latency_stats(t) for way, t in times.items()}}


# -- main ------------------------------------------------------------------------------

def _context(argv: Sequence[str]) -> dict[str, Any]:
    def git(*a: str) -> str | None:
        try:
            return subprocess.run(["git", *a], cwd=REPO_ROOT, capture_output=True, text=True,
                                  check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return None

    return {"command": "python -m bench.query_dense " + " ".join(argv),
            "utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "git_sha": git("rev-parse", "--short", "HEAD"),
            "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
            "cpus": os.cpu_count(), "platform": platform.platform(),
            "load_avg_before": list(os.getloadavg())}


def run(settings: Settings, n1: int, n8: int, index: bool, kinds: Sequence[str] | None,
        base_url: str | None = None, api_key: str | None = None,
        max_load_seconds: float | None = None, c8: bool = True) -> dict[str, Any]:
    """Load (or reuse) and measure; the ``query.dense`` section of latest.json."""
    manifest = load(settings, max_load_seconds)
    if not manifest["complete"]:
        return {"complete": False, "load": {k: v for k, v in manifest.items() if k != "runs"}}
    counts = fleet_counts(settings)
    total = qdb_exec(settings, f"SELECT count() FROM {SENSOR_READINGS}")[0][0]
    if base_url is None:
        base_url = f"http://127.0.0.1:{settings.api.port}"
    if api_key is None:
        api_key = (os.environ.get("DCMMS_BENCH_API_KEY")
                   or configured_api_key(settings, needs=("read",)))
    out: dict[str, Any] = {
        "rows": total, "dense_rows": counts["dense"]["rows"],
        "sparse_rows": counts["sparse"]["rows"],
        "dense_range": [counts["dense"]["min"], counts["dense"]["max"]],
        "fleet": manifest["dense_fleet"], "reused": manifest.get("reused", False),
        "load": manifest.get("runs"), "disk": disk_usage(settings),
        "api": {"url": base_url, "workers": settings.api.workers,
                "questdb_pool_size": settings.api.questdb_pool_size},
        "requests": {"c1": n1, "c8_per_client": n8},
    }
    out["rollups"] = rollup_sizes(settings)
    out.update(measure(settings, manifest, base_url, api_key, n1, n8, kinds=kinds, c8=c8))
    if not kinds or "csv_day" in kinds:
        say("csv_day: QuestDB /exp")
        out.setdefault("csv_day", {})["questdb_exp"] = exp_csv(settings, manifest, max(3, n1 // 4))
    if index:
        out["index_compare"] = index_compare(settings, manifest, max(10, n1 // 2))
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m bench.query_dense",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--load-only", action="store_true", help="load (or resume) and stop")
    parser.add_argument("--max-load-seconds", type=float, default=None,
                        help="stop sending after this long; run again to continue")
    parser.add_argument("--requests", type=int, default=60,
                        help="timed requests per kind with 1 client (CSV: a quarter)")
    parser.add_argument("--requests-per-client", type=int, default=15,
                        help="timed requests per client and kind with 8 clients (CSV: a quarter)")
    parser.add_argument("--kinds", default=None, help=f"comma list of {', '.join(KINDS)}")
    parser.add_argument("--no-index-compare", action="store_true")
    parser.add_argument("--rollup-cost-only", action="store_true",
                        help="only QuestDB's CPU per written row without and with the rollups")
    parser.add_argument("--bucket-sort-ab", type=int, default=0, metavar="N",
                        help="only N bucket_1m pages built in-process with QuestDB's sort and "
                             "with the store's, alternating")
    parser.add_argument("--skip-c8", action="store_true",
                        help="only 1 client (e.g. for the slow *_raw comparison kinds)")
    parser.add_argument("--index-compare-only", action="store_true",
                        help="only the index comparison (needs the loaded dense fleet)")
    parser.add_argument("--api-url", default=None, help="default: [api] port on 127.0.0.1")
    parser.add_argument("--output", type=Path, default=None,
                        help="default bench/results/query-dense-<UTC>.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    settings = load_settings()
    if args.load_only:
        manifest = load(settings, args.max_load_seconds)
        say(json.dumps({k: v for k, v in manifest.items() if k != "runs"}))
        return 0
    context = _context(argv)
    kinds = args.kinds.split(",") if args.kinds else None
    if args.rollup_cost_only:
        dense = {"rollup_cost": rollup_cost(settings, variants=ROLLUP_COST_VARIANTS)}
    elif args.bucket_sort_ab:
        dense = {"bucket_sort_ab": bucket_sort_ab(settings, load(settings, 0),
                                                  args.bucket_sort_ab)}
    elif args.index_compare_only:
        manifest = load(settings, args.max_load_seconds)
        if not manifest["complete"]:
            say("the load is not complete yet: run again to continue")
            return 3
        dense = {"index_compare": index_compare(settings, manifest, args.requests // 2)}
    else:
            dense = run(settings, args.requests, args.requests_per_client,
                    not args.no_index_compare, kinds, args.api_url,
                    max_load_seconds=args.max_load_seconds, c8=not args.skip_c8)
    if dense.get("complete") is False:
        say("the load is not complete yet: run again to continue")
        return 3
    context["load_avg_after"] = list(os.getloadavg())
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    path = args.output or REPO_ROOT / "bench" / "results" / f"query-dense-{stamp}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"context": context, "query": {"dense": dense}}, indent=2))
    say(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
