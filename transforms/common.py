"""What every transform shares: the dead-letter tag, metric counters and the envelope.

An *envelope* carries a record through decode -> validate -> enrich together
with its original bytes and where it came from, so a reject at any of these
stages becomes a dead letter with the bytes as received:
``(record: dict, original: bytes | None, meta: dict)``, where ``meta`` holds the
keyword arguments of :func:`schemas.dead_letter.make_dead_letter` (source,
original_format, topic, partition, offset, key). ``original`` is None for an
event that arrived inside a batch record: its dead letter then carries the
event as JSON (made only when needed, not for every event).

Stages pass envelopes on as *lists* (one per Kafka record, see
transforms.decode): one element per record through the job, not per event.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

from apache_beam.metrics import Metrics

from schemas.dead_letter import make_dead_letter

__all__ = [
    "DEAD_LETTER_TAG",
    "METRICS_NAMESPACE",
    "Envelope",
    "counter",
    "make_envelope",
    "envelope_dead_letter",
    "wall_clock_ms",
]

_LOGGER = logging.getLogger(__name__)

DEAD_LETTER_TAG = "dead_letters"
METRICS_NAMESPACE = "dcmms.telemetry"

Envelope = tuple[dict[str, Any], bytes | None, dict[str, Any]]


def wall_clock_ms() -> int:
    """Now, in epoch milliseconds: the transforms' one wall clock (tests replace it)."""
    return int(time.time() * 1000)


@functools.cache
def counter(name: str) -> Any:
    """A Beam counter in the project namespace (cached: the names are a small fixed set)."""
    return Metrics.counter(METRICS_NAMESPACE, name)


def make_envelope(record: Mapping[str, Any], original: bytes = b"",
                  **meta: Any) -> Envelope:
    """An envelope for ``record``; ``meta`` defaults to source="pipeline"."""
    meta.setdefault("source", "pipeline")
    return dict(record), original, meta


def envelope_dead_letter(stage: str, reasons: Iterable[str], envelope: Envelope,
                         event_id: str | None = None) -> dict[str, Any]:
    """The dead letter of an envelope rejected at ``stage``."""
    record, original, meta = envelope
    if original is None:
        original = json.dumps(record, default=repr, sort_keys=True).encode("utf-8", "replace")
    return make_dead_letter(stage, reasons, original, event_id=event_id, **meta)
