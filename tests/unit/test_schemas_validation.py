"""schemas.validation: every rule, every reason listed, never raises; event ids; rules file."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.avro import TELEMETRY_EVENT, load_schema
from schemas.events import EVENT_FIELDS, derive_event_id
from schemas.validation import (
    RulesError,
    ValidationResult,
    default_sensor_rules,
    load_sensor_rules,
    validate_event,
)
from schemas.wire import encode

NOW = 1_800_000_000_000
RULES = default_sensor_rules()


def seed_event(**changes):
    ev = {"event_id": "evt-001", "timestamp": NOW, "site_id": "site-001",
          "asset_id": "asset-001", "sensor_type": "TEMPERATURE", "sensor_id": "temp-001",
          "value": 72.5, "unit": "celsius", "quality_flag": "GOOD"}
    ev.update(changes)
    return {k: v for k, v in ev.items() if v is not _DROP}


_DROP = object()


def check(ev, **kw) -> ValidationResult:
    return validate_event(ev, now_ms=NOW, rules=RULES, **kw)


def test_seed_event_is_valid_and_normalised():
    result = check(seed_event(sensor_type="temperature", unit=" °C ", quality_flag="good"))
    assert result.ok and result.reasons == ()
    assert tuple(result.event) == EVENT_FIELDS
    assert result.event["sensor_type"] == "TEMPERATURE"
    assert result.event["unit"] == "celsius"
    assert result.event["quality_flag"] == "GOOD"
    assert result.event["source"] is None


def test_missing_event_id_is_derived_deterministically_unless_disabled():
    ev = seed_event(event_id=_DROP)
    first, second = check(ev), check(dict(ev))
    assert first.event["event_id"] == second.event["event_id"] == derive_event_id(
        "site-001", "asset-001", "temp-001", NOW)
    assert derive_event_id("site-001", "asset-001", "temp-001", NOW + 1) != \
        first.event["event_id"]
    assert check(ev, fill_event_id=False).codes == ("event_id.missing",)


def test_quality_flag_defaults_to_unknown():
    assert check(seed_event(quality_flag=_DROP)).event["quality_flag"] == "UNKNOWN"


@pytest.mark.parametrize("changes, code", [
    ({"site_id": _DROP}, "site_id.missing"),
    ({"asset_id": 5}, "asset_id.type"),
    ({"sensor_id": "x" * 129}, "sensor_id.length"),
    ({"sensor_id": "temp 001"}, "sensor_id.charset"),
    ({"event_id": "évt"}, "event_id.charset"),
    ({"timestamp": "2024-01-01"}, "timestamp.type"),
    ({"timestamp": True}, "timestamp.type"),
    ({"timestamp": 1.5}, "timestamp.type"),
    ({"timestamp": NOW + 300_001}, "timestamp.future"),
    ({"timestamp": NOW - 91 * 86_400_000}, "timestamp.too_old"),
    ({"sensor_type": "SOIL"}, "sensor_type.unknown"),
    ({"sensor_type": "UNKNOWN"}, "sensor_type.unknown"),
    ({"unit": "volt"}, "unit.not_allowed"),
    ({"unit": "c" * 33}, "unit.length"),
    ({"value": math.nan}, "value.not_finite"),
    ({"value": math.inf}, "value.not_finite"),
    ({"value": 10**400}, "value.not_finite"),
    ({"value": "72.5"}, "value.type"),
    ({"value": False}, "value.type"),
    ({"value": 250.5}, "value.out_of_range"),
    ({"value": -80.5}, "value.out_of_range"),
    ({"quality_flag": "MEH"}, "quality_flag.unknown"),
    ({"source": ["mqtt"]}, "source.type"),
    ({"source": "\ud800"}, "source.type"),
    ({"sensor_id": "s" * 1_000_000}, "sensor_id.length"),
    ({"sensor_type": "T" * 1_000_000}, "sensor_type.unknown"),
    ({"unit": "\u00b0" * 1_000_000}, "unit.length"),
    ({"value": {"nested": [1, {"x": None}]}}, "value.type"),
])
def test_each_rule_rejects_with_its_reason(changes, code):
    result = check(seed_event(**changes))
    assert not result.ok
    assert result.codes == (code,)
    assert len(result.reasons) == 1 and result.reasons[0].split(":")[0] == code.split(".")[0]


def test_boundaries_are_accepted():
    assert check(seed_event(timestamp=NOW + 300_000)).ok
    assert check(seed_event(timestamp=NOW - 90 * 86_400_000)).ok
    assert check(seed_event(value=250)).ok
    assert check(seed_event(timestamp=float(NOW))).event["timestamp"] == NOW
    # Per-unit range: 300 is plausible in kelvin, not in celsius.
    assert check(seed_event(unit="K", value=300)).ok


def test_every_failure_is_listed():
    result = check({"site_id": "bad id", "timestamp": 1_700_000_000, "sensor_type": "X",
                    "value": math.nan, "unit": 3})
    assert set(result.codes) == {"site_id.charset", "asset_id.missing", "sensor_id.missing",
                                 "timestamp.too_old", "sensor_type.unknown", "unit.type",
                                 "value.not_finite"}
    assert any("looks like seconds" in r for r in result.reasons)
    assert len(result.reasons) == len(result.codes)


def test_non_objects_are_rejected():
    for raw in (None, [], "text", 3, b"bytes"):
        assert check(raw).codes == ("event.type",)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=300),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                max_size=4),
    max_leaves=20)
field_values = st.one_of(
    json_values, st.sampled_from(["TEMPERATURE", "celsius", "site-001", "GOOD", "BAD"]),
    st.integers(NOW - 100 * 86_400_000, NOW + 10**6), st.floats(-1e6, 1e6))
event_like = st.fixed_dictionaries({}, optional={
    name: field_values for name in (*EVENT_FIELDS, "extra")})


@settings(max_examples=400, deadline=None)
@given(st.one_of(json_values, event_like))
def test_validator_never_raises_and_returns_event_or_reasons(raw):
    result = check(raw)
    assert isinstance(result, ValidationResult)
    if result.ok:
        assert result.reasons == () and tuple(result.event) == EVENT_FIELDS
        # Whatever validation accepts, Avro can encode.
        encode(result.event, 1, load_schema(TELEMETRY_EVENT))
        assert math.isfinite(result.event["value"])
        # A valid event validates again to itself (normalisation is idempotent).
        assert check(result.event).event == result.event
    else:
        assert result.reasons and len(result.reasons) == len(result.codes)
        assert all(isinstance(r, str) and len(r) < 400 for r in result.reasons)


def test_rules_file_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(RulesError, match="nope.json"):
        load_sensor_rules(missing)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"sensor_types": {"TEMPERATURE": {"min": "cold", "max": 1,
                                                                "units": {"c": []}}}}))
    with pytest.raises(RulesError, match=r"bad.json.*TEMPERATURE.min"):
        load_sensor_rules(bad)
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps({"sensor_types": {"SOIL": {"min": 0, "max": 1,
                                                             "units": {"x": []}}}}))
    with pytest.raises(RulesError, match="unknown.json.*SOIL"):
        load_sensor_rules(unknown)


def test_rules_file_settings_are_used(tmp_path):
    path = tmp_path / "rules.json"
    path.write_text(json.dumps({"max_future_seconds": 10, "retention_days": 1,
                                "sensor_types": {"TEMPERATURE": {"min": 0, "max": 80,
                                                                 "units": {"celsius": ["c"]}}}}))
    rules = load_sensor_rules(path)
    assert validate_event(seed_event(timestamp=NOW + 11_000), now_ms=NOW, rules=rules).codes \
        == ("timestamp.future",)
    assert validate_event(seed_event(value=90), now_ms=NOW, rules=rules).codes == \
        ("value.out_of_range",)
    assert validate_event(seed_event(sensor_type="POWER", unit="kw"), now_ms=NOW,
                          rules=rules).codes == ("sensor_type.unknown",)


plain_events = st.fixed_dictionaries({
    "event_id": st.sampled_from(["e-1", "", "e 1", "x" * 129]),
    "timestamp": st.integers(NOW - 91 * 86_400_000, NOW + 400_000),
    "site_id": st.sampled_from(["site-001", "s\u00e9"]),
    "asset_id": st.just("asset-001"), "sensor_id": st.just("t1"),
    "sensor_type": st.sampled_from(["TEMPERATURE", "temperature", "UNKNOWN", "POWER"]),
    "value": st.floats(-1e3, 1e3) | st.sampled_from([math.nan, math.inf, -math.inf]),
    "unit": st.sampled_from(["celsius", "C", "kw", "volt", " c"]),
}, optional={"quality_flag": st.sampled_from(["GOOD", "bad", None, "X"]),
             "source": st.sampled_from([None, "mqtt", "y" * 65])})


@settings(max_examples=400, deadline=None)
@given(plain_events)
def test_fast_path_agrees_with_the_full_rules(raw):
    from schemas.validation import _fast_path, _validate_full

    fast = _fast_path(raw, NOW, RULES)
    full = _validate_full(raw, NOW, RULES, True)
    if fast is not None:
        assert full.ok and full.event == fast
    if full.ok and raw["sensor_type"] == "TEMPERATURE" and raw["unit"] == "celsius" \
            and raw.get("quality_flag", "GOOD") in ("GOOD", "UNKNOWN"):
        assert fast is not None  # the common case really takes the fast path
