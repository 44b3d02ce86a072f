"""The MQTT -> Kafka bridge against real Mosquitto, Kafka and the schema registry.

Addresses come from load_settings() (the test profile's stack under
`make test`, see tests/integration/conftest.py). Each test module creates its own Kafka
topics and runs the bridge as a subprocess with its own client id and share
group, so the stack's own bridge (another share group, other topics) cannot
deliver on our bridge's behalf: what arrives here went through the bridge
under test.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import requests
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient
from prometheus_client.parser import text_string_to_metric_families

from config.settings import REPO_ROOT, load_settings
from io_connectors.kafka_partition import partition_for
from io_connectors.schema_registry import RegistrySchemas
from runners.mqtt_bridge import metrics_url
from runners.pipeline_report import bridge_lines
from schemas import wire
from schemas.avro import TELEMETRY_BATCH_FULLNAME
from tests.integration.conftest import free_port, scratch_topics

pytestmark = pytest.mark.integration

SETTINGS = load_settings()
MQTT_HOST = SETTINGS.mqtt.host
MQTT_PORT = SETTINGS.mqtt.port
SENSOR = (SETTINGS.mqtt.sensor_username, SETTINGS.mqtt.sensor_password)
KAFKA = SETTINGS.kafka.bootstrap_servers
REGISTRY = SETTINGS.schema_registry.url
RUN_ID = uuid.uuid4().hex[:8]
RAW_TOPIC = f"edge_test_raw_{RUN_ID}"
DLQ_TOPIC = f"edge_test_dlq_{RUN_ID}"
SITE = f"site-{RUN_ID}"
PARTITIONS = 8  # scratch_topics' default


def _require_services() -> None:
    try:
        socket.create_connection((MQTT_HOST, MQTT_PORT), timeout=3).close()
    except OSError as exc:
        pytest.fail(f"Mosquitto not reachable at {MQTT_HOST}:{MQTT_PORT} ([mqtt] host/port): "
                    f"{exc}; start the test stack with `make test`")
    try:
        AdminClient({"bootstrap.servers": KAFKA}).list_topics(timeout=5)
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"Kafka not reachable at {KAFKA} ([kafka] bootstrap_servers): {exc}")
    try:
        requests.get(f"{REGISTRY}/subjects", timeout=5).raise_for_status()
    except requests.RequestException as exc:
        pytest.fail(f"schema registry not reachable at {REGISTRY} ([schema_registry] url): {exc}")


@pytest.fixture(scope="module", autouse=True)
def topics() -> Iterator[None]:
    _require_services()
    with scratch_topics(SETTINGS, (RAW_TOPIC, DLQ_TOPIC)):
        yield


class BridgeProcess:
    """``python -m runners.mqtt_bridge`` writing to this module's topics."""

    def __init__(self, log_dir: Path, client_id: str, share_group: str,
                 metrics_port: int = 0) -> None:
        self.log_path = log_dir / f"bridge-{client_id}.log"
        self.client_id = client_id
        self.share_group = share_group
        # 0: no metrics server (the stack's bridge holds [mqtt] metrics_port).
        self.metrics_port = metrics_port
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, timeout_s: float = 30.0) -> None:
        env = {**os.environ, "DCMMS_KAFKA_TOPIC_RAW": RAW_TOPIC,
               "DCMMS_KAFKA_TOPIC_DLQ": DLQ_TOPIC, "PYTHONUNBUFFERED": "1"}
        self.starts += 1
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "runners.mqtt_bridge", "--client-id", self.client_id,
                 "--share-group", self.share_group,
                 # Long enough to survive the kill/restart, short enough that the
                 # broker forgets this throw-away session (and stops queueing for it).
                 "--session-expiry-s", "120", "--metrics-port", str(self.metrics_port)],
                cwd=REPO_ROOT, env=env,
                stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.log().count("bridge ready") >= self.starts:
                return
            if self.proc.poll() is not None:
                pytest.fail(f"bridge exited with {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.1)
        pytest.fail(f"bridge not ready within {timeout_s} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout_s: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout_s)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture()
def bridge(tmp_path: Path) -> Iterator[BridgeProcess]:
    name = uuid.uuid4().hex[:8]
    proc = BridgeProcess(tmp_path, f"test-bridge-{name}", f"test-{name}")
    proc.start()
    yield proc
    proc.kill()


class Publisher:
    """sensor01 publishing QoS 1 with a cap on messages in flight."""

    def __init__(self, user: tuple[str, str] | None = SENSOR, max_inflight: int = 200) -> None:
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                  client_id=f"test-pub-{uuid.uuid4().hex[:10]}",
                                  protocol=mqtt.MQTTv5)
        if user:
            self.client.username_pw_set(*user)
        self._slots = threading.Semaphore(max_inflight)
        self.acked: dict[int, int] = {}
        self._connected = threading.Event()
        self.connect_reason: int | None = None

        def on_connect(_c: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
            self.connect_reason = rc.value
            self._connected.set()

        def on_publish(_c: Any, _u: Any, mid: int, rc: Any, _p: Any) -> None:
            self.acked[mid] = rc.value
            self._slots.release()

        self.client.on_connect = on_connect
        self.client.on_publish = on_publish
        self.client.max_inflight_messages_set(max_inflight)

    def connect(self) -> int:
        try:
            self.client.connect(MQTT_HOST, MQTT_PORT, keepalive=30)
        except OSError as exc:
            pytest.fail(f"cannot reach Mosquitto at {MQTT_HOST}:{MQTT_PORT}: {exc}")
        self.client.loop_start()
        assert self._connected.wait(10), "no CONNACK within 10 s"
        assert self.connect_reason is not None
        return self.connect_reason

    def publish(self, topic: str, payload: bytes) -> mqtt.MQTTMessageInfo:
        assert self._slots.acquire(timeout=30), "PUBACKs stopped arriving"
        return self.client.publish(topic, payload, qos=1)

    def wait_all(self, infos: list[mqtt.MQTTMessageInfo], timeout_s: float = 60) -> None:
        for info in infos:
            info.wait_for_publish(timeout_s)
            assert info.is_published(), f"message {info.mid} not acknowledged by the broker"

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture()
def publisher() -> Iterator[Publisher]:
    pub = Publisher()
    assert pub.connect() == 0, "sensor01 refused"
    yield pub
    pub.close()


def reading(sensor: str, ts: int, value: float = 20.0) -> bytes:
    return (f'{{"sensor_id":"{sensor}","timestamp":{ts},"value":{value},'
            f'"unit":"celsius","quality_flag":"GOOD"}}').encode()


def topic_for(asset: str, sensor_type: str = "temperature") -> str:
    return f"telemetry/{SITE}/{asset}/{sensor_type}"


def consume(topic: str, until: Any, timeout_s: float, shapes: list[str] | None = None
            ) -> list[tuple[bytes | None, dict]]:
    """Decode every record of ``topic`` from the start until ``until(records)`` or timeout.

    Returns ``(key, record)`` pairs. A TelemetryBatch record (what the edge
    writes) is flattened into its events, each paired with its ``asset_id`` as
    the key a single TelemetryEvent record carries; on the way it checks the
    batch is unkeyed and on its events' murmur2 partition. ``shapes``, when
    given, receives "batch" or "record" for each Kafka record read.
    """
    registry = RegistrySchemas(REGISTRY)
    consumer = Consumer({"bootstrap.servers": KAFKA, "group.id": f"edge-test-{uuid.uuid4()}",
                         "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    records: list[tuple[bytes | None, dict]] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and not until(records):
            for msg in consumer.consume(1000, 0.5):
                if msg.error():
                    continue
                schema_id, record = wire.decode(msg.value(), registry)
                is_batch = registry(schema_id)["name"] == TELEMETRY_BATCH_FULLNAME
                if shapes is not None:
                    shapes.append("batch" if is_batch else "record")
                if not is_batch:
                    records.append((msg.key(), record))
                    continue
                assert msg.key() is None, f"batch record keyed {msg.key()!r}"
                for event in record["events"]:
                    key = event["asset_id"].encode()
                    assert partition_for(key, PARTITIONS) == msg.partition(), \
                        f"{event['asset_id']} in a batch on partition {msg.partition()}"
                    records.append((key, event))
    finally:
        consumer.close()
    return records


def test_valid_reading_reaches_raw_telemetry_as_avro(bridge: BridgeProcess,
                                                      publisher: Publisher) -> None:
    ts = int(time.time() * 1000) - 500
    publisher.wait_all([publisher.publish(topic_for("asset-v1"), reading("s-1", ts, 21.5))])
    shapes: list[str] = []
    records = consume(RAW_TOPIC, lambda r: len(r) >= 1, 30, shapes)
    assert len(records) == 1, bridge.log()
    assert shapes == ["batch"], "the bridge writes TelemetryBatch records"
    key, event = records[0]
    assert key == b"asset-v1"
    assert event["site_id"] == SITE and event["sensor_type"] == "TEMPERATURE"
    assert event["value"] == 21.5 and event["timestamp"] == ts and event["source"] == "mqtt"
    assert event["event_id"], "event_id derived when the payload has none"


def test_bad_payloads_are_dead_lettered_with_reasons(bridge: BridgeProcess,
                                                     publisher: Publisher) -> None:
    ts = int(time.time() * 1000)
    bad = {
        b"{not json": "not valid UTF-8 JSON",
        b"[1,2,3]": "must be a JSON object",
        reading("s-1", ts).replace(b'"sensor_id"', b'"asset_id":"other","sensor_id"'):
            "contradicts the MQTT topic",
        reading("s-1", ts, value=10_000.0): "value:",
    }
    publisher.wait_all([publisher.publish(topic_for("asset-bad"), body) for body in bad])
    records = consume(DLQ_TOPIC, lambda r: len(r) >= len(bad), 30)
    by_original = {rec["original"]: rec for _, rec in records}
    assert set(by_original) == set(bad), bridge.log()
    for body, needle in bad.items():
        rec = by_original[body]
        assert rec["stage"] == "bridge" and rec["source"] == "mqtt"
        assert rec["topic"] == topic_for("asset-bad")
        assert any(needle in reason for reason in rec["reasons"]), rec["reasons"]
    # None of them reached raw_telemetry. No waiting for absence: a valid marker published
    # after them on the same topic (same key, same partition, bridged in order) must be the
    # only reading of this asset there once it has arrived.
    publisher.wait_all([publisher.publish(topic_for("asset-bad"), reading("s-marker", ts))])

    def marker_in(records: list[tuple[bytes | None, dict]]) -> bool:
        return any(k == b"asset-bad" and e["sensor_id"] == "s-marker" for k, e in records)

    raw = consume(RAW_TOPIC, marker_in, 30)
    assert marker_in(raw), bridge.log()
    assert [e["sensor_id"] for k, e in raw if k == b"asset-bad"] == ["s-marker"]


@pytest.mark.parametrize("user", [None, (SENSOR[0], SENSOR[1] + "-wrong")],
                         ids=["anonymous", "wrong-password"])
def test_unauthenticated_clients_are_refused(bridge: BridgeProcess,
                                             user: tuple[str, str] | None) -> None:
    pub = Publisher(user)
    try:
        reason = pub.connect()
    finally:
        pub.close()
    assert reason in (5, 134, 135), f"broker accepted the connection (reason {reason})"


def test_publish_outside_telemetry_is_not_delivered(bridge: BridgeProcess,
                                                    publisher: Publisher) -> None:
    ts = int(time.time() * 1000)
    outside = publisher.publish(f"other/{SITE}/asset-out/temperature", reading("s-o", ts))
    inside = publisher.publish(topic_for("asset-in"), reading("s-i", ts))
    publisher.wait_all([outside, inside])
    # The broker refuses it outright (the ACL, runners/stack/mosquitto.py): MQTT 5 PUBACK
    # reason 135 "not authorized", so there is no message the bridge could have received.
    # That is the proof; no waiting for something not to arrive.
    assert publisher.acked[outside.mid] == 135, publisher.acked
    assert publisher.acked[inside.mid] == 0, publisher.acked
    records = consume(RAW_TOPIC, lambda r: any(k == b"asset-in" for k, _ in r), 30)
    assert any(k == b"asset-in" for k, _ in records), bridge.log()
    assert not any(k == b"asset-out" for k, _ in records)


def test_burst_survives_sigkill_of_the_bridge(bridge: BridgeProcess,
                                              publisher: Publisher) -> None:
    total = 5000
    base = int(time.time() * 1000) - 60_000
    asset = "asset-burst"
    expected: set[tuple[str, int]] = set()
    infos = []
    for i in range(total):
        sensor = f"s-{i % 50}"
        ts = base + i
        expected.add((sensor, ts))
        infos.append(publisher.publish(topic_for(asset), reading(sensor, ts)))
        if i == total // 3:
            bridge.kill()  # SIGKILL: no flush, no acks; the broker keeps the session
        if i == 2 * total // 3:
            bridge.start()
    publisher.wait_all(infos)

    def complete(records: list[tuple[bytes | None, dict]]) -> bool:
        return {(e["sensor_id"], e["timestamp"]) for k, e in records if k == asset.encode()} \
            >= expected

    records = consume(RAW_TOPIC, complete, 120)
    got = {(e["sensor_id"], e["timestamp"]) for k, e in records if k == asset.encode()}
    missing = expected - got
    assert not missing, f"{len(missing)} of {total} readings lost, e.g. {sorted(missing)[:5]}"
    assert len({e["event_id"] for k, e in records if k == asset.encode()}) == total


def test_sigterm_flushes_acks_and_exits_cleanly(bridge: BridgeProcess,
                                                publisher: Publisher) -> None:
    total = 500
    base = int(time.time() * 1000) - 30_000
    asset = "asset-term"
    infos = [publisher.publish(topic_for(asset), reading(f"s-{i}", base + i))
             for i in range(total)]
    publisher.wait_all(infos)
    bridge.signal(signal.SIGTERM)
    assert bridge.wait(30) == 0, bridge.log()
    assert "bridge exited cleanly" in bridge.log()
    # Whatever was not confirmed before the stop is redelivered to the resumed session.
    bridge.start()
    records = consume(RAW_TOPIC, lambda r: len({e["event_id"] for k, e in r
                                                if k == asset.encode()}) >= total, 60)
    assert len({e["event_id"] for k, e in records if k == asset.encode()}) == total


def test_two_bridges_in_one_share_group_split_the_load(tmp_path: Path,
                                                       publisher: Publisher) -> None:
    group = f"test-{uuid.uuid4().hex[:8]}"
    bridges = [BridgeProcess(tmp_path, f"{group}-{i}", group) for i in range(2)]
    try:
        for b in bridges:
            b.start()
        total, asset = 1000, "asset-shared"
        base = int(time.time() * 1000) - 20_000
        publisher.wait_all([publisher.publish(topic_for(asset), reading(f"s-{i}", base + i))
                            for i in range(total)])
        records = consume(RAW_TOPIC, lambda r: len({e["event_id"] for k, e in r
                                                    if k == asset.encode()}) >= total, 60)
        assert len({e["event_id"] for k, e in records if k == asset.encode()}) == total
        received = []
        for b in bridges:
            b.signal(signal.SIGTERM)
            assert b.wait(30) == 0, b.log()
            line = [ln for ln in b.log().splitlines() if "bridge exited cleanly" in ln][-1]
            received.append(int(line.split("received ")[1].split(",")[0]))
        assert all(n > 0 for n in received), f"one bridge got nothing: {received}"
        assert sum(received) >= total
    finally:
        for b in bridges:
            b.kill()


def bridge_metrics(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The samples of a bridge's /metrics: ``{(name, sorted labels): value}``."""
    resp = requests.get(url, timeout=5)
    assert resp.status_code == 200, resp.text[:300]
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(resp.text) for s in family.samples}


def test_metrics_count_a_good_and_a_bad_message(tmp_path: Path, publisher: Publisher) -> None:
    """A valid and an invalid message move the bridge's counters, read over HTTP from its
    metrics port: received, accepted, rejected by reason, produced to Kafka, acked."""
    name = uuid.uuid4().hex[:8]
    proc = BridgeProcess(tmp_path, f"test-bridge-{name}", f"test-{name}",
                         metrics_port=free_port())
    proc.start()
    url = f"http://127.0.0.1:{proc.metrics_port}/metrics"
    try:
        before = bridge_metrics(url)
        assert before[("dcmms_bridge_mqtt_connected", ())] == 1
        assert before[("dcmms_bridge_mqtt_subscribed", ())] == 1

        def moved(name: str, **labels: str) -> float:
            key = (name, tuple(sorted(labels.items())))
            return now.get(key, 0.0) - before.get(key, 0.0)

        ts = int(time.time() * 1000)
        publisher.wait_all([publisher.publish(topic_for("asset-metrics"), reading("s-m", ts)),
                            publisher.publish(topic_for("asset-metrics"), b"{not json")])
        deadline = time.monotonic() + 30
        while True:
            now = bridge_metrics(url)
            if moved("dcmms_bridge_messages_acked_total") >= 2 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert moved("dcmms_bridge_messages_acked_total") == 2, proc.log()
        assert moved("dcmms_bridge_messages_received_total") == 2
        assert moved("dcmms_bridge_messages_accepted_total") == 1
        assert moved("dcmms_bridge_messages_rejected_total", reason="payload.not_json") == 1
        assert moved("dcmms_bridge_events_produced_total") == 1
        assert moved("dcmms_bridge_dead_letters_produced_total") == 1
        assert moved("dcmms_edge_kafka_delivery_seconds_count", record="batch") == 1
        assert moved("dcmms_edge_kafka_delivery_seconds_count", record="dead_letter") == 1
        assert moved("dcmms_edge_kafka_delivery_failures_total", record="batch") == 0
        assert now[("dcmms_bridge_in_flight_messages", ())] == 0
        assert now[("dcmms_bridge_inbox_messages", ())] == 0
        assert now[("dcmms_bridge_mqtt_reconnects_total", ())] == 0
    finally:
        proc.kill()


def test_stack_bridge_serves_metrics_on_its_configured_port() -> None:
    """The stack's own bridge answers on [mqtt] metrics_port (the test profile's), and the
    status command's bridge section reads it."""
    url = metrics_url(SETTINGS)
    assert url is not None and f":{SETTINGS.mqtt.metrics_port}/" in url
    samples = bridge_metrics(url)
    assert samples[("dcmms_bridge_mqtt_connected", ())] == 1
    lines = bridge_lines(SETTINGS)
    assert any("connected, subscribed" in line for line in lines), lines
