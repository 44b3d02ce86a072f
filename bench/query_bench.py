"""Query benchmark: load sensor_readings with N rows over 90 days, then time the HTTP API.

Not a test. It measures, through gunicorn serving ``runners.wsgi:app``:

* ``raw_day``    — one asset's raw readings for one UTC day (``limit=10000``);
* ``bucket_day`` — the same day in 1-minute buckets (``interval=1m&agg=avg``);
* ``latest``     — the latest reading of every sensor of one site;

each over ``--requests`` sequential requests with a random asset/day/site per
request, reporting p50/p90/p99/max in milliseconds (nearest-rank percentiles,
bench/query_common.py), and the same SQL timed
directly over PG wire (``db_*``), which shows how much of a request is QuestDB.

Rows are written over ILP/HTTP in timestamp order (QuestDB's fast path): one
global clock ticks ``90 days / N`` per row and the sensors take turns, so every
sensor reports at the same regular rate. Ids start with ``--prefix``.

QuestDB's address comes from load_settings() (env overrides such as
``DCMMS_QUESTDB_PG_PORT``). Use a scratch QuestDB for large N: the rows stay.

Example (scratch QuestDB on 39000/38812, API on 33000)::

    DCMMS_QUESTDB_HTTP_PORT=39000 DCMMS_QUESTDB_PG_PORT=38812 \\
        .venv/bin/python -m bench.query_bench --rows 5000000 --api-port 33000
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from questdb import Sender, TimestampNanos
from werkzeug.datastructures import MultiDict

from api.params import parse_latest_query, parse_telemetry_query
from api.questdb import QuestDBClient, TelemetryStore
from bench.query_common import (
    api_session,
    ilp_conf,
    latency_stats,
    pg_connect,
    sensor_symbols,
    timed_get,
)
from config.settings import REPO_ROOT, Settings, load_settings
from io_connectors.questdb_schema import DDL_STATEMENTS, SENSOR_READINGS

__all__ = ["main"]

_LOGGER = logging.getLogger(__name__)

DAY_MS = 86_400_000
PERCENTILES = (50, 90, 99)  # p50_ms, p90_ms, p99_ms of each kind
SENSOR_TYPES = ("TEMPERATURE", "VOLTAGE", "CURRENT", "POWER", "IRRADIANCE", "WIND_SPEED",
                "FREQUENCY", "HUMIDITY")
UNITS = ("C", "V", "A", "kW", "W/m2", "m/s", "Hz", "%")


@dataclass(frozen=True)
class Fleet:
    """The benchmark's sites, assets and sensors (ids derived from a prefix)."""

    prefix: str
    sites: int
    assets_per_site: int
    sensors_per_asset: int

    @property
    def sensor_count(self) -> int:
        return self.sites * self.assets_per_site * self.sensors_per_asset

    def site(self, s: int) -> str:
        return f"{self.prefix}-site-{s:03d}"

    def asset(self, s: int, a: int) -> str:
        return f"{self.prefix}-asset-{s:03d}-{a:03d}"

    def sensor(self, s: int, a: int, k: int) -> str:
        return f"{self.asset(s, a)}-s{k:02d}"

    def sensors(self) -> list[tuple[str, str, str, str, str]]:
        """(site_id, asset_id, sensor_id, sensor_type, unit) for every sensor, in load order."""
        out = []
        for s in range(self.sites):
            for a in range(self.assets_per_site):
                for k in range(self.sensors_per_asset):
                    kind = k % len(SENSOR_TYPES)
                    out.append((self.site(s), self.asset(s, a), self.sensor(s, a, k),
                                SENSOR_TYPES[kind], UNITS[kind]))
        return out


def _table_count(cur: Any) -> int:
    cur.execute(f"SELECT count() FROM {SENSOR_READINGS}")
    return int(cur.fetchone()[0])


def load(settings: Settings, fleet: Fleet, rows: int, days: float, end_ms: int,
         event_prefix: str | None = None) -> dict[str, Any]:
    """Write ``rows`` readings ending at ``end_ms``; return send and visibility rates.

    Event ids are ``<event_prefix>-<i>`` (default: the fleet prefix); give each
    load its own prefix when adding rows to an already loaded fleet.
    """
    id_prefix = event_prefix or fleet.prefix
    conn = pg_connect(settings)
    cur = conn.cursor()
    cur.execute("SELECT table_name FROM tables()")
    if SENSOR_READINGS not in {r[0] for r in cur.fetchall()}:
        cur.execute(DDL_STATEMENTS[0])
    before = _table_count(cur)
    sensors = fleet.sensors()
    n_sensors = len(sensors)
    span_ms = days * DAY_MS
    start_ms = end_ms - span_ms
    step_ns = span_ms * 1_000_000 / rows
    start_ns = int(start_ms * 1_000_000)
    symbols = sensor_symbols(sensors)
    t0 = time.perf_counter()
    with Sender.from_conf(ilp_conf(settings, request_timeout=120000)) as sender:
        buf = sender.new_buffer()
        for i in range(rows):
            j = i % n_sensors
            buf.row(SENSOR_READINGS, symbols=symbols[j],
                    columns={"event_id": f"{id_prefix}-{i}", "value": (i % 1000) * 0.1 + j},
                    at=TimestampNanos(start_ns + int(i * step_ns)))
            if len(buf) >= 16 * 1024 * 1024:
                sender.flush(buf)  # clears the buffer only on success
            if i and i % 5_000_000 == 0:
                _LOGGER.info("sent %d rows (%.0f rows/s)", i, i / (time.perf_counter() - t0))
        sender.flush(buf)
    sent_s = time.perf_counter() - t0
    target = before + rows
    while (count := _table_count(cur)) < target:
        time.sleep(1.0)
        if time.perf_counter() - t0 > 4 * 3600:
            raise TimeoutError(f"only {count - before} of {rows} rows visible after 4 h")
    visible_s = time.perf_counter() - t0
    conn.close()
    return {"rows": rows, "send_seconds": round(sent_s, 1),
            "send_rows_per_s": round(rows / sent_s), "visible_seconds": round(visible_s, 1),
            "visible_rows_per_s": round(rows / visible_s), "table_rows_after": target}


def _start_api(port: int, workers: int) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers",
            str(workers), "--no-control-socket", "--log-level", "warning", "runners.wsgi:app"]
    proc = subprocess.Popen(argv, cwd=REPO_ROOT, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except requests.RequestException:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {proc.returncode}")
        time.sleep(0.3)
    _stop(proc)
    raise TimeoutError(f"API on port {port} did not become healthy")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def measure(base_url: str, settings: Settings, fleet: Fleet, days: float, end_ms: int,
            requests_n: int, warmup: int, seed: int, api_key: str) -> dict[str, Any]:
    """Time each query kind through HTTP and, for the same parameters, directly in QuestDB."""
    rng = random.Random(seed)
    first_day = (end_ms - int(days * DAY_MS)) // DAY_MS + 1  # whole UTC days inside the data
    last_day = end_ms // DAY_MS - 1
    store = TelemetryStore(QuestDBClient(
        settings.questdb.host, settings.questdb.pg_port,
        settings.questdb.pg_user, settings.questdb.pg_password))

    def day_params() -> dict[str, str]:
        day = rng.randint(first_day, last_day)
        asset = fleet.asset(rng.randrange(fleet.sites), rng.randrange(fleet.assets_per_site))
        return {"asset_id": asset, "start_time": str(day * DAY_MS),
                "end_time": str((day + 1) * DAY_MS), "limit": "10000"}

    kinds: dict[str, tuple[str, Callable[[], dict[str, str]]]] = {
        "raw_day": ("/api/v1/telemetry", day_params),
        "bucket_day": ("/api/v1/telemetry",
                       lambda: {**day_params(), "interval": "1m", "agg": "avg"}),
        "latest": ("/api/v1/telemetry/latest",
                   lambda: {"site_id": fleet.site(rng.randrange(fleet.sites))}),
    }
    session = api_session(api_key)
    results: dict[str, Any] = {}
    for name, (path, make) in kinds.items():
        http, db, rows = [], [], []
        for i in range(warmup + requests_n):
            params = make()
            response, elapsed = timed_get(session, base_url + path, params, name, timeout=30)
            n_rows = len(response.json()["data"])
            # Same query straight to QuestDB (no HTTP, no JSON): where the time goes.
            t1 = time.perf_counter()
            if name == "latest":
                store.latest(parse_latest_query(MultiDict(params)))
            else:
                q = parse_telemetry_query(MultiDict(params))
                store.readings(q, q.limit, None)
            db_elapsed = time.perf_counter() - t1
            if i >= warmup:
                http.append(elapsed)
                db.append(db_elapsed)
                rows.append(n_rows)
        db_stats = latency_stats(db, PERCENTILES)
        results[name] = {**latency_stats(http, PERCENTILES),
                         "rows_mean": round(statistics.fmean(rows), 1), "rows_min": min(rows),
                         "db": {k: v for k, v in db_stats.items() if k != "n"}}
        _LOGGER.info("%s: %s", name, results[name])
    store.client.close()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--days", type=float, default=89.5,
                        help="span of the data, ending now (inside the 90-day TTL)")
    parser.add_argument("--sites", type=int, default=20)
    parser.add_argument("--assets-per-site", type=int, default=25)
    parser.add_argument("--sensors-per-asset", type=int, default=8)
    parser.add_argument("--prefix", default="bench")
    parser.add_argument("--skip-load", action="store_true",
                        help="reuse rows of an earlier run (same prefix, --end-ms)")
    parser.add_argument("--end-ms", type=int, default=None,
                        help="end of the data (default: now, rounded down to the minute)")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--api-url", default=None, help="use a running API instead of starting one")
    parser.add_argument("--api-port", type=int, default=None,
                        help="port for the gunicorn this script starts (default [api] port)")
    parser.add_argument("--workers", type=int, default=None, help="default [api] workers")
    parser.add_argument("--api-key", default=os.environ.get("DCMMS_BENCH_API_KEY",
                                                            "dev-api-key"))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "bench/results/query.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    settings = load_settings()
    fleet = Fleet(args.prefix, args.sites, args.assets_per_site, args.sensors_per_asset)
    end_ms = args.end_ms or int(time.time() // 60 * 60_000)
    report: dict[str, Any] = {
        "rows": args.rows, "days": args.days, "end_ms": end_ms, "sensors": fleet.sensor_count,
        "fleet": {"sites": fleet.sites, "assets_per_site": fleet.assets_per_site,
                  "sensors_per_asset": fleet.sensors_per_asset, "prefix": fleet.prefix},
        "machine": {"cpus": os.cpu_count()},
    }
    if not args.skip_load:
        _LOGGER.info("loading %d rows for %d sensors over %.1f days (end_ms=%d)",
                     args.rows, fleet.sensor_count, args.days, end_ms)
        report["load"] = load(settings, fleet, args.rows, args.days, end_ms)
        _LOGGER.info("load: %s", report["load"])
    proc = None
    base_url = args.api_url
    if base_url is None:
        port = args.api_port or settings.api.port
        workers = args.workers or settings.api.workers
        proc = _start_api(port, workers)
        base_url = f"http://127.0.0.1:{port}"
        report["api"] = {"workers": workers, "server": "gunicorn sync"}
    try:
        report["queries"] = measure(base_url, settings, fleet, args.days, end_ms, args.requests,
                                    args.warmup, args.seed, args.api_key)
    finally:
        if proc is not None:
            _stop(proc)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
