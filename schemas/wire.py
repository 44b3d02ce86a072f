"""Confluent wire format: magic byte 0, 4-byte big-endian schema id, Avro binary body.

Pure functions over bytes; the registry is reached only through an injected
:class:`SchemaLookup` (``schema_id -> parsed writer schema``). The real lookup,
backed by the schema registry with a cache, lives in
``io_connectors/schema_registry.py``; :class:`InMemorySchemaLookup` serves tests.

Lookup contract: raise :class:`UnknownSchemaIdError` when the registry says the
id does not exist (the record is then dead-lettered); any other exception means
"registry unreachable" and propagates, so the runner retries the bundle instead
of dead-lettering good data.

Schema evolution: pass the current schema as ``reader_schema`` and records
written with any compatible older (or newer, thanks to enum defaults and
defaulted fields) version resolve to the current shape.
"""

from __future__ import annotations

import io
import logging
import struct
from collections.abc import Mapping
from typing import Any, Protocol

import fastavro

from schemas.avro import ParsedSchema, parse_schema

__all__ = [
    "MAGIC_BYTE",
    "HEADER_SIZE",
    "WireFormatError",
    "UnknownSchemaIdError",
    "SchemaLookup",
    "InMemorySchemaLookup",
    "encode",
    "decode",
    "split_frame",
]

_LOGGER = logging.getLogger(__name__)

MAGIC_BYTE = 0
HEADER_SIZE = 5
_HEADER = struct.Struct(">BI")


class WireFormatError(ValueError):
    """Bytes that are not a valid Confluent Avro frame. ``reason`` is a short code
    (bad_magic, short_frame, truncated_body, trailing_bytes, undecodable_body,
    unknown_schema_id, encode_failed) suitable for a metrics label; ``str()`` is
    the human-readable detail."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class UnknownSchemaIdError(WireFormatError):
    """The registry does not know this schema id."""

    def __init__(self, schema_id: int) -> None:
        super().__init__("unknown_schema_id", f"unknown schema id {schema_id}")
        self.schema_id = schema_id


class SchemaLookup(Protocol):
    """``lookup(schema_id)`` returns the parsed writer schema or raises UnknownSchemaIdError."""

    def __call__(self, schema_id: int) -> ParsedSchema: ...


class InMemorySchemaLookup:
    """A registry in a dict, for tests and tools: ``register(schema) -> id``."""

    def __init__(self) -> None:
        self._by_id: dict[int, ParsedSchema] = {}

    def register(self, schema: str | dict[str, Any], schema_id: int | None = None) -> int:
        parsed = parse_schema(schema) if not _is_parsed(schema) else schema  # type: ignore[arg-type]
        sid = schema_id if schema_id is not None else len(self._by_id) + 1
        self._by_id[sid] = parsed
        return sid

    def __call__(self, schema_id: int) -> ParsedSchema:
        try:
            return self._by_id[schema_id]
        except KeyError:
            raise UnknownSchemaIdError(schema_id) from None


def _is_parsed(schema: Any) -> bool:
    # fastavro marks parsed schemas with this key.
    return isinstance(schema, dict) and "__fastavro_parsed" in schema


# (id(writer), id(reader)) -> (writer, reader, equal). Holding the schemas keeps the ids
# valid; writers come from a lookup cache, so the table stays as small as the registry.
_SAME: dict[tuple[int, int], tuple[ParsedSchema, ParsedSchema, bool]] = {}


def _same_schema(writer: ParsedSchema, reader: ParsedSchema) -> bool:
    if writer is reader:
        return True
    hit = _SAME.get((id(writer), id(reader)))
    if hit is None:
        hit = (writer, reader, writer == reader)
        if len(_SAME) < 10_000:
            _SAME[(id(writer), id(reader))] = hit
    return hit[2]


def encode(record: Mapping[str, Any], schema_id: int, schema: ParsedSchema) -> bytes:
    """Frame ``record`` written with ``schema`` (parsed) under ``schema_id``.

    Raises WireFormatError(reason="encode_failed") when the record does not fit the schema.
    """
    buf = io.BytesIO()
    buf.write(_HEADER.pack(MAGIC_BYTE, schema_id))
    try:
        fastavro.schemaless_writer(buf, schema, record)
    except Exception as exc:  # fastavro raises ValueError/TypeError/KeyError/AttributeError
        raise WireFormatError("encode_failed", f"record does not match schema: {exc!r}") from exc
    return buf.getvalue()


def split_frame(data: bytes) -> tuple[int, memoryview]:
    """``(schema_id, body)`` of a frame; raises WireFormatError on a bad header."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise WireFormatError("short_frame", f"expected bytes, got {type(data).__name__}")
    if len(data) < HEADER_SIZE:
        raise WireFormatError(
            "short_frame", f"frame of {len(data)} bytes is shorter than the 5-byte header")
    magic, schema_id = _HEADER.unpack_from(data, 0)
    if magic != MAGIC_BYTE:
        raise WireFormatError("bad_magic", f"magic byte is {magic}, expected 0")
    return schema_id, memoryview(data)[HEADER_SIZE:]


def decode(
    data: bytes,
    schema_for_id: SchemaLookup,
    reader_schema: ParsedSchema | None = None,
) -> tuple[int, dict[str, Any]]:
    """Decode a frame to ``(schema_id, record)``.

    With ``reader_schema`` the record is resolved to that schema (evolution);
    without, it has the writer's shape. Raises WireFormatError for anything
    undecodable, UnknownSchemaIdError for an id the lookup does not know.
    """
    schema_id, body = split_frame(data)
    writer = schema_for_id(schema_id)
    if len(body) == 0:
        raise WireFormatError("truncated_body", f"schema id {schema_id}: empty Avro body")
    stream = io.BytesIO(body)
    # Resolution costs ~2 us per record: skip it when the writer equals the reader.
    reader = None if reader_schema is None or _same_schema(writer, reader_schema) \
        else reader_schema
    try:
        record = fastavro.schemaless_reader(stream, writer, reader)
    except (EOFError, struct.error) as exc:
        raise WireFormatError(
            "truncated_body", f"schema id {schema_id}: Avro body truncated ({exc!r})") from exc
    except Exception as exc:  # arbitrary bytes make fastavro raise almost anything
        raise WireFormatError(
            "undecodable_body", f"schema id {schema_id}: Avro body undecodable ({exc!r})") from exc
    if stream.tell() != len(body):
        raise WireFormatError(
            "trailing_bytes",
            f"schema id {schema_id}: {len(body) - stream.tell()} bytes left after the record")
    if not isinstance(record, dict):
        raise WireFormatError("undecodable_body", f"schema id {schema_id}: not a record")
    return schema_id, record
