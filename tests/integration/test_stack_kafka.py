"""The stack's Kafka broker: every pipeline topic exists as configured and carries records.

Runs against the running stack ([kafka] bootstrap_servers); fails with a clear
message when the broker is unreachable.
"""

from __future__ import annotations

import uuid

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource

from config.settings import load_settings
from runners.stack.kafka import SCHEMAS_TOPIC, ensure_topics, pipeline_topics

pytestmark = pytest.mark.integration

SETTINGS = load_settings()
BOOTSTRAP = SETTINGS.kafka.bootstrap_servers
TOPICS = pipeline_topics(SETTINGS)


@pytest.fixture(scope="module")
def admin() -> AdminClient:
    client = AdminClient({"bootstrap.servers": BOOTSTRAP})
    try:
        client.list_topics(timeout=10)
    except KafkaException as exc:
        pytest.fail(f"Kafka not reachable at {BOOTSTRAP} (setting [kafka] bootstrap_servers; "
                    f"start the test stack with `make test`): {exc}")
    return client


def test_pipeline_topics_have_configured_partitions(admin: AdminClient) -> None:
    metadata = admin.list_topics(timeout=10).topics
    wanted = SETTINGS.kafka.partitions
    for topic in TOPICS:
        assert topic in metadata, f"topic {topic} missing"
        assert len(metadata[topic].partitions) == wanted, topic


def test_pipeline_topics_have_configured_retention(admin: AdminClient) -> None:
    resources = [ConfigResource(ConfigResource.Type.TOPIC, t) for t in TOPICS]
    wanted = str(SETTINGS.kafka.retention_ms)
    for resource, future in admin.describe_configs(resources).items():
        configs = future.result(timeout=10)
        assert configs["retention.ms"].value == wanted, resource.name
        assert configs["cleanup.policy"].value == "delete", resource.name


def test_schemas_topic_is_compacted_single_partition(admin: AdminClient) -> None:
    topic = SETTINGS.section("schema_registry").get("topic", SCHEMAS_TOPIC)
    metadata = admin.list_topics(timeout=10).topics
    assert topic in metadata and len(metadata[topic].partitions) == 1
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    configs = admin.describe_configs([resource])[resource].result(timeout=10)
    assert configs["cleanup.policy"].value == "compact"


@pytest.mark.parametrize("topic", TOPICS)
def test_produce_and_consume(admin: AdminClient, topic: str) -> None:
    key = f"asset-test-{uuid.uuid4().hex[:8]}".encode()
    value = uuid.uuid4().bytes
    reports: list[tuple[int, int]] = []
    errors: list[object] = []

    def on_delivery(err: object, msg: object) -> None:
        if err is not None:
            errors.append(err)
        else:
            reports.append((msg.partition(), msg.offset()))  # type: ignore[attr-defined]

    producer = Producer({"bootstrap.servers": BOOTSTRAP, "acks": "all",
                         "enable.idempotence": True})
    producer.produce(topic, key=key, value=value, on_delivery=on_delivery)
    assert producer.flush(15) == 0, "producer did not deliver within 15 s"
    assert not errors and len(reports) == 1, errors
    partition, offset = reports[0]

    consumer = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": f"test-{uuid.uuid4()}",
                         "enable.auto.commit": False})
    try:
        consumer.assign([TopicPartition(topic, partition, offset)])
        msg = None
        for _ in range(30):
            msg = consumer.poll(1.0)
            if msg is not None:
                break
        assert msg is not None, f"no record read back from {topic}[{partition}]@{offset}"
        assert msg.error() is None, msg.error()
        assert (msg.key(), msg.value(), msg.offset()) == (key, value, offset)
    finally:
        consumer.close()


def test_same_key_lands_in_same_partition(admin: AdminClient) -> None:
    """Records are keyed by asset_id: ordering per asset relies on this."""
    partitions: set[int] = set()
    producer = Producer({"bootstrap.servers": BOOTSTRAP})
    key = f"asset-{uuid.uuid4().hex[:6]}"
    for i in range(5):
        producer.produce(TOPICS[0], key=key, value=str(i),
                         on_delivery=lambda err, msg: partitions.add(msg.partition()))
    assert producer.flush(15) == 0
    assert len(partitions) == 1


def test_ensure_topics_creates_then_updates_retention_and_grows(admin: AdminClient) -> None:
    """What `up` does on every start: create, then align config and partitions, idempotently."""
    topic = f"test-ensure-{uuid.uuid4().hex[:8]}"
    try:
        assert ensure_topics(BOOTSTRAP, {topic: (1, {"retention.ms": "60000"})}) == \
            [f"created {topic}"]
        actions = ensure_topics(BOOTSTRAP, {topic: (3, {"retention.ms": "120000"})})
        assert actions == [f"grew {topic} to 3 partitions"]
        assert ensure_topics(BOOTSTRAP, {topic: (3, {"retention.ms": "120000"})}) == []
        resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
        configs = admin.describe_configs([resource])[resource].result(timeout=10)
        assert configs["retention.ms"].value == "120000"
        assert len(admin.list_topics(topic, timeout=10).topics[topic].partitions) == 3
    finally:
        admin.delete_topics([topic])[topic].result(timeout=10)
