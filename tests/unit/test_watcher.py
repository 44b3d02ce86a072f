"""The watcher (runners/stack/watcher.py) with tiny real services and a clock of the test's own.

The services are real processes (started, SIGKILLed, restarted), but time only
moves when the test moves the clock: each ``tick`` is one look at the stack, so
"not restarted yet" is a fact of the back-off, never a sleep that proves absence.
As in the real stack, the services are started by one Supervisor (``up``) and
watched through another (the watcher process's own).
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from runners.stack.restarts import BackoffPolicy
from runners.stack.spec import ServiceSpec, StackPaths
from runners.stack.supervisor import Supervisor, log_says_ready
from runners.stack.watcher import Watcher

POLICY = BackoffPolicy(initial_s=1.0, max_s=60.0, reset_after_s=60.0)


class Clock:
    """Wall-clock seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _service(paths: StackPaths, name: str, broken_flag: Path | None = None) -> ServiceSpec:
    """A process that logs 'serving' and sleeps; with ``broken_flag`` present it exits 3 at once.

    The marker is printed as two halves: the start banner in the log repeats the
    command line, which must not count as the marker itself.
    """
    flag = str(broken_flag) if broken_flag else ""
    code = ("import os, sys, time\n"
            f"if {flag!r} and os.path.exists({flag!r}):\n"
            "    print('config broken', flush=True); sys.exit(3)\n"
            "print('serv' + 'ing', flush=True)\n"
            "time.sleep(300)\n")
    return ServiceSpec(name=name, argv=[sys.executable, "-c", code],
                       healthy=lambda: log_says_ready(paths.log(name), paths.pidfile(name),
                                                      "serving"),
                       start_timeout_s=20.0, stop_timeout_s=5.0)


@pytest.fixture()
def paths(tmp_path: Path) -> Iterator[StackPaths]:
    p = StackPaths(run_dir=tmp_path / "run", jar_cache=tmp_path / "jars")
    yield p
    Supervisor([], p, out=io.StringIO()).down()


def _stack(paths: StackPaths, specs: list[ServiceSpec]) -> tuple[Supervisor, Watcher, Clock]:
    """``up`` the services with one supervisor; a watcher on a second one, as in the stack."""
    Supervisor(specs, paths, out=io.StringIO()).up()
    clock = Clock()
    return Supervisor(specs, paths, out=io.StringIO()), \
        Watcher(Supervisor(specs, paths, out=io.StringIO()), POLICY, clock), clock


def _pid(paths: StackPaths, name: str) -> int:
    return int(json.loads(paths.pidfile(name).read_text())["pid"])


def _kill_and_wait(sup: Supervisor, name: str) -> int:
    pgid = sup.kill(name, signal.SIGKILL)
    assert pgid is not None
    deadline = time.monotonic() + 10
    while sup.running_process(name) is not None:  # the signal lands a moment later
        assert time.monotonic() < deadline, f"{name} survived SIGKILL"
        time.sleep(0.02)
    return pgid


def test_a_killed_service_comes_back_after_the_back_off(paths: StackPaths) -> None:
    sup, watcher, clock = _stack(paths, [_service(paths, "web")])
    assert watcher.tick()
    killed = _kill_and_wait(sup, "web")

    watcher.tick()  # sees the crash: restart due 1 s later
    tracker = watcher.trackers["web"]
    assert tracker.last_exit == "SIGKILL from dcmms-telemetry kill"
    assert tracker.restarts == 0 and sup.running_process("web") is None
    clock.advance(0.9)
    watcher.tick()
    assert tracker.restarts == 0 and sup.running_process("web") is None
    clock.advance(0.1)
    watcher.tick()

    proc = sup.running_process("web")
    assert proc is not None and proc.pid != killed and _pid(paths, "web") == proc.pid
    assert tracker.restarts == 1 and tracker.next_start_at is None
    row = next(r for r in sup.statuses() if r.name == "web")
    assert (row.healthy, row.restarts, row.last_exit) == \
        (True, 1, "SIGKILL from dcmms-telemetry kill")
    out = io.StringIO()
    Supervisor([_service(paths, "web")], paths, out=out).status()
    header, line = out.getvalue().splitlines()[:2]
    assert header.split()[-3:] == ["restarts", "last", "exit"]
    assert " 1  " in line and "SIGKILL from dcmms-telemetry kill" in line


def test_exit_status_is_known_for_a_service_the_watcher_started(paths: StackPaths) -> None:
    sup, watcher, clock = _stack(paths, [_service(paths, "web")])
    _kill_and_wait(sup, "web")
    watcher.tick()
    clock.advance(1)
    watcher.tick()  # now the watcher's own child
    os.kill(_pid(paths, "web"), signal.SIGTERM)  # not through `kill`: a plain crash
    deadline = time.monotonic() + 10
    while psutil.Process(_pid(paths, "web")).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    watcher.tick()
    assert watcher.trackers["web"].last_exit == "killed by SIGTERM"


def test_a_restart_by_a_command_leaves_no_zombie_of_the_watcher(paths: StackPaths) -> None:
    sup, watcher, clock = _stack(paths, [_service(paths, "web")])
    _kill_and_wait(sup, "web")
    watcher.tick()
    clock.advance(1)
    watcher.tick()
    watchers_child = psutil.Process(_pid(paths, "web"))
    # `dcmms-telemetry restart web`: another process, so the old one dies as the watcher's child.
    command = ("import io, sys\n"
               "from pathlib import Path\n"
               "from runners.stack.spec import StackPaths\n"
               "from runners.stack.supervisor import Supervisor\n"
               "from tests.unit.test_watcher import _service\n"
               "p = StackPaths(Path(sys.argv[1]), Path(sys.argv[2]))\n"
               "Supervisor([_service(p, 'web')], p, out=io.StringIO()).restart('web')\n")
    subprocess.run([sys.executable, "-c", command, str(paths.run_dir), str(paths.jar_cache)],
                   cwd=Path(__file__).parents[2], check=True, timeout=60)
    assert watchers_child.status() == psutil.STATUS_ZOMBIE
    watcher.tick()
    assert not watchers_child.is_running()  # reaped
    assert watcher.trackers["web"].restarts == 1  # a command's restart is not the watcher's


def test_a_service_stopped_on_purpose_stays_stopped(paths: StackPaths) -> None:
    sup, watcher, clock = _stack(paths, [_service(paths, "web")])
    watcher.tick()
    sup.stop_service("web")
    for _ in range(3):
        clock.advance(120)
        watcher.tick()
    assert not paths.pidfile("web").exists() and sup.running_process("web") is None
    assert watcher.trackers["web"].restarts == 0
    assert watcher.trackers["web"].next_start_at is None


def test_failed_restarts_back_off_and_keep_the_service_meant_to_run(paths: StackPaths,
                                                                     tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    sup, watcher, clock = _stack(paths, [_service(paths, "web", broken)])
    _kill_and_wait(sup, "web")
    broken.touch()  # from now on every start exits 3
    watcher.tick()
    clock.advance(1)
    watcher.tick()  # restart 1 fails
    tracker = watcher.trackers["web"]
    assert tracker.restarts == 1 and tracker.next_start_at == clock.now + 2
    assert "exited with status 3" in (tracker.last_exit or "")
    # The failed start is cleaned up, but the pid file stays: still meant to run.
    assert json.loads(paths.pidfile("web").read_text())["pid"] == -1
    row = next(r for r in sup.statuses() if r.name == "web")
    assert row.pid is None and not row.healthy
    clock.advance(2)
    watcher.tick()  # restart 2 fails: next wait 4 s
    assert tracker.restarts == 2 and tracker.next_start_at == clock.now + 4
    broken.unlink()
    clock.advance(4)
    watcher.tick()
    assert tracker.restarts == 3 and sup.running_process("web") is not None


def test_a_service_waits_for_the_services_before_it(paths: StackPaths, tmp_path: Path) -> None:
    broken = tmp_path / "kafka-broken"
    specs = [_service(paths, "kafka", broken), _service(paths, "bridge")]
    sup, watcher, clock = _stack(paths, specs)
    _kill_and_wait(sup, "kafka")
    _kill_and_wait(sup, "bridge")
    broken.touch()
    watcher.tick()
    clock.advance(1)
    watcher.tick()  # kafka's restart fails; the bridge is due but must not start before it
    assert watcher.trackers["kafka"].restarts == 1
    assert watcher.trackers["bridge"].restarts == 0
    assert watcher.trackers["bridge"].waiting_for == "kafka"
    assert next(r for r in sup.statuses() if r.name == "bridge").pending is None  # no watcher
    # `status` shows what a down service waits for while a watcher process runs.
    stand_in = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        paths.pidfile("watcher").write_text(json.dumps(
            {"pid": stand_in.pid, "create_time": psutil.Process(stand_in.pid).create_time()}))
        assert next(r for r in sup.statuses() if r.name == "bridge").pending == \
            "waiting for kafka"
    finally:
        paths.pidfile("watcher").unlink()
        stand_in.kill()
        stand_in.wait()
    broken.unlink()
    clock.advance(2)
    watcher.tick()  # kafka first, then the bridge in the same look
    assert sup.running_process("kafka") is not None and sup.running_process("bridge") is not None
    assert watcher.trackers["bridge"].restarts == 1


def test_a_tick_while_a_command_holds_the_lock_does_nothing(paths: StackPaths) -> None:
    sup, watcher, clock = _stack(paths, [_service(paths, "web")])
    _kill_and_wait(sup, "web")
    with sup.locked():
        clock.advance(120)
        assert watcher.tick() is False
    assert watcher.trackers["web"].restarts == 0 and sup.running_process("web") is None


def test_the_lock_is_not_inherited_by_services(paths: StackPaths) -> None:
    """A service started under the lock must not keep it after the starter is done."""
    sup, watcher, _clock = _stack(paths, [_service(paths, "web")])
    assert watcher.tick() is True  # `up` (which started web) is over: the lock is free


def test_restart_counts_survive_a_new_watcher_and_go_with_down(paths: StackPaths) -> None:
    sup, watcher, clock = _stack(paths, [_service(paths, "web")])
    _kill_and_wait(sup, "web")
    watcher.tick()
    clock.advance(1)
    watcher.tick()
    successor = Watcher(Supervisor([_service(paths, "web")], paths, out=io.StringIO()), POLICY)
    successor.load_state()
    assert successor.trackers["web"].restarts == 1
    assert sup.down() is True
    assert not paths.restart_state.exists()


def test_down_stops_the_watcher_first(paths: StackPaths) -> None:
    specs = [_service(paths, "kafka"), _service(paths, "watcher")]
    out = io.StringIO()
    sup = Supervisor(specs, paths, out=out)
    sup.up()
    assert sup.down() is True
    stops = [line.split()[0] for line in out.getvalue().splitlines() if "stopping" in line]
    assert stops == ["watcher", "kafka"]


def test_the_watcher_process_refuses_a_second_instance(paths: StackPaths) -> None:
    """``python -m runners.stack.watcher`` twice on one run dir: the second exits 1."""
    env = {**os.environ, "DCMMS_STACK_RUN_DIR": str(paths.run_dir)}
    first = subprocess.Popen([sys.executable, "-m", "runners.stack.watcher"], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while not (paths.run_dir / "watcher.lock").exists() or first.poll() is not None:
            assert first.poll() is None, first.stdout.read().decode()  # type: ignore[union-attr]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        second = subprocess.run([sys.executable, "-m", "runners.stack.watcher"], env=env,
                                capture_output=True, text=True, timeout=60)
        assert second.returncode == 1, second.stdout + second.stderr
        assert "another watcher already runs" in second.stdout
    finally:
        first.send_signal(signal.SIGTERM)
        assert first.wait(30) == 0


def test_stopping_or_killing_the_watcher_spares_the_services_it_restarted(
        paths: StackPaths) -> None:
    """Services the watcher restarted are its children, yet not part of it."""
    child_pidfile = paths.pidfile("svc")
    code = ("import json, subprocess, sys, time, psutil\n"
            "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'],\n"
            "                     start_new_session=True)\n"
            f"open({str(child_pidfile)!r}, 'w').write(json.dumps(\n"
            "    {'pid': p.pid, 'create_time': psutil.Process(p.pid).create_time()}))\n"
            "print('serv' + 'ing', flush=True)\n"
            "time.sleep(300)\n")
    restarter = ServiceSpec(name="restarter", argv=[sys.executable, "-c", code],
                            healthy=lambda: log_says_ready(paths.log("restarter"),
                                                           paths.pidfile("restarter"), "serving"),
                            start_timeout_s=20.0, stop_timeout_s=5.0)
    sup = Supervisor([restarter], paths, out=io.StringIO())
    for stop in (lambda: sup.kill("restarter"), lambda: sup.stop_service("restarter")):
        sup.up()
        child = psutil.Process(_pid(paths, "svc"))
        assert child.ppid() == _pid(paths, "restarter")
        stop()
        deadline = time.monotonic() + 10
        while sup.running_process("restarter") is not None:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert child.is_running() and child.status() != psutil.STATUS_ZOMBIE
        child.kill()


def test_the_sigkill_drill_waits_for_the_watchers_restart(paths: StackPaths) -> None:
    """chaos/: ``bridge-sigkill`` runs no restart of its own; it waits for the watcher's."""
    from chaos.scenarios import SCENARIOS, ChaosContext

    specs = [_service(paths, "bridge")]
    Supervisor(specs, paths, out=io.StringIO()).up()
    ctx = ChaosContext(supervisor=Supervisor(specs, paths, out=io.StringIO()),
                       reader=None, api_url="", api_key="",  # type: ignore[arg-type]
                       mqtt=("", 0, "", ""), assets=[], alarm_asset=None,  # type: ignore[arg-type]
                       recovery_timeout_s=30, say=lambda _m: None)
    watcher = Watcher(Supervisor(specs, paths, out=io.StringIO()), POLICY)  # the real clock
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            watcher.tick()
            stop.wait(0.1)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        drill = SCENARIOS["bridge-sigkill"]
        assert drill.fault(ctx).startswith("SIGKILL bridge")
        how = drill.recovery(ctx)
    finally:
        stop.set()
        thread.join(30)
    assert how.startswith("restarted by the watcher") and "restarts 1" in how, how
    assert "SIGKILL from dcmms-telemetry kill" in how
    assert _pid(paths, "bridge") != ctx.killed["bridge"]
