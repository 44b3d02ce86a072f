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

The pure cores of decode, validate and enrich return their result on success
and a :class:`Rejected` on failure (callers test ``isinstance(out, Rejected)``):
the stage, the reason codes (counter suffixes), the reasons (the dead letter's
``reasons``) and what the dead letter needs besides the envelope.
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
    "Rejected",
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


class Rejected:
    """A stage's refusal of one element, returned by its pure core instead of the result.

    ``stage``: the dead letter's stage (decode, validate, enrich); ``codes``: reason codes,
    the suffixes of the stage's failure counters (``decode_failed.<code>``,
    ``invalid.<code>``, ``enrich_failed.<code>``), ``code`` the first; ``reasons``: the
    messages, the dead letter's ``reasons``; ``event_id``: the dead letter's event_id (None
    when unknown); ``envelope``: what was rejected, when the stage function had it
    (decode: ``(None, record value, meta)``, validate: the envelope; enrich works on the
    event alone, its caller passes the envelope to :meth:`dead_letter`).

    Immutable and slotted; made only on the failure path.
    """

    __slots__ = ("stage", "codes", "reasons", "event_id", "envelope")

    stage: str
    codes: tuple[str, ...]
    reasons: tuple[str, ...]
    event_id: str | None
    envelope: Envelope | None

    def __init__(self, stage: str, codes: Iterable[str], reasons: Iterable[str],
                 event_id: str | None = None, envelope: Envelope | None = None) -> None:
        init = object.__setattr__
        init(self, "stage", stage)
        init(self, "codes", tuple(codes))
        init(self, "reasons", tuple(reasons))
        init(self, "event_id", event_id)
        init(self, "envelope", envelope)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"Rejected is immutable (tried to set {name!r})")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"Rejected is immutable (tried to delete {name!r})")

    def __reduce__(self) -> tuple[Any, ...]:
        return (Rejected, (self.stage, self.codes, self.reasons, self.event_id, self.envelope))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Rejected):
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in self.__slots__)

    __hash__ = None  # type: ignore[assignment]  # the envelope holds dicts

    def __repr__(self) -> str:
        return (f"Rejected(stage={self.stage!r}, codes={self.codes!r}, "
                f"reasons={self.reasons!r}, event_id={self.event_id!r})")

    @property
    def code(self) -> str:
        """The first reason code ("" if none)."""
        return self.codes[0] if self.codes else ""

    def dead_letter(self, envelope: Envelope | None = None) -> dict[str, Any]:
        """The dead-letter record (schemas/dead-letter.avsc) of this rejection; ``envelope``
        is the rejected envelope when the stage function did not keep it (enrich)."""
        rejected = envelope if envelope is not None else self.envelope
        if rejected is None:
            raise ValueError(f"a {self.stage} rejection without its envelope: pass the "
                             "envelope to Rejected.dead_letter()")
        return envelope_dead_letter(self.stage, self.reasons, rejected, self.event_id)


def envelope_dead_letter(stage: str, reasons: Iterable[str], envelope: Envelope,
                         event_id: str | None = None) -> dict[str, Any]:
    """The dead letter of an envelope rejected at ``stage``."""
    record, original, meta = envelope
    if original is None:
        original = json.dumps(record, default=repr, sort_keys=True).encode("utf-8", "replace")
    return make_dead_letter(stage, reasons, original, event_id=event_id, **meta)
