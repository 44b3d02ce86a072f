"""Avro schemas and the Confluent wire format: shapes, round trips, errors, evolution."""

from __future__ import annotations

import json
import math
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from io_connectors.questdb_schema import (
    ALARM_COLUMNS,
    ALARMS,
    SENSOR_READING_COLUMNS,
    SENSOR_READINGS,
    TABLE_COLUMNS,
)
from schemas.assets import Thresholds, load_asset_catalog
from schemas.avro import (
    ALARM,
    DEAD_LETTER,
    SENSOR_READING,
    TELEMETRY_EVENT,
    SchemaFileError,
    enum_symbols,
    field_defaults,
    field_names,
    load_schema,
    parse_schema,
    schema_text,
)
from schemas.dead_letter import DEAD_LETTER_FIELDS, STAGES, make_dead_letter
from schemas.events import EVENT_FIELDS, QUALITY_FLAGS, SENSOR_TYPES
from schemas.wire import (
    InMemorySchemaLookup,
    UnknownSchemaIdError,
    WireFormatError,
    decode,
    encode,
    split_frame,
)
from transforms.alarms import (
    ALARM_FIELDS,
    CLEARED,
    CRITICAL,
    NO_DATA,
    RAISED,
    WARNING,
    AlarmState,
    scan_silences,
    step,
)
from transforms.enrich import READING_FIELDS, enrich


def _symbols(schema_name: str, field: str) -> tuple[str, ...]:
    doc = json.loads(schema_text(schema_name))
    (f,) = [f for f in doc["fields"] if f["name"] == field]
    return tuple(f["type"]["symbols"])


def _avsc_fields(schema_name: str) -> list[dict]:
    """The .avsc's top-level fields, read from its text (not through schemas.avro helpers)."""
    return json.loads(schema_text(schema_name))["fields"]


def _avsc_names(schema_name: str) -> tuple[str, ...]:
    return tuple(f["name"] for f in _avsc_fields(schema_name))


def test_field_lists_and_symbols_are_the_schemas():
    assert EVENT_FIELDS == field_names(TELEMETRY_EVENT) == _avsc_names(TELEMETRY_EVENT)
    assert READING_FIELDS == _avsc_names(SENSOR_READING)
    assert ALARM_FIELDS == _avsc_names(ALARM)
    assert DEAD_LETTER_FIELDS == _avsc_names(DEAD_LETTER)
    assert _symbols(TELEMETRY_EVENT, "sensor_type") == SENSOR_TYPES
    assert _symbols(TELEMETRY_EVENT, "quality_flag") == QUALITY_FLAGS
    assert _symbols(DEAD_LETTER, "stage") == STAGES
    assert _symbols(ALARM, "severity") == (WARNING, CRITICAL, NO_DATA)
    assert _symbols(ALARM, "state") == (RAISED, CLEARED)
    assert field_defaults(TELEMETRY_EVENT) == {"quality_flag": "UNKNOWN", "source": None}
    with pytest.raises(SchemaFileError, match="telemetry-event.avsc"):
        enum_symbols(TELEMETRY_EVENT, "unit")


def _round_trips(record: dict, schema_name: str) -> None:
    """``record`` has exactly the schema's fields in its order and encodes with it."""
    assert tuple(record) == _avsc_names(schema_name)
    schema = load_schema(schema_name)
    lookup = InMemorySchemaLookup()
    sid = lookup.register(schema)
    assert decode(encode(record, sid, schema), lookup, schema)[1] == record


def test_hand_built_records_have_exactly_the_schema_fields():
    """The hot path builds its records as dict literals with known keys: each literal is
    checked here against the .avsc (a field added to a schema fails this test)."""
    event = {"event_id": "e1", "timestamp": 1_800_000_000_000, "site_id": "site-001",
             "asset_id": "asset-001", "sensor_id": "temp-001", "sensor_type": "TEMPERATURE",
             "value": 95.0, "unit": "celsius", "quality_flag": "BAD", "source": None}
    _round_trips(event, TELEMETRY_EVENT)
    catalog = load_asset_catalog()
    row = enrich(event, catalog, ingested_at_ms=5)
    _round_trips(row, SENSOR_READING)
    _round_trips(enrich(dict(event, asset_id="nope"), catalog, ingested_at_ms=5,
                        policy="pass_unenriched"), SENSOR_READING)
    # an alarm raised and cleared by readings, a NO_DATA raised by a scan and cleared
    state, raised = step(AlarmState(), row, Thresholds(warning_high=80.0), now_ms=10)
    state, cleared = step(state, dict(row, value=20.0, quality_flag="GOOD",
                                      timestamp=row["timestamp"] + 1), Thresholds(
                                          warning_high=80.0), now_ms=11)
    stored = {"site-001/asset-001/temp-001": AlarmState(
        None, None, 1, 0, 1.0, "TEMPERATURE", None).to_tuple()}
    no_data, _ = scan_silences(stored, 5_000, 60_000)
    after = AlarmState.from_tuple(stored["site-001/asset-001/temp-001"])
    _, resumed = step(after, row, None, now_ms=6_000)
    kinds = [(t["severity"], t["state"]) for t in (*raised, *cleared, *no_data, *resumed)]
    assert kinds == [(WARNING, RAISED), (WARNING, CLEARED), (NO_DATA, RAISED),
                     (NO_DATA, CLEARED), (WARNING, RAISED)]
    for transition in (*raised, *cleared, *no_data, *resumed):
        _round_trips(transition, ALARM)
    _round_trips(make_dead_letter("validate", ["x"], b"o", event_id="e1"), DEAD_LETTER)


def test_bad_input_drill_event_has_every_required_field_of_the_event_schema():
    from chaos.badinput import _FIELDS, _valid_event

    assert _FIELDS == _avsc_names(TELEMETRY_EVENT)
    required = {f["name"] for f in _avsc_fields(TELEMETRY_EVENT) if "default" not in f}
    assert required <= set(_valid_event("t", 1)) <= set(_FIELDS)


# QuestDB column types that hold each Avro type (nullable unions: the non-null branch).
_QUESTDB_TYPES = {"long": {"TIMESTAMP", "LONG"}, "string": {"VARCHAR", "SYMBOL"},
                  "double": {"DOUBLE"}, "enum": {"SYMBOL"}}
# Avro fields deliberately not stored as a column of the table (none today).
_NOT_STORED: dict[str, frozenset[str]] = {SENSOR_READINGS: frozenset(), ALARMS: frozenset()}


@pytest.mark.parametrize("table, schema_name", [(SENSOR_READINGS, SENSOR_READING),
                                                (ALARMS, ALARM)])
def test_questdb_column_spec_agrees_with_the_schema(table, schema_name):
    columns = {c.name: c for c in TABLE_COLUMNS[table]}
    fields = _avsc_fields(schema_name)
    stored = [f["name"] for f in fields if f["name"] not in _NOT_STORED[table]]
    # same columns, in the schema's order (the sinks write rows in this order)
    assert tuple(columns) == tuple(stored)
    assert (SENSOR_READING_COLUMNS if table == SENSOR_READINGS else ALARM_COLUMNS) == \
        tuple(stored)
    for f in fields:
        if f["name"] in _NOT_STORED[table]:
            continue
        t = f["type"]
        if isinstance(t, list):
            (t,) = [b for b in t if b != "null"]
        kind = t["type"] if isinstance(t, dict) else t
        assert columns[f["name"]].type in _QUESTDB_TYPES[kind], (table, f["name"], kind)
    assert columns["timestamp"].type == "TIMESTAMP"


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
