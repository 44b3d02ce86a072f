"""Restart bookkeeping for the watcher: exponential back-off, restart counts, last exits.

Pure code: no processes, files or clocks. Every method takes ``now`` (seconds,
``time.time()`` in the watcher, anything in tests), so the back-off schedule is
tested without sleeping. :mod:`runners.stack.watcher` feeds what it observes
(process alive, process gone, restart done or failed) into one
:class:`RestartTracker` per service and asks :meth:`RestartTracker.due` when to
act; ``dcmms-telemetry status`` shows the trackers through the watcher's state
file (:func:`state_to_json` / :func:`state_from_json`).

The schedule: the first restart after a crash comes ``initial_s`` after the
crash was seen; each further crash or failed start in a row doubles the wait,
up to ``max_s``. A process that ran for ``reset_after_s`` before it died
counts as a fresh first crash again.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields

__all__ = [
    "BackoffPolicy",
    "RestartTracker",
    "describe_exit",
    "state_from_json",
    "state_to_json",
]


@dataclass(frozen=True)
class BackoffPolicy:
    """How long to wait before restarting a service that crashed ``failures`` times in a row."""

    initial_s: float = 1.0
    max_s: float = 60.0
    # A process that stayed up this long before dying resets the back-off.
    reset_after_s: float = 60.0

    def __post_init__(self) -> None:
        if not 0 < self.initial_s <= self.max_s:
            raise ValueError(f"need 0 < initial_s <= max_s, got {self.initial_s}, {self.max_s}")
        if self.reset_after_s < 0:
            raise ValueError(f"reset_after_s must be >= 0, got {self.reset_after_s}")

    def delay(self, failures: int) -> float:
        """Wait before the next start after ``failures`` (>= 1) failures in a row."""
        if failures < 1:
            raise ValueError(f"failures must be >= 1, got {failures}")
        # Capped exponent: 2 ** 1000 would overflow a float long before anyone waits that long.
        return min(self.max_s, self.initial_s * 2 ** min(failures - 1, 64))


@dataclass
class RestartTracker:
    """What the watcher knows about one service.

    ``restarts`` counts the starts the watcher made (a failed start counts too,
    like a container's restart count); ``failures`` the crashes and failed
    starts since the service last ran long enough; ``next_start_at`` is set
    while the service is down and meant to run.
    """

    restarts: int = 0
    failures: int = 0
    last_exit: str | None = None
    last_exit_at: float | None = None
    next_start_at: float | None = None
    # The process last seen alive and its start time.
    pid: int | None = None
    started_at: float | None = None
    # Set while an earlier service in start order must come back first.
    waiting_for: str | None = None

    # -- observations -----------------------------------------------------------------------------

    def seen_running(self, pid: int, started_at: float) -> None:
        """The service's process ``pid`` (started at ``started_at``) is alive."""
        self.pid, self.started_at = pid, started_at
        self.next_start_at = None
        self.waiting_for = None

    def seen_down(self, reason: str, now: float, policy: BackoffPolicy) -> None:
        """The service's process is gone at ``now``; schedule a restart (once per crash)."""
        if self.next_start_at is not None:
            return  # already scheduled: this is the same crash seen again
        # Seen a moment after the death (one look later): close enough for a minute's rule.
        if self.started_at is not None and now - self.started_at >= policy.reset_after_s:
            self.failures = 0
        self._failed(reason, now, policy)

    def stopped_on_purpose(self) -> None:
        """The service was stopped deliberately (its pid file is gone): nothing to restart."""
        self.next_start_at = None
        self.waiting_for = None
        self.pid = self.started_at = None

    # -- restarts ---------------------------------------------------------------------------------

    def due(self, now: float) -> bool:
        """True when the service is down and its back-off has passed."""
        return self.next_start_at is not None and now >= self.next_start_at

    def wait_for(self, service: str) -> None:
        """Due, but ``service`` (earlier in start order) must be up first."""
        self.waiting_for = service

    def restart_began(self) -> None:
        self.restarts += 1
        self.waiting_for = None

    def restart_failed(self, reason: str, now: float, policy: BackoffPolicy) -> None:
        """The start did not reach healthy: wait twice as long before the next one."""
        self.pid = self.started_at = None
        self._failed(f"restart failed: {reason}", now, policy)

    # -- internals --------------------------------------------------------------------------------

    def _failed(self, reason: str, now: float, policy: BackoffPolicy) -> None:
        self.failures += 1
        self.last_exit, self.last_exit_at = reason, now
        self.next_start_at = now + policy.delay(self.failures)
        self.pid = self.started_at = None


def describe_exit(returncode: int | None) -> str:
    """``Popen.returncode`` in words: ``exit status 3``, ``killed by SIGKILL``."""
    if returncode is None:
        return "exited (status unknown)"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit status {returncode}"


def state_to_json(trackers: Mapping[str, RestartTracker], watcher_pid: int) -> str:
    """The watcher's state file: every tracker by service name (changes only on events)."""
    return json.dumps({"watcher_pid": watcher_pid,
                       "services": {name: asdict(t) for name, t in trackers.items()}},
                      indent=1, sort_keys=True)


def state_from_json(text: str) -> dict[str, RestartTracker]:
    """Trackers from a state file; unknown keys (a newer writer) are ignored."""
    known = {f.name for f in fields(RestartTracker)}
    services = json.loads(text).get("services", {})
    return {name: RestartTracker(**{k: v for k, v in values.items() if k in known})
            for name, values in services.items() if isinstance(values, dict)}
