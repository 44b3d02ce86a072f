"""Generic supervision of the local stack's processes: start, health, stop, status, logs.

Every service is a detached process (its own session and process group) whose
pid file, log and data live under one run directory (see :class:`StackPaths`).
The supervisor knows nothing about Kafka or QuestDB: service modules describe
their processes as :class:`ServiceSpec` lists and the supervisor runs them in
order, waiting for each to be healthy before the next one starts.

Guarantees:

* ``up`` is idempotent: a healthy running service is left alone, a stale pid
  file is removed, and a failed start stops everything this ``up`` started.
* ``down`` sends SIGTERM to each process group, SIGKILL after a grace period,
  and checks with psutil that no process of the group survives.
* A pid file means "this service is meant to run": the watcher
  (:mod:`runners.stack.watcher`, the last service ``up`` starts) restarts a
  service whose pid file outlived its process (a crash, ``kill``), never one
  stopped on purpose (``down``, ``stop_service``: the pid file is removed).
* Starting and stopping happen under one lock per run directory
  (``<run>/supervisor.lock``), so a command and the watcher never start the same
  service twice.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import psutil

from config.settings import Settings
from runners.stack.restarts import RestartTracker, describe_exit, state_from_json
from runners.stack.spec import ServiceSpec, StackPaths

__all__ = [
    "MODULE_ORDER",
    "PIPELINE_MODULE",
    "WATCHER_MODULE",
    "HEARTBEAT_ENV",
    "StackError",
    "Supervisor",
    "ServiceStatus",
    "load_specs",
    "service_modules",
    "paths_from_settings",
    "port_owner",
    "stack_modules",
    "tail_log",
    "heartbeat_healthy",
    "log_says_ready",
    "write_heartbeat",
]

_LOGGER = logging.getLogger(__name__)

# Start order; ``down`` uses the reverse. The pipeline module runs only with --with-pipeline.
MODULE_ORDER: tuple[str, ...] = (
    "kafka", "registry", "questdb", "mosquitto", "flink", "api", "bridge", "console",
)
PIPELINE_MODULE = "pipeline"
# Started last (after everything it watches is healthy), so stopped first by ``down``.
WATCHER_MODULE = "watcher"

# Environment variable naming a heartbeat file for services without a health port
# (the MQTT bridge, the pipeline launcher): see write_heartbeat / heartbeat_healthy.
HEARTBEAT_ENV = "DCMMS_HEALTH_FILE"

_POLL_S = 0.5
# Written to a service's log before each start (see log_says_ready).
_START_BANNER = "=== dcmms-telemetry: "
_LOG_TAIL_LINES = 20


class StackError(RuntimeError):
    """A service could not be started or stopped; the message says which and where its log is."""


ServicesFn = Callable[[Settings, StackPaths], list[ServiceSpec]]


def stack_modules(with_pipeline: bool) -> list[str]:
    """The stack's modules in start order: services, the pipeline if asked, the watcher."""
    return [*MODULE_ORDER, *([PIPELINE_MODULE] if with_pipeline else []), WATCHER_MODULE]


def paths_from_settings(settings: Settings) -> StackPaths:
    return StackPaths(run_dir=settings.stack.run_dir,
                      jar_cache=settings.stack.jar_cache)


def service_modules() -> dict[str, ServicesFn]:
    """Every stack module's ``services`` function by name: the registry of :data:`MODULE_ORDER`,
    :data:`PIPELINE_MODULE` and :data:`WATCHER_MODULE`."""
    # Imported here, not at the top: bridge, pipeline and watcher import this module.
    from runners.stack import (
        api,
        bridge,
        console,
        flink,
        kafka,
        mosquitto,
        pipeline,
        questdb,
        registry,
        watcher,
    )

    return {"kafka": kafka.services, "registry": registry.services,
            "questdb": questdb.services, "mosquitto": mosquitto.services,
            "flink": flink.services, "api": api.services, "bridge": bridge.services,
            "console": console.services, PIPELINE_MODULE: pipeline.services,
            WATCHER_MODULE: watcher.services}


def load_specs(settings: Settings, paths: StackPaths, modules: Iterable[str]
               ) -> list[ServiceSpec]:
    """The services of the stack modules ``modules`` (names of :func:`service_modules`), in
    order. An unknown name is a ``ValueError``."""
    known = service_modules()
    specs: list[ServiceSpec] = []
    for name in modules:
        try:
            services = known[name]
        except KeyError:
            raise ValueError(f"unknown stack module {name!r}; known: "
                             f"{', '.join(known)}") from None
        specs.extend(services(settings, paths))
    return specs


def write_heartbeat(path: str | os.PathLike[str]) -> None:
    """Mark the calling service healthy now (create or touch the heartbeat file).

    Services started with ``DCMMS_HEALTH_FILE`` in their environment call this
    once ready and then at least every 10 seconds while they stay healthy.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.touch()
    os.utime(p)


def heartbeat_healthy(path: Path, pidfile: Path, max_age_s: float = 30.0) -> bool:
    """True when the service's process is alive and touched ``path`` recently.

    The heartbeat must be younger than ``max_age_s`` and newer than the process
    itself, so a file left over from a previous run never counts.
    """
    record = _read_pidfile(pidfile)
    proc = _live_process(record) if record else None
    if proc is None:
        return False
    try:
        mtime = path.stat().st_mtime
    except FileNotFoundError:
        return False
    return mtime >= proc.create_time() - 1 and time.time() - mtime <= max_age_s


def log_says_ready(log: Path, pidfile: Path, marker: str) -> bool:
    """True when the service's process is alive and logged ``marker`` since it started.

    Only the text after the supervisor's last start banner counts, so a marker
    from a previous run is ignored.
    """
    record = _read_pidfile(pidfile)
    if record is None or _live_process(record) is None:
        return False
    text = tail_log(log, 400)
    return marker in text.rpartition(_START_BANNER)[2]


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    pid: int | None
    ports: Sequence[int]
    healthy: bool
    rss_mb: float | None
    uptime_s: float | None
    # From the watcher's state file: restarts it made, the last exit it saw (and when),
    # and while the service is down what it waits for ("restart in 4s", "waiting for kafka").
    restarts: int = 0
    last_exit: str | None = None
    last_exit_at: float | None = None
    pending: str | None = None


# -- pid files -----------------------------------------------------------------------------------

def _read_pidfile(pidfile: Path) -> dict[str, object] | None:
    try:
        record = json.loads(pidfile.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        _LOGGER.warning("unreadable pid file %s; treating it as stale", pidfile)
        return {"pid": -1}
    return record if isinstance(record, dict) and "pid" in record else {"pid": -1}


def _live_process(record: dict[str, object]) -> psutil.Process | None:
    """The recorded process if it still runs and is the same process (not a reused pid)."""
    pid = record.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return None
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        created = record.get("create_time")
        if isinstance(created, (int, float)) and abs(proc.create_time() - created) > 1.0:
            return None
        return proc
    except psutil.NoSuchProcess:
        return None


def _group_is_ours(record: dict[str, object]) -> bool:
    """Whether the process group named in ``record`` can still be the one we started.

    Linux never hands out a pid that is still in use as a process group id, so
    if another process now owns the leader's pid, our group is entirely gone
    and that pid's group belongs to someone else: never signal it.
    """
    pid = record.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    if _live_process(record) is not None:
        return True
    try:
        proc = psutil.Process(pid)
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _group_members(pgid: int) -> list[psutil.Process]:
    """Every live process whose process group is ``pgid`` (the leader may already be gone)."""
    members = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                members.append(proc)
        except (ProcessLookupError, psutil.NoSuchProcess, PermissionError):
            continue
    return members


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _wait_gone(procs: list[psutil.Process], timeout_s: float) -> list[psutil.Process]:
    """Wait until every process exited; return those still alive after ``timeout_s``.

    Polls instead of psutil.wait_procs, whose back-off made every stop of a
    non-child process take about two seconds.
    """
    deadline = time.monotonic() + timeout_s
    alive = [p for p in procs if _alive(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        for p in procs:  # reap our own children so they do not linger as zombies
            try:
                os.waitpid(p.pid, os.WNOHANG)
            except ChildProcessError:
                pass
        alive = [p for p in alive if _alive(p)]
    return alive


def _own_tree(leader: psutil.Process, other_leaders: set[int]) -> list[psutil.Process]:
    """``leader`` and its descendants, without the trees of other services' leaders.

    The watcher is the parent of every service it restarted: those services are
    not part of the watcher, and stopping or killing the watcher must not reach them.
    """
    tree, todo = [leader], [leader]
    while todo:
        try:
            children = todo.pop().children()
        except psutil.NoSuchProcess:
            continue
        for child in children:
            if child.pid not in other_leaders:
                tree.append(child)
                todo.append(child)
    return tree


def _tree_rss(tree: list[psutil.Process]) -> float:
    total = 0
    for p in tree:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total / 1e6


# -- ports and tools ------------------------------------------------------------------------------

def port_owner(port: int) -> str:
    """Best-effort description of the process listening on ``port`` (for error messages)."""
    try:
        for conn in psutil.net_connections(kind="inet"):
            if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN:
                if conn.pid:
                    try:
                        proc = psutil.Process(conn.pid)
                        cmd = " ".join(" ".join(proc.cmdline()).split())
                        return f"pid {conn.pid} ({cmd[:120]})"
                    except psutil.NoSuchProcess:
                        return f"pid {conn.pid}"
                return "another process"
    except (psutil.AccessDenied, PermissionError):
        pass
    return "another process"


def _port_taken(host: str, port: int) -> bool:
    """True when a listener already holds ``port`` on ``host`` (or on every address)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR so that TIME_WAIT leftovers of a just-stopped service do not count.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
            raise StackError(f"cannot check port {port} on {host}: {exc}") from exc
    return False


def _missing_tools(spec: ServiceSpec) -> list[str]:
    problems = []
    for tool, hint in spec.requires.items():
        found = Path(tool).is_file() if os.sep in tool else shutil.which(tool) is not None
        if not found:
            problems.append(f"service {spec.name} needs '{tool}', which is not installed: {hint}")
    return problems


def tail_log(path: Path, lines: int) -> str:
    """The last ``lines`` lines of a service log (for messages that show why it failed)."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            data = fh.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return "(no log written)"
    return "\n".join(data.splitlines()[-lines:])


# -- the supervisor ------------------------------------------------------------------------------

class Supervisor:
    """Starts, stops and inspects a list of services described by :class:`ServiceSpec`.

    ``specs`` are in start order. ``bind_host`` is where ports are checked.
    Output for the operator goes to ``out`` (progress, warnings, tables).
    """

    def __init__(self, specs: Sequence[ServiceSpec], paths: StackPaths,
                 bind_host: str = "127.0.0.1", out: TextIO | None = None) -> None:
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate service names in {names}")
        self.specs = list(specs)
        self.paths = paths
        self.bind_host = bind_host
        self._out = out if out is not None else sys.stdout
        self._midline = False
        self._w = max([10, *(len(n) for n in names)])  # name column width
        # Services this object started, so a crash of one is reported with its exit status.
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._lock_depth = 0

    def _say(self, text: str = "", end: str = "\n") -> None:
        self._out.write(text + end)
        self._out.flush()
        self._midline = end == ""

    def _start_line(self) -> None:
        """End a progress line (dots) before printing something else."""
        if self._midline:
            self._say()

    @contextlib.contextmanager
    def locked(self, wait: bool = True) -> Iterator[bool]:
        """Hold the stack's start/stop lock; yields False if busy and ``wait`` is False.

        Re-entrant within this object (``restart`` = stop + start). Services never
        inherit the lock's file descriptor (Popen closes fds), so it is released
        when the holder ends, even by SIGKILL.
        """
        if self._lock_depth:
            self._lock_depth += 1
            try:
                yield True
            finally:
                self._lock_depth -= 1
            return
        path = self.paths.lock
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not wait:
                    yield False
                    return
                self._start_line()
                self._say(f"waiting for another dcmms-telemetry command or the watcher "
                          f"(lock {path})")
                fcntl.flock(fh, fcntl.LOCK_EX)
            self._lock_depth = 1
            try:
                yield True
            finally:
                self._lock_depth = 0

    # -- up ---------------------------------------------------------------------------------------

    def up(self) -> None:
        """Start every service not already healthy, in order; on failure stop what was started."""
        with self.locked():
            self._up()

    def _up(self) -> None:
        started: list[ServiceSpec] = []
        t0 = time.monotonic()
        # Pre-flight for every service that is not running: report all taken ports and
        # missing tools at once, before anything starts.
        problems: list[str] = []
        for spec in self.specs:
            record = _read_pidfile(self.paths.pidfile(spec.name))
            if record is None or _live_process(record) is None:
                problems += self._preflight(spec)
        if problems:
            raise StackError("\n".join(problems))
        try:
            for spec in self.specs:
                if self._start_one(spec):
                    started.append(spec)
        except BaseException:
            self._start_line()
            if started:
                self._say(f"stopping what this 'up' started: {', '.join(s.name for s in started)}")
                for spec in reversed(started):
                    self._stop_one(spec.name, spec.stop_timeout_s)
            raise
        self._say(f"stack up in {time.monotonic() - t0:.1f}s")

    def _start_one(self, spec: ServiceSpec) -> bool:
        """Start ``spec`` unless it already runs healthy; return True if this call started it."""
        pidfile = self.paths.pidfile(spec.name)
        record = _read_pidfile(pidfile)
        if record is not None:
            proc = _live_process(record)
            if proc is not None:
                self._wait_healthy(spec, proc, quiet_ok=True)  # raises when it gives up
                self._say(f"{spec.name:{self._w}s} already running (pid {proc.pid}), healthy")
                # Setup steps are idempotent: re-run them so config changes (retention,
                # new tables) reach a running stack too.
                self._after_start(spec)
                return False
            self._say(f"{spec.name:{self._w}s} removing stale pid file {pidfile}")
            self._kill_group_leftovers(record)
            pidfile.unlink(missing_ok=True)

        problems = self._preflight(spec)  # again: a port may have been taken meanwhile
        if problems:
            raise StackError("\n".join(problems))

        log = self.paths.log(spec.name)
        for d in (log.parent, pidfile.parent, self.paths.data(spec.name)):
            d.mkdir(parents=True, exist_ok=True)
        if spec.prepare is not None:
            try:
                spec.prepare()
            except StackError:
                raise
            except Exception as exc:
                raise StackError(f"preparing service {spec.name} failed: {exc}") from exc

        self._say(f"{spec.name:{self._w}s} starting", end="")
        env = {**os.environ, **spec.env}
        with log.open("ab") as log_fh:
            log_fh.write(f"\n{_START_BANNER}{time.strftime('%Y-%m-%dT%H:%M:%S')} starting: "
                         f"{' '.join(spec.argv)}\n".encode())
            log_fh.flush()
            try:
                popen = subprocess.Popen(
                    list(spec.argv), stdin=subprocess.DEVNULL, stdout=log_fh,
                    stderr=subprocess.STDOUT, cwd=spec.cwd, env=env,
                    start_new_session=True,  # own session + process group: killpg reaches all
                )
            except OSError as exc:
                self._say()
                raise StackError(f"service {spec.name} could not be started "
                                 f"({spec.argv[0]}): {exc}") from exc
        proc = psutil.Process(popen.pid)
        pidfile.write_text(json.dumps({
            "pid": popen.pid, "create_time": proc.create_time(), "argv": list(spec.argv),
        }))
        self._children[spec.name] = popen
        self.paths.kill_note(spec.name).unlink(missing_ok=True)
        try:
            self._wait_healthy(spec, proc, quiet_ok=False, popen=popen)
            self._after_start(spec)
        except BaseException:
            self._stop_one(spec.name, spec.stop_timeout_s)
            raise
        return True

    def _preflight(self, spec: ServiceSpec) -> list[str]:
        problems = _missing_tools(spec)
        for port in spec.ports:
            if _port_taken(self.bind_host, port):
                problems.append(
                    f"port {port} needed by service {spec.name} is taken by {port_owner(port)}; "
                    f"stop that process or change the port in the configuration"
                )
        return problems

    def _after_start(self, spec: ServiceSpec) -> None:
        if spec.after_start is None:
            return
        try:
            spec.after_start()
        except Exception as exc:
            raise StackError(
                f"service {spec.name} is running but its setup step failed: {exc}\n"
                f"log: {self.paths.log(spec.name)}"
            ) from exc

    def _wait_healthy(self, spec: ServiceSpec, proc: psutil.Process, *, quiet_ok: bool,
                      popen: subprocess.Popen[bytes] | None = None) -> bool:
        """Poll ``spec.healthy`` until it passes; raise StackError on timeout or early exit."""
        t0 = time.monotonic()
        next_dot = t0 + 1.0
        next_mark = t0 + 10.0
        printing = not quiet_ok
        while True:
            if self.is_healthy(spec):
                if printing:
                    self._say(f" healthy in {time.monotonic() - t0:.1f}s (pid {proc.pid})")
                return True
            exited = (popen.poll() is not None) if popen is not None else not proc.is_running()
            now = time.monotonic()
            if exited or now - t0 > spec.start_timeout_s:
                if printing:
                    self._say()
                log = self.paths.log(spec.name)
                what = (f"exited with status {popen.returncode}" if exited and popen is not None
                        else "exited" if exited
                        else f"did not become healthy within {spec.start_timeout_s:.0f}s")
                raise StackError(
                    f"service {spec.name} {what}. Last {_LOG_TAIL_LINES} lines of its log "
                    f"{log}:\n{tail_log(log, _LOG_TAIL_LINES)}\n(full log: {log})"
                )
            if not printing and now - t0 > 2.0:
                # Running but not (yet) healthy: it may still be starting; show progress.
                self._say(f"{spec.name:{self._w}s} running (pid {proc.pid}), waiting for health",
                          end="")
                printing = True
            if printing and now >= next_dot:
                if now >= next_mark:
                    self._say(f"{now - t0:.0f}s", end="")
                    next_mark += 10.0
                else:
                    self._say(".", end="")
                next_dot += 1.0
            time.sleep(_POLL_S)

    @staticmethod
    def is_healthy(spec: ServiceSpec) -> bool:
        """``spec.healthy()``, with a probe that raises counted as unhealthy."""
        try:
            return bool(spec.healthy())
        except Exception as exc:  # a health probe must never crash the supervisor
            _LOGGER.debug("health check of %s raised %r", spec.name, exc)
            return False

    # -- down -------------------------------------------------------------------------------------

    def down(self) -> bool:
        """Stop every service (watcher first, unknown pid files next, then reverse order).

        True if all stopped; the watcher's restart counts are then removed too.
        """
        timeouts = {s.name: s.stop_timeout_s for s in self.specs}
        # The watcher first and without the lock: it may hold the lock for a restart,
        # which SIGTERM aborts (and it must not restart what is stopped next).
        ok = self._stop_one(WATCHER_MODULE, timeouts.get(WATCHER_MODULE, 60.0))
        with self.locked():
            known = [s.name for s in self.specs if s.name != WATCHER_MODULE]
            pid_dir = self.paths.pidfile("x").parent
            others = sorted(p.stem for p in pid_dir.glob("*.pid")
                            if p.stem not in known and p.stem != WATCHER_MODULE) \
                if pid_dir.is_dir() else []
            for name in [*others, *reversed(known)]:
                ok = self._stop_one(name, timeouts.get(name, 20.0)) and ok
            if ok:
                self.paths.restart_state.unlink(missing_ok=True)
                for note in pid_dir.glob("*.killed") if pid_dir.is_dir() else ():
                    note.unlink(missing_ok=True)
        return ok

    def _kill_group_leftovers(self, record: dict[str, object]) -> None:
        """Kill survivors of a dead leader's process group (its pid is the group id)."""
        pgid = record.get("pid")
        if isinstance(pgid, int) and pgid > 0 and _group_is_ours(record):
            for member in _group_members(pgid):
                _LOGGER.warning("killing leftover process %s of group %s", member.pid, pgid)
                try:
                    member.kill()
                except psutil.NoSuchProcess:
                    pass

    def _stop_one(self, name: str, grace_s: float) -> bool:
        pidfile = self.paths.pidfile(name)
        record = _read_pidfile(pidfile)
        if record is None:
            return True
        pgid = record.get("pid")
        if not isinstance(pgid, int) or pgid <= 0 or not _group_is_ours(record):
            pidfile.unlink(missing_ok=True)
            return True
        leader = _live_process(record)
        # Collect the tree before signalling: a child that left the group is still ours.
        tree = _own_tree(leader, self._other_leaders(name)) if leader is not None else []
        members = {p.pid: p for p in [*tree, *_group_members(pgid)]}
        if not members:
            pidfile.unlink(missing_ok=True)
            return True
        self._start_line()
        self._say(f"{name:{self._w}s} stopping (pid {pgid})", end="")
        t0 = time.monotonic()
        self._signal(pgid, members.values(), signal.SIGTERM)
        alive = _wait_gone(list(members.values()), grace_s)
        if alive:
            self._say(f" still running after {grace_s:.0f}s, SIGKILL", end="")
            self._signal(pgid, alive, signal.SIGKILL)
            alive = _wait_gone(alive, 5.0)
        alive += [p for p in _group_members(pgid) if p.pid not in {a.pid for a in alive}]
        if alive:
            self._say(f" FAILED: still running: {', '.join(str(p.pid) for p in alive)}")
            return False
        pidfile.unlink(missing_ok=True)
        self._say(f" stopped in {time.monotonic() - t0:.1f}s")
        return True

    @staticmethod
    def _signal(pgid: int, procs: Iterable[psutil.Process], sig: signal.Signals) -> None:
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            pass
        except PermissionError as exc:
            raise StackError(f"not allowed to signal process group {pgid}: {exc}") from exc
        for proc in procs:  # members that moved to another group
            try:
                if os.getpgid(proc.pid) != pgid:
                    proc.send_signal(sig)
            except (ProcessLookupError, psutil.NoSuchProcess):
                continue

    # -- one service (crash drills, recovery) ----------------------------------------------------

    def spec(self, name: str) -> ServiceSpec:
        for spec in self.specs:
            if spec.name == name:
                return spec
        raise StackError(f"unknown service '{name}'; known: "
                         f"{', '.join(s.name for s in self.specs)}")

    def stop_service(self, name: str) -> None:
        """Stop one service on purpose (SIGTERM, SIGKILL after its grace period).

        Its pid file goes, so the watcher leaves it stopped.
        """
        spec = self.spec(name)
        with self.locked():
            if not self._stop_one(name, spec.stop_timeout_s):
                raise StackError(f"service {name} could not be stopped; "
                                 f"see {self.paths.log(name)}")

    def start_service(self, name: str) -> None:
        """Start one service unless it runs healthy (a stale pid file is cleaned up)."""
        spec = self.spec(name)
        with self.locked():
            self._start_one(spec)

    def restart(self, name: str) -> None:
        """Stop ``name`` (if it runs, dead or alive) and start it again; wait until healthy."""
        with self.locked():
            self.stop_service(name)
            self.start_service(name)

    def revive(self, name: str) -> None:
        """Start a crashed service again (the watcher's restart); raise StackError on failure.

        A failed start stops what it started, as in ``up``, but leaves a pid file
        without a process (``{"pid": -1}``): the service is still meant to run and
        the watcher tries again later; ``down`` or ``stop_service`` remove it.
        """
        spec = self.spec(name)
        with self.locked():
            try:
                self._start_one(spec)
            except BaseException:
                self.paths.pidfile(name).write_text(json.dumps({"pid": -1,
                                                                "restart_pending": True}))
                raise

    def meant_to_run(self, name: str) -> bool:
        """True while ``name`` has a pid file: started and not stopped on purpose."""
        return self.paths.pidfile(name).exists()

    def running_process(self, name: str) -> psutil.Process | None:
        """The live leader process of ``name``, or None."""
        record = _read_pidfile(self.paths.pidfile(name))
        return _live_process(record) if record is not None else None

    def exit_reason(self, name: str) -> str:
        """Why the process in ``name``'s pid file is gone, as far as can be known.

        The exit status is known only for processes this object started (the
        watcher's restarts); a process started by another command was not our
        child. A signal sent by ``kill`` is known from its note.
        """
        record = _read_pidfile(self.paths.pidfile(name)) or {}
        pid = record.get("pid")
        popen = self._children.get(name)
        status = None
        if popen is not None and popen.pid == pid:
            status = describe_exit(popen.poll())
            del self._children[name]
        note = self._kill_note(name, pid)
        if status is not None:
            return f"{status} (dcmms-telemetry kill)" if note else status
        if note:
            return f"{note} from dcmms-telemetry kill"
        return "exited (status unknown: not started by the watcher)"

    def reap_children(self) -> None:
        """Reap services this object started that another command since stopped or replaced.

        Without this they would stay zombies of the watcher; a child that is still
        the one in its pid file is kept, so :meth:`exit_reason` can read its status.
        """
        for name, popen in list(self._children.items()):
            record = _read_pidfile(self.paths.pidfile(name)) or {}
            if record.get("pid") != popen.pid and popen.poll() is not None:
                del self._children[name]

    def _kill_note(self, name: str, pid: object) -> str | None:
        try:
            note = json.loads(self.paths.kill_note(name).read_text())
        except (OSError, ValueError):
            return None
        return str(note.get("signal")) if isinstance(note, dict) and note.get("pid") == pid \
            else None

    def kill(self, name: str, sig: signal.Signals = signal.SIGKILL) -> int | None:
        """Send ``sig`` to the process group of ``name`` (a crash drill); return the group id.

        The pid file stays, as after a real crash: the watcher restarts the
        service after its back-off (``status`` counts the restart), and ``up`` or
        ``restart`` would clean up and start it too.
        """
        self.spec(name)
        record = _read_pidfile(self.paths.pidfile(name))
        if record is None or _live_process(record) is None:
            return None
        pgid = record["pid"]
        assert isinstance(pgid, int)
        leader = _live_process(record)
        tree = _own_tree(leader, self._other_leaders(name)) if leader is not None else []
        # Written before the signal, so the watcher that sees the death can name its cause.
        self.paths.kill_note(name).write_text(json.dumps({"pid": pgid, "signal": sig.name,
                                                          "at": time.time()}))
        self._signal(pgid, tree, sig)
        return pgid

    # -- status -----------------------------------------------------------------------------------

    def statuses(self) -> list[ServiceStatus]:
        restarts = self._restart_trackers()
        # A pending restart is only news while a watcher runs to do it.
        watching = self.running_process(WATCHER_MODULE) is not None
        now = time.time()
        result = []
        for spec in self.specs:
            record = _read_pidfile(self.paths.pidfile(spec.name))
            proc = _live_process(record) if record else None
            rss = uptime = None
            if proc is not None:
                try:
                    rss = _tree_rss(_own_tree(proc, self._other_leaders(spec.name)))
                    uptime = time.time() - proc.create_time()
                except psutil.NoSuchProcess:
                    proc = None
            healthy = proc is not None and self.is_healthy(spec)
            tracker = restarts.get(spec.name, RestartTracker())
            result.append(ServiceStatus(
                spec.name, proc.pid if proc else None, tuple(spec.ports), healthy, rss, uptime,
                restarts=tracker.restarts, last_exit=tracker.last_exit,
                last_exit_at=tracker.last_exit_at,
                pending=_pending(tracker, now) if proc is None and watching else None))
        return result

    def _other_leaders(self, name: str) -> set[int]:
        """Leader pids of every other service with a pid file (see :func:`_own_tree`)."""
        pid_dir = self.paths.pidfile(name).parent
        leaders = set()
        for pidfile in pid_dir.glob("*.pid") if pid_dir.is_dir() else ():
            pid = (_read_pidfile(pidfile) or {}).get("pid") if pidfile.stem != name else None
            if isinstance(pid, int) and pid > 0:
                leaders.add(pid)
        return leaders

    def _restart_trackers(self) -> dict[str, RestartTracker]:
        try:
            return state_from_json(self.paths.restart_state.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, TypeError) as exc:
            _LOGGER.warning("unreadable restart state %s: %s", self.paths.restart_state, exc)
            return {}

    def status(self) -> bool:
        """Print the status table; True when every service runs and is healthy."""
        rows = self.statuses()
        ports_of = {r.name: ",".join(str(p) for p in r.ports) or "-" for r in rows}
        pw = max([20, *(len(p) + 1 for p in ports_of.values())])  # ports column width
        self._say(f"{'service':{self._w}s} {'pid':>8s}  {'port(s)':{pw}s} {'healthy':8s} "
                  f"{'RSS MB':>8s} {'uptime':>9s} {'restarts':>8s}  last exit")
        for r in rows:
            self._say(
                f"{r.name:{self._w}s} {r.pid if r.pid else '-':>8}  {ports_of[r.name]:{pw}s} "
                f"{'yes' if r.healthy else 'NO':8s} "
                f"{f'{r.rss_mb:.0f}' if r.rss_mb is not None else '-':>8s} "
                f"{_fmt_duration(r.uptime_s) if r.uptime_s is not None else '-':>9s} "
                f"{r.restarts:>8d}  {_fmt_last_exit(r)}"
            )
        return bool(rows) and all(r.healthy for r in rows)

    # -- logs -------------------------------------------------------------------------------------

    def log_files(self, service: str | None) -> list[Path]:
        if service is not None:
            names = [s.name for s in self.specs]
            path = self.paths.log(service)
            if service not in names and not path.exists():
                raise StackError(f"unknown service '{service}'; known: {', '.join(names)}")
            return [path]
        return [self.paths.log(s.name) for s in self.specs if self.paths.log(s.name).exists()]


def _pending(tracker: RestartTracker, now: float) -> str | None:
    """What a down service waits for, in words (None: nothing is scheduled)."""
    if tracker.waiting_for is not None:
        return f"waiting for {tracker.waiting_for}"
    if tracker.next_start_at is not None:
        return f"restart in {max(0.0, tracker.next_start_at - now):.0f}s"
    return None


def _fmt_last_exit(status: ServiceStatus) -> str:
    parts = []
    if status.last_exit is not None:
        at = (time.strftime("%H:%M:%S ", time.localtime(status.last_exit_at))
              if status.last_exit_at is not None else "")
        parts.append(f"{at}{status.last_exit}")
    if status.pending is not None:
        parts.append(f"[{status.pending}]")
    return " ".join(parts) or "-"


def _fmt_duration(seconds: float) -> str:
    s = int(seconds)
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"
