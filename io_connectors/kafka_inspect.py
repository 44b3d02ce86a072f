"""Look into the stack's Kafka topics without joining any consumer group.

For the operator console, ``dcmms-telemetry status`` and the dead-letter replay:

* :meth:`KafkaInspector.partitions` — per partition of a topic: low and high
  watermark (first and next offset) and, for a consumer group, its committed
  offset and lag (high - committed);
* :meth:`KafkaInspector.read_tail` — the newest records of a topic (up to
  ``per_partition`` of each partition), newest first;
* :func:`decode_record` — a record's value decoded with the schema registry
  (Confluent wire format), or the reason it could not be.

The consumer used here never commits and has ``enable.auto.commit`` off and a
throw-away group id: reading never moves the pipeline's offsets. One client is
made per call and closed after it (the console calls are rare and short).
"""

from __future__ import annotations

import base64
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from confluent_kafka import OFFSET_INVALID, Consumer, KafkaException, TopicPartition

from schemas.wire import WireFormatError, decode

__all__ = ["DecodedRecord", "KafkaInspector", "KafkaUnavailable", "PartitionOffsets",
           "TopicRecord", "decode_record", "printable"]

_LOGGER = logging.getLogger(__name__)


class KafkaUnavailable(RuntimeError):
    """Kafka did not answer in time; the message names the bootstrap servers' setting."""


@dataclass(frozen=True)
class PartitionOffsets:
    partition: int
    low: int
    high: int
    committed: int | None = None

    @property
    def messages(self) -> int:
        return max(0, self.high - self.low)

    @property
    def lag(self) -> int | None:
        """Records the group has not committed yet (None: the group committed nothing here)."""
        if self.committed is None:
            return None
        return max(0, self.high - max(self.committed, self.low))

    def as_dict(self) -> dict[str, Any]:
        return {"partition": self.partition, "low": self.low, "high": self.high,
                "messages": self.messages, "committed": self.committed, "lag": self.lag}


@dataclass(frozen=True)
class TopicRecord:
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None

    @property
    def record_id(self) -> str:
        """``"<partition>:<offset>"``: names one record of a topic."""
        return f"{self.partition}:{self.offset}"


def printable(data: bytes | None, limit: int = 4096) -> dict[str, Any] | None:
    """Bytes for JSON: UTF-8 text when they are text, else base64; cut at ``limit`` bytes."""
    if data is None:
        return None
    cut = data[:limit]
    try:
        text = cut.decode("utf-8")
        if all(c.isprintable() or c in "\n\r\t" for c in text):
            return {"text": text, "bytes": len(data), "truncated": len(data) > limit}
    except UnicodeDecodeError:
        pass
    return {"base64": base64.b64encode(cut).decode("ascii"), "bytes": len(data),
            "truncated": len(data) > limit}


class DecodedRecord(NamedTuple):
    """What :func:`decode_record` found: the record, or why there is none (``error``)."""

    schema_id: int | None
    record: dict[str, Any] | None
    error: str | None


def decode_record(value: bytes | None, lookup: Callable[[int], Any]) -> DecodedRecord:
    """``(schema_id, record, None)`` or ``(schema_id or None, None, reason)``; never raises
    for bad bytes (a registry that is down raises, as everywhere else)."""
    if value is None:
        return DecodedRecord(None, None, "no value (tombstone)")
    try:
        schema_id, record = decode(value, lookup)
    except WireFormatError as exc:
        return DecodedRecord(None, None, str(exc))
    return DecodedRecord(schema_id, record, None)


class KafkaInspector:
    """Read-only access to topics and group offsets of the Kafka at ``bootstrap_servers``."""

    def __init__(self, bootstrap_servers: str, timeout_s: float = 5.0,
                 setting: str = "[kafka] bootstrap_servers") -> None:
        self.bootstrap_servers = bootstrap_servers
        self.timeout_s = timeout_s
        self._setting = setting

    def _consumer(self, group: str | None = None) -> Consumer:
        return Consumer({
            "bootstrap.servers": self.bootstrap_servers,
            "group.id": group or f"dcmms-inspect-{uuid.uuid4().hex[:12]}",
            "enable.auto.commit": False,
            "enable.partition.eof": False,
            "auto.offset.reset": "earliest",
            "socket.timeout.ms": int(self.timeout_s * 1000),
            "session.timeout.ms": 10_000,
            "logger": _LOGGER,
        })

    def _unavailable(self, exc: Exception) -> KafkaUnavailable:
        return KafkaUnavailable(f"Kafka at {self.bootstrap_servers} did not answer: {exc} "
                                f"(setting {self._setting})")

    def _watermarks(self, consumer: Consumer, topic: str, partition: int) -> tuple[int, int]:
        """(low, high) offsets of one partition; KafkaUnavailable naming the setting."""
        try:
            return consumer.get_watermark_offsets(TopicPartition(topic, partition),
                                                  timeout=self.timeout_s)
        except KafkaException as exc:
            raise self._unavailable(exc) from None

    def _partition_ids(self, consumer: Consumer, topic: str) -> list[int]:
        try:
            meta = consumer.list_topics(topic, timeout=self.timeout_s)
        except KafkaException as exc:
            raise self._unavailable(exc) from None
        info = meta.topics.get(topic)
        if info is None or info.error is not None:
            raise KafkaUnavailable(f"topic {topic!r} not found on Kafka at "
                                   f"{self.bootstrap_servers}")
        return sorted(info.partitions)

    def partitions(self, topic: str, group: str | None = None) -> list[PartitionOffsets]:
        """Watermarks of every partition of ``topic`` and, with ``group``, its committed offsets."""
        consumer = self._consumer(group)
        try:
            ids = self._partition_ids(consumer, topic)
            committed: dict[int, int | None] = dict.fromkeys(ids)
            if group is not None:
                try:
                    for tp in consumer.committed([TopicPartition(topic, p) for p in ids],
                                                 timeout=self.timeout_s):
                        committed[tp.partition] = (None if tp.offset == OFFSET_INVALID
                                                   or tp.offset < 0 else tp.offset)
                except KafkaException as exc:
                    raise self._unavailable(exc) from None
            out = []
            for p in ids:
                low, high = self._watermarks(consumer, topic, p)
                out.append(PartitionOffsets(p, low, high, committed[p]))
            return out
        finally:
            consumer.close()

    def read_tail(self, topic: str, per_partition: int, partitions: Sequence[int] | None = None,
                  max_wait_s: float | None = None) -> list[TopicRecord]:
        """The newest ``per_partition`` records of each partition, newest first (by timestamp)."""
        if per_partition < 1:
            return []
        consumer = self._consumer()
        try:
            ids = self._partition_ids(consumer, topic)
            if partitions is not None:
                ids = [p for p in ids if p in set(partitions)]
            wanted: dict[int, int] = {}
            assign = []
            for p in ids:
                low, high = self._watermarks(consumer, topic, p)
                if high > low:
                    start = max(low, high - per_partition)
                    wanted[p] = high
                    assign.append(TopicPartition(topic, p, start))
            records: list[TopicRecord] = []
            if not assign:
                return records
            consumer.assign(assign)
            deadline = time.monotonic() + (max_wait_s or self.timeout_s * 2)
            done: set[int] = set()
            while len(done) < len(wanted) and time.monotonic() < deadline:
                for msg in consumer.consume(500, timeout=0.5):
                    if msg.error() is not None:
                        continue
                    p, off = msg.partition(), msg.offset()
                    if off >= wanted[p] - 1:
                        done.add(p)
                    if off < wanted[p]:
                        records.append(TopicRecord(topic, p, off, msg.timestamp()[1],
                                                   msg.key(), msg.value()))
            if len(done) < len(wanted):
                _LOGGER.warning("read_tail(%s): %d of %d partitions not read to the end in "
                                "time", topic, len(wanted) - len(done), len(wanted))
            records.sort(key=lambda r: (r.timestamp_ms, r.partition, r.offset), reverse=True)
            return records
        finally:
            consumer.close()

    def read_records(self, topic: str, ids: Sequence[tuple[int, int]]) -> list[TopicRecord]:
        """The records at ``(partition, offset)`` of ``topic`` (those that still exist)."""
        if not ids:
            return []
        consumer = self._consumer()
        try:
            known = set(self._partition_ids(consumer, topic))
            found: list[TopicRecord] = []
            for partition, offset in ids:
                if partition not in known or offset < 0:
                    continue
                low, high = self._watermarks(consumer, topic, partition)
                if not low <= offset < high:
                    continue
                consumer.assign([TopicPartition(topic, partition, offset)])
                deadline = time.monotonic() + self.timeout_s
                while time.monotonic() < deadline:
                    msg = consumer.poll(0.5)
                    if msg is None or msg.error() is not None:
                        continue
                    if msg.offset() == offset:
                        found.append(TopicRecord(topic, partition, offset, msg.timestamp()[1],
                                                 msg.key(), msg.value()))
                    break
            return found
        finally:
            consumer.close()
