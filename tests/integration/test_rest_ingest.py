"""POST /api/v1/telemetry through a real HTTP server against real Kafka and registry.

The app (create_app) is served by werkzeug in a thread on an ephemeral port,
with settings from load_settings() plus per-test changes: this module's own
Kafka topics (so the assertions see only what this server produced), a low
rate limit for the 429 case, and an unreachable Kafka for the 503 case.
QuestDB is not involved in ingest and is replaced by a stub store.

The /metrics test runs the API as deployed instead: gunicorn with two workers
(``runners.wsgi``, Prometheus multiprocess mode), on this module's topics.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from werkzeug.serving import make_server

from api import create_app
from api.ingest import EXTENSION
from config.settings import REPO_ROOT, Settings, load_settings
from tests.integration.conftest import free_port, scratch_topics, stop_process_group
from tests.integration.test_mqtt_bridge import _require_services, consume

pytestmark = pytest.mark.integration

BASE = load_settings()
KAFKA = BASE.kafka.bootstrap_servers
RUN_ID = uuid.uuid4().hex[:8]
RAW_TOPIC = f"rest_test_raw_{RUN_ID}"
DLQ_TOPIC = f"rest_test_dlq_{RUN_ID}"
URL_PATH = "/api/v1/telemetry"
WRITE_KEY, READ_KEY = f"w-{RUN_ID}", f"r-{RUN_ID}"
W = {"Authorization": f"Bearer {WRITE_KEY}"}


def settings_with(kafka: dict[str, Any] | None = None, api: dict[str, Any] | None = None
                  ) -> Settings:
    values = {name: BASE.section(name) for name in ("stack", "kafka", "schema_registry",
                                                    "questdb", "mqtt", "api", "pipeline")}
    values["kafka"].update({"topic_raw": RAW_TOPIC, "topic_dlq": DLQ_TOPIC}, **(kafka or {}))
    values["api"].update({"api_keys": f"{WRITE_KEY}:read+write,{READ_KEY}:read"}, **(api or {}))
    return Settings(values, Path("rest-integration-test"), {})


class Server:
    """create_app served by werkzeug in a thread on an ephemeral port."""

    def __init__(self, settings: Settings) -> None:
        app = create_app(settings, {"TELEMETRY_STORE": object(), "READY_CHECKS": {}})
        self._app = app
        self._server = make_server("127.0.0.1", 0, app, threaded=True)
        self.port = self._server.server_port
        self.url = f"http://127.0.0.1:{self.port}{URL_PATH}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._thread.join(10)
        state = self._app.extensions.get(EXTENSION)
        if state is not None:
            state.close(2.0)


@pytest.fixture(scope="module", autouse=True)
def topics() -> Iterator[None]:
    _require_services()
    with scratch_topics(BASE, (RAW_TOPIC, DLQ_TOPIC)):
        yield


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    srv = Server(settings_with())
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def session() -> Iterator[requests.Session]:
    with requests.Session() as s:
        yield s


def metric(base_url: str, name: str, **labels: str) -> float:
    """One sample of GET <base_url>/metrics (0 when absent)."""
    text = requests.get(f"{base_url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return 0.0


ACCEPTED = "dcmms_ingest_events_accepted_total"
REJECTED = "dcmms_ingest_events_rejected_total"


def event(**fields: Any) -> dict[str, Any]:
    e = {"site_id": f"site-{RUN_ID}", "asset_id": "asset-rest", "sensor_id": "s1",
         "sensor_type": "VOLTAGE", "timestamp": int(time.time() * 1000) - 1000,
         "value": 230.0, "unit": "v"}
    e.update(fields)
    return e


def test_202_only_after_kafka_has_every_accepted_event(server: Server,
                                                       session: requests.Session) -> None:
    asset = f"asset-{uuid.uuid4().hex[:6]}"
    batch = [event(asset_id=asset, sensor_id=f"s{i}") for i in range(50)]
    batch.insert(10, event(asset_id=asset, value="high"))
    base = server.url.removesuffix(URL_PATH)
    accepted, rejected = metric(base, ACCEPTED), metric(base, REJECTED, reason="value.type")
    r = session.post(server.url, json=batch, headers=W, timeout=30)
    assert r.status_code == 202, r.text
    assert r.json() == {"accepted": 50, "rejected": [
        {"index": 10, "errors": ["value: must be a number, got str"]}]}
    assert metric(base, ACCEPTED) == accepted + 50
    assert metric(base, REJECTED, reason="value.type") == rejected + 1
    # Acknowledged means readable now: a short consume must already see all of them.
    shapes: list[str] = []
    records = consume(RAW_TOPIC, lambda rs: sum(k == asset.encode() for k, _ in rs) >= 50, 15,
                      shapes)
    events = [e for k, e in records if k == asset.encode()]
    assert len({e["event_id"] for e in events}) == 50
    assert [e["sensor_id"] for e in events] == [f"s{i}" for i in range(50)], "request order"
    assert set(shapes) == {"batch"}, "REST writes TelemetryBatch records only"
    assert all(e["source"] == "http" for e in events)
    dead = consume(DLQ_TOPIC, lambda rs: any(d["stage"] == "ingest" for _, d in rs), 15)
    assert any(json.loads(d["original"])["asset_id"] == asset for _, d in dead)


def test_retried_batch_keeps_its_event_ids(server: Server, session: requests.Session) -> None:
    asset = f"asset-{uuid.uuid4().hex[:6]}"
    batch = [event(asset_id=asset, sensor_id=f"s{i}") for i in range(5)]
    for _ in range(2):
        assert session.post(server.url, json=batch, headers=W, timeout=30).status_code == 202
    records = consume(RAW_TOPIC, lambda rs: sum(k == asset.encode() for k, _ in rs) >= 10, 15)
    ids = [e["event_id"] for k, e in records if k == asset.encode()]
    assert len(ids) == 10 and len(set(ids)) == 5


def test_400_when_nothing_is_valid(server: Server, session: requests.Session) -> None:
    r = session.post(server.url, json=[{"asset_id": 1}, "x"], headers=W, timeout=30)
    assert r.status_code == 400
    body = r.json()
    assert body["accepted"] == 0 and [x["index"] for x in body["rejected"]] == [0, 1]


@pytest.mark.parametrize("headers,status", [
    ({}, 401), ({"Authorization": "Bearer wrong"}, 401),
    ({"Authorization": f"Bearer {READ_KEY}"}, 403)])
def test_auth_statuses(server: Server, session: requests.Session,
                       headers: dict[str, str], status: int) -> None:
    r = session.post(server.url, json=[event()], headers=headers, timeout=30)
    assert r.status_code == status
    assert set(r.json()) == {"code", "message", "details"}


def test_415_when_not_json(server: Server, session: requests.Session) -> None:
    r = session.post(server.url, data=json.dumps([event()]),
                     headers={**W, "Content-Type": "text/plain"}, timeout=30)
    assert r.status_code == 415


def test_413_from_content_length_before_the_body_is_sent(server: Server) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.putrequest("POST", URL_PATH)
    conn.putheader("Authorization", W["Authorization"])
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(10**9))
    conn.endheaders()  # no body at all: the answer must not wait for one
    response = conn.getresponse()
    assert response.status == 413
    assert json.loads(response.read())["code"] == "payload_too_large"
    conn.close()


def test_413_too_many_items(server: Server, session: requests.Session) -> None:
    r = session.post(server.url, data="[" + ",".join(["1"] * 10_001) + "]",
                     headers={**W, "Content-Type": "application/json"}, timeout=30)
    assert r.status_code == 413 and r.json()["code"] == "too_many_items"


def test_429_over_the_key_rate() -> None:
    srv = Server(settings_with(api={"rate_limit_per_second": 0.01, "rate_limit_burst": 2}))
    try:
        codes = [requests.post(srv.url, json=event(), headers=W, timeout=30).status_code
                 for _ in range(3)]
        assert codes == [202, 202, 429]
        r = requests.post(srv.url, json=event(), headers=W, timeout=30)
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    finally:
        srv.close()


def test_503_with_retry_after_when_kafka_is_down() -> None:
    # A port nobody listens on: the registry is up, Kafka "is down".
    srv = Server(settings_with(kafka={"bootstrap_servers": "127.0.0.1:9"},
                               api={"ingest_ack_timeout_s": 1.5}))
    try:
        started = time.monotonic()
        r = requests.post(srv.url, json=[event(), event(value=None)], headers=W, timeout=30)
        assert r.status_code == 503, r.text
        assert int(r.headers["Retry-After"]) >= 1
        assert "accepted" not in r.json() and r.json()["code"] == "service_unavailable"
        assert time.monotonic() - started < 10
    finally:
        srv.close()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-10**40, max_value=10**40)
    | st.floats(allow_nan=False) | st.text(),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=12), c, max_size=8),
    max_leaves=25)
event_like = st.fixed_dictionaries({}, optional={
    k: json_values | st.just(v)
    for k, v in {**event(), "event_id": "e-1", "quality_flag": "GOOD", "source": "x"}.items()})


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(body=json_values | st.lists(event_like, max_size=6) | event_like)
def test_generated_bodies_never_produce_a_5xx(server: Server, session: requests.Session,
                                              body: Any) -> None:
    r = session.post(server.url, data=json.dumps(body).encode(),
                     headers={**W, "Content-Type": "application/json"}, timeout=30)
    assert r.status_code in (202, 400), r.text


# -- /metrics of the API as deployed (gunicorn, several workers) ----------------------------------

@pytest.fixture(scope="module")
def gunicorn_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """runners.wsgi:app in gunicorn with 2 workers on this module's topics; its base URL."""
    port = free_port()
    log = tmp_path_factory.mktemp("rest-gunicorn") / "api.log"
    # Without PROMETHEUS_MULTIPROC_DIR, runners.wsgi picks a directory of its own per master.
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    env.update({"DCMMS_KAFKA_TOPIC_RAW": RAW_TOPIC, "DCMMS_KAFKA_TOPIC_DLQ": DLQ_TOPIC,
                "DCMMS_API_API_KEYS": f"{WRITE_KEY}:read+write,{READ_KEY}:read",
                "DCMMS_API_PORT": str(port)})
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "2",
         "--no-control-socket", "runners.wsgi:app"],
        cwd=REPO_ROOT, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT,
        start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        if not _serves(base, proc, timeout_s=60):
            pytest.fail(f"gunicorn API did not start; log {log}:\n"
                        f"{log.read_text(errors='replace')[-2000:]}")
        yield base
    finally:
        stop_process_group(proc)


def _serves(base: str, proc: subprocess.Popen[bytes], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            if requests.get(f"{base}/healthz", timeout=2).ok:
                return True
        except requests.RequestException:
            pass
        time.sleep(0.3)
    return False


def test_metrics_of_a_gunicorn_api_count_every_accepted_event(gunicorn_api: str) -> None:
    before = metric(gunicorn_api, ACCEPTED)
    delivered_before = metric(gunicorn_api, "dcmms_edge_kafka_delivery_seconds_count",
                              record="batch")
    asset = f"asset-{uuid.uuid4().hex[:6]}"
    posted = 0
    for n in range(1, 9):
        # A new connection per request: gunicorn hands them to either worker.
        r = requests.post(f"{gunicorn_api}{URL_PATH}", headers={**W, "Connection": "close"},
                          json=[event(asset_id=asset, sensor_id=f"s{i}") for i in range(n)],
                          timeout=30)
        assert r.status_code == 202, r.text
        posted += n
    # Whichever worker answers the scrape, it reports the sum over both workers.
    for _ in range(4):
        assert metric(gunicorn_api, ACCEPTED) == before + posted
    assert metric(gunicorn_api, "dcmms_edge_kafka_delivery_seconds_count",
                  record="batch") >= delivered_before + 8
    records = consume(RAW_TOPIC, lambda rs: sum(k == asset.encode() for k, _ in rs) >= posted,
                      15)
    assert sum(k == asset.encode() for k, _ in records) == posted
