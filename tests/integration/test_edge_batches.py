"""The edge's TelemetryBatch records against the real Kafka broker and schema registry.

* librdkafka's ``murmur2_random`` partitioner (the edge producer's config)
  places keyed records exactly where :func:`partition_for` says, so an
  asset's single records and its batches share a partition;
* a :class:`RawProducer` built like the edge's (:func:`build_raw_producer`)
  writes unkeyed TelemetryBatch records, each on the partition of all its
  events, at most ``batch_max_events`` long, that decode through the registry
  back to the input in order per partition.

Every topic here is this module's own scratch topic; the stack's
``raw_telemetry`` is never written.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from confluent_kafka import Consumer, Message, Producer, TopicPartition

from config.settings import load_settings
from io_connectors.kafka_partition import partition_for
from io_connectors.raw_producer import (
    AvroValueEncoder,
    EdgeTarget,
    RawProducer,
    build_raw_producer,
    producer_config,
)
from io_connectors.schema_registry import RegistrySchemas
from schemas import avro, wire
from tests.integration.conftest import scratch_topics
from tests.integration.test_mqtt_bridge import _require_services

pytestmark = pytest.mark.integration

SETTINGS = load_settings()
KAFKA = SETTINGS.kafka.bootstrap_servers
REGISTRY = SETTINGS.schema_registry.url
RUN_ID = uuid.uuid4().hex[:8]
# 7 partitions: a count that is not a power of two catches sign and modulo mistakes.
PLACEMENT_TOPICS = {7: f"edge_batch_place7_{RUN_ID}", 8: f"edge_batch_place8_{RUN_ID}"}
RAW, DLQ = f"edge_batch_raw_{RUN_ID}", f"edge_batch_dlq_{RUN_ID}"
RAW_PARTITIONS = 8


@pytest.fixture(scope="module", autouse=True)
def topics() -> Iterator[None]:
    _require_services()
    with scratch_topics(SETTINGS, (RAW, DLQ), partitions=RAW_PARTITIONS), \
            scratch_topics(SETTINGS, [PLACEMENT_TOPICS[7]], partitions=7), \
            scratch_topics(SETTINGS, [PLACEMENT_TOPICS[8]], partitions=8):
        yield


def read_all(topic: str, partitions: int, timeout_s: float = 30) -> list[Message]:
    """Every record of ``topic`` written so far (up to each partition's high watermark)."""
    consumer = Consumer({"bootstrap.servers": KAFKA, "group.id": f"edge-batch-{uuid.uuid4()}",
                         "enable.auto.commit": False})
    ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in range(partitions)}
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    messages: list[Message] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(messages) < sum(ends.values()) and time.monotonic() < deadline:
            messages += [m for m in consumer.consume(1000, 0.5) if not m.error()]
    finally:
        consumer.close()
    assert len(messages) == sum(ends.values()), f"read {len(messages)} of {ends}"
    return messages


def event(asset: str, n: int) -> dict[str, Any]:
    return {"event_id": f"{RUN_ID}-{asset}-{n}", "timestamp": 1_800_000_000_000 + n,
            "site_id": f"site-{RUN_ID}", "asset_id": asset, "sensor_id": f"s{n % 3}",
            "sensor_type": "VOLTAGE", "value": float(n), "unit": "v", "quality_flag": "GOOD",
            "source": "http"}


@pytest.mark.parametrize("partitions", sorted(PLACEMENT_TOPICS))
def test_librdkafka_murmur2_random_places_keys_like_partition_for(partitions: int) -> None:
    topic = PLACEMENT_TOPICS[partitions]
    keys = [f"asset-{i}".encode() for i in range(300)] + \
        [uuid.uuid4().hex.encode() for _ in range(100)] + [b"21", b"foobar", b"abc", b"x" * 77]
    producer = Producer(producer_config(KAFKA, f"edge-batch-test-{RUN_ID}"))
    placed: dict[bytes, int] = {}
    errors: list[str] = []

    def report(err: Any, msg: Message) -> None:
        if err is not None:
            errors.append(err.str())
        else:
            placed[msg.key()] = msg.partition()

    for key in keys:
        producer.produce(topic, value=b"v", key=key, on_delivery=report)
    assert producer.flush(30) == 0 and not errors, errors
    wrong = {k: (p, partition_for(k, partitions)) for k, p in placed.items()
             if p != partition_for(k, partitions)}
    assert len(placed) == len(set(keys)) and not wrong, f"(librdkafka, ours): {wrong}"
    assert len(set(placed.values())) == partitions, "the keys should cover every partition"


def test_raw_producer_writes_unkeyed_batches_per_partition_that_decode_to_the_input() -> None:
    target = EdgeTarget(KAFKA, RAW, DLQ, REGISTRY, batch_max_events=50)
    producer = build_raw_producer(target, client_id=f"edge-batch-test-{RUN_ID}")
    assets = [f"asset-{RUN_ID}-{i}" for i in range(20)]
    # Interleaved assets, some with more than batch_max_events events.
    events = [event(assets[(n * 7) % len(assets) if n % 4 else 0], n) for n in range(400)]
    try:
        outcome = producer.send_batch(events, timeout_s=30)
        assert outcome.ok, outcome.failures
        single = event(assets[3], 10_000)
        delivered: list[str | None] = []
        producer.produce_event(single, delivered.append)
        assert producer.flush(30) == 0 and delivered == [None]
    finally:
        producer.close(10)

    subjects = requests.get(f"{REGISTRY}/subjects", timeout=10).json()
    assert f"{RAW}-com.dcmms.telemetry.TelemetryBatch" in subjects and f"{RAW}-value" in subjects

    registry = RegistrySchemas(REGISTRY)
    batches: dict[int, list[dict[str, Any]]] = {}
    singles: list[tuple[bytes | None, int, dict[str, Any]]] = []
    messages = read_all(RAW, RAW_PARTITIONS)
    for msg in messages:
        schema_id, record = wire.decode(msg.value(), registry)
        name = registry(schema_id)["name"]
        if name == avro.TELEMETRY_BATCH_FULLNAME:
            assert msg.key() is None, "a batch holds several assets: no key"
            assert 1 <= len(record["events"]) <= 50
            assert {partition_for(e["asset_id"].encode(), RAW_PARTITIONS)
                    for e in record["events"]} == {msg.partition()}
            batches.setdefault(msg.partition(), []).extend(record["events"])
        else:
            assert name == "com.dcmms.telemetry.TelemetryEvent", name
            singles.append((msg.key(), msg.partition(), record))
    # Offsets within a partition come in order: each partition's events are in input order.
    for partition, got in batches.items():
        assert got == [e for e in events
                       if partition_for(e["asset_id"].encode(), RAW_PARTITIONS) == partition]
    assert sorted(e["event_id"] for got in batches.values() for e in got) == \
        sorted(e["event_id"] for e in events)
    assert singles == [(assets[3].encode(), partition_for(assets[3].encode(), RAW_PARTITIONS),
                        single)], "the keyed single record lands with its asset's batches"


def test_unreachable_kafka_fails_the_batch_naming_topic_and_brokers() -> None:
    ids = {"event": 1, "batch": 2, "dlq": 3}
    producer = RawProducer("127.0.0.1:1", raw_topic=RAW, dlq_topic=DLQ,
                           event_encoder=AvroValueEncoder(avro.TELEMETRY_EVENT, ids["event"]),
                           batch_encoder=AvroValueEncoder(avro.TELEMETRY_BATCH, ids["batch"]),
                           dead_letter_encoder=AvroValueEncoder(avro.DEAD_LETTER, ids["dlq"]),
                           client_id=f"edge-batch-down-{RUN_ID}")
    try:
        outcome = producer.send_batch([event("a", 0), event("b", 1)], timeout_s=2)
    finally:
        producer.close(0)
    assert sorted(outcome.failures) == [0, 1]
    reason = outcome.failures[0]
    assert RAW in reason and "127.0.0.1:1" in reason, reason
