"""Read the telemetry job's state, checkpoints and Beam counters from Flink's REST API.

The job server's mini cluster serves Flink's REST API on ``[flink] web_ui_port``
(``http://host:port``). What the console, ``dcmms-telemetry status`` and the
pipeline metrics on ``/metrics`` need:

* :meth:`FlinkRest.job_summary` — the newest job of a name (``dcmms-telemetry``):
  state, start time, uptime, last completed checkpoint (id, when, its age) and
  checkpoint counts;
* :meth:`FlinkRest.beam_counters` — every Beam user counter of the job, summed
  over vertices and subtasks, under a readable name.

The Flink runner reports a Beam counter ``<namespace>:<name>`` as a Flink
operator metric ``<fused stage name, truncated>.<namespace>_<name>`` with every
dot turned into ``_`` (``...WriteDea.dcmms_telemetry_invalid_value_range``);
:func:`readable_counter` undoes what can be undone (the fused stage prefix and
the namespace) and is pure. A counter appears only once it has been incremented.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import requests

__all__ = [
    "COUNTER_NAMESPACES",
    "FlinkRest",
    "FlinkUnavailable",
    "JobSummary",
    "readable_counter",
    "sum_counters",
]

_LOGGER = logging.getLogger(__name__)

# Metric-name prefixes of the project's Beam namespaces (dots already turned into "_"),
# and the prefix of the readable name each gets. The telemetry namespace is the default,
# so its counters keep their own names (read, valid, dead_letters, ...).
COUNTER_NAMESPACES: tuple[tuple[str, str], ...] = (
    ("dcmms_telemetry_", ""),
    ("dcmms_kafka_sink_", "kafka_sink_"),
    ("dcmms_questdb_sink_", "questdb_sink_"),
    ("kafka_source_", "kafka_source_"),
)


class FlinkUnavailable(RuntimeError):
    """Flink's REST API did not answer; the message names the URL and the setting."""


@dataclass(frozen=True)
class JobSummary:
    """The state of one Flink job, as the console and ``status`` show it."""

    jid: str
    name: str
    state: str
    start_time_ms: int
    duration_ms: int
    last_checkpoint_id: int | None = None
    # When the last completed checkpoint was acknowledged by every task, epoch ms.
    last_checkpoint_ms: int | None = None
    checkpoints_completed: int = 0
    checkpoints_failed: int = 0
    vertices: tuple[dict[str, Any], ...] = field(default_factory=tuple)

    def checkpoint_age_s(self, now_ms: int | None = None) -> float | None:
        if self.last_checkpoint_ms is None:
            return None
        now = int(time.time() * 1000) if now_ms is None else now_ms
        return max(0.0, (now - self.last_checkpoint_ms) / 1000.0)

    def as_dict(self, now_ms: int | None = None) -> dict[str, Any]:
        return {
            "jid": self.jid, "name": self.name, "state": self.state,
            "start_time": self.start_time_ms, "uptime_s": self.duration_ms / 1000.0,
            "last_checkpoint_id": self.last_checkpoint_id,
            "last_checkpoint_at": self.last_checkpoint_ms,
            "checkpoint_age_s": self.checkpoint_age_s(now_ms),
            "checkpoints_completed": self.checkpoints_completed,
            "checkpoints_failed": self.checkpoints_failed,
            "vertices": list(self.vertices),
        }


def readable_counter(metric_id: str) -> str | None:
    """``"[8]{Read...}.dcmms_telemetry_invalid_value_range"`` -> ``"invalid_value_range"``.

    None for a metric that is not one of the project's Beam counters (Flink's own
    ``numRecordsIn`` and the like).
    """
    tail = metric_id.rpartition(".")[2] if "." in metric_id else metric_id
    for prefix, readable in COUNTER_NAMESPACES:
        if tail.startswith(prefix) and len(tail) > len(prefix):
            return readable + tail[len(prefix):]
    return None


def sum_counters(samples: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """Sum Flink's ``[{"id": name, "sum": v}, ...]`` answers by readable counter name."""
    totals: dict[str, float] = {}
    for item in samples:
        name = readable_counter(str(item.get("id", "")))
        if name is None:
            continue
        try:
            value = float(item.get("sum", 0.0))
        except (TypeError, ValueError):
            continue
        totals[name] = totals.get(name, 0.0) + value
    return totals


class FlinkRest:
    """A small client of Flink's REST API at ``rest_url`` (``http://host:web_ui_port``)."""

    def __init__(self, rest_url: str, timeout_s: float = 3.0,
                 setting: str = "[flink] web_ui_port") -> None:
        if not rest_url.startswith(("http://", "https://")):
            raise ValueError(f"Flink REST url {rest_url!r} must start with http:// ({setting})")
        self.rest_url = rest_url.rstrip("/")
        self.timeout_s = timeout_s
        self._setting = setting
        self._session = requests.Session()

    def _get(self, path: str, **params: Any) -> Any:
        url = f"{self.rest_url}{path}"
        try:
            resp = self._session.get(url, params=params or None, timeout=self.timeout_s)
        except requests.RequestException as exc:
            raise FlinkUnavailable(f"Flink REST API at {self.rest_url} did not answer "
                                   f"({type(exc).__name__}); is the pipeline running? "
                                   f"(setting {self._setting})") from None
        if resp.status_code != 200:
            raise FlinkUnavailable(f"Flink REST API answered {resp.status_code} for {path}")
        return resp.json()

    def jobs(self) -> list[dict[str, Any]]:
        return list(self._get("/jobs/overview").get("jobs", []))

    def job_summary(self, name: str) -> JobSummary | None:
        """The newest job called ``name`` (None: no such job on this cluster)."""
        jobs = [j for j in self.jobs() if j.get("name") == name]
        if not jobs:
            return None
        job = max(jobs, key=lambda j: int(j.get("start-time", 0)))
        jid = str(job["jid"])
        detail = self._get(f"/jobs/{jid}")
        vertices = tuple({"id": v.get("id"), "name": str(v.get("name", ""))[:200],
                          "status": v.get("status"), "parallelism": v.get("parallelism")}
                         for v in detail.get("vertices", []))
        last_id = last_ms = None
        completed = failed = 0
        try:
            cps = self._get(f"/jobs/{jid}/checkpoints")
        except FlinkUnavailable:
            cps = {}
        counts = cps.get("counts") or {}
        completed = int(counts.get("completed", 0) or 0)
        failed = int(counts.get("failed", 0) or 0)
        latest = (cps.get("latest") or {}).get("completed")
        if latest:
            last_id = int(latest.get("id"))
            last_ms = int(latest.get("latest_ack_timestamp") or latest.get("trigger_timestamp"))
        return JobSummary(jid=jid, name=name, state=str(job.get("state")),
                          start_time_ms=int(job.get("start-time", 0)),
                          duration_ms=int(job.get("duration", 0)),
                          last_checkpoint_id=last_id, last_checkpoint_ms=last_ms,
                          checkpoints_completed=completed, checkpoints_failed=failed,
                          vertices=vertices)

    def beam_counters(self, jid: str) -> dict[str, float]:
        """Every project Beam counter of job ``jid``, summed over vertices and subtasks."""
        totals: dict[str, float] = {}
        for vertex in self._get(f"/jobs/{jid}").get("vertices", []):
            base = f"/jobs/{jid}/vertices/{vertex['id']}/subtasks/metrics"
            names = [m["id"] for m in self._get(base) if readable_counter(m.get("id", ""))]
            if not names:
                continue
            # Flink's query string takes comma-separated names; stay below URL limits.
            for start in range(0, len(names), 40):
                chunk = names[start:start + 40]
                for name, value in sum_counters(
                        self._get(base, get=",".join(chunk), agg="sum")).items():
                    totals[name] = totals.get(name, 0.0) + value
        return totals
