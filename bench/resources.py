"""CPU seconds and peak RSS per stack component and benchmark phase (psutil, ~1 s samples).

Components are the stack's services found through ``.run/pids/<name>.pid``
(each with all its descendants: gunicorn workers, Beam SDK workers, ...),
plus ``loadgen`` (this process and its children, i.e. the harness, its load
generator workers and probes) and any extra named pids (the direct peer).
CPU of a process that exits between two samples is counted up to its last
sample only; the sampling interval bounds that error.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

__all__ = ["ResourceSampler", "PhaseUsage", "stack_pids"]

_LOGGER = logging.getLogger(__name__)


def stack_pids(pid_dir: Path) -> dict[str, int]:
    """``{service: pid}`` of the stack's pid files whose process is alive."""
    out: dict[str, int] = {}
    for path in sorted(pid_dir.glob("*.pid")):
        try:
            text = path.read_text().strip()
            # the supervisor writes {"pid", "create_time", "argv"}; a bare number also works
            info = json.loads(text) if text.startswith("{") else {"pid": int(text)}
            pid = int(info["pid"])
            proc = psutil.Process(pid)
            created = info.get("create_time")
            if created is not None and abs(proc.create_time() - float(created)) > 2:
                continue  # the pid was reused by another process
        except (OSError, ValueError, KeyError, psutil.Error):
            continue
        out[path.stem] = pid
    return out


@dataclass
class PhaseUsage:
    """Accumulated usage of one phase: cpu seconds and peak RSS (MB) per component."""

    name: str
    base_cpu: dict[int, float] = field(default_factory=dict)
    last_cpu: dict[int, float] = field(default_factory=dict)
    owner: dict[int, str] = field(default_factory=dict)
    rss_peak_mb: dict[str, float] = field(default_factory=dict)
    # (time, {component: RSS MB}) of every sample: the soak's RSS growth (bench/report.py)
    rss_series: list[tuple[float, dict[str, float]]] = field(default_factory=list)
    started: float = field(default_factory=time.time)
    ended: float | None = None

    def summary(self) -> dict[str, dict[str, float]]:
        cpu: dict[str, float] = {}
        for pid, last in self.last_cpu.items():
            comp = self.owner[pid]
            cpu[comp] = cpu.get(comp, 0.0) + max(0.0, last - self.base_cpu.get(pid, 0.0))
        comps = sorted(set(cpu) | set(self.rss_peak_mb))
        return {c: {"cpu_s": round(cpu.get(c, 0.0), 1),
                    "rss_mb_peak": round(self.rss_peak_mb.get(c, 0.0), 1)} for c in comps}


class ResourceSampler:
    """Background sampler; ``phase(name)`` starts a new phase, ``stop()`` ends the last."""

    def __init__(self, pid_dir: Path, interval_s: float = 1.0) -> None:
        self.pid_dir = pid_dir
        self.interval_s = interval_s
        self.extra: dict[str, int] = {}
        self.phases: list[PhaseUsage] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="resource-sampler", daemon=True)
        self._procs: dict[int, psutil.Process] = {}

    def start(self) -> None:
        self._thread.start()

    def add(self, name: str, pid: int) -> None:
        with self._lock:
            self.extra[name] = pid

    def remove(self, name: str) -> None:
        with self._lock:
            self.extra.pop(name, None)

    def phase(self, name: str) -> None:
        sample = self._sample()
        with self._lock:
            if self.phases and self.phases[-1].ended is None:
                self.phases[-1].ended = time.time()
            usage = PhaseUsage(name)
            for pid, (comp, cpu, _rss) in sample.items():
                usage.base_cpu[pid] = cpu
                usage.last_cpu[pid] = cpu
                usage.owner[pid] = comp
            self.phases.append(usage)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._record(self._sample())
        with self._lock:
            if self.phases and self.phases[-1].ended is None:
                self.phases[-1].ended = time.time()

    def by_phase(self) -> dict[str, dict[str, dict[str, float]]]:
        with self._lock:
            return {p.name: p.summary() for p in self.phases}

    def rss_series(self, phase: str) -> list[tuple[float, dict[str, float]]]:
        """``(time, {component: RSS MB})`` of every sample of ``phase`` (the last one of
        that name); empty if there is none."""
        with self._lock:
            for usage in reversed(self.phases):
                if usage.name == phase:
                    return [(t, dict(rss)) for t, rss in usage.rss_series]
        return []

    def totals(self) -> dict[str, dict[str, float]]:
        """cpu_s summed and rss_mb_peak maximised over phases, per component."""
        out: dict[str, dict[str, float]] = {}
        for summary in self.by_phase().values():
            for comp, usage in summary.items():
                cur = out.setdefault(comp, {"cpu_s": 0.0, "rss_mb_peak": 0.0})
                cur["cpu_s"] = round(cur["cpu_s"] + usage["cpu_s"], 1)
                cur["rss_mb_peak"] = max(cur["rss_mb_peak"], usage["rss_mb_peak"])
        return out

    # -- internals --------------------------------------------------------

    def _roots(self) -> dict[str, int]:
        roots = stack_pids(self.pid_dir)
        with self._lock:
            roots.update(self.extra)
        roots["loadgen"] = os.getpid()
        return roots

    def _proc(self, pid: int) -> psutil.Process:
        proc = self._procs.get(pid)
        if proc is None:
            proc = self._procs[pid] = psutil.Process(pid)
        return proc

    def _sample(self) -> dict[int, tuple[str, float, float]]:
        """``{pid: (component, cpu_s, rss_mb)}`` for every process of every component."""
        roots = self._roots()
        excluded = {pid for name, pid in roots.items() if name != "loadgen"}
        out: dict[int, tuple[str, float, float]] = {}
        for comp, root in roots.items():
            try:
                top = self._proc(root)
                procs = [top, *top.children(recursive=True)]
            except psutil.Error:
                continue
            for proc in procs:
                if proc.pid in out or (comp == "loadgen" and proc.pid in excluded):
                    continue
                try:
                    if comp == "loadgen" and proc.pid != root and any(
                            p.pid in excluded for p in proc.parents()):
                        continue  # the direct peer is a child of the harness: own component
                    with proc.oneshot():
                        t = proc.cpu_times()
                        out[proc.pid] = (comp, t.user + t.system, proc.memory_info().rss / 2**20)
                except psutil.Error:
                    continue
        return out

    def _record(self, sample: dict[int, tuple[str, float, float]]) -> None:
        with self._lock:
            if not self.phases:
                return
            usage = self.phases[-1]
            rss: dict[str, float] = {}
            for pid, (comp, cpu, mb) in sample.items():
                if pid not in usage.owner:
                    usage.owner[pid] = comp
                    usage.base_cpu.setdefault(pid, 0.0)  # born during the phase
                usage.last_cpu[pid] = cpu
                rss[comp] = rss.get(comp, 0.0) + mb
            for comp, mb in rss.items():
                usage.rss_peak_mb[comp] = max(usage.rss_peak_mb.get(comp, 0.0), mb)
            usage.rss_series.append((time.time(), rss))

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self._record(self._sample())
            except Exception:  # noqa: BLE001 - a sampling hiccup must not end the benchmark
                _LOGGER.exception("resource sample failed")
