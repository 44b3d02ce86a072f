"""The one Kafka producer of the ingestion edge (MQTT bridge and REST ingest).

:class:`RawProducer` wraps a ``confluent_kafka.Producer`` configured for
at-least-once delivery without reordering duplicates: idempotent, ``acks=all``.
Telemetry events go to ``raw_telemetry`` keyed by ``asset_id`` as Avro in the
Confluent wire format; dead-letter records go to ``telemetry_dlq``.

Two ways to use it:

* asynchronous (the bridge): :meth:`RawProducer.produce_event` /
  :meth:`RawProducer.produce_dead_letter` with a callback that receives
  ``None`` on success or an error string, then :meth:`RawProducer.poll`
  regularly from the same thread;
* synchronous batches (REST): :meth:`RawProducer.send_batch` produces a list
  of events and waits, up to a deadline, for the delivery report of each one,
  returning which ones failed or are still unconfirmed.

:func:`build_raw_producer` wires it for an :class:`EdgeTarget` (Kafka, the two
topics and the registry; ``runners.edge.edge_target`` reads one from the
settings): it loads the Avro schemas from ``schemas/`` and registers them in
the schema registry under ``<topic>-value`` to obtain the ids written into
each message.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from io_connectors.kafka_config import reliable_producer_config
from schemas import avro, wire

__all__ = [
    "AvroValueEncoder",
    "BatchOutcome",
    "DeliveryCallback",
    "EdgeTarget",
    "RawProducer",
    "ValueEncoder",
    "build_raw_producer",
    "producer_config",
]

_LOGGER = logging.getLogger(__name__)

_ERROR_LOG_INTERVAL_S = 30.0

# Called once per message with None (delivered) or a human-readable error.
DeliveryCallback = Callable[[str | None], None]
ValueEncoder = Callable[[Mapping[str, Any]], bytes]


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
    }
    return reliable_producer_config(bootstrap_servers, **{**tuning, **dict(overrides or {})})


class RawProducer:
    """Idempotent producer of telemetry events and dead letters.

    Thread-safety: ``produce_*`` may be called from any thread, but delivery
    callbacks run inside :meth:`poll` / :meth:`flush` / :meth:`send_batch`, on
    the calling thread. :meth:`send_batch` serialises concurrent callers.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        raw_topic: str,
        dlq_topic: str,
        event_encoder: ValueEncoder,
        dead_letter_encoder: ValueEncoder,
        client_id: str = "dcmms-edge",
        config_overrides: Mapping[str, Any] | None = None,
        producer: Any | None = None,
    ) -> None:
        if not bootstrap_servers:
            raise ValueError("bootstrap_servers is empty (setting [kafka] bootstrap_servers)")
        if not raw_topic or not dlq_topic:
            raise ValueError("raw_topic and dlq_topic must be non-empty "
                             "([kafka] topic_raw, topic_dlq)")
        self.raw_topic = raw_topic
        self.dlq_topic = dlq_topic
        self._encode_event = event_encoder
        self._encode_dead_letter = dead_letter_encoder
        self._fatal: str | None = None
        self._bootstrap = bootstrap_servers
        self._last_error_log = -_ERROR_LOG_INTERVAL_S
        config = producer_config(bootstrap_servers, client_id, config_overrides)
        config["error_cb"] = self._on_error
        self._producer = producer if producer is not None else Producer(config)

    # -- asynchronous API -------------------------------------------------

    def produce_event(self, event: Mapping[str, Any], on_delivery: DeliveryCallback,
                      *, block_s: float = 30.0) -> None:
        """Encode and enqueue one event (key ``asset_id``); errors go to ``on_delivery``."""
        try:
            value = self._encode_event(event)
        except Exception as exc:  # noqa: BLE001 - reported to the caller as data
            on_delivery(f"Avro encoding failed: {exc}")
            return
        self._produce(self.raw_topic, str(event.get("asset_id", "")).encode(), value,
                      on_delivery, block_s)

    def produce_dead_letter(self, record: Mapping[str, Any], on_delivery: DeliveryCallback,
                            *, key: bytes | None = None, block_s: float = 30.0) -> None:
        """Encode and enqueue one dead-letter record to the DLQ topic."""
        try:
            value = self._encode_dead_letter(record)
        except Exception as exc:  # noqa: BLE001
            on_delivery(f"dead-letter encoding failed: {exc}")
            return
        self._produce(self.dlq_topic, key, value, on_delivery, block_s)

    def poll(self, timeout_s: float = 0.0) -> int:
        """Serve delivery callbacks; returns how many were served."""
        return self._producer.poll(timeout_s)

    def flush(self, timeout_s: float) -> int:
        """Wait for outstanding messages; returns how many are still undelivered."""
        return self._producer.flush(timeout_s)

    def __len__(self) -> int:
        return len(self._producer)

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
        """Produce ``events`` and wait until each is acknowledged or ``timeout_s`` passes.

        ``dead_letters`` are produced too but not waited for (best effort).
        """
        deadline = time.monotonic() + timeout_s
        outcome = BatchOutcome(sent=len(events))
        pending: set[int] = set(range(len(events)))
        lock = threading.Lock()

        def callback_for(index: int) -> DeliveryCallback:
            def done(error: str | None) -> None:
                with lock:
                    pending.discard(index)
                    if error is not None:
                        outcome.failures[index] = error
            return done

        def ignore(error: str | None) -> None:
            if error is not None:
                _LOGGER.warning("dead letter not delivered: %s", error)

        for index, event in enumerate(events):
            remaining = deadline - time.monotonic()
            self.produce_event(event, callback_for(index), block_s=max(remaining, 0.0))
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

    def _produce(self, topic: str, key: bytes | None, value: bytes,
                 on_delivery: DeliveryCallback, block_s: float) -> None:
        def report(err: KafkaError | None, _msg: Any) -> None:
            on_delivery(None if err is None else f"Kafka delivery failed: {err.str()}")

        deadline = time.monotonic() + block_s
        while True:
            try:
                self._producer.produce(topic, value=value, key=key, on_delivery=report)
                return
            except BufferError:
                # Local queue full (broker slow or down): serve callbacks to make room.
                if time.monotonic() >= deadline:
                    on_delivery("producer queue full (Kafka not keeping up)")
                    return
                self._producer.poll(0.05)
            except KafkaException as exc:
                on_delivery(f"Kafka produce failed: {exc}")
                return

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


def build_raw_producer(target: EdgeTarget, *, client_id: str,
                       config_overrides: Mapping[str, Any] | None = None,
                       register: Callable[[str, str], int] | None = None,
                       ) -> RawProducer:
    """A :class:`RawProducer` for ``target``.

    Registers ``telemetry-event.avsc`` under ``<raw_topic>-value`` and
    ``dead-letter.avsc`` under ``<dlq_topic>-value`` (idempotent: the registry
    returns the existing id) to get the ids written into every message.
    ``register(subject, schema_text) -> id`` replaces the registry client in tests.
    """
    if register is None:
        register = _registry_register(target.registry_url)
    event_id = register(f"{target.raw_topic}-value", avro.schema_text(avro.TELEMETRY_EVENT))
    dlq_id = register(f"{target.dlq_topic}-value", avro.schema_text(avro.DEAD_LETTER))
    return RawProducer(
        target.bootstrap_servers,
        raw_topic=target.raw_topic,
        dlq_topic=target.dlq_topic,
        event_encoder=AvroValueEncoder(avro.TELEMETRY_EVENT, event_id),
        dead_letter_encoder=AvroValueEncoder(avro.DEAD_LETTER, dlq_id),
        client_id=client_id,
        config_overrides=config_overrides,
    )


def _registry_register(registry_url: str) -> Callable[[str, str], int]:
    from io_connectors.schema_registry import RegistrySchemas

    return RegistrySchemas(registry_url).register
