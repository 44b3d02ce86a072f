"""GET /api/v1/telemetry/stream through a real HTTP server, real Kafka and real registry.

The app is served by werkzeug in a thread on an ephemeral port (as in
test_rest_ingest.py) with this module's own validated topic: readings are written
to it Confluent-framed with the registry, exactly as the pipeline's sink writes
them, and read back by a real HTTP client (requests, stream=True).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from confluent_kafka import Producer
from werkzeug.serving import make_server

from api import create_app
from api.auth import EXTENSION as AUTH_EXTENSION
from api.stream import STREAM_EXTENSION, parse_position
from io_connectors.schema_registry import RegistrySchemas
from runners.settings import Settings, load_settings
from schemas.avro import load_schema, schema_text
from schemas.wire import encode
from tests.integration.conftest import scratch_topics, wait_for
from tests.integration.test_mqtt_bridge import _require_services

pytestmark = pytest.mark.integration

BASE = load_settings()
KAFKA = BASE.get("kafka", "bootstrap_servers")
RUN_ID = uuid.uuid4().hex[:8]
TOPIC = f"stream_test_validated_{RUN_ID}"
KEY = f"r-{RUN_ID}"
H = {"Authorization": f"Bearer {KEY}"}
ASSET = "asset-001"  # in config/assets.json


def settings() -> Settings:
    values = {name: BASE.section(name) for name in ("stack", "kafka", "schema_registry",
                                                    "questdb", "mqtt", "api", "pipeline")}
    values["kafka"]["topic_validated"] = TOPIC
    values["api"].update({"api_keys": f"{KEY}:read", "stream_heartbeat_s": 1.0,
                          "stream_max_per_key": 2})
    return Settings(values, Path("stream-integration-test"), {})


class Server:
    def __init__(self) -> None:
        self.app = create_app(settings(), {"TELEMETRY_STORE": object(), "READY_CHECKS": {}})
        self._server = make_server("127.0.0.1", 0, self.app, threaded=True)
        self.url = f"http://127.0.0.1:{self._server.server_port}/api/v1/telemetry/stream"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._thread.join(10)


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    _require_services()
    with scratch_topics(BASE, (TOPIC,), partitions=4):
        srv = Server()
        yield srv
        srv.close()


@pytest.fixture(scope="module")
def send() -> Iterator[Any]:
    registry = RegistrySchemas(BASE.get("schema_registry", "url"))
    schema_id = registry.register_for_topic(TOPIC, schema_text("sensor-reading"))
    parsed = load_schema("sensor-reading")
    producer = Producer({"bootstrap.servers": KAFKA})

    def send_one(asset_id: str, sensor_id: str) -> dict[str, Any]:
        now = int(time.time() * 1000)
        rec = {"timestamp": now, "event_id": f"evt-{uuid.uuid4().hex}", "site_id": "site-001",
               "asset_id": asset_id, "sensor_id": sensor_id, "sensor_type": "TEMPERATURE",
               "value": 21.5, "unit": "celsius", "quality_flag": "GOOD", "site_name": None,
               "asset_type": None, "location": None, "ingested_at": now}
        producer.produce(TOPIC, encode(rec, schema_id, parsed), key=sensor_id.encode())
        assert producer.flush(10) == 0
        return rec

    yield send_one
    producer.flush(10)


class SSE:
    """Events of an open stream (comments as {'comment': text})."""

    def __init__(self, response: requests.Response) -> None:
        self.response = response
        self._lines = response.iter_lines(decode_unicode=True)

    def next(self) -> dict[str, str]:
        fields: dict[str, str] = {}
        for line in self._lines:
            if line == "":
                if fields:
                    return fields
                continue
            name, _, value = line.partition(":")
            fields["comment" if name == "" else name] = value.removeprefix(" ")
        raise AssertionError("stream ended")

    def next_reading(self, timeout_s: float) -> dict[str, str]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            ev = self.next()
            if ev.get("event") in ("reading", "dropped", "error"):
                return ev
        raise AssertionError(f"no reading within {timeout_s} s")


def wait_released(server: Server) -> None:
    """Wait until the key has no open stream (a closed client is noticed at the next write)."""
    slots = server.app.extensions[STREAM_EXTENSION].slots
    key_id = server.app.extensions[AUTH_EXTENSION].keys.lookup(KEY).key_id
    wait_for("the closed streams' slots to be released", lambda: slots.count(key_id) == 0,
             10, 0.2)


def open_stream(server: Server, last_id: str | None = None) -> SSE:
    headers = dict(H, **({"Last-Event-ID": last_id} if last_id else {}))
    r = requests.get(server.url, params={"asset_id": ASSET}, headers=headers, stream=True,
                     timeout=(5, 10))
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("text/event-stream")
    return SSE(r)


def test_reading_is_pushed_and_resume_skips_what_was_seen(server: Server, send: Any) -> None:
    stream = open_stream(server)
    assert "stream of asset-001" in stream.next()["comment"]  # positioned at the topic's end
    send("asset-other", "s-x")  # another asset: never pushed here
    sent = send(ASSET, "temp-a")
    t0 = time.monotonic()
    ev = stream.next_reading(10)
    latency = time.monotonic() - t0
    assert ev["event"] == "reading"
    data = json.loads(ev["data"])
    assert data["event_id"] == sent["event_id"] and data["asset_id"] == ASSET
    first_id = ev["id"]
    assert len(parse_position(first_id)) == 4  # every partition's position
    assert latency < 5, f"pushed after {latency:.2f} s"
    # A heartbeat comment arrives while nothing happens ([api] stream_heartbeat_s = 1).
    assert stream.next() == {"comment": "heartbeat"}
    stream.response.close()

    # The client went away: its slot is released (seen at the next heartbeat write).
    slots = server.app.extensions[STREAM_EXTENSION].slots
    key_id = server.app.extensions[AUTH_EXTENSION].keys.lookup(KEY).key_id
    wait_for("the closed stream's slot to be released", lambda: slots.count(key_id) == 0,
             10, 0.2)

    second = send(ASSET, "temp-b")  # sent while disconnected
    resumed = open_stream(server, first_id)
    ev = resumed.next_reading(10)
    assert json.loads(ev["data"])["event_id"] == second["event_id"]  # not the first again
    assert parse_position(ev["id"]) != parse_position(first_id)
    resumed.response.close()


def test_third_stream_of_a_key_is_429(server: Server) -> None:
    wait_released(server)
    a, b = open_stream(server), open_stream(server)
    try:
        r = requests.get(server.url, params={"asset_id": ASSET}, headers=H, timeout=10)
        assert r.status_code == 429
        assert r.json()["code"] == "too_many_streams"
    finally:
        a.response.close()
        b.response.close()


def test_resume_from_a_partition_that_does_not_exist_is_400(server: Server) -> None:
    wait_released(server)
    r = requests.get(server.url, params={"asset_id": ASSET},
                     headers={**H, "Last-Event-ID": "0:0,99:5"}, timeout=10)
    assert r.status_code == 400
    assert r.json()["details"]["parameter"] == "Last-Event-ID"
