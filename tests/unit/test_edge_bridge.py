"""Unit tests of the bridge's ack discipline (fake producer and fake MQTT client)."""

from __future__ import annotations

import json
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from io_connectors.mqtt_bridge import BridgeConfig, MqttBridge
from schemas.validation import default_sensor_rules

NOW = 1_800_000_000_000
TOPIC = "telemetry/site-1/asset-001/temperature"


class FakeProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any], Any]] = []
        self.fatal_error: str | None = None

    def produce_event(self, record: dict[str, Any], cb: Any, **_: Any) -> None:
        self.sent.append(("event", record, cb))

    def produce_dead_letter(self, record: dict[str, Any], cb: Any, **_: Any) -> None:
        self.sent.append(("dlq", record, cb))

    def poll(self, _timeout: float = 0) -> int:
        return 0

    def flush(self, _timeout: float = 0) -> int:
        return 0


class FakeClient:
    def __init__(self) -> None:
        self.acks: list[int] = []
        self.disconnected = False

    def ack(self, mid: int, qos: int) -> None:
        assert qos == 1
        self.acks.append(mid)

    def disconnect(self) -> None:
        self.disconnected = True


@pytest.fixture
def bridge() -> tuple[MqttBridge, FakeProducer, FakeClient]:
    config = BridgeConfig(host="127.0.0.1", port=1, username="u", password="p",
                          client_id="unit", retry_backoff_s=0.0)
    producer = FakeProducer()
    b = MqttBridge(config, producer, rules=default_sensor_rules(),  # type: ignore[arg-type]
                   clock_ms=lambda: NOW)
    client = FakeClient()
    b._client = client  # type: ignore[assignment]
    return b, producer, client


def deliver(b: MqttBridge, mid: int, body: bytes | None = None, qos: int = 1) -> None:
    msg = mqtt.MQTTMessage(mid=mid, topic=TOPIC.encode())
    msg.qos = qos
    msg.payload = body if body is not None else json.dumps(
        {"sensor_id": f"s{mid}", "timestamp": NOW - 10, "value": 20.0, "unit": "c"}).encode()
    b._on_message(None, None, msg)  # type: ignore[arg-type]


def test_acks_only_after_delivery_and_in_arrival_order(bridge: Any) -> None:
    b, producer, client = bridge
    for mid in (1, 2, 3):
        deliver(b, mid)
    b._step()
    assert [kind for kind, _, _ in producer.sent] == ["event"] * 3
    assert client.acks == []
    producer.sent[1][2](None)  # mid 2 confirmed first
    b._step()
    assert client.acks == [], "mid 2 must wait for mid 1 (MQTT acks go in order)"
    producer.sent[0][2](None)
    b._step()
    assert client.acks == [1, 2]
    assert b.backlog == 1


def test_failed_delivery_is_retried_and_blocks_later_acks(bridge: Any) -> None:
    b, producer, client = bridge
    deliver(b, 1)
    deliver(b, 2)
    b._step()
    producer.sent[0][2]("Kafka delivery failed: broker down")
    producer.sent[1][2](None)
    b._step()
    assert client.acks == []
    assert len(producer.sent) == 3 and producer.sent[2][1] is producer.sent[0][1], "retried"
    producer.sent[2][2](None)
    b._step()
    assert client.acks == [1, 2]
    assert b.stats.delivery_failures == 1


def test_bad_payload_is_dead_lettered_then_acked(bridge: Any) -> None:
    b, producer, client = bridge
    deliver(b, 7, b"{not json")
    b._step()
    kind, record, cb = producer.sent[0]
    assert kind == "dlq"
    assert record["stage"] == "bridge" and record["original"] == b"{not json"
    assert record["topic"] == TOPIC and record["source"] == "mqtt"
    assert "not valid UTF-8 JSON" in record["reasons"][0]
    b._step()
    assert client.acks == []
    cb(None)
    b._step()
    assert client.acks == [7]


def test_acks_owed_to_a_previous_connection_are_dropped(bridge: Any) -> None:
    b, producer, client = bridge
    deliver(b, 5)
    b._step()
    reason = mqtt.ReasonCode(mqtt.PacketTypes.DISCONNECT, "Normal disconnection")
    b._on_disconnect(None, None, None, reason, None)
    deliver(b, 5)  # the broker resends it on the new connection, same packet id
    b._step()
    producer.sent[0][2](None)
    producer.sent[1][2](None)
    b._step()
    assert client.acks == [5], "only the copy received on the live connection is acked"
    assert b.stats.stale_acks_dropped == 1


def test_shutdown_acks_delivered_and_disconnects(bridge: Any) -> None:
    b, producer, client = bridge
    deliver(b, 1)
    deliver(b, 2)
    b._step()
    producer.sent[0][2](None)
    b.config = BridgeConfig(**{**b.config.__dict__, "shutdown_flush_s": 0.1})
    b._shutdown()
    assert client.acks == [1] and client.disconnected


def test_config_rejects_empty_client_id() -> None:
    with pytest.raises(ValueError, match="bridge_client_id"):
        BridgeConfig(host="h", port=1, username="u", password="p", client_id="")


def test_health_needs_subscription_and_timely_kafka_confirmations(bridge: Any) -> None:
    b, producer, _ = bridge
    assert not b.healthy(), "not subscribed yet"
    b.subscribed.set()
    assert b.healthy()
    deliver(b, 1)
    b._step()
    assert b.healthy()
    b._pending[0].born -= 60  # unconfirmed by Kafka for a minute: stuck
    assert not b.healthy()
    producer.sent[0][2](None)
    b._step()
    assert b.healthy()
