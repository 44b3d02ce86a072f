"""The one Kafka producer of the ingestion edge (MQTT bridge and REST ingest).

:class:`RawProducer` wraps a ``confluent_kafka.Producer`` configured for
at-least-once delivery without reordering duplicates: idempotent, ``acks=all``.
Telemetry goes to ``raw_telemetry`` as Avro in the Confluent wire format, in
two shapes the pipeline tells apart by schema id:

* batches (the normal path): one ``TelemetryBatch`` record ``{"events": [...]}``
  per group of events that share a partition, produced to that explicit
  partition with no key, at most ``batch_max_events`` events each. The job
  pays its per-record cost once per batch instead of once per event.
* single ``TelemetryEvent`` records keyed by ``asset_id`` (bridge retries,
  other tools), placed by librdkafka's ``murmur2_random`` partitioner, which
  computes the same partition as :func:`io_connectors.kafka_partition.partition_for`:
  an asset's readings reach one partition whichever shape carried them.

Dead-letter records go to ``telemetry_dlq``, one record each.

Two ways to use it:

* asynchronous (the bridge): :meth:`RawProducer.produce_events` (batches, one
  callback per batch with the positions it covered), :meth:`RawProducer.produce_event`
  and :meth:`RawProducer.produce_dead_letter` (one callback each, ``None`` on
  success or a :class:`DeliveryFailure`), then :meth:`RawProducer.poll` regularly
  from the same thread;
* synchronous (REST): :meth:`RawProducer.send_batch` produces a list of events
  as batches and waits, up to a deadline, for the delivery report of each
  batch, returning which events failed or are still unconfirmed.

A :class:`DeliveryFailure` says what went wrong as a :class:`FailureKind`:
``ENCODING_REFUSED`` (the record does not fit its Avro schema; trying again
fails the same way) or ``NOT_DELIVERED`` (Kafka did not take or confirm it:
down, slow, queue full, timed out; trying again may succeed). Callers match on
the kind; the message is for people (logs, dead-letter reasons).

The raw topic's partition count is read from the producer's metadata and
cached for :data:`PARTITIONS_MAX_AGE_S`.

Metrics hook: a ``delivery_observer`` (:data:`DeliveryObserver`) is told the
outcome and latency of every record handed to Kafka, once per record (a batch
record counts once, not once per event it carries); the API turns that into a
Prometheus histogram. No metrics library is imported here.

:func:`build_raw_producer` wires it for an :class:`EdgeTarget` (Kafka, the two
topics, the registry, the batch size; :meth:`EdgeTarget.from_settings` reads one
from the settings): it loads the Avro schemas from ``schemas/`` and registers
them in the schema registry (``<topic>-value``; the batch under
``<raw topic>-com.dcmms.telemetry.TelemetryBatch``) to obtain the ids written
into each message.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from config.settings import KafkaSettings, Settings
from io_connectors.kafka_config import reliable_producer_config
from io_connectors.kafka_partition import PARTITIONER, partition_for
from io_connectors.schema_registry import subject_for_record, subject_for_topic
from schemas import avro, wire

__all__ = [
    "AvroValueEncoder",
    "BatchOutcome",
    "ChunkDeliveryCallback",
    "DEFAULT_BATCH_MAX_EVENTS",
    "DeliveryCallback",
    "DeliveryFailure",
    "DeliveryObserver",
    "EdgeTarget",
    "FailureKind",
    "PARTITIONS_MAX_AGE_S",
    "PartitionsUnavailable",
    "RECORD_KINDS",
    "RawProducer",
    "ValueEncoder",
    "build_raw_producer",
    "chunk_by_partition",
    "producer_config",
]

_LOGGER = logging.getLogger(__name__)

_ERROR_LOG_INTERVAL_S = 30.0

# Events per TelemetryBatch record unless configured ([kafka] edge_batch_max_events).
DEFAULT_BATCH_MAX_EVENTS: int = KafkaSettings.edge_batch_max_events
# The raw topic's partition count is re-read from Kafka at most this often.
PARTITIONS_MAX_AGE_S = 60.0
# After a failed read, callers are not blocked on another one for this long.
_PARTITIONS_RETRY_S = 5.0


class FailureKind(enum.Enum):
    """Why a record did not reach Kafka, i.e. whether trying it again can help."""

    # The record does not fit its Avro schema: a retry fails the same way.
    ENCODING_REFUSED = "encoding_refused"
    # Kafka did not take or confirm it (down, slow, local queue full, timed out): retry.
    NOT_DELIVERED = "not_delivered"


@dataclass(frozen=True, slots=True)
class DeliveryFailure:
    """What a delivery callback gets instead of ``None`` when a record was not delivered.

    ``kind`` is for code to match on; ``message`` (also ``str()``) is for people: logs,
    dead-letter reasons, the REST answer.
    """

    kind: FailureKind
    message: str

    def __str__(self) -> str:
        return self.message


def _encoding_refused(exc: Exception, what: str = "Avro") -> DeliveryFailure:
    return DeliveryFailure(FailureKind.ENCODING_REFUSED, f"{what} encoding failed: {exc}")


def _not_delivered(message: str) -> DeliveryFailure:
    return DeliveryFailure(FailureKind.NOT_DELIVERED, message)


# Called once per message with None (delivered) or why it was not.
DeliveryCallback = Callable[[DeliveryFailure | None], None]
# Called once per batch record with the positions (in the list given to
# produce_events) of the events it carried, and None or why it was not delivered.
ChunkDeliveryCallback = Callable[[list[int], DeliveryFailure | None], None]
ValueEncoder = Callable[[Mapping[str, Any]], bytes]
# Called once per record given to Kafka with its kind (one of RECORD_KINDS), the
# seconds since it was first offered to the producer, and None (delivered) or the
# failure's message. It runs on the thread that serves delivery callbacks: keep it
# cheap, never raise.
DeliveryObserver = Callable[[str, float, str | None], None]
RECORD_KINDS = ("batch", "event", "dead_letter")


class PartitionsUnavailable(RuntimeError):
    """The raw topic's partition count could not be read from Kafka."""


def _event_key(event: Mapping[str, Any]) -> bytes:
    return str(event.get("asset_id", "")).encode()


def chunk_by_partition(keys: Sequence[bytes], partitions: int,
                       max_events: int) -> list[tuple[int, list[int]]]:
    """Split positions ``0..len(keys)-1`` into ``(partition, positions)`` chunks.

    Positions are grouped by ``partition_for(key, partitions)``, keep their
    order within a group, and each chunk holds at most ``max_events``.
    """
    if max_events < 1:
        raise ValueError(f"max_events must be at least 1, got {max_events}")
    by_key: dict[bytes, int] = {}
    groups: dict[int, list[int]] = {}
    for position, key in enumerate(keys):
        partition = by_key.get(key)
        if partition is None:
            partition = by_key[key] = partition_for(key, partitions)
        groups.setdefault(partition, []).append(position)
    return [(partition, positions[start:start + max_events])
            for partition, positions in groups.items()
            for start in range(0, len(positions), max_events)]


class AvroValueEncoder:
    """Encodes a record as Confluent wire format (see :mod:`schemas.wire`)."""

    def __init__(self, schema_name: str, schema_id: int) -> None:
        if not 0 <= schema_id < 2**31:
            raise ValueError(f"schema id must be a non-negative int32, got {schema_id}")
        self.schema_id = schema_id
        self._parsed = avro.load_schema(schema_name)

    def __call__(self, record: Mapping[str, Any]) -> bytes:
        return wire.encode(record, self.schema_id, self._parsed)


@dataclass
class BatchOutcome:
    """Result of :meth:`RawProducer.send_batch`.

    ``failures`` maps the index of each event that was not confirmed to the
    reason (a Kafka error, an encoding error, or "not acknowledged within ...").
    """

    sent: int = 0
    failures: dict[int, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failures


def producer_config(bootstrap_servers: str, client_id: str,
                    overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """librdkafka settings shared by every edge producer."""
    tuning: dict[str, Any] = {
        "client.id": client_id,
        # Small linger: batches form under load without hurting REST latency.
        "linger.ms": 5,
        "batch.num.messages": 10000,
        "queue.buffering.max.messages": 500000,
        "queue.buffering.max.kbytes": 262144,
        # A message not delivered in this time gets a failed delivery report;
        # callers retry (bridge) or answer 503 (REST).
        "message.timeout.ms": 120000,
        "reconnect.backoff.ms": 100,
        "reconnect.backoff.max.ms": 5000,
        "socket.keepalive.enable": True,
        # Java's murmur2 for keyed records (librdkafka's default is crc32): single
        # keyed records land where partition_for put the batches of the same asset.
        "partitioner": PARTITIONER,
    }
    return reliable_producer_config(bootstrap_servers, **{**tuning, **dict(overrides or {})})


class RawProducer:
    """Idempotent producer of telemetry batches, single events and dead letters.

    Thread-safety: ``produce_*`` and :meth:`send_batch` may be called from any
    thread, but delivery callbacks run inside :meth:`poll` / :meth:`flush` /
    :meth:`send_batch`, on the calling thread (concurrent :meth:`send_batch`
    calls may serve each other's callbacks).
    """

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        raw_topic: str,
        dlq_topic: str,
        event_encoder: ValueEncoder,
        batch_encoder: ValueEncoder,
        dead_letter_encoder: ValueEncoder,
        batch_max_events: int = DEFAULT_BATCH_MAX_EVENTS,
        metadata_timeout_s: float = 5.0,
        client_id: str = "dcmms-edge",
        config_overrides: Mapping[str, Any] | None = None,
        producer: Any | None = None,
        delivery_observer: DeliveryObserver | None = None,
    ) -> None:
        if not bootstrap_servers:
            raise ValueError("bootstrap_servers is empty (setting [kafka] bootstrap_servers)")
        if not raw_topic or not dlq_topic:
            raise ValueError("raw_topic and dlq_topic must be non-empty "
                             "([kafka] topic_raw, topic_dlq)")
        if batch_max_events < 1:
            raise ValueError(f"batch_max_events must be at least 1, got {batch_max_events} "
                             "([kafka] edge_batch_max_events)")
        self.raw_topic = raw_topic
        self.dlq_topic = dlq_topic
        self.batch_max_events = batch_max_events
        self._metadata_timeout_s = metadata_timeout_s
        self._encode_event = event_encoder
        self._encode_batch = batch_encoder
        self._encode_dead_letter = dead_letter_encoder
        # The raw topic's partition count, when to re-read it, the last read error.
        self._partitions_lock = threading.Lock()
        self._partitions = 0
        self._partitions_expire = 0.0
        self._partitions_retry_at = 0.0
        self._partitions_error = ""
        self._fatal: str | None = None
        self._bootstrap = bootstrap_servers
        self._last_error_log = -_ERROR_LOG_INTERVAL_S
        self._observe_delivery = delivery_observer
        config = producer_config(bootstrap_servers, client_id, config_overrides)
        config["error_cb"] = self._on_error
        self._producer = producer if producer is not None else Producer(config)

    # -- asynchronous API -------------------------------------------------

    def produce_events(self, events: Sequence[Mapping[str, Any]],
                       on_delivery: ChunkDeliveryCallback, *, block_s: float = 30.0) -> None:
        """Enqueue ``events`` as TelemetryBatch records, one per chunk.

        Events are grouped by the partition of their ``asset_id`` (Kafka's
        murmur2, :func:`chunk_by_partition`), keep their order within a
        partition, and are cut into chunks of at most ``batch_max_events``.
        Each chunk is produced to its partition explicitly with key ``None``:
        a batch holds several assets, so no one key describes it (consumers
        read each event's ``asset_id``), and the explicit partition already
        puts every asset where its keyed single records go.

        ``on_delivery(positions, failure)`` is called once per chunk (positions
        index ``events``) with ``None`` once Kafka acknowledged it, else a
        :class:`DeliveryFailure`; every position appears in exactly one call. An
        event that does not fit the Avro schema is reported alone
        (``ENCODING_REFUSED``, "Avro encoding failed: ...") and its chunk goes
        without it. When the partition count cannot be read (:meth:`raw_partitions`)
        every position is reported ``NOT_DELIVERED`` in one call.
        """
        if not events:
            return
        deadline = time.monotonic() + block_s
        try:
            partitions = self.raw_partitions(min(block_s, self._metadata_timeout_s))
        except PartitionsUnavailable as exc:
            on_delivery(list(range(len(events))), _not_delivered(str(exc)))
            return
        for partition, positions in chunk_by_partition(
                [_event_key(e) for e in events], partitions, self.batch_max_events):
            self._produce_chunk(events, partition, positions, on_delivery,
                                max(deadline - time.monotonic(), 0.0))

    def produce_event(self, event: Mapping[str, Any], on_delivery: DeliveryCallback,
                      *, block_s: float = 30.0) -> None:
        """Encode and enqueue one TelemetryEvent record (key ``asset_id``).

        Failures go to ``on_delivery`` (an event the schema refuses:
        ``ENCODING_REFUSED``, at once). The partitioner puts it on the partition
        :meth:`produce_events` uses for the same asset.
        """
        try:
            value = self._encode_event(event)
        except Exception as exc:  # noqa: BLE001 - reported to the caller as data
            on_delivery(_encoding_refused(exc))
            return
        self._produce(self.raw_topic, _event_key(event), value, on_delivery, block_s, "event")

    def produce_dead_letter(self, record: Mapping[str, Any], on_delivery: DeliveryCallback,
                            *, key: bytes | None = None, block_s: float = 30.0) -> None:
        """Encode and enqueue one dead-letter record to the DLQ topic."""
        try:
            value = self._encode_dead_letter(record)
        except Exception as exc:  # noqa: BLE001
            on_delivery(_encoding_refused(exc, "dead-letter"))
            return
        self._produce(self.dlq_topic, key, value, on_delivery, block_s, "dead_letter")

    def poll(self, timeout_s: float = 0.0) -> int:
        """Serve delivery callbacks; returns how many were served."""
        return self._producer.poll(timeout_s)

    def flush(self, timeout_s: float) -> int:
        """Wait for outstanding messages; returns how many are still undelivered."""
        return self._producer.flush(timeout_s)

    def __len__(self) -> int:
        return len(self._producer)

    def raw_partitions(self, timeout_s: float | None = None) -> int:
        """The raw topic's partition count from the producer's metadata, cached.

        Re-read at most every :data:`PARTITIONS_MAX_AGE_S`. When a re-read
        fails the last known count is kept (partitions rarely change, and a
        Kafka outage must not turn every batch into an error); with no known
        count it raises :class:`PartitionsUnavailable` naming the topic and
        the bootstrap servers, and calls in the next few seconds fail fast
        instead of blocking on Kafka again.
        """
        if self._partitions and time.monotonic() < self._partitions_expire:
            return self._partitions
        with self._partitions_lock:
            now = time.monotonic()
            if self._partitions and now < self._partitions_expire:
                return self._partitions
            if now < self._partitions_retry_at:
                if self._partitions:
                    return self._partitions
                raise PartitionsUnavailable(self._partitions_error)
            try:
                count = self._read_partitions(
                    self._metadata_timeout_s if timeout_s is None else timeout_s)
            except PartitionsUnavailable as exc:
                self._partitions_error = str(exc)
                self._partitions_retry_at = time.monotonic() + _PARTITIONS_RETRY_S
                if self._partitions:
                    _LOGGER.warning("%s; keeping the last known count (%d)", exc,
                                    self._partitions)
                    return self._partitions
                raise
            if self._partitions and count != self._partitions:
                _LOGGER.info("topic %s now has %d partitions (was %d)", self.raw_topic,
                             count, self._partitions)
            self._partitions = count
            self._partitions_expire = time.monotonic() + PARTITIONS_MAX_AGE_S
            return count

    @property
    def fatal_error(self) -> str | None:
        """Set when librdkafka reported a fatal (idempotence) error: recreate the producer."""
        return self._fatal

    def close(self, timeout_s: float = 10.0) -> int:
        remaining = self.flush(timeout_s)
        if remaining:
            _LOGGER.warning("closing producer with %d undelivered message(s)", remaining)
        return remaining

    # -- synchronous batch API (REST) --------------------------------------

    def send_batch(self, events: Sequence[Mapping[str, Any]], *, timeout_s: float,
                   dead_letters: Sequence[Mapping[str, Any]] = ()) -> BatchOutcome:
        """Produce ``events`` as TelemetryBatch records and wait for their acknowledgement.

        Grouping, chunking and keys (``None``: a batch holds several assets) are
        those of :meth:`produce_events`. Waits until every chunk is acknowledged
        or ``timeout_s`` passes; every event of a chunk that failed or is still
        unconfirmed is in ``failures`` under its index in ``events``, with the
        failure's message. ``dead_letters`` are produced too, one record each,
        but not waited for (best effort).
        """
        deadline = time.monotonic() + timeout_s
        outcome = BatchOutcome(sent=len(events))
        pending: set[int] = set(range(len(events)))
        lock = threading.Lock()

        def done(positions: list[int], error: DeliveryFailure | None) -> None:
            with lock:
                pending.difference_update(positions)
                if error is not None:
                    for index in positions:
                        outcome.failures[index] = error.message

        def ignore(error: DeliveryFailure | None) -> None:
            if error is not None:
                _LOGGER.warning("dead letter not delivered: %s", error)

        self.produce_events(events, done, block_s=max(timeout_s, 0.0))
        for record in dead_letters:
            self.produce_dead_letter(record, ignore, block_s=0.0)
        # Concurrent batches (threaded workers) poll the same producer: a
        # callback may be served by another thread, so poll in short slices.
        while True:
            with lock:
                if not pending:
                    break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._producer.poll(min(remaining, 0.005))
        with lock:
            for index in pending:
                outcome.failures.setdefault(
                    index, f"not acknowledged by Kafka within {timeout_s:g} s")
        return outcome

    # -- internals ---------------------------------------------------------

    def _read_partitions(self, timeout_s: float) -> int:
        where = f"topic {self.raw_topic!r} from Kafka at {self._bootstrap}"
        try:
            metadata = self._producer.list_topics(self.raw_topic,
                                                  timeout=max(timeout_s, 0.001))
        except KafkaException as exc:
            raise PartitionsUnavailable(f"cannot read the partitions of {where}: {exc}") from None
        topic = metadata.topics.get(self.raw_topic)
        if topic is None or topic.error is not None or not topic.partitions:
            reason = ("topic missing from the metadata" if topic is None
                      else topic.error.str() if topic.error is not None else "no partitions")
            raise PartitionsUnavailable(f"cannot read the partitions of {where}: {reason} "
                                        "(setting [kafka] topic_raw)")
        return len(topic.partitions)

    def _produce_chunk(self, events: Sequence[Mapping[str, Any]], partition: int,
                       positions: list[int], on_delivery: ChunkDeliveryCallback,
                       block_s: float) -> None:
        try:
            value = self._encode_batch({"events": [events[i] for i in positions]})
        except Exception:  # noqa: BLE001 - find the events at fault, send the others
            good: list[int] = []
            for i in positions:
                try:
                    self._encode_event(events[i])
                except Exception as exc:  # noqa: BLE001 - reported to the caller as data
                    on_delivery([i], _encoding_refused(exc))
                else:
                    good.append(i)
            if not good:
                return
            positions = good
            try:
                value = self._encode_batch({"events": [events[i] for i in positions]})
            except Exception as exc:  # noqa: BLE001
                on_delivery(positions, _encoding_refused(exc))
                return
        covered = positions
        self._produce(self.raw_topic, None, value,
                      lambda error: on_delivery(covered, error), block_s, "batch", partition)

    def _produce(self, topic: str, key: bytes | None, value: bytes,
                 on_delivery: DeliveryCallback, block_s: float, kind: str,
                 partition: int = -1) -> None:
        started = time.monotonic()
        deadline = started + block_s
        notify = self._observed(on_delivery, kind, started)

        def report(err: KafkaError | None, _msg: Any) -> None:
            notify(None if err is None else _not_delivered(f"Kafka delivery failed: {err.str()}"))

        while True:
            try:
                # -1 (librdkafka's RD_KAFKA_PARTITION_UA): the partitioner chooses.
                self._producer.produce(topic, value=value, key=key, partition=partition,
                                       on_delivery=report)
                return
            except BufferError:
                # Local queue full (broker slow or down): serve callbacks to make room.
                if time.monotonic() >= deadline:
                    notify(_not_delivered("producer queue full (Kafka not keeping up)"))
                    return
                self._producer.poll(0.05)
            except KafkaException as exc:
                notify(_not_delivered(f"Kafka produce failed: {exc}"))
                return

    def _observed(self, on_delivery: DeliveryCallback, kind: str,
                  started: float) -> DeliveryCallback:
        """``on_delivery``, followed by the metrics hook when there is one."""
        observe = self._observe_delivery
        if observe is None:
            return on_delivery

        def notify(error: DeliveryFailure | None) -> None:
            on_delivery(error)
            observe(kind, time.monotonic() - started, None if error is None else error.message)

        return notify

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal():
            self._fatal = err.str()
            _LOGGER.error("fatal Kafka producer error: %s", err.str())
        else:
            # Transient (broker down, transport): librdkafka reconnects with backoff.
            # It reports every attempt; log at most one line per interval.
            now = time.monotonic()
            if now - self._last_error_log >= _ERROR_LOG_INTERVAL_S:
                self._last_error_log = now
                _LOGGER.warning("Kafka producer (%s): %s", self._bootstrap, err.str())


@dataclass(frozen=True)
class EdgeTarget:
    """Where the edge writes: Kafka, its raw and dead-letter topics, the schema registry."""

    bootstrap_servers: str
    raw_topic: str
    dlq_topic: str
    registry_url: str
    # Events per TelemetryBatch record ([kafka] edge_batch_max_events).
    batch_max_events: int = DEFAULT_BATCH_MAX_EVENTS

    @classmethod
    def from_settings(cls, settings: Settings) -> EdgeTarget:
        """Where the MQTT bridge and REST ingest write (``[kafka]``, ``[schema_registry]``),
        and how many events go in one TelemetryBatch record (``[kafka] edge_batch_max_events``)."""
        return cls(bootstrap_servers=settings.kafka.bootstrap_servers,
                   raw_topic=settings.kafka.topic_raw,
                   dlq_topic=settings.kafka.topic_dlq,
                   registry_url=settings.schema_registry.url,
                   batch_max_events=settings.kafka.edge_batch_max_events)


def build_raw_producer(target: EdgeTarget, *, client_id: str,
                       config_overrides: Mapping[str, Any] | None = None,
                       register: Callable[[str, str], int] | None = None,
                       delivery_observer: DeliveryObserver | None = None,
                       ) -> RawProducer:
    """A :class:`RawProducer` for ``target``.

    Registers ``telemetry-event.avsc`` under ``<raw_topic>-value``, the
    TelemetryBatch under ``<raw_topic>-com.dcmms.telemetry.TelemetryBatch``
    (TopicRecordNameStrategy: a second record type on the same topic) and
    ``dead-letter.avsc`` under ``<dlq_topic>-value`` (idempotent: the registry
    returns the existing id) to get the ids written into every message.
    ``register(subject, schema_text) -> id`` replaces the registry client in tests;
    ``delivery_observer`` is passed to :class:`RawProducer` (metrics).
    """
    if register is None:
        register = _registry_register(target.registry_url)
    event_id = register(subject_for_topic(target.raw_topic),
                        avro.schema_text(avro.TELEMETRY_EVENT))
    batch_id = register(subject_for_record(target.raw_topic, avro.TELEMETRY_BATCH_FULLNAME),
                        avro.schema_text(avro.TELEMETRY_BATCH))
    dlq_id = register(subject_for_topic(target.dlq_topic), avro.schema_text(avro.DEAD_LETTER))
    return RawProducer(
        target.bootstrap_servers,
        raw_topic=target.raw_topic,
        dlq_topic=target.dlq_topic,
        event_encoder=AvroValueEncoder(avro.TELEMETRY_EVENT, event_id),
        batch_encoder=AvroValueEncoder(avro.TELEMETRY_BATCH, batch_id),
        dead_letter_encoder=AvroValueEncoder(avro.DEAD_LETTER, dlq_id),
        batch_max_events=target.batch_max_events,
        client_id=client_id,
        config_overrides=config_overrides,
        delivery_observer=delivery_observer,
    )


def _registry_register(registry_url: str) -> Callable[[str, str], int]:
    from io_connectors.schema_registry import RegistrySchemas

    return RegistrySchemas(registry_url).register
