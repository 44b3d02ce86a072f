"""Durable storage of the schema registry: a compacted Kafka topic, as Confluent's registry uses.

Every change is one record in the topic (default ``_schemas``, one partition,
``cleanup.policy=compact``):

- a schema version: key ``{"keytype": "SCHEMA", "subject": s, "version": v}``,
  value ``{"subject", "version", "id", "schema", "deleted"}``; a soft delete
  re-writes the same key with ``"deleted": true``, a hard delete with
  ``"permanent": true`` as well (not a tombstone: the record keeps the schema
  id known after compaction, so ids are never handed out twice and readers of
  old data still resolve it);
- a compatibility setting: key ``{"keytype": "CONFIG", "subject": s or null}``,
  value ``{"compatibilityLevel": level}`` (a ``null`` value deletes it).

:class:`RegistryState` is the pure in-memory view rebuilt by applying records
in order; :class:`KafkaRegistryStore` replays the topic at start-up and
appends new records with ``acks=all`` and an explicit flush, so a registration
is durable before the HTTP reply names its id. Exactly one registry process
may write the topic (no leader election); see docs/decisions/0002-schema-registry.md.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from io_connectors.kafka_config import reliable_producer_config

__all__ = [
    "KafkaRegistryStore",
    "RegistryState",
    "RegistryStoreError",
    "SubjectVersion",
    "config_record",
    "schema_record",
]

_LOGGER = logging.getLogger(__name__)


class RegistryStoreError(RuntimeError):
    """The backing topic could not be read or written."""


@dataclass(frozen=True)
class SubjectVersion:
    """One version of a subject: which global schema id it points at."""

    subject: str
    version: int
    schema_id: int
    deleted: bool = False


def schema_record(subject: str, version: int, schema_id: int, schema: str,
                  deleted: bool = False, permanent: bool = False) -> tuple[bytes, bytes]:
    """Key and value bytes of a schema-version record (``permanent``: hard-deleted)."""
    key = {"keytype": "SCHEMA", "subject": subject, "version": version}
    value: dict[str, Any] = {"subject": subject, "version": version, "id": schema_id,
                             "schema": schema, "deleted": deleted or permanent}
    if permanent:
        value["permanent"] = True
    return _dump(key), _dump(value)


def config_record(subject: str | None, level: str | None) -> tuple[bytes, bytes | None]:
    """Key and value bytes of a compatibility-setting record (``level=None`` deletes)."""
    key = {"keytype": "CONFIG", "subject": subject}
    return _dump(key), None if level is None else _dump({"compatibilityLevel": level})


def _dump(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


@dataclass
class RegistryState:
    """The registry's data, rebuilt by :meth:`apply` from the records in topic order."""

    schemas: dict[int, str] = field(default_factory=dict)            # id -> canonical text
    ids_by_schema: dict[str, int] = field(default_factory=dict)      # canonical text -> id
    subjects: dict[str, dict[int, SubjectVersion]] = field(default_factory=dict)
    config: dict[str | None, str] = field(default_factory=dict)      # None = global

    @property
    def next_id(self) -> int:
        return max(self.schemas, default=0) + 1

    def apply(self, key: bytes, value: bytes | None) -> None:
        """Apply one topic record; unknown or malformed records are skipped with a warning."""
        try:
            k = json.loads(key)
            keytype = k["keytype"]
        except (TypeError, ValueError, KeyError):
            _LOGGER.warning("skipping registry record with unreadable key %r", key[:200])
            return
        if keytype == "CONFIG":
            subject = k.get("subject")
            if value is None:
                self.config.pop(subject, None)
            else:
                self.config[subject] = json.loads(value)["compatibilityLevel"]
            return
        if keytype != "SCHEMA":
            _LOGGER.warning("skipping registry record of unknown keytype %r", keytype)
            return
        if value is None:  # a tombstone (compaction tooling): the version is gone
            self.subjects.get(k["subject"], {}).pop(int(k["version"]), None)
            return
        v = json.loads(value)
        schema_id = int(v["id"])
        self.schemas[schema_id] = v["schema"]
        self.ids_by_schema.setdefault(v["schema"], schema_id)
        if v.get("permanent"):
            versions = self.subjects.get(v["subject"], {})
            versions.pop(int(v["version"]), None)
            if not versions:
                self.subjects.pop(v["subject"], None)
            return
        self.subjects.setdefault(v["subject"], {})[int(v["version"])] = SubjectVersion(
            v["subject"], int(v["version"]), schema_id, bool(v.get("deleted", False)))

    def live_versions(self, subject: str) -> list[SubjectVersion]:
        """Versions of a subject that are not soft-deleted, oldest first."""
        return [sv for sv in self.all_versions(subject) if not sv.deleted]

    def all_versions(self, subject: str) -> list[SubjectVersion]:
        """Versions of a subject, soft-deleted ones included (not hard-deleted), oldest first."""
        return sorted(self.subjects.get(subject, {}).values(), key=lambda sv: sv.version)


class KafkaRegistryStore:
    """Replays and appends the registry topic; holds the :class:`RegistryState`.

    Not thread-safe by itself: the server serialises writes with its own lock.
    """

    def __init__(self, bootstrap_servers: str, topic: str = "_schemas",
                 replication_factor: int = 1, timeout_s: float = 30.0) -> None:
        if not bootstrap_servers:
            raise ValueError("bootstrap_servers is empty (setting [kafka] bootstrap_servers)")
        if not topic:
            raise ValueError("registry topic name is empty (setting [schema_registry] topic)")
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.replication_factor = replication_factor
        self.timeout_s = timeout_s
        self.state = RegistryState()
        self._producer: Any = None
        self._lock = threading.Lock()

    # -- start-up ---------------------------------------------------------
    def start(self) -> RegistryState:
        """Create the topic if needed, replay it into :attr:`state`, open the producer."""
        from confluent_kafka import Producer

        self._ensure_topic()
        self.state = RegistryState()
        count = self._replay(self.state)
        _LOGGER.info("replayed %d records from %s: %d schemas, %d subjects", count,
                     self.topic, len(self.state.schemas), len(self.state.subjects))
        self._producer = Producer(reliable_producer_config(
            self.bootstrap_servers,
            **{"linger.ms": 0,  # a registration waits for its own write; batching buys nothing
               "message.timeout.ms": int(self.timeout_s * 1000)}))
        return self.state

    def _ensure_topic(self) -> None:
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": self.bootstrap_servers})
        try:
            metadata = admin.list_topics(timeout=self.timeout_s)
        except KafkaException as exc:
            raise RegistryStoreError(
                f"cannot reach Kafka at {self.bootstrap_servers} (setting [kafka] "
                f"bootstrap_servers): {exc}") from None
        if self.topic not in metadata.topics:
            self._create_topic(admin)
        # A partition is not readable until its leader is known, whether we just created
        # the topic or the stack did a moment ago: reading watermarks earlier fails with
        # "Unknown partition" or "Not leader for partition".
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            topic = admin.list_topics(self.topic, timeout=self.timeout_s).topics.get(self.topic)
            if topic is not None and not topic.error and topic.partitions and all(
                    p.leader >= 0 for p in topic.partitions.values()):
                return
            time.sleep(0.1)
        raise RegistryStoreError(f"topic {self.topic} has no partition leader after "
                                 f"{self.timeout_s:.0f} s (Kafka at {self.bootstrap_servers})")

    def _create_topic(self, admin: Any) -> None:
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import NewTopic

        new = NewTopic(self.topic, num_partitions=1, replication_factor=self.replication_factor,
                       config={"cleanup.policy": "compact", "retention.ms": "-1"})
        future = admin.create_topics([new])[self.topic]
        try:
            future.result(timeout=self.timeout_s)
        except KafkaException as exc:
            # Another process may have created it meanwhile; anything else is fatal.
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise RegistryStoreError(f"cannot create topic {self.topic}: {exc}") from None

    def _watermarks(self, consumer: Any, tp: Any) -> tuple[int, int]:
        """Low/high offsets, retried while the partition's leadership is still settling."""
        from confluent_kafka import KafkaError, KafkaException

        settling = {KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError._UNKNOWN_PARTITION,
                    KafkaError.LEADER_NOT_AVAILABLE}
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                return consumer.get_watermark_offsets(tp, timeout=self.timeout_s)
            except KafkaException as exc:
                error = exc.args[0]
                if (error.code() not in settling and not error.retriable()) \
                        or time.monotonic() >= deadline:
                    raise
                time.sleep(0.2)

    def _replay(self, state: RegistryState) -> int:
        from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

        consumer = Consumer({
            "bootstrap.servers": self.bootstrap_servers,
            # assign() never joins a group; the id is required by the client only.
            "group.id": f"dcmms-registry-replay-{uuid.uuid4()}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": "read_committed",
        })
        try:
            tp = TopicPartition(self.topic, 0, OFFSET_BEGINNING)
            low, high = self._watermarks(consumer, tp)
            if high <= low:
                return 0
            consumer.assign([tp])
            count = 0
            idle = 0.0
            while True:
                msg = consumer.poll(1.0)
                if msg is None:
                    idle += 1.0
                    if idle > self.timeout_s:
                        raise RegistryStoreError(
                            f"replay of {self.topic} stalled at {count} records "
                            f"(end offset {high})")
                    continue
                idle = 0.0
                if msg.error():
                    if msg.error().code() == KafkaError._PARTITION_EOF:
                        if msg.offset() >= high:
                            return count
                        continue
                    raise RegistryStoreError(f"reading {self.topic}: {msg.error()}")
                state.apply(msg.key(), msg.value())
                count += 1
                if msg.offset() >= high - 1:
                    return count
        finally:
            consumer.close()

    # -- writes -----------------------------------------------------------
    def append(self, records: Iterable[tuple[bytes, bytes | None]]) -> None:
        """Write records durably (acks=all, flushed), then apply them to :attr:`state`.

        Raises :class:`RegistryStoreError` if any write failed; the state is then
        left unchanged for the failed records.
        """
        if self._producer is None:
            raise RegistryStoreError("store not started")
        records = list(records)
        errors: list[str] = []

        def on_delivery(err: Any, _msg: Any) -> None:
            if err is not None:
                errors.append(str(err))

        with self._lock:
            for key, value in records:
                self._producer.produce(self.topic, key=key, value=value, on_delivery=on_delivery)
            remaining = self._producer.flush(self.timeout_s)
            if remaining:
                errors.append(f"{remaining} record(s) not acknowledged within {self.timeout_s}s")
            if errors:
                raise RegistryStoreError(f"writing {self.topic} failed: {'; '.join(errors)}")
            for key, value in records:
                self.state.apply(key, value)

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(self.timeout_s)
            self._producer = None
