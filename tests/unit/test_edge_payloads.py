"""Unit tests of schemas.edge: MQTT payload / REST item -> event or reasons."""

from __future__ import annotations

import io
import json

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import avro
from schemas.edge import dead_letter, event_from_item, event_from_mqtt, parse_topic
from schemas.events import derive_event_id
from schemas.validation import default_sensor_rules

NOW = 1_800_000_000_000
RULES = default_sensor_rules()
TOPIC = "telemetry/site-1/asset-001/temperature"


def payload(**fields: object) -> bytes:
    base = {"sensor_id": "s1", "timestamp": NOW - 1000, "value": 21.5, "unit": "celsius"}
    base.update(fields)
    return json.dumps(base).encode()


def test_parse_topic_splits_levels() -> None:
    assert parse_topic(TOPIC) == ("site-1", "asset-001", "temperature")


@pytest.mark.parametrize("topic", ["telemetry/a/b", "telemetry/a/b/c/d", "other/a/b/c",
                                   "telemetry//b/c", "telemetry/a/b/"])
def test_parse_topic_rejects_other_shapes(topic: str) -> None:
    with pytest.raises(ValueError, match="topic"):
        parse_topic(topic)


def test_mqtt_fields_come_from_topic_and_event_id_is_derived() -> None:
    result = event_from_mqtt(payload(), TOPIC, now_ms=NOW, rules=RULES)
    assert result.ok, result.errors
    event = result.event
    assert event is not None
    assert (event["site_id"], event["asset_id"], event["sensor_type"]) == \
        ("site-1", "asset-001", "TEMPERATURE")
    assert event["source"] == "mqtt"
    assert event["event_id"] == derive_event_id("site-1", "asset-001", "s1", NOW - 1000)


def test_mqtt_and_rest_derive_the_same_id_for_the_same_reading() -> None:
    mqtt = event_from_mqtt(payload(), TOPIC, now_ms=NOW, rules=RULES).event
    rest = event_from_item({"site_id": "site-1", "asset_id": "asset-001", "sensor_id": "s1",
                            "sensor_type": "TEMPERATURE", "timestamp": NOW - 1000,
                            "value": 21.5, "unit": "celsius"}, now_ms=NOW, rules=RULES).event
    assert mqtt is not None and rest is not None
    assert mqtt["event_id"] == rest["event_id"]
    assert rest["source"] == "http"


def test_mqtt_payload_may_repeat_topic_fields_in_any_case_of_sensor_type() -> None:
    result = event_from_mqtt(payload(site_id="site-1", asset_id="asset-001",
                                     sensor_type="TEMPERATURE", event_id="e-1"),
                             TOPIC, now_ms=NOW, rules=RULES)
    assert result.ok and result.event is not None
    assert result.event["event_id"] == "e-1"


@pytest.mark.parametrize("field,value", [("site_id", "site-2"), ("asset_id", "asset-002"),
                                         ("sensor_type", "VOLTAGE"), ("asset_id", 7)])
def test_mqtt_payload_contradicting_topic_is_rejected(field: str, value: object) -> None:
    result = event_from_mqtt(payload(**{field: value}), TOPIC, now_ms=NOW, rules=RULES)
    assert result.event is None
    assert any("contradicts the MQTT topic" in e and field in e for e in result.errors)


@pytest.mark.parametrize("raw,needle", [(b"not json", "not valid UTF-8 JSON"),
                                        (b"\xff\xfe\x00", "not valid UTF-8 JSON"),
                                        (b"[1, 2]", "must be a JSON object"),
                                        (b"42", "must be a JSON object"),
                                        (b"[" * 100000, "JSON")])
def test_mqtt_malformed_payloads_give_reasons(raw: bytes, needle: str) -> None:
    result = event_from_mqtt(raw, TOPIC, now_ms=NOW, rules=RULES)
    assert result.event is None
    assert any(needle in e for e in result.errors), result.errors


def test_mqtt_invalid_event_carries_validation_reasons() -> None:
    result = event_from_mqtt(payload(value=9999.0), TOPIC, now_ms=NOW, rules=RULES)
    assert result.event is None
    assert any(e.startswith("value:") for e in result.errors)


def test_rest_item_that_is_not_an_object() -> None:
    result = event_from_item([1], now_ms=NOW, rules=RULES)
    assert result.errors == ("item must be a JSON object, got array",)


def test_dead_letter_matches_avro_schema() -> None:
    record = dead_letter(stage="bridge", reasons=["x: bad"], original=b"\x00\xff",
                         source="mqtt", topic=TOPIC, failed_at_ms=NOW)
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, avro.load_schema(avro.DEAD_LETTER), record)
    buf.seek(0)
    back = fastavro.schemaless_reader(buf, avro.load_schema(avro.DEAD_LETTER))
    assert back["original"] == b"\x00\xff" and back["reasons"] == ["x: bad"]


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=300) | st.recursive(
           st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
           lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=10), c,
                                                               max_size=6),
           max_leaves=20).map(lambda v: json.dumps(v).encode()),
       topic=st.sampled_from([TOPIC, "telemetry/a/b", "telemetry/s/a/VOLTAGE"]) | st.text())
def test_mqtt_never_raises_and_always_explains(raw: bytes, topic: str) -> None:
    result = event_from_mqtt(raw, topic, now_ms=NOW, rules=RULES)
    assert (result.event is None) == bool(result.errors)
    if result.event is not None:
        # Whatever passed must be encodable as the raw_telemetry schema.
        fastavro.schemaless_writer(io.BytesIO(), avro.load_schema(avro.TELEMETRY_EVENT),
                                   result.event)


def test_source_is_set_by_the_edge_not_the_client() -> None:
    # A client-chosen source could even be a lone surrogate that Avro cannot encode.
    item = {"site_id": "site-1", "asset_id": "asset-001", "sensor_id": "s1",
            "sensor_type": "TEMPERATURE", "timestamp": NOW - 1000, "value": 21.5,
            "unit": "celsius", "source": "\ud800"}
    rest = event_from_item(item, now_ms=NOW, rules=RULES).event
    mqtt = event_from_mqtt(payload(source="\ud800"), TOPIC, now_ms=NOW, rules=RULES).event
    assert rest is not None and rest["source"] == "http"
    assert mqtt is not None and mqtt["source"] == "mqtt"
