"""GET /api/v1/telemetry/stream through a real HTTP server, real Kafka and real registry.

The app is served by werkzeug in a thread on an ephemeral port (as in
test_rest_ingest.py) with this module's own validated and alarms topics: readings
and alarm transitions are written to them Confluent-framed with the registry and
keyed by asset_id, exactly as the pipeline's sinks write them (the test profile's
stack runs without the pipeline), and read back by a real HTTP client (requests,
stream=True). The path through REST ingest and the Flink job is measured by
``python -m bench.stream`` (docs/stream.md).
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
from config.settings import Settings, load_settings
from io_connectors.schema_registry import RegistrySchemas
from schemas.avro import load_schema, schema_text
from schemas.wire import encode
from tests.integration.conftest import scratch_topics, wait_for
from tests.integration.test_mqtt_bridge import _require_services

pytestmark = pytest.mark.integration

BASE = load_settings()
KAFKA = BASE.kafka.bootstrap_servers
RUN_ID = uuid.uuid4().hex[:8]
TOPIC = f"stream_test_validated_{RUN_ID}"
ALARMS = f"stream_test_alarms_{RUN_ID}"
KEY = f"r-{RUN_ID}"
H = {"Authorization": f"Bearer {KEY}"}
ASSET = "asset-001"  # in config/assets.json


def settings() -> Settings:
    values = {name: BASE.section(name) for name in ("stack", "kafka", "schema_registry",
                                                    "questdb", "mqtt", "api", "pipeline")}
    values["kafka"]["topic_validated"] = TOPIC
    values["kafka"]["topic_alarms"] = ALARMS
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
    with scratch_topics(BASE, (TOPIC, ALARMS), partitions=4):
        srv = Server()
        yield srv
        srv.close()


@pytest.fixture(scope="module")
def producer() -> Iterator[Producer]:
    producer = Producer({"bootstrap.servers": KAFKA})
    yield producer
    producer.flush(10)


def _produce(producer: Producer, topic: str, value: bytes, key: str | None,
             partition: int | None) -> None:
    kwargs = {} if partition is None else {"partition": partition}
    producer.produce(topic, value, key=None if key is None else key.encode(), **kwargs)
    assert producer.flush(10) == 0


@pytest.fixture(scope="module")
def send(producer: Producer) -> Any:
    """Write one reading of ``asset_id``, keyed by it (or ``key``), as the pipeline does."""
    registry = RegistrySchemas(BASE.schema_registry.url)
    schema_id = registry.register_for_topic(TOPIC, schema_text("sensor-reading"))
    parsed = load_schema("sensor-reading")

    def send_one(asset_id: str, sensor_id: str, key: str | None = "asset",
                 partition: int | None = None) -> dict[str, Any]:
        now = int(time.time() * 1000)
        rec = {"timestamp": now, "event_id": f"evt-{uuid.uuid4().hex}", "site_id": "site-001",
               "asset_id": asset_id, "sensor_id": sensor_id, "sensor_type": "TEMPERATURE",
               "value": 21.5, "unit": "celsius", "quality_flag": "GOOD", "site_name": None,
               "asset_type": None, "location": None, "ingested_at": now}
        _produce(producer, TOPIC, encode(rec, schema_id, parsed),
                 asset_id if key == "asset" else key, partition)
        return rec

    return send_one


@pytest.fixture(scope="module")
def send_alarm(producer: Producer) -> Any:
    """Write one alarm transition of ``asset_id`` to the alarms topic, as the pipeline does."""
    registry = RegistrySchemas(BASE.schema_registry.url)
    schema_id = registry.register_for_topic(ALARMS, schema_text("alarm"))
    parsed = load_schema("alarm")

    def send_one(asset_id: str, sensor_id: str, key: str | None = "asset",
                 partition: int | None = None) -> dict[str, Any]:
        now = int(time.time() * 1000)
        rec = {"timestamp": now, "alarm_id": f"{asset_id}:{sensor_id}:{now}",
               "site_id": "site-001", "asset_id": asset_id, "sensor_id": sensor_id,
               "sensor_type": "TEMPERATURE", "severity": "CRITICAL", "state": "RAISED",
               "value": 99.5, "threshold": 90.0, "reason": "value above critical 90.0",
               "event_id": f"evt-{uuid.uuid4().hex}", "ingested_at": now}
        _produce(producer, ALARMS, encode(rec, schema_id, parsed),
                 asset_id if key == "asset" else key, partition)
        return rec

    return send_one


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
        """The next event (reading, alarm, dropped or error), skipping comments."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            ev = self.next()
            if ev.get("event") in ("reading", "alarm", "dropped", "error"):
                return ev
        raise AssertionError(f"no event within {timeout_s} s")

    def until(self, done: Any, timeout_s: float) -> list[dict[str, Any]]:
        """Events (``event``, ``id`` and decoded ``data``) until ``done(events so far)``."""
        out: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            ev = self.next_reading(max(0.1, deadline - time.monotonic()))
            out.append({**ev, "data": json.loads(ev["data"])})
            if done(out):
                return out
        raise AssertionError(f"the last event wanted did not come within {timeout_s} s: "
                             f"{[(e['event'], e['data']) for e in out]}")


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
    # every partition's position, of both topics
    assert sorted(parse_position(first_id)) == [(t, p) for t in "ar" for p in range(4)]
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
    r = requests.get(server.url, params={"asset_id": ASSET},
                     headers={**H, "Last-Event-ID": "r0:0,a4:0"}, timeout=10)
    assert r.status_code == 400 and "a4" in r.json()["message"]


def test_alarms_are_pushed_and_resume_covers_both_topics(server: Server, send: Any,
                                                         send_alarm: Any) -> None:
    wait_released(server)
    stream = open_stream(server)
    assert "stream of asset-001" in stream.next()["comment"]
    # Other assets' alarms in the same partition, just before ours (a partition is read in
    # order, so a broken filter would push them first): keyed by their asset, and unkeyed
    # (decoded and filtered on asset_id).
    send_alarm("asset-other", "s-x", partition=2)
    send_alarm("asset-other", "s-y", key=None, partition=2)
    alarm = send_alarm(ASSET, "temp-a", partition=2)
    ev = stream.next_reading(10)
    assert ev["event"] == "alarm", ev
    data = json.loads(ev["data"])
    assert data["alarm_id"] == alarm["alarm_id"] and data["asset_id"] == ASSET
    assert (data["severity"], data["state"], data["threshold"]) == ("CRITICAL", "RAISED", 90.0)
    alarm_id = ev["id"]
    assert parse_position(alarm_id)[("a", 2)] > 0
    reading = send(ASSET, "temp-b", partition=1)
    ev = stream.next_reading(10)
    assert ev["event"] == "reading" and json.loads(ev["data"])["event_id"] == reading["event_id"]
    stream.response.close()
    wait_released(server)

    # Sent while disconnected: one alarm and one reading; then a marker in each partition
    # used, so that everything before the markers has been read when both arrived.
    alarm2 = send_alarm(ASSET, "temp-c", partition=2)
    reading2 = send(ASSET, "temp-d", partition=1)
    alarm_mark = send_alarm(ASSET, "mark", partition=2)["alarm_id"]
    reading_mark = send(ASSET, "mark", partition=1)["event_id"]

    def keys(events: list[dict[str, Any]], kind: str) -> list[str]:
        return [e["data"]["alarm_id"] if kind == "alarm" else e["data"]["event_id"]
                for e in events if e["event"] == kind]

    def seen(*wanted: str) -> Any:
        return lambda events: set(wanted) <= set(keys(events, "alarm") + keys(events, "reading"))

    # Resume after the first alarm: the reading after it, both sent meanwhile, no alarm twice.
    resumed = open_stream(server, alarm_id)
    got = resumed.until(seen(alarm_mark, reading_mark), 15)
    resumed.response.close()
    assert keys(got, "alarm") == [alarm2["alarm_id"], alarm_mark]
    assert keys(got, "reading") == [reading["event_id"], reading2["event_id"], reading_mark]
    assert all(e["data"]["asset_id"] == ASSET for e in got)

    # A reading-only id (bare pairs, as the stream sent before alarms) still resumes the
    # readings; its alarms start at the end of the topic.
    wait_released(server)
    legacy = ",".join(f"{p}:{o}" for (t, p), o in parse_position(alarm_id).items() if t == "r")
    old = open_stream(server, legacy)
    alarm3 = send_alarm(ASSET, "temp-e", partition=2)["alarm_id"]
    got = old.until(seen(alarm3, reading_mark), 15)
    old.response.close()
    assert keys(got, "alarm") == [alarm3]
    assert keys(got, "reading") == [reading["event_id"], reading2["event_id"], reading_mark]
