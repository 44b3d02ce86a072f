"""What the query benchmarks (bench/query_bench.py, bench/query_dense.py) share.

QuestDB's connections as the benchmarks open them (PG wire as the API's user, ILP/HTTP
with explicit flushes), the symbol columns of a fleet's sensors, a timed API request,
and the latency figures of a sample (``p50_ms``..., nearest-rank percentiles as in
bench/report.py).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import psycopg2
import requests

from bench.report import percentiles
from config.settings import Settings

__all__ = ["api_session", "ilp_conf", "latency_stats", "pg_connect", "sensor_symbols",
           "timed_get"]


def pg_connect(settings: Settings) -> Any:
    """A PG-wire connection (autocommit) to ``[questdb]`` as its ``pg_user``."""
    conn = psycopg2.connect(host=settings.questdb.host,
                            port=settings.questdb.pg_port,
                            user=settings.questdb.pg_user,
                            password=settings.questdb.pg_password, dbname="qdb",
                            connect_timeout=5)
    conn.autocommit = True
    return conn


def ilp_conf(settings: Settings, **options: Any) -> str:
    """``Sender.from_conf`` text for ILP/HTTP to ``[questdb]``, flushed by the caller
    (``auto_flush=off``), with ``options`` (e.g. ``request_timeout=120000``) after it."""
    extra = "".join(f"{key}={value};" for key, value in options.items())
    return (f"http::addr={settings.questdb.host}:{settings.questdb.http_port};"
            f"auto_flush=off;{extra}")


def sensor_symbols(sensors: Iterable[Sequence[str]]) -> list[dict[str, str]]:
    """The SYMBOL columns of each ``(site_id, asset_id, sensor_id, sensor_type, unit)``."""
    return [{"site_id": s, "asset_id": a, "sensor_id": x, "sensor_type": t, "unit": u,
             "quality_flag": "GOOD"} for s, a, x, t, u in sensors]


def api_session(api_key: str) -> requests.Session:
    """A session that presents ``api_key`` as a bearer token."""
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {api_key}"
    return session


def timed_get(session: requests.Session, url: str, params: Mapping[str, str], what: str,
              timeout: float = 60) -> tuple[requests.Response, float]:
    """``GET url`` and the seconds until its whole body was read; a status other than 200
    raises RuntimeError naming ``what`` and the parameters."""
    t0 = time.perf_counter()
    response = session.get(url, params=params, timeout=timeout)
    elapsed = time.perf_counter() - t0
    if response.status_code != 200:
        raise RuntimeError(f"{what}: HTTP {response.status_code} for {dict(params)}: "
                           f"{response.text[:300]}")
    return response, elapsed


def latency_stats(seconds: Sequence[float], points: Sequence[float] = (50, 95, 99)
                  ) -> dict[str, float | int | None]:
    """``{"p50_ms": .., .., "max_ms", "mean_ms", "n"}`` of samples in seconds, rounded to
    0.01 ms; the percentiles are nearest-rank. No samples: None for each but ``n``."""
    keys = [f"p{p:g}_ms" for p in points]
    if not seconds:
        return {**dict.fromkeys(keys), "max_ms": None, "n": 0}
    ordered = sorted(seconds)
    ranked = percentiles([s * 1000 for s in ordered], points)
    return {**{f"{name}_ms": value for name, value in ranked.items()},
            "max_ms": round(ordered[-1] * 1000, 2),
            "mean_ms": round(statistics.fmean(ordered) * 1000, 2), "n": len(ordered)}
