"""Beam sink producing records to a Kafka topic in the Confluent wire format.

``WriteToKafkaTopic(topic, bootstrap_servers, schema_name=..., registry_url=...)``
encodes each dict with the project's Avro schema (``schemas/<name>.avsc``)
under the schema id registered for ``<topic>-value`` (registered at worker
start-up, so an incompatible schema change fails fast) and produces it with an
idempotent producer (``enable.idempotence``, ``acks=all``). Records that do not
fit the schema are the transform's output, as dead letters (stage "sink").

Delivery guarantee: ``finish_bundle`` flushes and raises if any record of the
bundle was not acknowledged, so the runner retries the bundle and nothing is
acknowledged upstream that Kafka has not stored (at-least-once; a retried
bundle may write some records twice, which the downstream dedup by
``event_id`` and the QuestDB DEDUP keys absorb).

An element that is a list is a batch of records (e.g. the output of
transforms.dedup.DeduplicateByEventId): each record is produced as above.

For records that are already bytes (e.g. dead letters encoded elsewhere), pass
``value_fn`` instead of ``schema_name``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics

from io_connectors.kafka_config import reliable_producer_config
from schemas.dead_letter import make_dead_letter

__all__ = ["KafkaDeliveryError", "WriteToKafkaTopic", "default_key", "producer_config"]

_LOGGER = logging.getLogger(__name__)
_METRICS_NAMESPACE = "dcmms.kafka_sink"

KeyFn = Callable[[Any], str | bytes | None]


class KafkaDeliveryError(RuntimeError):
    """Kafka did not acknowledge every record of a bundle."""


def default_key(element: Any) -> str | None:
    """The topic key of the design: ``asset_id`` (None for records without one)."""
    if isinstance(element, Mapping):
        key = element.get("asset_id")
        return key if isinstance(key, str) else None
    return None


def producer_config(bootstrap_servers: str, **overrides: Any) -> dict[str, Any]:
    """Producer settings for a sink that must not lose or reorder acknowledged records."""
    tuning: dict[str, Any] = {
        "linger.ms": 20,              # batch for throughput; the bundle flush bounds latency
        "batch.size": 512 * 1024,
        "queue.buffering.max.messages": 200_000,
        "delivery.timeout.ms": 120_000,
    }
    return reliable_producer_config(bootstrap_servers, **{**tuning, **overrides})


class _WriteToKafkaFn(beam.DoFn):
    def __init__(self, topic: str, config: dict[str, Any], key_fn: KeyFn,
                 schema_name: str | None, registry_url: str | None,
                 value_fn: Callable[[Any], bytes] | None, flush_timeout_s: float) -> None:
        self.topic = topic
        self.config = config
        self.key_fn = key_fn
        self.schema_name = schema_name
        self.registry_url = registry_url
        self.value_fn = value_fn
        self.flush_timeout_s = flush_timeout_s
        self.produced = Metrics.counter(_METRICS_NAMESPACE, f"{topic}_produced")
        self.failed = Metrics.counter(_METRICS_NAMESPACE, f"{topic}_delivery_failures")
        self.dead_lettered = Metrics.counter(_METRICS_NAMESPACE, f"{topic}_dead_lettered")
        self._producer: Any = None
        self._encode: Callable[[Any], bytes] | None = None
        self._errors: list[str] = []

    def setup(self) -> None:
        from confluent_kafka import Producer

        if self.schema_name is not None:
            from io_connectors.schema_registry import RegistrySchemas
            from schemas.avro import load_schema, schema_text
            from schemas.wire import encode

            assert self.registry_url is not None
            schema_id = RegistrySchemas(self.registry_url).register_for_topic(
                self.topic, schema_text(self.schema_name))
            parsed = load_schema(self.schema_name)
            self._encode = lambda record: encode(record, schema_id, parsed)
        else:
            self._encode = self.value_fn
        self._producer = Producer(self.config)

    def start_bundle(self) -> None:
        self._errors = []

    def _on_delivery(self, err: Any, _msg: Any) -> None:
        if err is not None:
            self._errors.append(str(err))
            self.failed.inc()

    def process(self, element: Any) -> Iterator[dict[str, Any]]:
        # A list is a batch of records (e.g. DeduplicateByEventId's output): one call for all.
        for record in element if isinstance(element, list) else (element,):
            yield from self._produce(record)
        self._producer.poll(0)

    def _produce(self, record: Any) -> Iterator[dict[str, Any]]:
        assert self._encode is not None
        try:
            value = self._encode(record)
        except Exception as exc:  # a record that does not fit the schema is data, not a crash
            self.dead_lettered.inc()
            yield _dead_letter(record, f"cannot encode for topic {self.topic}: {exc}")
            return
        key = self.key_fn(record)
        while True:
            try:
                self._producer.produce(self.topic, value=value, key=key,
                                       on_delivery=self._on_delivery)
                break
            except BufferError:
                # Local queue full: serve delivery callbacks until there is room.
                self._producer.poll(0.5)
        self.produced.inc()

    def finish_bundle(self) -> None:
        remaining = self._producer.flush(self.flush_timeout_s)
        if remaining:
            self._errors.append(f"{remaining} record(s) still unacknowledged after "
                                f"{self.flush_timeout_s}s")
        if self._errors:
            errors, self._errors = self._errors, []
            raise KafkaDeliveryError(
                f"topic {self.topic} ({self.config.get('bootstrap.servers')}): "
                f"{len(errors)} delivery failure(s), first: {errors[0]}")

    def teardown(self) -> None:
        if self._producer is not None:
            self._producer.flush(self.flush_timeout_s)
            self._producer = None


def _dead_letter(element: Any, reason: str) -> dict[str, Any]:
    try:
        original = json.dumps(element, default=repr, sort_keys=True).encode()
    except (TypeError, ValueError):
        original = repr(element).encode("utf-8", "backslashreplace")
    event_id = element.get("event_id") if isinstance(element, Mapping) else None
    return make_dead_letter("sink", [reason], original, source="pipeline",
                            original_format="json",
                            event_id=event_id if isinstance(event_id, str) else None)


class WriteToKafkaTopic(beam.PTransform):
    """Produce records to ``topic``; the output is the dead letters of unencodable records.

    Give either ``schema_name`` + ``registry_url`` (Confluent Avro values) or
    ``value_fn`` (element -> bytes). ``key_fn`` defaults to ``asset_id``.
    ``producer_overrides`` are merged into :func:`producer_config`.
    """

    def __init__(self, topic: str, bootstrap_servers: str, *, schema_name: str | None = None,
                 registry_url: str | None = None,
                 value_fn: Callable[[Any], bytes] | None = None,
                 key_fn: KeyFn = default_key, flush_timeout_s: float = 60.0,
                 producer_overrides: Mapping[str, Any] | None = None,
                 label: str | None = None) -> None:
        super().__init__(label)
        if not topic:
            raise ValueError("topic is empty (settings [kafka] topic_*)")
        if not bootstrap_servers:
            raise ValueError("bootstrap_servers is empty (setting [kafka] bootstrap_servers)")
        if (schema_name is None) == (value_fn is None):
            raise ValueError("give exactly one of schema_name (with registry_url) or value_fn")
        if schema_name is not None:
            if not registry_url:
                raise ValueError("schema_name needs registry_url (setting [schema_registry] url)")
            from schemas.avro import load_schema

            load_schema(schema_name)  # fail at construction on a missing or bad .avsc
        self.topic = topic
        self.config = producer_config(bootstrap_servers, **dict(producer_overrides or {}))
        if self.config.get("acks") not in ("all", -1, "-1"):
            raise ValueError("the Kafka sink needs acks=all: anything less can lose "
                             "acknowledged records")
        self.schema_name = schema_name
        self.registry_url = registry_url
        self.value_fn = value_fn
        self.key_fn = key_fn
        self.flush_timeout_s = flush_timeout_s

    def expand(self, pcoll: beam.PCollection) -> beam.PCollection:
        return pcoll | f"Produce{self.topic}" >> beam.ParDo(_WriteToKafkaFn(
            self.topic, self.config, self.key_fn, self.schema_name, self.registry_url,
            self.value_fn, self.flush_timeout_s))
