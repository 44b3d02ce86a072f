"""The alarm stage's counters come from the transitions' kind, not from their reason text."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

import transforms.alarms as alarms
from schemas.assets import Thresholds
from transforms.alarms import observe_batch, sensor_key

BANDS = Thresholds(warning_high=80.0, critical_high=95.0)


def _item(ts: int, value: float, quality: str = "GOOD") -> tuple[str, int, Any]:
    row = {"event_id": f"e{ts}", "timestamp": ts, "site_id": "s", "asset_id": "a",
           "sensor_id": "t", "sensor_type": "TEMPERATURE", "value": value,
           "quality_flag": quality, "ingested_at": ts}
    return sensor_key(row), ts, (row, BANDS)


class _Counters:
    """Stands in for transforms.common.counter: counts increments by name."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def __call__(self, name: str) -> Any:
        counts = self.counts

        class _Counter:
            def inc(self, n: int = 1) -> None:
                counts[name] += n

        return _Counter()


# One episode: raised (warning), escalated (critical), cleared; a second episode raised.
TRACE = [(1, 85.0), (2, 97.0), (3, 20.0), (4, 90.0)]
EXPECTED = {"alarms_raised": 2, "alarms_escalated": 1, "alarms_cleared": 1}


@pytest.fixture()
def counters(monkeypatch: pytest.MonkeyPatch) -> _Counters:
    found = _Counters()
    monkeypatch.setattr(alarms, "counter", found)
    return found


def _run() -> list[dict[str, Any]]:
    stored: dict[str, Any] = {}
    out: list[dict[str, Any]] = []
    for ts, value in TRACE:
        out += observe_batch(stored, [_item(ts, value)], now_ms=None)[1]
    return out


def test_raise_escalate_clear_are_counted(counters: _Counters) -> None:
    transitions = _run()
    assert [(t["state"], t["severity"]) for t in transitions] == [
        ("RAISED", "WARNING"), ("RAISED", "CRITICAL"), ("CLEARED", "CRITICAL"),
        ("RAISED", "WARNING")]
    assert {k: v for k, v in counters.counts.items() if k.startswith("alarms_")} == EXPECTED


def test_counters_do_not_depend_on_the_reason_wording(counters: _Counters,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The reason is text for people: rewording it (here a first raise whose reason starts
    like an escalation's) must not move a transition from one counter to another."""
    prefix = "escalated by the rule: "
    classify = alarms.classify

    def reworded(value: float, quality: str, t: Thresholds | None):
        severity, threshold, reason = classify(value, quality, t)
        return severity, threshold, prefix + reason

    monkeypatch.setattr(alarms, "classify", reworded)
    transitions = _run()
    assert transitions[0]["reason"].startswith(prefix)   # premise: the wording changed
    assert {k: v for k, v in counters.counts.items() if k.startswith("alarms_")} == EXPECTED
