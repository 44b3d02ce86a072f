"""Client side of the schema registry: register the project's schemas, fetch writer schemas by id.

Built on confluent-kafka's ``SchemaRegistryClient``. :class:`RegistrySchemas`
is the :class:`schemas.wire.SchemaLookup` the decoders use:
``schema_for_id(id)`` returns the fastavro-parsed writer schema, cached per id
for the life of the object (ids are immutable), and raises
:class:`schemas.wire.UnknownSchemaIdError` when the registry answers 40403, so
the record is dead-lettered; any other failure (registry down) propagates and
the runner retries the bundle.

Subjects follow Confluent's TopicNameStrategy, ``<topic>-value``, for a topic's
main record type; a second record type on the same topic (the edge's
TelemetryBatch on ``raw_telemetry``) uses TopicRecordNameStrategy,
``<topic>-<record full name>`` (:func:`subject_for_record`), so each type
evolves under its own compatibility check.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any

from schemas.avro import ALARM, DEAD_LETTER, SENSOR_READING, TELEMETRY_EVENT, ParsedSchema
from schemas.avro import parse_schema as parse_avro
from schemas.avro import schema_text as project_schema_text
from schemas.wire import UnknownSchemaIdError

__all__ = [
    "RegistrySchemas",
    "TOPIC_SCHEMAS",
    "register_project_schemas",
    "subject_for_record",
    "subject_for_topic",
    "topic_schema_names",
]

_LOGGER = logging.getLogger(__name__)

# Settings key in [kafka] -> schema file stem whose records that topic carries.
TOPIC_SCHEMAS: dict[str, str] = {
    "topic_raw": TELEMETRY_EVENT,
    "topic_validated": SENSOR_READING,
    "topic_alarms": ALARM,
    "topic_dlq": DEAD_LETTER,
}


def subject_for_topic(topic: str) -> str:
    """Confluent's TopicNameStrategy for record values."""
    return f"{topic}-value"


def subject_for_record(topic: str, record_fullname: str) -> str:
    """Confluent's TopicRecordNameStrategy: ``<topic>-<namespace.Name>``."""
    return f"{topic}-{record_fullname}"


def topic_schema_names(settings: Any) -> dict[str, str]:
    """``{topic name: schema name}`` for the four pipeline topics, from [kafka] settings."""
    return {getattr(settings.kafka, key): name for key, name in TOPIC_SCHEMAS.items()}


class RegistrySchemas:
    """Registry access for producers and decoders; safe to share between threads.

    Picklable: the underlying HTTP client is created lazily on first use, so a
    Beam DoFn may hold one and each worker opens its own connection.
    """

    def __init__(self, url: str, timeout_s: float = 10.0) -> None:
        if not url or not url.startswith(("http://", "https://")):
            raise ValueError(f"schema registry url {url!r} must start with http:// or https:// "
                             "(setting [schema_registry] url)")
        self.url = url
        self.timeout_s = timeout_s
        self._client: Any = None
        self._parsed: dict[int, ParsedSchema] = {}
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url, "timeout_s": self.timeout_s}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["url"], state["timeout_s"])  # type: ignore[misc]

    @property
    def client(self) -> Any:
        """The confluent-kafka ``SchemaRegistryClient`` (created on first use)."""
        if self._client is None:
            from confluent_kafka.schema_registry import SchemaRegistryClient

            self._client = SchemaRegistryClient({"url": self.url,
                                                 "timeout": int(self.timeout_s)})
        return self._client

    def register(self, subject: str, schema_text: str) -> int:
        """Register ``schema_text`` (Avro JSON) under ``subject``; returns the global id.

        Idempotent. Raises ``SchemaRegistryError`` (http 409) if incompatible.
        """
        from confluent_kafka.schema_registry import Schema

        schema_id = self.client.register_schema(subject, Schema(schema_text, "AVRO"))
        _LOGGER.info("schema for %s has id %d", subject, schema_id)
        return int(schema_id)

    def register_for_topic(self, topic: str, schema_text: str) -> int:
        return self.register(subject_for_topic(topic), schema_text)

    def latest_id(self, subject: str) -> int:
        """Id of the latest version of ``subject``."""
        return int(self.client.get_latest_version(subject).schema_id)

    def schema_for_id(self, schema_id: int) -> ParsedSchema:
        """The parsed writer schema of ``schema_id`` (cached); see the module docstring."""
        parsed = self._parsed.get(schema_id)
        if parsed is not None:
            return parsed
        from confluent_kafka.schema_registry.error import SchemaRegistryError

        try:
            schema = self.client.get_schema(schema_id)
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404:
                raise UnknownSchemaIdError(schema_id) from None
            raise
        parsed = parse_avro(schema.schema_str)
        with self._lock:
            self._parsed[schema_id] = parsed
        return parsed

    __call__ = schema_for_id  # a RegistrySchemas *is* a schemas.wire.SchemaLookup


def register_project_schemas(registry: RegistrySchemas,
                             topics: Mapping[str, str]) -> dict[str, int]:
    """Register each topic's schema (``{topic: schema name}``) as ``<topic>-value``.

    Returns ``{topic: schema id}``. Call at start-up of every producer, so a
    schema change is checked for compatibility before any record is written.
    """
    return {topic: registry.register_for_topic(topic, project_schema_text(name))
            for topic, name in topics.items()}
