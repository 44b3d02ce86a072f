"""Avro schemas and the Confluent wire format: shapes, round trips, errors, evolution."""

from __future__ import annotations

import json
import math
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from io_connectors.questdb_schema import ALARM_COLUMNS, SENSOR_READING_COLUMNS
from schemas.avro import (
    ALARM,
    DEAD_LETTER,
    SENSOR_READING,
    TELEMETRY_EVENT,
    field_names,
    load_schema,
    parse_schema,
    schema_text,
)
from schemas.dead_letter import DEAD_LETTER_FIELDS, make_dead_letter
from schemas.events import EVENT_FIELDS, QUALITY_FLAGS, SENSOR_TYPES
from schemas.wire import (
    InMemorySchemaLookup,
    UnknownSchemaIdError,
    WireFormatError,
    decode,
    encode,
    split_frame,
)
from transforms.alarms import ALARM_FIELDS
from transforms.enrich import READING_FIELDS


def _symbols(schema_name: str, field: str) -> tuple[str, ...]:
    doc = json.loads(schema_text(schema_name))
    (f,) = [f for f in doc["fields"] if f["name"] == field]
    return tuple(f["type"]["symbols"])


def test_field_lists_match_the_schemas_and_the_questdb_tables():
    assert field_names(TELEMETRY_EVENT) == EVENT_FIELDS
    assert field_names(SENSOR_READING) == SENSOR_READING_COLUMNS == READING_FIELDS
    assert field_names(ALARM) == ALARM_COLUMNS == ALARM_FIELDS
    assert field_names(DEAD_LETTER) == DEAD_LETTER_FIELDS
    assert _symbols(TELEMETRY_EVENT, "sensor_type") == SENSOR_TYPES
    assert _symbols(TELEMETRY_EVENT, "quality_flag") == QUALITY_FLAGS


def test_optional_fields_have_defaults_and_enums_a_default_symbol():
    doc = json.loads(schema_text(TELEMETRY_EVENT))
    for f in doc["fields"]:
        t = f["type"]
        if isinstance(t, list):
            assert "default" in f, f["name"]
        if isinstance(t, dict) and t["type"] == "enum":
            assert t.get("default") == "UNKNOWN", f["name"]


def _event_strategy():
    ids = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)
    return st.fixed_dictionaries({
        "event_id": ids, "timestamp": st.integers(-(2**63), 2**63 - 1),
        "site_id": ids, "asset_id": ids, "sensor_id": ids,
        "sensor_type": st.sampled_from(SENSOR_TYPES),
        "value": st.floats(allow_nan=False), "unit": ids,
        "quality_flag": st.sampled_from(QUALITY_FLAGS),
        "source": st.none() | ids,
    })


@settings(max_examples=200, deadline=None)
@given(_event_strategy(), st.integers(0, 2**32 - 1))
def test_decode_inverts_encode(event, schema_id):
    schema = load_schema(TELEMETRY_EVENT)
    lookup = InMemorySchemaLookup()
    lookup.register(schema, schema_id=schema_id)
    data = encode(event, schema_id, schema)
    assert data[0] == 0 and struct.unpack(">I", data[1:5])[0] == schema_id
    assert decode(data, lookup, schema) == (schema_id, event)


def test_nan_survives_the_wire():
    schema = load_schema(TELEMETRY_EVENT)
    lookup = InMemorySchemaLookup()
    sid = lookup.register(schema)
    ev = {"event_id": "e", "timestamp": 1, "site_id": "s", "asset_id": "a", "sensor_id": "x",
          "sensor_type": "POWER", "value": math.nan, "unit": "kw", "quality_flag": "GOOD",
          "source": None}
    assert math.isnan(decode(encode(ev, sid, schema), lookup, schema)[1]["value"])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_decode_of_arbitrary_bytes_only_raises_wire_format_error(data):
    schema = load_schema(TELEMETRY_EVENT)
    lookup = InMemorySchemaLookup()
    lookup.register(schema, schema_id=1)
    framed = b"\x00\x00\x00\x00\x01" + data
    for candidate in (data, framed):
        try:
            decode(candidate, lookup, schema)
        except WireFormatError as exc:
            assert exc.reason in {"bad_magic", "short_frame", "truncated_body",
                                  "trailing_bytes", "undecodable_body", "unknown_schema_id"}


def test_bad_frames_have_specific_reasons():
    schema = load_schema(TELEMETRY_EVENT)
    lookup = InMemorySchemaLookup()
    sid = lookup.register(schema)
    good = encode({"event_id": "e", "timestamp": 5, "site_id": "s", "asset_id": "a",
                   "sensor_id": "x", "sensor_type": "VOLTAGE", "value": 1.0, "unit": "v",
                   "quality_flag": "BAD", "source": "http"}, sid, schema)
    cases = {
        b"": "short_frame", good[:4]: "short_frame", b"\x01" + good[1:]: "bad_magic",
        good[:5]: "truncated_body", good[:-2]: "truncated_body", good + b"\x00": "trailing_bytes",
    }
    for data, reason in cases.items():
        with pytest.raises(WireFormatError) as info:
            decode(data, lookup, schema)
        assert info.value.reason == reason, data
    with pytest.raises(UnknownSchemaIdError) as unknown:
        decode(b"\x00\x00\x00\x00\x07" + good[5:], lookup, schema)
    assert unknown.value.schema_id == 7
    assert split_frame(good)[0] == sid


def test_encode_rejects_a_record_that_does_not_fit():
    with pytest.raises(WireFormatError) as info:
        encode({"event_id": 3}, 1, load_schema(TELEMETRY_EVENT))
    assert info.value.reason == "encode_failed"


def test_old_and_new_writer_versions_resolve_to_the_current_reader():
    current = json.loads(schema_text(TELEMETRY_EVENT))
    # v1: before the optional "source" field existed.
    v1 = json.loads(schema_text(TELEMETRY_EVENT))
    v1["fields"] = [f for f in v1["fields"] if f["name"] != "source"]
    # v3: a new sensor type symbol and a new defaulted field.
    v3 = json.loads(schema_text(TELEMETRY_EVENT))
    v3["fields"][5]["type"]["symbols"].insert(0, "SOIL_MOISTURE")
    v3["fields"].append({"name": "firmware", "type": ["null", "string"], "default": None})
    lookup = InMemorySchemaLookup()
    ids = {name: lookup.register(s) for name, s in (("v1", v1), ("v2", current), ("v3", v3))}
    reader = load_schema(TELEMETRY_EVENT)
    base = {"event_id": "e", "timestamp": 1, "site_id": "s", "asset_id": "a", "sensor_id": "x",
            "sensor_type": "TEMPERATURE", "value": 2.5, "unit": "celsius",
            "quality_flag": "GOOD"}
    old = encode(base, ids["v1"], parse_schema(v1))
    assert decode(old, lookup, reader)[1] == {**base, "source": None}
    new = encode({**base, "sensor_type": "SOIL_MOISTURE", "source": "mqtt", "firmware": "1.2"},
                 ids["v3"], parse_schema(v3))
    assert decode(new, lookup, reader)[1] == {**base, "sensor_type": "UNKNOWN", "source": "mqtt"}


def test_dead_letter_round_trips_through_its_schema():
    schema = load_schema(DEAD_LETTER)
    lookup = InMemorySchemaLookup()
    sid = lookup.register(schema)
    dl = make_dead_letter("decode", ["bad magic"], b"\xff\x00", topic="raw_telemetry",
                          partition=3, offset=42, key="asset-001", failed_at_ms=7)
    assert decode(encode(dl, sid, schema), lookup, schema)[1] == dl
    odd = make_dead_letter("nonsense", [], "text")
    assert odd["stage"] == "unknown" and odd["original"] == b"text" and len(odd["reasons"]) == 2
    decode(encode(odd, sid, schema), lookup, schema)
