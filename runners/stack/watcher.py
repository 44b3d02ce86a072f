"""The watcher: a stack service that restarts crashed services with exponential back-off.

``dcmms-telemetry up`` starts it last (``python -m runners.stack.watcher``, pid
file, log ``<run>/logs/watcher.log``, heartbeat ``<run>/health/watcher``) and
``down`` stops it first, like any service; it works on the run directory of the
settings it was started with, so every profile's stack has its own watcher.

Once a second it looks at every other service of the stack:

* no pid file: stopped on purpose (``down``, ``stop_service``, never started):
  left alone;
* pid file and a live process: running (the back-off resets once a process has
  run for a while, :class:`runners.stack.restarts.BackoffPolicy`);
* pid file without a live process: crashed (or ``dcmms-telemetry kill``). The
  restart comes after the back-off (1 s, doubling up to 60 s) and only when
  every service before it in start order that is meant to run is healthy again:
  the start order is the dependency order (the registry needs Kafka, the bridge
  Mosquitto and Kafka), so after a Kafka crash Kafka comes back first.

A restart is the supervisor's own start (prepare, start, wait until healthy,
setup step) under the stack's lock, so it never overlaps a command such as
``restart`` or ``up``; a tick that finds the lock taken is skipped. Restart
counts and last exits go to ``<run>/restarts.json``, which
``dcmms-telemetry status`` shows. Only processes that are gone are restarted: a
running but unhealthy service is reported by ``status`` and left to the operator.
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from config.settings import Settings, load_settings
from runners.stack.restarts import BackoffPolicy, RestartTracker, state_from_json, state_to_json
from runners.stack.spec import ServiceSpec, StackPaths
from runners.stack.supervisor import (
    HEARTBEAT_ENV,
    WATCHER_MODULE,
    StackError,
    Supervisor,
    heartbeat_healthy,
    load_specs,
    paths_from_settings,
    stack_modules,
    tail_log,
    write_heartbeat,
)

__all__ = ["Watcher", "main", "services"]

_LOGGER = logging.getLogger(__name__)

_TICK_S = 1.0
# The heartbeat stops when the loop has made no progress for this long: longer than the
# slowest restart (the pipeline's 240 s start timeout plus a stop), so only a hang counts.
_STALL_S = 420.0
_HEARTBEAT_S = 5.0
_LOG_TAIL_LINES = 10


def services(settings: Settings, paths: StackPaths) -> list[ServiceSpec]:
    heartbeat = paths.run_dir / "health" / WATCHER_MODULE
    pidfile = paths.pidfile(WATCHER_MODULE)
    return [ServiceSpec(
        name=WATCHER_MODULE,
        argv=[sys.executable, "-m", "runners.stack.watcher"],
        env={HEARTBEAT_ENV: str(heartbeat)},
        healthy=lambda: heartbeat_healthy(heartbeat, pidfile),
        start_timeout_s=30.0,
        # SIGTERM during a restart stops the half-started service before the watcher exits.
        stop_timeout_s=60.0,
    )]


class Watcher:
    """Restarts the crashed services of ``supervisor``'s stack; one :meth:`tick` per look.

    ``clock`` is wall-clock seconds (process start times are wall-clock too);
    tests pass their own to step through the back-off without sleeping.
    """

    def __init__(self, supervisor: Supervisor, policy: BackoffPolicy | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.supervisor = supervisor
        self.policy = policy if policy is not None else BackoffPolicy()
        self.clock = clock
        self.watched = [s for s in supervisor.specs if s.name != WATCHER_MODULE]
        self.trackers = {s.name: RestartTracker() for s in self.watched}
        self._saved: str | None = None

    # -- state file -------------------------------------------------------------------------------

    def load_state(self) -> None:
        """Take over the counts of a previous watcher of this stack (if its file is readable)."""
        path = self.supervisor.paths.restart_state
        try:
            saved = state_from_json(path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError, TypeError) as exc:
            _LOGGER.warning("ignoring unreadable restart state %s: %s", path, exc)
            return
        self.trackers.update((name, t) for name, t in saved.items() if name in self.trackers)

    def save_state(self) -> None:
        """Write the trackers atomically (``status`` may read at any time) when they changed."""
        text = state_to_json(self.trackers, os.getpid())
        if text == self._saved:
            return
        path = self.supervisor.paths.restart_state
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(path)
        self._saved = text

    # -- one look at the stack --------------------------------------------------------------------

    def tick(self) -> bool:
        """Look at every service once and restart what is due; False if the lock was busy.

        The state file is written after each service, so ``status`` shows a crash
        while a restart of another service is still under way.
        """
        with self.supervisor.locked(wait=False) as got_lock:
            if not got_lock:
                return False  # a command is starting or stopping services: look next time
            self.supervisor.reap_children()
            for index, spec in enumerate(self.watched):
                self._look_at(index, spec)
                self.save_state()
        return True

    def _look_at(self, index: int, spec: ServiceSpec) -> None:
        sup, tracker = self.supervisor, self.trackers[spec.name]
        if not sup.meant_to_run(spec.name):
            tracker.stopped_on_purpose()
            return
        if self._seen_running(spec.name):
            return
        if tracker.next_start_at is None:
            self._crash_seen(spec.name, sup.exit_reason(spec.name))
        if not tracker.due(self.clock()):
            return
        blocker = self._blocker(index)
        if blocker is not None:
            if tracker.waiting_for != blocker:
                _LOGGER.info("service %s: restart waits for %s", spec.name, blocker)
            tracker.wait_for(blocker)
            return
        self._restart(spec.name)

    def _seen_running(self, name: str) -> bool:
        proc = self.supervisor.running_process(name)
        if proc is None:
            return False
        try:
            started = proc.create_time()
        except Exception:  # noqa: BLE001 - it died just now; seen as down next time
            return False
        self.trackers[name].seen_running(proc.pid, started)
        return True

    def _crash_seen(self, name: str, reason: str) -> None:
        tracker = self.trackers[name]
        tracker.seen_down(reason, self.clock(), self.policy)
        assert tracker.next_start_at is not None
        log = self.supervisor.paths.log(name)
        _LOGGER.warning("service %s is down (%s); restart in %.0fs. Last lines of its log %s:\n%s",
                        name, reason, tracker.next_start_at - self.clock(), log,
                        tail_log(log, _LOG_TAIL_LINES))

    def _blocker(self, index: int) -> str | None:
        """The first earlier service (start order) meant to run that is not healthy, if any."""
        sup = self.supervisor
        for spec in self.watched[:index]:
            if not sup.meant_to_run(spec.name):
                continue
            if sup.running_process(spec.name) is None:
                return spec.name
            if not sup.is_healthy(spec):
                return f"{spec.name} (unhealthy)"
        return None

    def _restart(self, name: str) -> None:
        tracker = self.trackers[name]
        tracker.restart_began()
        self.save_state()  # the count shows while the start is under way
        _LOGGER.info("service %s: restart %d (%d failure(s) in a row)", name, tracker.restarts,
                     tracker.failures)
        try:
            self.supervisor.revive(name)
        except StackError as exc:
            tracker.restart_failed(str(exc).splitlines()[0], self.clock(), self.policy)
            _LOGGER.error("service %s: restart failed, next try in %.0fs: %s", name,
                          (tracker.next_start_at or 0) - self.clock(), exc)
            return
        except Exception as exc:  # noqa: BLE001 - one service's bug must not end the watching
            tracker.restart_failed(f"{type(exc).__name__}: {exc}", self.clock(), self.policy)
            _LOGGER.exception("service %s: restart raised, next try in %.0fs (log %s)", name,
                              (tracker.next_start_at or 0) - self.clock(),
                              self.supervisor.paths.log(name))
            return
        self._seen_running(name)
        _LOGGER.info("service %s is running again (restart %d)", name, tracker.restarts)


# -- the process ---------------------------------------------------------------------------------

@contextmanager
def _only_watcher_of(paths: StackPaths) -> Iterator[None]:
    """Refuse to run next to another watcher of the same run directory."""
    path = paths.run_dir / "watcher.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StackError(f"another watcher already runs for {paths.run_dir} "
                             f"(lock {path}); see {paths.log(WATCHER_MODULE)}") from None
        yield


def _heartbeat(path: str, progress: list[float], stop: threading.Event) -> None:
    """Touch the heartbeat while the main loop makes progress (a hung loop goes unhealthy)."""
    while not stop.is_set():
        if time.monotonic() - progress[0] < _STALL_S:
            write_heartbeat(path)
        stop.wait(_HEARTBEAT_S)


def main() -> int:
    # Run as ``-m``, this module's logger is "__main__": the log names the watcher instead.
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format="%(asctime)s %(levelname)s watcher: %(message)s")
    # The services this process restarts inherit its environment: not its heartbeat file.
    heartbeat = os.environ.pop(HEARTBEAT_ENV, None)
    settings = load_settings()
    paths = paths_from_settings(settings)
    # Every module, the pipeline included: only services with a pid file are acted on.
    specs = load_specs(settings, paths, stack_modules(with_pipeline=True))
    supervisor = Supervisor(specs, paths, bind_host=settings.stack.bind_host)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    stop = threading.Event()
    progress = [time.monotonic()]
    try:
        with _only_watcher_of(paths):
            watcher = Watcher(supervisor)
            watcher.load_state()
            if heartbeat:
                threading.Thread(target=_heartbeat, args=(heartbeat, progress, stop),
                                 name="heartbeat", daemon=True).start()
            _LOGGER.info("watching %s in %s (back-off %.0fs doubling to %.0fs)",
                         ", ".join(s.name for s in watcher.watched), paths.run_dir,
                         watcher.policy.initial_s, watcher.policy.max_s)
            while True:
                watcher.tick()
                progress[0] = time.monotonic()
                time.sleep(_TICK_S)
    except KeyboardInterrupt:
        _LOGGER.info("watcher stopping (SIGTERM)")
        return 0
    except StackError as exc:
        _LOGGER.error("%s", exc)
        return 1
    finally:
        stop.set()


if __name__ == "__main__":
    sys.exit(main())
