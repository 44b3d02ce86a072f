"""What the stack supervisor needs to know about one service.

Each service module (kafka.py, questdb.py, flink.py, ...) exposes a function
``services(settings, paths) -> list[ServiceSpec]``; the supervisor starts them
in list order, waits for ``healthy`` and runs ``after_start`` (topic creation,
DDL, job submission) before moving on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ServiceSpec", "StackPaths"]


@dataclass(frozen=True)
class StackPaths:
    """Where a stack keeps its state; everything lives under one run directory."""

    run_dir: Path
    jar_cache: Path

    def data(self, service: str) -> Path:
        return self.run_dir / "data" / service

    def log(self, service: str) -> Path:
        return self.run_dir / "logs" / f"{service}.log"

    def pidfile(self, service: str) -> Path:
        return self.run_dir / "pids" / f"{service}.pid"

    def conf(self, service: str) -> Path:
        return self.run_dir / "conf" / service

    def kill_note(self, service: str) -> Path:
        """Written by ``dcmms-telemetry kill``: which signal it sent, so a restart can say why."""
        return self.run_dir / "pids" / f"{service}.killed"

    @property
    def lock(self) -> Path:
        """Held while one command (or the watcher) starts or stops services of this stack."""
        return self.run_dir / "supervisor.lock"

    @property
    def restart_state(self) -> Path:
        """The watcher's restart counts and last exits (runners.stack.restarts)."""
        return self.run_dir / "restarts.json"

    def jars(self, component: str) -> Path:
        return self.jar_cache / component


@dataclass(frozen=True)
class ServiceSpec:
    """One supervised process.

    ``argv`` is the command line; ``ports`` are checked free before start (a
    taken port is reported with the service name); ``healthy`` returns True
    once the service answers; ``prepare`` runs before the first start (write
    configs, format storage) and must be idempotent; ``after_start`` runs once
    the service is healthy (create topics, tables) and must be idempotent too.
    """

    name: str
    argv: Sequence[str]
    ports: Sequence[int] = ()
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    healthy: Callable[[], bool] = lambda: True
    start_timeout_s: float = 90.0
    # Grace period between SIGTERM and SIGKILL on stop.
    stop_timeout_s: float = 20.0
    prepare: Callable[[], None] | None = None
    after_start: Callable[[], None] | None = None
    # Tools that must be on PATH (or absolute paths) for argv to work, with a hint.
    requires: dict[str, str] = field(default_factory=dict)
