"""Unit tests of the bridge's ack discipline (fake producer and fake MQTT client).

The fake producer records each call: ``("batch", [records], cb)`` for
produce_events (the test decides how the positions are chunked by calling
``cb(positions, error)``), ``("event", record, cb)`` / ``("dlq", record, cb)``
for single records. One test runs the bridge over the real RawProducer and a
fake Kafka.
"""

from __future__ import annotations

import json
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from io_connectors.kafka_partition import partition_for
from io_connectors.mqtt_bridge import AVRO_ENCODING_FAILED, BridgeConfig, MqttBridge
from io_connectors.raw_producer import DeliveryFailure, FailureKind
from schemas import wire
from schemas.validation import default_sensor_rules
from tests.unit.test_edge_producer import BATCH_ID, LOOKUP, PARTITIONS, FakeKafka, make

NOW = 1_800_000_000_000
TOPIC = "telemetry/site-1/asset-001/temperature"


def refused(message: str) -> DeliveryFailure:
    return DeliveryFailure(FailureKind.ENCODING_REFUSED, message)


def not_delivered(message: str) -> DeliveryFailure:
    return DeliveryFailure(FailureKind.NOT_DELIVERED, message)


class FakeProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any], Any]] = []
        self.fatal_error: str | None = None
        self.queued = 0       # what len() says librdkafka still holds (metrics)

    def __len__(self) -> int:
        return self.queued

    def produce_events(self, records: list[dict[str, Any]], cb: Any, **_: Any) -> None:
        self.sent.append(("batch", records, cb))

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

    def ack_many(self, mids: list[int]) -> None:
        self.acks.extend(mids)

    def disconnect(self) -> None:
        self.disconnected = True


@pytest.fixture
def bridge() -> tuple[MqttBridge, FakeProducer, FakeClient]:
    config = BridgeConfig(host="127.0.0.1", port=1, username="u", password="p",
                          client_id="unit", retry_backoff_s=0.0, linger_ms=0)
    producer = FakeProducer()
    b = MqttBridge(config, producer, rules=default_sensor_rules(),  # type: ignore[arg-type]
                   clock_ms=lambda: NOW)
    client = FakeClient()
    b._client = client  # type: ignore[assignment]
    return b, producer, client


def deliver(b: MqttBridge, mid: int, body: bytes | None = None, qos: int = 1,
            topic: str = TOPIC) -> None:
    msg = mqtt.MQTTMessage(mid=mid, topic=topic.encode())
    msg.qos = qos
    msg.payload = body if body is not None else json.dumps(
        {"sensor_id": f"s{mid}", "timestamp": NOW - 10, "value": 20.0, "unit": "c"}).encode()
    b._on_message(None, None, msg)  # type: ignore[arg-type]


def test_events_taken_together_go_in_one_batch_call(bridge: Any) -> None:
    b, producer, client = bridge
    for mid in (1, 2, 3):
        deliver(b, mid)
    b._step()
    [(kind, records, _)] = producer.sent
    assert kind == "batch"
    assert [r["sensor_id"] for r in records] == ["s1", "s2", "s3"], "arrival order"
    assert client.acks == []


def test_fast_path_batches_join_the_inbox_in_arrival_order(bridge: Any) -> None:
    """Messages cut out by BurstReadClient (_on_publish_batch) and those paho parsed itself
    (_on_message) are one stream: taken, produced and acknowledged in arrival order."""
    b, producer, client = bridge

    def body(mid: int) -> bytes:
        return json.dumps({"sensor_id": f"s{mid}", "timestamp": NOW - 10, "value": 20.0,
                           "unit": "c"}).encode()

    b._on_publish_batch([(1, TOPIC.encode(), body(1)), (2, TOPIC.encode(), body(2))])
    deliver(b, 3)
    b._on_publish_batch([(4, TOPIC.encode(), body(4))])
    b._step()
    [(kind, records, cb)] = producer.sent
    assert [r["sensor_id"] for r in records] == ["s1", "s2", "s3", "s4"]
    cb([0, 1, 2, 3], None)
    b._step()
    assert client.acks == [1, 2, 3, 4]


def test_acks_only_after_the_chunk_is_delivered_and_in_arrival_order(bridge: Any) -> None:
    b, producer, client = bridge
    for mid in (1, 2, 3, 4):
        deliver(b, mid)
    b._step()
    cb = producer.sent[0][2]
    cb([1, 3], None)  # the chunk holding mids 2 and 4 is confirmed first
    b._step()
    assert client.acks == [], "mid 2 must wait for mid 1 (MQTT acks go in order)"
    cb([0], None)
    b._step()
    assert client.acks == [1, 2]
    assert b.backlog == 2, "mid 4 is confirmed but waits for mid 3"
    cb([2], None)
    b._step()
    assert client.acks == [1, 2, 3, 4]
    assert b.stats.produced == 4 and b.backlog == 0


def test_failed_chunk_is_retried_event_by_event_and_blocks_later_acks(bridge: Any) -> None:
    b, producer, client = bridge
    for mid in (1, 2, 3):
        deliver(b, mid)
    b._step()
    _, records, cb = producer.sent[0]
    cb([0, 1], not_delivered("Kafka delivery failed: broker down"))
    cb([2], None)
    b._step()
    assert client.acks == []
    retries = producer.sent[1:]
    assert [(kind, record) for kind, record, _ in retries] == \
        [("event", records[0]), ("event", records[1])], "each entry resent as a single record"
    assert b.stats.delivery_failures == 2
    retries[1][2](None)
    b._step()
    assert client.acks == [], "mid 1 is still unconfirmed"
    retries[0][2](None)
    b._step()
    assert client.acks == [1, 2, 3]


def take_two(b: MqttBridge, producer: FakeProducer, first: DeliveryFailure | None,
             second: DeliveryFailure | None) -> None:
    """Mids 1 and 2 taken in one batch, whose delivery reports ``first`` and ``second``."""
    deliver(b, 1)
    deliver(b, 2)
    b._step()
    cb = producer.sent[0][2]
    cb([0], first)
    cb([1], second)
    b._step()


def test_unencodable_event_of_a_chunk_is_dead_lettered(bridge: Any) -> None:
    b, producer, client = bridge
    take_two(b, producer, refused("Avro encoding failed: no"), None)
    kind, record, dl_cb = producer.sent[1]
    assert kind == "dlq" and record["reasons"] == ["Avro encoding failed: no"]
    assert record["stage"] == "bridge" and record["topic"] == TOPIC
    assert b.stats.rejected == {AVRO_ENCODING_FAILED: 1}
    assert client.acks == []
    dl_cb(None)
    b._step()
    assert client.acks == [1, 2]
    assert (b.stats.produced, b.stats.dead_lettered) == (1, 1)


def test_a_retried_event_the_schema_refuses_is_dead_lettered(bridge: Any) -> None:
    b, producer, client = bridge
    deliver(b, 1)
    b._step()
    producer.sent[0][2]([0], not_delivered("Kafka delivery failed: broker down"))
    b._step()
    kind, _, retry_cb = producer.sent[1]
    assert kind == "event"
    retry_cb(refused("Avro encoding failed: later"))
    b._step()
    kind, record, dl_cb = producer.sent[2]
    assert kind == "dlq" and record["reasons"] == ["Avro encoding failed: later"]
    dl_cb(None)
    b._step()
    assert client.acks == [1]


def test_the_failure_kind_decides_not_the_message(bridge: Any) -> None:
    """A Kafka failure whose text happens to read like an encoding error is retried, and an
    encoding refusal worded otherwise is dead-lettered with its own words."""
    b, producer, _ = bridge
    take_two(b, producer, not_delivered("Avro encoding failed, says the broker"),
             refused("value: not a double"))
    assert [(kind, record) for kind, record, _ in producer.sent[1:]] == [
        ("event", producer.sent[0][1][0]),
        ("dlq", producer.sent[2][1])]
    assert producer.sent[2][1]["reasons"] == ["value: not a double"]
    assert b.stats.rejected == {AVRO_ENCODING_FAILED: 1}
    assert b.stats.delivery_failures == 2


def test_a_dead_letter_the_schema_refuses_is_retried_as_a_dead_letter(bridge: Any) -> None:
    b, producer, client = bridge
    deliver(b, 1, b"{not json")
    b._step()
    kind, record, cb = producer.sent[0]
    cb(refused("dead-letter encoding failed: odd"))
    b._step()
    assert [(k, r) for k, r, _ in producer.sent] == [("dlq", record), ("dlq", record)]
    assert b.stats.rejected == {"payload.not_json": 1}, "counted once, when it was rejected"
    producer.sent[1][2](None)
    b._step()
    assert client.acks == [1]


def test_mixed_take_batches_events_and_dead_letters_each_bad_payload(bridge: Any) -> None:
    b, producer, client = bridge
    deliver(b, 1)
    deliver(b, 2, b"{not json")
    deliver(b, 3)
    b._step()
    kinds = sorted(kind for kind, _, _ in producer.sent)
    assert kinds == ["batch", "dlq"]
    batch = next(s for s in producer.sent if s[0] == "batch")
    dlq = next(s for s in producer.sent if s[0] == "dlq")
    assert [r["sensor_id"] for r in batch[1]] == ["s1", "s3"]
    batch[2]([0, 1], None)
    b._step()
    assert client.acks == [1], "mid 3 waits for the dead letter of mid 2"
    dlq[2](None)
    b._step()
    assert client.acks == [1, 2, 3]


def test_bridge_over_the_real_producer_acks_after_kafka_confirms(bridge: Any) -> None:
    b, _, client = bridge
    kafka = FakeKafka(deliver=False)
    b._producer = make(kafka, batch_max_events=2)
    assets = ["asset-001", "asset-002", "asset-003"]
    for mid in range(1, 8):
        deliver(b, mid, topic=f"telemetry/site-1/{assets[mid % 3]}/temperature")
    b._step()
    records = kafka.raw_records()
    assert all(key is None and sid == BATCH_ID for key, _, sid, _ in records)
    for _, partition, _, record in records:
        assert 1 <= len(record["events"]) <= 2
        assert {partition_for(e["asset_id"].encode(), PARTITIONS)
                for e in record["events"]} == {partition}
    assert sorted(e["sensor_id"] for _, _, _, r in records for e in r["events"]) == \
        sorted(f"s{mid}" for mid in range(1, 8))
    assert client.acks == [], "nothing acknowledged before Kafka confirmed"
    kafka.deliver = True
    b._step()
    assert client.acks == list(range(1, 8))


def test_bridge_over_the_real_producer_dead_letters_what_avro_refuses(bridge: Any) -> None:
    """The RawProducer's ENCODING_REFUSED reaches the bridge's dead-letter path: an event
    that passed validation but that the Avro encoder refuses (made so here) is dead-lettered,
    the others of its take go in the batch, all three are acked once Kafka confirmed."""
    b, _, client = bridge
    kafka = FakeKafka()
    producer = make(kafka)
    b._producer = producer

    def refusing(encode: Any) -> Any:
        def wrapped(record: dict[str, Any]) -> bytes:
            if any(e["sensor_id"] == "s2" for e in record.get("events", [record])):
                raise ValueError("s2 does not fit")
            return encode(record)
        return wrapped

    producer._encode_event = refusing(producer._encode_event)
    producer._encode_batch = refusing(producer._encode_batch)
    for mid in (1, 2, 3):
        deliver(b, mid)
    b._step()
    assert [e["sensor_id"] for _, _, _, r in kafka.raw_records() for e in r["events"]] == \
        ["s1", "s3"]
    [dlq_value] = [value for topic, _, value, _ in kafka.produced if topic == "dlq"]
    _, dead = wire.decode(dlq_value, LOOKUP)
    assert dead["reasons"] == ["Avro encoding failed: s2 does not fit"]
    assert dead["original"] == json.dumps({"sensor_id": "s2", "timestamp": NOW - 10,
                                           "value": 20.0, "unit": "c"}).encode()
    assert b.stats.rejected == {AVRO_ENCODING_FAILED: 1}
    assert (b.stats.produced, b.stats.dead_lettered) == (2, 1)
    assert client.acks == [1, 2, 3]


def test_bridge_over_the_real_producer_retries_what_kafka_did_not_confirm(bridge: Any) -> None:
    b, _, client = bridge
    kafka = FakeKafka(fail=True)
    b._producer = make(kafka)
    deliver(b, 1)
    b._step()
    assert [p[0] for p in kafka.produced] == ["raw"]
    assert b.stats.delivery_failures == 1 and b.stats.rejected == {}
    b._step()                             # the retry (backoff 0) as a single keyed record
    assert [(p[0], p[1]) for p in kafka.produced] == [("raw", None), ("raw", b"asset-001")]
    assert client.acks == []
    kafka.fail = False
    b._step()
    assert client.acks == [1] and b.stats.rejected == {} and b.stats.produced == 1


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
    producer.sent[0][2]([0], None)
    producer.sent[1][2]([0], None)
    b._step()
    assert client.acks == [5], "only the copy received on the live connection is acked"
    assert b.stats.stale_acks_dropped == 1


def test_shutdown_acks_delivered_and_disconnects(bridge: Any) -> None:
    b, producer, client = bridge
    deliver(b, 1)
    deliver(b, 2)
    b._step()
    producer.sent[0][2]([0], None)
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
    producer.sent[0][2]([0], None)
    b._step()
    assert b.healthy()


def lingering_bridge(bridge: Any, linger_ms: float, batch_max: int = 5000) -> list[float]:
    """Give the fixture's bridge a linger and a hand-driven clock (returned, in seconds)."""
    b = bridge[0]
    b.config = BridgeConfig(**{**b.config.__dict__, "linger_ms": linger_ms,
                               "batch_max": batch_max})
    clock = [100.0]
    b._now = lambda: clock[0]
    return clock


def test_take_waits_for_the_linger_then_sends_everything_in_one_batch(bridge: Any) -> None:
    b, producer, _ = bridge
    clock = lingering_bridge(bridge, linger_ms=50)
    deliver(b, 1)
    b._step()
    assert producer.sent == [], "the first message opens the linger window"
    clock[0] += 0.030
    deliver(b, 2)
    b._step()
    assert producer.sent == [], "30 ms into a 50 ms linger"
    clock[0] += 0.021
    b._step()
    [(kind, records, _)] = producer.sent
    assert kind == "batch" and [r["sensor_id"] for r in records] == ["s1", "s2"]
    deliver(b, 3)
    b._step()
    assert len(producer.sent) == 1, "a new window opens after each take"


def test_full_inbox_is_taken_without_waiting_for_the_linger(bridge: Any) -> None:
    b, producer, _ = bridge
    lingering_bridge(bridge, linger_ms=10_000 / 3, batch_max=3)
    for mid in (1, 2, 3, 4):
        deliver(b, mid)
    b._step()
    [(_, records, _)] = producer.sent
    assert len(records) == 3, "batch_max messages are due at once, the rest waits"
    assert b.backlog == 4


def test_stopping_bridge_takes_the_inbox_without_lingering(bridge: Any) -> None:
    b, producer, _ = bridge
    lingering_bridge(bridge, linger_ms=1000)
    deliver(b, 1)
    b._stop.set()
    b._step()
    assert len(producer.sent) == 1


def test_config_rejects_a_negative_linger() -> None:
    with pytest.raises(ValueError, match="bridge_linger_ms"):
        BridgeConfig(host="h", port=1, username="u", password="p", client_id="c",
                     linger_ms=-1)


def test_plain_subscription_by_default_and_the_shared_form_only_when_asked() -> None:
    plain = BridgeConfig(host="h", port=1, username="u", password="p", client_id="c",
                         share_group="g")
    assert plain.subscription == "telemetry/+/+/+"
    assert plain.stale_subscription == "$share/g/telemetry/+/+/+"
    shared = BridgeConfig(**{**plain.__dict__, "shared": True})
    assert shared.subscription == "$share/g/telemetry/+/+/+"
    assert shared.stale_subscription == "telemetry/+/+/+"
    with pytest.raises(ValueError, match="share group"):
        BridgeConfig(**{**plain.__dict__, "shared": True, "share_group": ""})


def test_connect_subscribes_then_drops_the_other_form_of_the_subscription(bridge: Any) -> None:
    b = bridge[0]
    calls: list[tuple[str, str]] = []

    class Recorder:
        def subscribe(self, topic: str, **_: Any) -> None:
            calls.append(("subscribe", topic))

        def unsubscribe(self, topic: str) -> None:
            calls.append(("unsubscribe", topic))

    ok = mqtt.ReasonCode(mqtt.PacketTypes.CONNACK, "Success")
    b._on_connect(Recorder(), None, None, ok, None)
    assert calls == [("subscribe", "telemetry/+/+/+"),
                     ("unsubscribe", "$share/dcmms-bridge/telemetry/+/+/+")], \
        "a session resumed from a shared configuration must not receive every message twice"


def _mqtt_settings(**mqtt: Any) -> Any:
    from pathlib import Path

    from config.settings import Settings

    base = {"host": "127.0.0.1", "port": 1883, "bridge_username": "b",
            "bridge_password": "p", "bridge_share_group": "grp"}
    return Settings({"mqtt": {**base, **mqtt}}, Path("bridge-test"), {})


def test_bridge_settings_plain_unless_shared_setting_or_share_group_argument() -> None:
    from runners.mqtt_bridge import bridge_config

    plain = bridge_config(_mqtt_settings(bridge_linger_ms=20))
    assert (plain.shared, plain.subscription, plain.linger_ms) == (False, "telemetry/+/+/+",
                                                                    20.0)
    shared = bridge_config(_mqtt_settings(bridge_shared_subscription=True))
    assert shared.subscription == "$share/grp/telemetry/+/+/+"
    by_argument = bridge_config(_mqtt_settings(), share_group="bench-1")
    assert by_argument.subscription == "$share/bench-1/telemetry/+/+/+", \
        "--share-group is how tests and benchmarks run several bridges"
