"""Checking what the stack stored against what the senders were told was accepted.

Pure functions (:func:`compare`, :func:`alarm_verdict`, :func:`results_table`)
plus thin QuestDB readers (:class:`QuestDBReader`). An event counts as
*accepted* only once the sender got the acknowledgement (MQTT PUBACK, HTTP
202); events sent without an acknowledgement may or may not be stored, but
never twice.
"""

from __future__ import annotations

import csv
import io
import logging
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import requests

from io_connectors.questdb_http import as_dicts, questdb_exec

__all__ = [
    "AlarmVerdict",
    "QuestDBReader",
    "ScenarioResult",
    "Verdict",
    "alarm_verdict",
    "compare",
    "results_table",
]

_LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class Verdict:
    """Accepted events against stored rows (``stored`` counts rows per event id)."""

    accepted: int
    stored_ids: int
    lost: tuple[str, ...]
    duplicated: tuple[str, ...]   # ids with more than one row
    unacknowledged_stored: int    # sent, not acknowledged, stored anyway (allowed)

    @property
    def ok(self) -> bool:
        return not self.lost and not self.duplicated


def compare(accepted: Iterable[str], stored: Counter[str]) -> Verdict:
    """Every accepted id stored exactly once; no stored id more than once."""
    acc = set(accepted)
    lost = sorted(i for i in acc if stored.get(i, 0) == 0)
    dups = sorted(i for i, n in stored.items() if n > 1)
    extra = sum(1 for i in stored if i not in acc)
    return Verdict(len(acc), len(stored), tuple(lost), tuple(dups), extra)


@dataclass(frozen=True)
class AlarmVerdict:
    """Transitions of one alarm episode: expected one RAISED and one CLEARED row."""

    raised: int
    cleared: int

    @property
    def ok(self) -> bool:
        return self.raised == 1 and self.cleared == 1

    def describe(self) -> str:
        return f"{self.raised} raised / {self.cleared} cleared"


def alarm_verdict(rows: Sequence[dict[str, Any]]) -> AlarmVerdict:
    states = Counter(str(r.get("state")) for r in rows)
    return AlarmVerdict(states.get("RAISED", 0), states.get("CLEARED", 0))


@dataclass
class ScenarioResult:
    """One line of the results table."""

    name: str
    sent: int = 0
    accepted: int = 0
    stored: int = 0
    lost: int = 0
    duplicates: int = 0
    alarms: str = "-"
    alarms_ok: bool = True
    recovery_s: float | None = None
    http_5xx: int = 0          # 5xx other than 503 (503 + Retry-After is back-pressure)
    http_503: int = 0
    notes: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return (self.error is None and self.lost == 0 and self.duplicates == 0
                and self.alarms_ok and self.http_5xx == 0)


def results_table(results: Sequence[ScenarioResult]) -> str:
    """Markdown table (pasted into docs/reliability.md as is)."""
    head = ("| scenario | sent | accepted (acked) | stored | lost | duplicates in storage "
            "| alarm episode | recovery s | HTTP 503 | other 5xx | result |")
    lines = [head, "|" + "---|" * 11]
    for r in results:
        rec = f"{r.recovery_s:.1f}" if r.recovery_s is not None else "-"
        verdict = "ok" if r.ok else f"FAIL{': ' + r.error if r.error else ''}"
        lines.append(f"| {r.name} | {r.sent} | {r.accepted} | {r.stored} | {r.lost} | "
                     f"{r.duplicates} | {r.alarms} | {rec} | {r.http_503} | {r.http_5xx} | "
                     f"{verdict} |")
    return "\n".join(lines)


class QuestDBReader:
    """Reads a run's rows from QuestDB's HTTP API (``/exec`` and ``/exp``)."""

    def __init__(self, base_url: str, timeout_s: float = 60.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s

    def query(self, sql: str) -> list[dict[str, Any]]:
        return as_dicts(questdb_exec(self.base_url, sql, timeout_s=self.timeout_s))

    def event_counts(self, prefix: str, since_ms: int) -> Counter[str]:
        """Rows per event id for ids starting with ``prefix`` (timestamps >= since_ms)."""
        sql = (f"SELECT event_id FROM sensor_readings WHERE timestamp >= {since_ms * 1000} "
               f"AND event_id LIKE '{_like(prefix)}%'")
        resp = requests.get(f"{self.base_url}/exp", params={"query": sql},
                            timeout=self.timeout_s)
        if resp.status_code != 200:
            raise RuntimeError(f"QuestDB export failed ({resp.status_code}): {resp.text[:300]}")
        reader = csv.reader(io.StringIO(resp.text))
        next(reader, None)  # header
        return Counter(row[0] for row in reader if row)

    def count(self, prefix: str, since_ms: int) -> int:
        rows = self.query(f"SELECT count() n FROM sensor_readings WHERE timestamp >= "
                          f"{since_ms * 1000} AND event_id LIKE '{_like(prefix)}%'")
        return int(rows[0]["n"]) if rows else 0

    def alarm_rows(self, sensor_id: str, since_ms: int) -> list[dict[str, Any]]:
        return self.query(f"SELECT alarm_id, state, severity, timestamp FROM alarms WHERE "
                          f"timestamp >= {since_ms * 1000} AND sensor_id = '{_quote(sensor_id)}'")

    def query_safe(self, sensor_id: str, since_ms: int) -> list[dict[str, Any]]:
        """:meth:`alarm_rows`, or [] while QuestDB does not answer."""
        try:
            return self.alarm_rows(sensor_id, since_ms)
        except (requests.RequestException, RuntimeError, ValueError):
            return []

    def wait_drained(self, prefix: str, since_ms: int, expected_at_least: int,
                     timeout_s: float, settle_s: float = 6.0) -> int:
        """Poll until the count reaches ``expected_at_least`` and stops growing for ``settle_s``.

        ``timeout_s`` bounds the time *without progress*: a pipeline that is still
        catching up on a backlog (a slow machine) is waited for, a stuck one is not.
        """
        last, stable_since = -1, time.monotonic()
        while True:
            try:
                n = self.count(prefix, since_ms)
            except (requests.RequestException, RuntimeError) as exc:
                _LOGGER.info("drain: QuestDB not answering yet (%s)", exc)
                n = last
            now = time.monotonic()
            if n != last:
                last, stable_since = n, now
            if n >= expected_at_least and now - stable_since >= settle_s:
                return n
            if now - stable_since > timeout_s:
                return n
            time.sleep(2.0)


def _quote(text: str) -> str:
    return text.replace("'", "''")


def _like(prefix: str) -> str:
    # Chaos ids are [a-z0-9-] (no LIKE wildcards); quote so no character breaks the SQL.
    if "%" in prefix or "_" in prefix:
        raise ValueError(f"event id prefix {prefix!r} must not contain % or _")
    return _quote(prefix)
