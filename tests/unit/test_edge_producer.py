"""Unit tests of RawProducer over a fake confluent-kafka producer."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import ClusterMetadata, TopicMetadata
from hypothesis import given, settings
from hypothesis import strategies as st

import io_connectors.raw_producer as raw_producer_module
from config.settings import Settings
from io_connectors.kafka_partition import PARTITIONER, partition_for
from io_connectors.raw_producer import (
    AvroValueEncoder,
    DeliveryFailure,
    DeliveryObserver,
    EdgeTarget,
    FailureKind,
    RawProducer,
    build_raw_producer,
    chunk_by_partition,
    producer_config,
)
from schemas import avro, wire
from schemas.wire import InMemorySchemaLookup

EVENT = {"event_id": "e1", "timestamp": 1, "site_id": "s", "asset_id": "a-1", "sensor_id": "x",
         "sensor_type": "VOLTAGE", "value": 1.0, "unit": "v", "quality_flag": "GOOD",
         "source": None}
EVENT_ID, BATCH_ID, DLQ_ID = 7, 9, 8
PARTITIONS = 8


class FakeKafka:
    """Delivers (or fails) on poll; ``full`` raises BufferError that many times.

    ``fail_partitions``: records produced to these partitions fail on delivery.
    ``metadata_error``: list_topics raises it (a KafkaException) while set.
    """

    def __init__(self, fail: bool = False, deliver: bool = True, full: int = 0,
                 partitions: int = PARTITIONS, fail_partitions: Iterable[int] = ()) -> None:
        self.queue: list[tuple[Any, int]] = []
        self.produced: list[tuple[str, bytes | None, bytes, int]] = []
        self.fail, self.deliver, self.full = fail, deliver, full
        self.partitions = partitions
        self.fail_partitions = set(fail_partitions)
        self.metadata_error: KafkaException | None = None
        self.metadata_calls = 0

    def produce(self, topic: str, value: bytes, key: bytes | None, partition: int,
                on_delivery: Any) -> None:
        if self.full:
            self.full -= 1
            raise BufferError("queue full")
        self.produced.append((topic, key, value, partition))
        self.queue.append((on_delivery, partition))

    def poll(self, _timeout: float) -> int:
        if not self.deliver:
            return 0
        served, self.queue = self.queue, []
        for cb, partition in served:
            failed = self.fail or partition in self.fail_partitions
            cb(FakeError() if failed else None, None)
        return len(served)

    def flush(self, _timeout: float) -> int:
        return len(self.queue)

    def list_topics(self, topic: str, timeout: float) -> ClusterMetadata:
        self.metadata_calls += 1
        if self.metadata_error is not None:
            raise self.metadata_error
        metadata = ClusterMetadata()
        meta = TopicMetadata()
        meta.topic, meta.partitions = topic, dict.fromkeys(range(self.partitions))
        metadata.topics = {topic: meta}
        return metadata

    def __len__(self) -> int:
        return len(self.queue)

    def raw_records(self) -> list[tuple[bytes | None, int, int, dict[str, Any]]]:
        """(key, partition, schema id, decoded record) of each record sent to ``raw``."""
        return [(key, partition, *wire.decode(value, LOOKUP))
                for topic, key, value, partition in self.produced if topic == "raw"]


class FakeError:
    def str(self) -> str:
        return "Local: Message timed out"


LOOKUP = InMemorySchemaLookup()
LOOKUP.register(avro.schema_text(avro.TELEMETRY_EVENT), EVENT_ID)
LOOKUP.register(avro.schema_text(avro.TELEMETRY_BATCH), BATCH_ID)
LOOKUP.register(avro.schema_text(avro.DEAD_LETTER), DLQ_ID)


def make(fake: FakeKafka, batch_max_events: int = 500,
         delivery_observer: DeliveryObserver | None = None) -> RawProducer:
    return RawProducer("127.0.0.1:1", raw_topic="raw", dlq_topic="dlq",
                       event_encoder=AvroValueEncoder(avro.TELEMETRY_EVENT, EVENT_ID),
                       batch_encoder=AvroValueEncoder(avro.TELEMETRY_BATCH, BATCH_ID),
                       dead_letter_encoder=AvroValueEncoder(avro.DEAD_LETTER, DLQ_ID),
                       batch_max_events=batch_max_events, producer=fake,
                       delivery_observer=delivery_observer)


def event(asset: str, n: int) -> dict[str, Any]:
    return {**EVENT, "asset_id": asset, "event_id": f"{asset}-{n}", "timestamp": n}


def assets_in_distinct_partitions(count: int) -> list[str]:
    """``count`` asset ids that murmur2 spreads over ``count`` different partitions."""
    seen: dict[int, str] = {}
    n = 0
    while len(seen) < count:
        asset = f"asset-{n}"
        seen.setdefault(partition_for(asset.encode(), PARTITIONS), asset)
        n += 1
    return list(seen.values())


# -- chunk_by_partition (pure) ---------------------------------------------

def test_chunks_group_by_murmur2_partition_and_keep_order() -> None:
    keys = [b"a", b"b", b"a", b"c", b"b", b"a"]
    chunks = chunk_by_partition(keys, PARTITIONS, max_events=2)
    for partition, positions in chunks:
        assert 1 <= len(positions) <= 2
        assert {partition_for(keys[i], PARTITIONS) for i in positions} == {partition}
    # Concatenating a partition's chunks gives its positions in arrival order.
    for partition in {p for p, _ in chunks}:
        flat = [i for p, positions in chunks if p == partition for i in positions]
        assert flat == [i for i, k in enumerate(keys) if partition_for(k, PARTITIONS) == partition]
    assert sorted(i for _, positions in chunks for i in positions) == list(range(len(keys)))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([b"a", b"b", b"asset-7", b"", b"x" * 40]), max_size=60),
       st.integers(1, 16), st.integers(1, 7))
def test_chunks_cover_every_position_once_in_order(keys: list[bytes], partitions: int,
                                                    max_events: int) -> None:
    chunks = chunk_by_partition(keys, partitions, max_events)
    assert sorted(i for _, positions in chunks for i in positions) == list(range(len(keys)))
    for partition, positions in chunks:
        assert 1 <= len(positions) <= max_events
        assert positions == sorted(positions)
        assert all(partition_for(keys[i], partitions) == partition for i in positions)
    # Only the last chunk of a partition may be short.
    for partition in {p for p, _ in chunks}:
        sizes = [len(pos) for p, pos in chunks if p == partition]
        assert all(size == max_events for size in sizes[:-1])


def test_chunks_refuse_a_zero_size() -> None:
    with pytest.raises(ValueError, match="max_events"):
        chunk_by_partition([b"a"], PARTITIONS, 0)


# -- send_batch (REST) -------------------------------------------------------

def test_batch_records_are_unkeyed_per_partition_and_confluent_framed() -> None:
    fake = FakeKafka()
    a, b, c = assets_in_distinct_partitions(3)
    events = [event(a, 0), event(b, 1), event(a, 2), event(c, 3), event(b, 4)]
    outcome = make(fake).send_batch(events, timeout_s=1)
    assert outcome.ok and outcome.sent == 5
    records = fake.raw_records()
    assert len(records) == 3, "one record per partition"
    by_partition = {}
    for key, partition, schema_id, record in records:
        assert key is None and schema_id == BATCH_ID
        by_partition[partition] = record["events"]
    assert by_partition == {partition_for(a.encode(), PARTITIONS): [events[0], events[2]],
                            partition_for(b.encode(), PARTITIONS): [events[1], events[4]],
                            partition_for(c.encode(), PARTITIONS): [events[3]]}


def test_a_partition_is_cut_into_chunks_of_batch_max_events_in_order() -> None:
    fake = FakeKafka()
    events = [event("a-1", n) for n in range(5)]
    assert make(fake, batch_max_events=2).send_batch(events, timeout_s=1).ok
    records = fake.raw_records()
    assert [len(r["events"]) for _, _, _, r in records] == [2, 2, 1]
    assert [e for _, _, _, r in records for e in r["events"]] == events
    assert {p for _, p, _, _ in records} == {partition_for(b"a-1", PARTITIONS)}


def test_failed_chunk_reports_its_events_under_their_original_indexes() -> None:
    a, b = assets_in_distinct_partitions(2)
    fake = FakeKafka(fail_partitions={partition_for(b.encode(), PARTITIONS)})
    events = [event(a, 0), event(b, 1), event(a, 2), event(b, 3), event(b, 4)]
    outcome = make(fake, batch_max_events=2).send_batch(events, timeout_s=1)
    assert outcome.failures == {i: "Kafka delivery failed: Local: Message timed out"
                                for i in (1, 3, 4)}
    assert not outcome.ok


def test_unacknowledged_batch_reports_every_index() -> None:
    outcome = make(FakeKafka(deliver=False)).send_batch([EVENT, EVENT], timeout_s=0.05)
    assert sorted(outcome.failures) == [0, 1]
    assert "not acknowledged" in outcome.failures[0]


def test_failed_delivery_is_reported_per_event() -> None:
    outcome = make(FakeKafka(fail=True)).send_batch([EVENT], timeout_s=1)
    assert outcome.failures == {0: "Kafka delivery failed: Local: Message timed out"}


def test_full_local_queue_is_waited_out() -> None:
    fake = FakeKafka(full=3)
    assert make(fake).send_batch([EVENT], timeout_s=1).ok
    assert len(fake.produced) == 1


def test_unencodable_event_fails_alone_and_its_chunk_goes_without_it() -> None:
    fake = FakeKafka()
    events = [event("a-1", 0), {**event("a-1", 1), "value": "x"}, event("a-1", 2)]
    outcome = make(fake).send_batch(events, timeout_s=1)
    assert list(outcome.failures) == [1]
    assert "Avro encoding failed" in outcome.failures[1]
    [(_, _, _, record)] = fake.raw_records()
    assert record["events"] == [events[0], events[2]]


def test_unreadable_partition_count_fails_every_event_naming_topic_and_brokers() -> None:
    fake = FakeKafka()
    fake.metadata_error = KafkaException(KafkaError(KafkaError._TRANSPORT, "all brokers down"))
    outcome = make(fake).send_batch([EVENT, EVENT], timeout_s=1)
    assert sorted(outcome.failures) == [0, 1]
    assert "'raw'" in outcome.failures[0] and "127.0.0.1:1" in outcome.failures[0]
    assert fake.produced == []


def test_partition_count_is_cached_refreshed_and_kept_when_a_refresh_fails() -> None:
    fake = FakeKafka()
    producer = make(fake)
    for _ in range(3):
        assert producer.send_batch([EVENT], timeout_s=1).ok
    assert fake.metadata_calls == 1, "cached"
    producer._partitions_expire = 0.0  # as if PARTITIONS_MAX_AGE_S had passed
    fake.partitions = 4
    assert producer.raw_partitions() == 4 and fake.metadata_calls == 2
    producer._partitions_expire = 0.0
    fake.metadata_error = KafkaException(KafkaError(KafkaError._TIMED_OUT))
    assert producer.send_batch([EVENT], timeout_s=1).ok, "last known count kept"
    assert fake.produced[-1][3] == partition_for(b"a-1", 4)


def test_dead_letters_are_sent_but_not_awaited() -> None:
    fake = FakeKafka(deliver=False)
    dl = {"stage": "ingest", "reasons": ["r"], "original": b"{}", "original_format": "json",
          "source": "http", "topic": None, "partition": None, "offset": None, "key": None,
          "event_id": None, "failed_at": 1}
    assert make(fake).send_batch([], timeout_s=1, dead_letters=[dl]).ok
    assert fake.produced[0][0] == "dlq"
    assert fake.metadata_calls == 0, "no events, no metadata read"


# -- asynchronous API (bridge) ------------------------------------------------

def test_produce_events_calls_back_once_per_chunk_with_its_positions() -> None:
    a, b = assets_in_distinct_partitions(2)
    events = [event(a, 0), event(b, 1), event(a, 2), event(a, 3)]
    fake = FakeKafka()
    calls: list[tuple[list[int], DeliveryFailure | None]] = []
    make(fake, batch_max_events=2).produce_events(events, lambda p, e: calls.append((p, e)))
    assert calls == [], "nothing before delivery reports are served"
    fake.poll(0)
    assert sorted(calls) == [([0, 2], None), ([1], None), ([3], None)]


def test_single_event_is_keyed_by_asset_and_left_to_the_partitioner() -> None:
    fake = FakeKafka()
    results: list[DeliveryFailure | None] = []
    make(fake).produce_event(EVENT, results.append)
    fake.poll(0)
    assert results == [None]
    [(topic, key, partition, (schema_id, record))] = [
        (t, k, p, wire.decode(v, LOOKUP)) for t, k, v, p in fake.produced]
    assert (topic, key, partition, schema_id, record) == ("raw", b"a-1", -1, EVENT_ID, EVENT)


# -- failure kinds: what a caller matches on (the bridge dead-letters ENCODING_REFUSED) --

REFUSED, NOT_DELIVERED = FailureKind.ENCODING_REFUSED, FailureKind.NOT_DELIVERED
UNENCODABLE = {**EVENT, "value": "x"}    # a string where the schema has a double


def kinds(failures: list[DeliveryFailure | None]) -> list[tuple[FailureKind, str] | None]:
    return [None if f is None else (f.kind, f.message) for f in failures]


def test_an_event_the_schema_refuses_is_encoding_refused_at_once() -> None:
    fake, results = FakeKafka(), []
    make(fake).produce_event(UNENCODABLE, results.append)
    [failure] = results                   # before any poll: it never reached Kafka
    assert failure is not None and failure.kind is REFUSED
    assert failure.message.startswith("Avro encoding failed: ") and str(failure) == failure.message
    assert fake.produced == []


def test_the_unencodable_event_of_a_chunk_is_encoding_refused_alone() -> None:
    fake = FakeKafka()
    calls: list[tuple[list[int], DeliveryFailure | None]] = []
    make(fake).produce_events([event("a-1", 0), {**UNENCODABLE, "asset_id": "a-1"},
                               event("a-1", 2)], lambda p, e: calls.append((p, e)))
    fake.poll(0)
    assert [(p, None if e is None else e.kind) for p, e in calls] == \
        [([1], REFUSED), ([0, 2], None)]


def test_a_batch_the_schema_refuses_as_a_whole_is_encoding_refused() -> None:
    def refuse(_record: Any) -> bytes:
        raise ValueError("batch too odd")

    producer = RawProducer("127.0.0.1:1", raw_topic="raw", dlq_topic="dlq",
                           event_encoder=AvroValueEncoder(avro.TELEMETRY_EVENT, EVENT_ID),
                           batch_encoder=refuse,
                           dead_letter_encoder=AvroValueEncoder(avro.DEAD_LETTER, DLQ_ID),
                           producer=FakeKafka())
    calls: list[tuple[list[int], DeliveryFailure | None]] = []
    producer.produce_events([EVENT, EVENT], lambda p, e: calls.append((p, e)))
    assert [(p, kinds([e])) for p, e in calls] == \
        [([0, 1], [(REFUSED, "Avro encoding failed: batch too odd")])]


def test_a_dead_letter_the_schema_refuses_is_encoding_refused() -> None:
    results: list[DeliveryFailure | None] = []
    make(FakeKafka()).produce_dead_letter({**DL, "reasons": None}, results.append)
    [failure] = results
    assert failure is not None and failure.kind is REFUSED
    assert failure.message.startswith("dead-letter encoding failed: ")


class RefusingKafka(FakeKafka):
    def produce(self, *args: Any, **kwargs: Any) -> None:
        raise KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE, "too big"))


@pytest.mark.parametrize(("kafka", "message"), [
    (FakeKafka(fail=True), "Kafka delivery failed: Local: Message timed out"),
    (FakeKafka(full=10**6), "producer queue full (Kafka not keeping up)"),
    (RefusingKafka(), "Kafka produce failed: KafkaError{code=MSG_SIZE_TOO_LARGE,val=10,"
                      "str=\"too big\"}"),
], ids=["delivery-report", "queue-full", "produce-raises"])
def test_what_kafka_did_not_take_or_confirm_is_not_delivered(kafka: FakeKafka,
                                                             message: str) -> None:
    results: list[DeliveryFailure | None] = []
    make(kafka).produce_event(EVENT, results.append, block_s=0.0)
    kafka.poll(0)
    assert kinds(results) == [(NOT_DELIVERED, message)]


def test_an_unreadable_partition_count_is_not_delivered() -> None:
    fake = FakeKafka()
    fake.metadata_error = KafkaException(KafkaError(KafkaError._TRANSPORT, "all brokers down"))
    calls: list[tuple[list[int], DeliveryFailure | None]] = []
    make(fake).produce_events([EVENT, EVENT], lambda p, e: calls.append((p, e)))
    [(positions, failure)] = calls
    assert positions == [0, 1] and failure is not None and failure.kind is NOT_DELIVERED
    assert "'raw'" in failure.message and "127.0.0.1:1" in failure.message


# -- delivery observer (metrics hook) ------------------------------------------

DL = {"stage": "ingest", "reasons": ["r"], "original": b"{}", "original_format": "json",
      "source": "http", "topic": None, "partition": None, "offset": None, "key": None,
      "event_id": None, "failed_at": 1}


class Observations:
    def __init__(self) -> None:
        self.seen: list[tuple[str, float, str | None]] = []

    def __call__(self, kind: str, seconds: float, error: str | None) -> None:
        self.seen.append((kind, seconds, error))

    def outcomes(self) -> list[tuple[str, str | None]]:
        return [(kind, error) for kind, _, error in self.seen]


def test_observer_sees_each_record_once_after_its_callback() -> None:
    a, b = assets_in_distinct_partitions(2)
    fake, observed = FakeKafka(), Observations()
    producer = make(fake, batch_max_events=2, delivery_observer=observed)
    order: list[str] = []
    producer.produce_events([event(a, 0), event(a, 1), event(a, 2), event(b, 3)],
                            lambda positions, error: order.append("callback"))
    producer.produce_event(EVENT, lambda error: None)
    producer.produce_dead_letter(DL, lambda error: None)
    assert observed.seen == [], "observed on delivery, not on produce"
    fake.poll(0)
    # One observation per record: three batch records (2 + 1 + 1 events), not four events.
    assert sorted(observed.outcomes()) == [("batch", None)] * 3 + [
        ("dead_letter", None), ("event", None)]
    assert all(seconds >= 0 for _, seconds, _ in observed.seen)
    assert order == ["callback"] * 3


def test_observer_sees_failed_deliveries_and_a_full_queue_with_their_error() -> None:
    observed = Observations()
    assert not make(FakeKafka(fail=True), delivery_observer=observed).send_batch(
        [EVENT], timeout_s=1).ok
    assert observed.outcomes() == [("batch", "Kafka delivery failed: Local: Message timed out")]

    observed = Observations()
    make(FakeKafka(full=10**6), delivery_observer=observed).produce_event(
        EVENT, lambda error: None, block_s=0.0)
    assert observed.outcomes() == [("event", "producer queue full (Kafka not keeping up)")]


def test_observer_is_not_told_of_records_never_given_to_kafka() -> None:
    observed = Observations()
    make(FakeKafka(), delivery_observer=observed).produce_event(
        {**EVENT, "value": "x"}, lambda error: None)
    assert observed.seen == [], "an encoding error is the caller's, not Kafka's"


def test_producer_config_uses_the_java_compatible_partitioner() -> None:
    assert producer_config("b:9092", "c")["partitioner"] == PARTITIONER == "murmur2_random"


def test_build_registers_the_batch_schema_under_its_record_subject(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(raw_producer_module, "Producer", lambda config: FakeKafka())
    registered: dict[str, str] = {}

    def register(subject: str, text: str) -> int:
        registered[subject] = text
        return {"raw-value": EVENT_ID, "dlq-value": DLQ_ID}.get(subject, BATCH_ID)

    target = EdgeTarget("127.0.0.1:1", "raw", "dlq", "http://r", batch_max_events=3)
    producer = build_raw_producer(target, client_id="t", register=register)
    assert registered == {"raw-value": avro.schema_text(avro.TELEMETRY_EVENT),
                          "raw-com.dcmms.telemetry.TelemetryBatch":
                              avro.schema_text(avro.TELEMETRY_BATCH),
                          "dlq-value": avro.schema_text(avro.DEAD_LETTER)}
    assert producer.batch_max_events == 3
    fake = producer._producer
    assert producer.send_batch([event("a-1", n) for n in range(4)], timeout_s=1).ok
    assert [(sid, len(r["events"])) for _, _, sid, r in fake.raw_records()] == \
        [(BATCH_ID, 3), (BATCH_ID, 1)]


def test_edge_target_reads_the_batch_size_setting() -> None:
    values: dict[str, dict[str, Any]] = {
        "kafka": {"bootstrap_servers": "b:1", "topic_raw": "r", "topic_dlq": "d"},
        "schema_registry": {"url": "http://r"}}
    target = EdgeTarget.from_settings(Settings(values, Path("unit"), {}))
    assert (target.bootstrap_servers, target.raw_topic, target.dlq_topic, target.registry_url,
            target.batch_max_events) == ("b:1", "r", "d", "http://r", 500)
    values["kafka"]["edge_batch_max_events"] = "42"
    assert EdgeTarget.from_settings(Settings(values, Path("unit"), {})).batch_max_events == 42


def test_batch_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="edge_batch_max_events"):
        make(FakeKafka(), batch_max_events=0)
