"""The one validation module shared by the Beam pipeline, the MQTT bridge and the REST ingest.

``validate_event(raw, now_ms=..., rules=...)`` takes any value (a decoded JSON
object, an Avro record, junk) and returns a :class:`ValidationResult`: either a
normalised event (a dict with exactly the fields of
``schemas/telemetry-event.avsc``, ready for Avro encoding) or every reason it
was rejected. It never raises.

Rules: required fields present and of the right type; optional ``source``
in the identifier charset; identifiers bounded
(128 chars) in the charset ``[A-Za-z0-9._:-]`` (starting alphanumeric);
sensor type known (``UNKNOWN`` is rejected); value a finite number in the
plausible range of its sensor type and unit; unit allowed for the sensor type
(case-insensitive, aliases mapped to the canonical name); timestamp integer
epoch milliseconds, at most ``max_future_ms`` ahead of ``now_ms`` and not
older than the retention. ``quality_flag`` defaults to UNKNOWN. A missing
``event_id`` is derived deterministically (see schemas.events) unless
``fill_event_id=False``. Unknown extra fields are ignored.

Rules are loaded from ``config/sensor_types.json`` by :func:`load_sensor_rules`.
Each reason is "<field>: <message>"; ``codes`` holds a parallel short code
("value.out_of_range") for metrics labels.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schemas.events import EVENT_FIELDS, QUALITY_FLAGS, SENSOR_TYPES, derive_event_id

__all__ = [
    "DEFAULT_RULES_FILE",
    "MAX_ID_LENGTH",
    "MAX_UNIT_LENGTH",
    "RulesError",
    "SensorTypeRule",
    "SensorRules",
    "ValidationResult",
    "load_sensor_rules",
    "default_sensor_rules",
    "validate_event",
]

_LOGGER = logging.getLogger(__name__)

DEFAULT_RULES_FILE = Path(__file__).resolve().parent.parent / "config" / "sensor_types.json"
MAX_ID_LENGTH = 128
MAX_UNIT_LENGTH = 32
MAX_SOURCE_LENGTH = 64
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:\-]*")
_ID_FIELDS = ("site_id", "asset_id", "sensor_id")
_MS_PER_DAY = 86_400_000
# Epoch ms below this (2001-09-09) are almost surely seconds: say so in the reason.
_SECONDS_HINT_BELOW = 1_000_000_000_000


class RulesError(ValueError):
    """The rules file is missing or malformed; the message names the file."""


@dataclass(frozen=True)
class SensorTypeRule:
    """Range and units of one sensor type. ``aliases`` maps every accepted
    lower-case spelling (canonical names included) to its canonical unit."""

    min_value: float
    max_value: float
    aliases: Mapping[str, str]
    unit_ranges: Mapping[str, tuple[float, float]] = field(default_factory=dict)

    def range_for(self, unit: str) -> tuple[float, float]:
        return self.unit_ranges.get(unit, (self.min_value, self.max_value))


@dataclass(frozen=True)
class SensorRules:
    """All validation rules. ``by_type`` has one entry per accepted sensor type."""

    by_type: Mapping[str, SensorTypeRule]
    max_future_ms: int = 5 * 60 * 1000
    retention_ms: int = 90 * _MS_PER_DAY


@dataclass(frozen=True)
class ValidationResult:
    """``event`` is the normalised event when valid, else None and ``reasons`` says why."""

    event: dict[str, Any] | None
    reasons: tuple[str, ...] = ()
    codes: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.event is not None


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RulesError(f"{where} must be a number, got {value!r}")
    return float(value)


def load_sensor_rules(path: str | Path | None = None) -> SensorRules:
    """Load the rules file (default ``config/sensor_types.json``); RulesError names the file."""
    p = Path(path) if path is not None else DEFAULT_RULES_FILE
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RulesError(f"cannot read sensor rules file {p}: {exc}") from exc
    try:
        types = doc["sensor_types"]
        if not isinstance(types, dict) or not types:
            raise RulesError("'sensor_types' must be a non-empty object")
        by_type: dict[str, SensorTypeRule] = {}
        for name, spec in types.items():
            if name not in SENSOR_TYPES or name == "UNKNOWN":
                raise RulesError(f"sensor type {name!r} is not a symbol of telemetry-event.avsc")
            aliases: dict[str, str] = {}
            for canonical, more in spec["units"].items():
                canon = canonical.strip().lower()
                for alias in (canon, *more):
                    aliases[alias.strip().lower()] = canon
            unit_ranges = {}
            for unit, bounds in spec.get("unit_ranges", {}).items():
                lo, hi = bounds
                where = f"{name}.unit_ranges.{unit}"
                unit_ranges[unit.strip().lower()] = (_number(lo, where), _number(hi, where))
            by_type[name] = SensorTypeRule(
                _number(spec["min"], f"{name}.min"), _number(spec["max"], f"{name}.max"),
                aliases, unit_ranges)
        return SensorRules(
            by_type=by_type,
            max_future_ms=int(_number(doc.get("max_future_seconds", 300), "max_future_seconds")
                              * 1000),
            retention_ms=int(_number(doc.get("retention_days", 90), "retention_days")
                             * _MS_PER_DAY),
        )
    except RulesError as exc:
        raise RulesError(f"invalid sensor rules file {p}: {exc}") from exc
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise RulesError(f"invalid sensor rules file {p}: {exc!r}") from exc


@functools.lru_cache(maxsize=1)
def default_sensor_rules() -> SensorRules:
    """Rules from the repository's ``config/sensor_types.json`` (cached)."""
    return load_sensor_rules(DEFAULT_RULES_FILE)


def _short(value: Any, limit: int = 40) -> str:
    try:
        text = repr(value)
    except Exception:  # a hostile __repr__ must not break validation
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_id(raw: Mapping[str, Any], name: str, out: dict[str, Any],
              reasons: list[str], codes: list[str]) -> None:
    value = raw.get(name)
    if value is None:
        reasons.append(f"{name}: required")
        codes.append(f"{name}.missing")
    elif not isinstance(value, str):
        reasons.append(f"{name}: must be a string, got {type(value).__name__}")
        codes.append(f"{name}.type")
    elif not value or len(value) > MAX_ID_LENGTH:
        reasons.append(f"{name}: length must be 1..{MAX_ID_LENGTH}, got {len(value)}")
        codes.append(f"{name}.length")
    elif _ID_RE.fullmatch(value) is None:
        reasons.append(f"{name}: only letters, digits and . _ : - allowed (starting with a "
                       f"letter or digit), got {_short(value)}")
        codes.append(f"{name}.charset")
    else:
        out[name] = value


def validate_event(
    raw: Any,
    *,
    now_ms: int,
    rules: SensorRules,
    fill_event_id: bool = True,
) -> ValidationResult:
    """Validate and normalise one event; never raises (see module docstring)."""
    try:
        return _validate(raw, now_ms, rules, fill_event_id)
    except Exception as exc:  # defensive: any bug here must become a reason, not a crash
        _LOGGER.exception("validator failed on input of type %s", type(raw).__name__)
        return ValidationResult(None, (f"event: internal validation error {exc!r}",),
                                ("event.internal_error",))


def _fast_path(raw: Any, now_ms: int, rules: SensorRules) -> dict[str, Any] | None:
    """The normalised event when ``raw`` is a plain, fully valid event, else None.

    Performance only: most events are valid and already normalised (they come
    from Avro), so a few exact-type checks settle them. Anything unusual returns
    None and goes through :func:`_validate`, the authority on reasons. Both
    paths accept exactly the same events (checked by a property test).
    """
    if type(raw) is not dict:
        return None
    get = raw.get
    ts, value, st, unit = get("timestamp"), get("value"), get("sensor_type"), get("unit")
    qf, source, event_id = get("quality_flag", "UNKNOWN"), get("source"), get("event_id")
    if (type(ts) is not int or type(value) is not float or type(st) is not str
            or type(unit) is not str or type(event_id) is not str):
        return None
    rule = rules.by_type.get(st)
    if rule is None or not now_ms - rules.retention_ms <= ts <= now_ms + rules.max_future_ms:
        return None
    canonical = rule.aliases.get(unit)
    if canonical is None or len(unit) > MAX_UNIT_LENGTH:
        return None
    lo, hi = rule.range_for(canonical)
    if not (lo <= value <= hi and math.isfinite(value)):
        return None
    if qf not in QUALITY_FLAGS or not (
            source is None or (type(source) is str and len(source) <= MAX_SOURCE_LENGTH
                               and _ID_RE.fullmatch(source) is not None)):
        return None
    site_id, asset_id, sensor_id = get("site_id"), get("asset_id"), get("sensor_id")
    for ident in (event_id, site_id, asset_id, sensor_id):
        if type(ident) is not str or len(ident) > MAX_ID_LENGTH or _ID_RE.fullmatch(ident) is None:
            return None
    return {"event_id": event_id, "timestamp": ts, "site_id": site_id, "asset_id": asset_id,
            "sensor_id": sensor_id, "sensor_type": st, "value": value, "unit": canonical,
            "quality_flag": qf, "source": source}


def _validate(raw: Any, now_ms: int, rules: SensorRules, fill_event_id: bool) -> ValidationResult:
    fast = _fast_path(raw, now_ms, rules)
    if fast is not None:
        return ValidationResult(fast)
    return _validate_full(raw, now_ms, rules, fill_event_id)


def _validate_full(raw: Any, now_ms: int, rules: SensorRules, fill_event_id: bool
                   ) -> ValidationResult:
    if not isinstance(raw, Mapping):
        return ValidationResult(None, (f"event: must be an object, got {type(raw).__name__}",),
                                ("event.type",))
    reasons: list[str] = []
    codes: list[str] = []
    out: dict[str, Any] = {}

    for name in _ID_FIELDS:
        _check_id(raw, name, out, reasons, codes)

    # timestamp: integer epoch ms (an integral float from JSON is accepted).
    ts = raw.get("timestamp")
    if ts is None:
        reasons.append("timestamp: required")
        codes.append("timestamp.missing")
    elif isinstance(ts, bool) or not isinstance(ts, int | float):
        reasons.append(f"timestamp: must be integer epoch milliseconds, got {type(ts).__name__}")
        codes.append("timestamp.type")
    elif isinstance(ts, float) and (not math.isfinite(ts) or not ts.is_integer()):
        reasons.append(f"timestamp: must be integer epoch milliseconds, got {_short(ts)}")
        codes.append("timestamp.type")
    else:
        ts = int(ts)
        if ts > now_ms + rules.max_future_ms:
            reasons.append(f"timestamp: {ts} is more than {rules.max_future_ms // 1000} s in the "
                           f"future (now {now_ms})")
            codes.append("timestamp.future")
        elif ts < now_ms - rules.retention_ms:
            hint = " (looks like seconds, expected milliseconds)" if 0 < ts < _SECONDS_HINT_BELOW \
                else ""
            reasons.append(f"timestamp: {ts} is older than the retention of "
                           f"{rules.retention_ms // _MS_PER_DAY} days{hint}")
            codes.append("timestamp.too_old")
        else:
            out["timestamp"] = ts

    # sensor_type: a known symbol (case-insensitive), not UNKNOWN.
    st = raw.get("sensor_type")
    type_rule: SensorTypeRule | None = None
    if st is None:
        reasons.append("sensor_type: required")
        codes.append("sensor_type.missing")
    elif not isinstance(st, str):
        reasons.append(f"sensor_type: must be a string, got {type(st).__name__}")
        codes.append("sensor_type.type")
    else:
        st_norm = st.strip().upper() if len(st) <= 64 else st
        type_rule = rules.by_type.get(st_norm)
        if type_rule is None:
            reasons.append(f"sensor_type: unknown sensor type {_short(st)}")
            codes.append("sensor_type.unknown")
        else:
            out["sensor_type"] = st_norm

    # unit: allowed for the sensor type, normalised to its canonical name.
    unit = raw.get("unit")
    canonical_unit: str | None = None
    if unit is None:
        reasons.append("unit: required")
        codes.append("unit.missing")
    elif not isinstance(unit, str):
        reasons.append(f"unit: must be a string, got {type(unit).__name__}")
        codes.append("unit.type")
    elif len(unit) > MAX_UNIT_LENGTH:
        reasons.append(f"unit: longer than {MAX_UNIT_LENGTH} characters")
        codes.append("unit.length")
    elif type_rule is not None:
        canonical_unit = type_rule.aliases.get(unit.strip().lower())
        if canonical_unit is None:
            allowed = ", ".join(sorted(set(type_rule.aliases.values())))
            reasons.append(f"unit: {_short(unit)} is not allowed for {out['sensor_type']} "
                           f"(allowed: {allowed})")
            codes.append("unit.not_allowed")
        else:
            out["unit"] = canonical_unit

    # value: a finite number within the plausible range.
    value = raw.get("value")
    if value is None:
        reasons.append("value: required")
        codes.append("value.missing")
    elif isinstance(value, bool) or not isinstance(value, int | float):
        reasons.append(f"value: must be a number, got {type(value).__name__}")
        codes.append("value.type")
    else:
        try:
            fvalue = float(value)
        except OverflowError:
            fvalue = math.inf
        if not math.isfinite(fvalue):
            reasons.append(f"value: must be finite, got {_short(value)}")
            codes.append("value.not_finite")
        elif type_rule is not None and canonical_unit is not None:
            lo, hi = type_rule.range_for(canonical_unit)
            if not lo <= fvalue <= hi:
                reasons.append(f"value: {fvalue:g} {canonical_unit} is outside the plausible "
                               f"range [{lo:g}, {hi:g}] for {out['sensor_type']}")
                codes.append("value.out_of_range")
            else:
                out["value"] = fvalue
        else:
            out["value"] = fvalue

    # quality_flag: optional, defaults to UNKNOWN.
    qf = raw.get("quality_flag")
    if qf is None:
        out["quality_flag"] = "UNKNOWN"
    elif not isinstance(qf, str) or (len(qf) > 16) or qf.strip().upper() not in QUALITY_FLAGS:
        reasons.append(f"quality_flag: must be one of {', '.join(QUALITY_FLAGS)}, got "
                       f"{_short(qf)}")
        codes.append("quality_flag.unknown")
    else:
        out["quality_flag"] = qf.strip().upper()

    # source: optional bounded string.
    source = raw.get("source")
    if source is None:
        out["source"] = None
    elif (not isinstance(source, str) or len(source) > MAX_SOURCE_LENGTH
          or _ID_RE.fullmatch(source) is None):
        # Same charset as the ids: a free string could hold lone surrogates that Avro
        # cannot encode, which would fail the producer after validation said yes.
        reasons.append(f"source: must be up to {MAX_SOURCE_LENGTH} letters, digits or . _ : -")
        codes.append("source.type")
    else:
        out["source"] = source

    # event_id: same charset as the other ids; derived when missing (HTTP clients may omit it).
    if raw.get("event_id") is None and fill_event_id:
        if not reasons:
            out["event_id"] = derive_event_id(
                out["site_id"], out["asset_id"], out["sensor_id"], out["timestamp"])
    else:
        _check_id(raw, "event_id", out, reasons, codes)

    if reasons:
        return ValidationResult(None, tuple(reasons), tuple(codes))
    return ValidationResult({name: out[name] for name in EVENT_FIELDS})
