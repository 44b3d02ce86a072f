"""Validate decoded event envelopes with the shared rules of schemas.validation.

Works on lists of envelopes (one per Kafka record, see transforms.decode):
the valid ones leave as one list with the normalised events; invalid ones
become dead letters (stage ``validate``) listing every reason. Counters: ``valid``,
``invalid`` and ``invalid.<code>`` for each failed rule (e.g.
``invalid.value.out_of_range``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import apache_beam as beam

from schemas.validation import SensorRules, validate_event
from transforms.common import (
    DEAD_LETTER_TAG,
    Envelope,
    Rejected,
    counter,
    wall_clock_ms,
)

__all__ = ["ValidateReadings", "validate_envelope", "wall_clock_ms"]

_LOGGER = logging.getLogger(__name__)


def validate_envelope(envelope: Envelope, *, now_ms: int, rules: SensorRules
                      ) -> Envelope | Rejected:
    """Pure: the envelope with the normalised event, or a :class:`Rejected` (stage
    ``validate``, a code per failed rule, every reason, the envelope as received)."""
    record, original, meta = envelope
    # Records decoded from Avro always carry an event_id: never invent one here.
    result = validate_event(record, now_ms=now_ms, rules=rules, fill_event_id=False)
    if result.event is not None:
        return result.event, original, meta
    event_id = record.get("event_id") if isinstance(record, dict) else None
    return Rejected("validate", result.codes, result.reasons,
                    event_id if isinstance(event_id, str) else None, envelope)


class _ValidateFn(beam.DoFn):
    def __init__(self, rules: SensorRules, clock: Callable[[], int]) -> None:
        self._rules = rules
        self._clock = clock

    def process(self, envelopes: list[Envelope]):  # type: ignore[override]
        now_ms = self._clock()
        kept: list[Envelope] = []
        for envelope in envelopes:
            out = validate_envelope(envelope, now_ms=now_ms, rules=self._rules)
            if not isinstance(out, Rejected):
                kept.append(out)
                continue
            counter("invalid").inc()
            counter("dead_letters").inc()
            for code in out.codes:
                counter(f"invalid.{code}").inc()
            yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, out.dead_letter())
        if kept:
            counter("valid").inc(len(kept))
            yield kept


class ValidateReadings(beam.PTransform):
    """Lists of envelopes -> lists of valid envelopes (main) and dead letters (``dead_letters``).

    ``clock`` returns "now" in epoch ms for the timestamp rules (tests pin it).
    """

    def __init__(self, rules: SensorRules, *, clock: Callable[[], int] = wall_clock_ms) -> None:
        super().__init__()
        if not isinstance(rules, SensorRules):
            raise TypeError("rules must be a schemas.validation.SensorRules "
                            "(see load_sensor_rules)")
        self._rules = rules
        self._clock = clock

    def expand(self, pcoll):
        return pcoll | "Validate" >> beam.ParDo(
            _ValidateFn(self._rules, self._clock)).with_outputs(DEAD_LETTER_TAG, main="valid")
