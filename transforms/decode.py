"""Decode Confluent-framed Avro telemetry from Kafka into event envelopes.

Input elements may be: raw ``bytes`` (the value), a ``(key, value)`` pair (what
``ReadFromKafka`` yields by default), or a record with ``value`` and optionally
``key``, ``topic``, ``partition``, ``offset`` attributes or keys (what
``ReadFromKafka(with_metadata=True)`` yields). A record value is either one
TelemetryEvent or a TelemetryBatch of events (what the edge writes, see
schemas/avro.py); the writer schema of the record's id tells which.

Output: one *list* of envelopes (:mod:`transforms.common`) per record, each
envelope's record having exactly ``schemas.events.EVENT_FIELDS``, resolved to
the current ``telemetry-event.avsc`` (so records of older and newer compatible
writers decode). Every later stage works on these lists: one element per Kafka
record through the job, not one per event (docs/decisions/0004). An event of a
batch that a later stage rejects is dead-lettered on its own, its ``original``
being the event as JSON (format ``json``) with the batch record's topic,
partition and offset.

Undecodable bytes and unknown schema ids become dead letters (stage
``decode``) on the ``dead_letters`` output, counted as
``decode_failed.<reason>``; a lookup error other than UnknownSchemaIdError
(registry down) propagates so the runner retries the bundle.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import apache_beam as beam

from schemas.avro import (
    TELEMETRY_BATCH,
    TELEMETRY_BATCH_FULLNAME,
    TELEMETRY_EVENT,
    ParsedSchema,
    load_schema,
)
from schemas.events import event_from_avro
from schemas.wire import SchemaLookup, WireFormatError, decode, split_frame
from transforms.common import DEAD_LETTER_TAG, Envelope, Rejected, counter

__all__ = ["DecodeTelemetry", "unpack_source_record", "decode_source_record"]

_LOGGER = logging.getLogger(__name__)


def _field(element: Any, name: str) -> Any:
    if isinstance(element, Mapping):
        return element.get(name)
    return getattr(element, name, None)


def unpack_source_record(element: Any) -> tuple[Any, Any, dict[str, Any]]:
    """``(key, value, meta)`` of a source element (see the module docstring)."""
    if isinstance(element, bytes | bytearray | memoryview):
        return None, bytes(element), {"source": "kafka"}
    if isinstance(element, tuple):
        if len(element) == 2:
            return element[0], element[1], {"source": "kafka"}
        if getattr(element, "_fields", None) is not None:
            # A NamedTuple record (KafkaRecord, the Flink path): plain attribute reads. The
            # generic path's isinstance(..., Mapping) ABC checks cost ~10% of the per-record
            # Python time of decode+validate+enrich+sinks (cProfile, docs/pipeline.md).
            meta = {"source": "kafka"}
            for name in ("topic", "partition", "offset"):
                value = getattr(element, name, None)
                if value is not None:
                    meta[name] = value
            return getattr(element, "key", None), getattr(element, "value", None), meta
    meta: dict[str, Any] = {"source": "kafka"}
    for name in ("topic", "partition", "offset"):
        value = _field(element, name)
        if value is not None:
            meta[name] = value
    return _field(element, "key"), _field(element, "value"), meta


def decode_source_record(
    element: Any, schema_for_id: SchemaLookup, reader_schema: ParsedSchema,
) -> list[Envelope] | Rejected:
    """Pure decode of one source record: its envelopes, or a :class:`Rejected` (stage
    ``decode``, one reason code; its ``dead_letter()`` carries the value as received).
    A TelemetryEvent record gives one envelope, a TelemetryBatch record one per event
    (none for an empty batch)."""
    key, value, meta = unpack_source_record(element)
    meta["original_format"] = "avro-confluent"
    if key is not None:
        meta["key"] = key
    if isinstance(value, bytearray | memoryview):
        value = bytes(value)
    if not isinstance(value, bytes):
        reason = f"record value must be bytes, got {type(value).__name__}"
        # A None value is kept as b"" (the dead letter's original is bytes, never JSON null).
        return Rejected("decode", ("not_bytes",), (reason,),
                        envelope=(None, b"" if value is None else value, meta))
    try:
        batch = _is_batch(value, schema_for_id)
        _schema_id, record = decode(value, schema_for_id,
                                    _batch_schema() if batch else reader_schema)
    except WireFormatError as exc:
        return Rejected("decode", (exc.reason,), (str(exc),), envelope=(None, value, meta))
    if not batch:
        # Resolved to the event schema, the record already has exactly EVENT_FIELDS.
        event = record if reader_schema is _event_schema() else event_from_avro(record)
        return [(event, value, meta)]
    # Items of a batch: resolved to the current event schema by the batch reader. Their
    # original bytes are made (as JSON) only if one is dead-lettered (original None).
    item_meta = {**meta, "original_format": "json"}
    return [(event, None, item_meta) for event in record["events"]]


def _is_batch(value: bytes, schema_for_id: SchemaLookup) -> bool:
    schema_id, _body = split_frame(value)
    return schema_for_id(schema_id).get("name") == TELEMETRY_BATCH_FULLNAME


def _batch_schema() -> ParsedSchema:
    return load_schema(TELEMETRY_BATCH)


def _event_schema() -> ParsedSchema:
    return load_schema(TELEMETRY_EVENT)


class _DecodeFn(beam.DoFn):
    def __init__(self, schema_lookup: SchemaLookup, reader_schema_name: str) -> None:
        self._lookup = schema_lookup
        self._reader_schema_name = reader_schema_name
        self._reader: ParsedSchema | None = None

    def setup(self) -> None:
        self._reader = load_schema(self._reader_schema_name)

    def process(self, element: Any):  # type: ignore[override]
        assert self._reader is not None
        out = decode_source_record(element, self._lookup, self._reader)
        if isinstance(out, Rejected):
            counter("read").inc()
            counter(f"decode_failed.{out.code}").inc()
            counter("dead_letters").inc()
            yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, out.dead_letter())
            return
        counter("kafka_records").inc()
        if out:
            counter("read").inc(len(out))
            yield out


class DecodeTelemetry(beam.PTransform):
    """Source elements -> lists of event envelopes (main) and dead letters (``dead_letters``).

    ``schema_lookup`` is shipped to the workers, so it must be picklable (e.g.
    io_connectors.schema_registry.RegistrySchemas, which connects lazily).
    """

    def __init__(self, schema_lookup: SchemaLookup, *,
                 reader_schema_name: str = TELEMETRY_EVENT) -> None:
        super().__init__()
        if not callable(schema_lookup):
            raise TypeError("schema_lookup must be callable: schema_id -> parsed writer schema")
        load_schema(reader_schema_name)  # fail at construction if the schema file is bad
        self._lookup = schema_lookup
        self._reader_schema_name = reader_schema_name

    def expand(self, pcoll):
        return pcoll | "Decode" >> beam.ParDo(
            _DecodeFn(self._lookup, self._reader_schema_name)
        ).with_outputs(DEAD_LETTER_TAG, main="events")
