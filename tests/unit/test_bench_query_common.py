"""The pieces bench/query_bench.py and bench/query_dense.py share (bench/query_common.py)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from bench.query_common import ilp_conf, latency_stats, sensor_symbols, timed_get
from config.settings import load_settings


def test_latency_stats_are_nearest_rank_in_milliseconds() -> None:
    seconds = [ms / 1000 for ms in range(100, 0, -1)]      # 1..100 ms, unsorted
    assert latency_stats(seconds) == {"p50_ms": 50.0, "p95_ms": 95.0, "p99_ms": 99.0,
                                      "max_ms": 100.0, "mean_ms": 50.5, "n": 100}
    assert list(latency_stats(seconds, (50, 90, 99))) == [
        "p50_ms", "p90_ms", "p99_ms", "max_ms", "mean_ms", "n"]
    assert latency_stats([0.0123456])["p99_ms"] == 12.35     # one sample: every percentile
    assert latency_stats([]) == {"p50_ms": None, "p95_ms": None, "p99_ms": None,
                                 "max_ms": None, "n": 0}


def test_ilp_conf_and_symbols() -> None:
    settings = load_settings(environ={"DCMMS_QUESTDB_HTTP_PORT": "19000"})
    assert ilp_conf(settings, request_timeout=120000) == (
        f"http::addr={settings.questdb.host}:19000;auto_flush=off;request_timeout=120000;")
    assert sensor_symbols([("s", "a", "x", "POWER", "kW")]) == [
        {"site_id": "s", "asset_id": "a", "sensor_id": "x", "sensor_type": "POWER",
         "unit": "kW", "quality_flag": "GOOD"}]


@pytest.fixture
def server() -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            status = 200 if "ok=1" in self.path else 503
            body = b"fine" if status == 200 else b"down for a while"
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/x"
    httpd.shutdown()
    httpd.server_close()


def test_timed_get_times_the_body_and_refuses_other_statuses(server: str) -> None:
    session = requests.Session()
    response, seconds = timed_get(session, server, {"ok": "1"}, "raw_day")
    assert response.content == b"fine" and 0 < seconds < 10
    with pytest.raises(RuntimeError, match=r"raw_day: HTTP 503 for \{'ok': '0'\}: down"):
        timed_get(session, server, {"ok": "0"}, "raw_day")
