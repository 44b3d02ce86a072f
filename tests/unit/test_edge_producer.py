"""Unit tests of RawProducer over a fake confluent-kafka producer."""

from __future__ import annotations

from typing import Any

from io_connectors.raw_producer import AvroValueEncoder, RawProducer
from schemas import avro, wire
from schemas.wire import InMemorySchemaLookup

EVENT = {"event_id": "e1", "timestamp": 1, "site_id": "s", "asset_id": "a-1", "sensor_id": "x",
         "sensor_type": "VOLTAGE", "value": 1.0, "unit": "v", "quality_flag": "GOOD",
         "source": None}


class FakeKafka:
    """Delivers (or fails) on poll; ``full`` raises BufferError that many times."""

    def __init__(self, fail: bool = False, deliver: bool = True, full: int = 0) -> None:
        self.queue: list[Any] = []
        self.produced: list[tuple[str, bytes | None, bytes]] = []
        self.fail, self.deliver, self.full = fail, deliver, full

    def produce(self, topic: str, value: bytes, key: bytes | None, on_delivery: Any) -> None:
        if self.full:
            self.full -= 1
            raise BufferError("queue full")
        self.produced.append((topic, key, value))
        self.queue.append(on_delivery)

    def poll(self, _timeout: float) -> int:
        if not self.deliver:
            return 0
        served, self.queue = self.queue, []
        for cb in served:
            cb(FakeError() if self.fail else None, None)
        return len(served)

    def flush(self, _timeout: float) -> int:
        return len(self.queue)

    def __len__(self) -> int:
        return len(self.queue)


class FakeError:
    def str(self) -> str:
        return "Local: Message timed out"


def make(fake: FakeKafka) -> RawProducer:
    return RawProducer("127.0.0.1:1", raw_topic="raw", dlq_topic="dlq",
                       event_encoder=AvroValueEncoder(avro.TELEMETRY_EVENT, 7),
                       dead_letter_encoder=AvroValueEncoder(avro.DEAD_LETTER, 8),
                       producer=fake)


def test_events_are_keyed_by_asset_and_confluent_framed() -> None:
    fake = FakeKafka()
    outcome = make(fake).send_batch([EVENT], timeout_s=1)
    assert outcome.ok and outcome.sent == 1
    topic, key, value = fake.produced[0]
    assert (topic, key) == ("raw", b"a-1")
    lookup = InMemorySchemaLookup()
    lookup.register(avro.schema_text(avro.TELEMETRY_EVENT), 7)
    assert wire.decode(value, lookup) == (7, EVENT)


def test_unacknowledged_batch_reports_every_index() -> None:
    outcome = make(FakeKafka(deliver=False)).send_batch([EVENT, EVENT], timeout_s=0.05)
    assert sorted(outcome.failures) == [0, 1]
    assert "not acknowledged" in outcome.failures[0]


def test_failed_delivery_is_reported_per_message() -> None:
    outcome = make(FakeKafka(fail=True)).send_batch([EVENT], timeout_s=1)
    assert outcome.failures == {0: "Kafka delivery failed: Local: Message timed out"}


def test_full_local_queue_is_waited_out() -> None:
    fake = FakeKafka(full=3)
    assert make(fake).send_batch([EVENT], timeout_s=1).ok
    assert len(fake.produced) == 1


def test_unencodable_event_is_a_failure_not_an_exception() -> None:
    outcome = make(FakeKafka()).send_batch([{**EVENT, "value": "x"}], timeout_s=1)
    assert "Avro encoding failed" in outcome.failures[0]


def test_dead_letters_are_sent_but_not_awaited() -> None:
    fake = FakeKafka(deliver=False)
    dl = {"stage": "ingest", "reasons": ["r"], "original": b"{}", "original_format": "json",
          "source": "http", "topic": None, "partition": None, "offset": None, "key": None,
          "event_id": None, "failed_at": 1}
    assert make(fake).send_batch([], timeout_s=1, dead_letters=[dl]).ok
    assert fake.produced[0][0] == "dlq"
