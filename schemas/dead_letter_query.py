"""Filter, group and summarise dead letters for people: pure functions, no IO.

Reasons are sentences with values in them ("unknown asset 'asset-999'"); to count
them by kind, :func:`reason_class` blanks quoted values and numbers
("unknown asset '…'"), which keeps the classes few and the text readable.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from schemas.dead_letter import SOURCES, STAGES

__all__ = ["DeadLetterFilter", "filter_dead_letters", "parse_record_id", "reason_class",
           "summarize"]

_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
_NUMBER = re.compile(r"(?<![A-Za-z_])-?\d+(?:\.\d+)?(?:e[-+]?\d+)?")
_SPACES = re.compile(r"\s+")
MAX_REASON_CLASS = 160


def reason_class(reason: str) -> str:
    """``"value 950.0 above max 200 for 'temp-001'"`` -> ``"value N above max N for '…'"``."""
    text = _QUOTED.sub("'…'", str(reason))
    text = _NUMBER.sub("N", text)
    text = _SPACES.sub(" ", text).strip()
    return text[:MAX_REASON_CLASS]


def parse_record_id(text: Any) -> tuple[int, int]:
    """``"3:1045"`` -> ``(3, 1045)``; ValueError with a readable message otherwise."""
    if not isinstance(text, str):
        raise ValueError(f"a dead-letter id must be a string '<partition>:<offset>', "
                         f"got {type(text).__name__}")
    part, sep, off = text.partition(":")
    if not sep or not part.isdigit() or not off.isdigit() or len(text) > 40:
        raise ValueError(f"dead-letter id {text[:60]!r} is not '<partition>:<offset>'")
    return int(part), int(off)


@dataclass(frozen=True)
class DeadLetterFilter:
    """Which dead letters to show or replay; None means any."""

    stage: str | None = None
    source: str | None = None
    reason: str | None = None          # a reason class (exact) or a substring of a reason
    event_id: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None

    def __post_init__(self) -> None:
        if self.stage is not None and self.stage not in STAGES:
            raise ValueError(f"stage {self.stage!r} is not one of {', '.join(STAGES)}")
        if self.source is not None and self.source not in SOURCES:
            raise ValueError(f"source {self.source!r} is not one of {', '.join(SOURCES)}")

    @property
    def empty(self) -> bool:
        return all(v is None for v in (self.stage, self.source, self.reason, self.event_id,
                                       self.since_ms, self.until_ms))

    def matches(self, item: Mapping[str, Any]) -> bool:
        if self.stage is not None and item.get("stage") != self.stage:
            return False
        if self.source is not None and item.get("source") != self.source:
            return False
        if self.event_id is not None and item.get("event_id") != self.event_id:
            return False
        failed_at = item.get("failed_at")
        if self.since_ms is not None and (failed_at is None or failed_at < self.since_ms):
            return False
        if self.until_ms is not None and (failed_at is None or failed_at >= self.until_ms):
            return False
        if self.reason is not None:
            reasons = [str(r) for r in item.get("reasons") or ()]
            if not any(self.reason == reason_class(r) or self.reason in r for r in reasons):
                return False
        return True


def filter_dead_letters(items: Iterable[Mapping[str, Any]], flt: DeadLetterFilter
                        ) -> list[Mapping[str, Any]]:
    return [item for item in items if flt.matches(item)]


def summarize(items: Sequence[Mapping[str, Any]], bucket_ms: int = 60_000
              ) -> dict[str, Any]:
    """Counts by stage, by (stage, reason class) and per ``bucket_ms`` of ``failed_at``."""
    by_stage: Counter[str] = Counter()
    by_reason: Counter[tuple[str, str]] = Counter()
    per_bucket: Counter[int] = Counter()
    for item in items:
        stage = str(item.get("stage"))
        by_stage[stage] += 1
        reasons = item.get("reasons") or ["no reason given"]
        by_reason[(stage, reason_class(str(reasons[0])))] += 1
        failed_at = item.get("failed_at")
        if isinstance(failed_at, int):
            per_bucket[failed_at - failed_at % bucket_ms] += 1
    return {
        "total": len(items),
        "by_stage": dict(sorted(by_stage.items())),
        "by_reason": [{"stage": s, "reason": r, "count": n}
                      for (s, r), n in by_reason.most_common()],
        "per_minute": [{"at": at, "count": n} for at, n in sorted(per_bucket.items())],
    }
