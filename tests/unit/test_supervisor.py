"""The stack supervisor with tiny real services (python -m http.server), not OS mocks.

Covers: taken ports and missing tools reported before anything starts,
stale pid files, idempotent ``up``, cleanup after a failed start, ``down``
killing the whole process group (SIGKILL after the grace period), status,
and heartbeat health.
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from runners.stack.spec import ServiceSpec, StackPaths
from runners.stack.supervisor import (
    StackError,
    Supervisor,
    heartbeat_healthy,
    write_heartbeat,
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _http_ok(port: int) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1) as resp:
        return resp.status == 200


def _http_service(name: str, port: int, **kw: object) -> ServiceSpec:
    return ServiceSpec(
        name=name,
        argv=[sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        ports=(port,), healthy=lambda: _http_ok(port), start_timeout_s=20.0,
        stop_timeout_s=5.0, **kw,  # type: ignore[arg-type]
    )


@pytest.fixture()
def paths(tmp_path: Path) -> Iterator[StackPaths]:
    p = StackPaths(run_dir=tmp_path / "run", jar_cache=tmp_path / "jars")
    yield p
    # Whatever a test left behind, stop it (the test itself checks down's result).
    Supervisor([], p, out=io.StringIO()).down()


def _pid(paths: StackPaths, name: str) -> int:
    return int(json.loads(paths.pidfile(name).read_text())["pid"])


def test_up_down_leaves_no_process(paths: StackPaths) -> None:
    out = io.StringIO()
    sup = Supervisor([_http_service("web", _free_port())], paths, out=out)
    sup.up()
    pid = _pid(paths, "web")
    assert psutil.pid_exists(pid) and os.getpgid(pid) == pid  # own process group
    assert sup.status() is True
    assert sup.down() is True
    assert not paths.pidfile("web").exists()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert sup.status() is False


def test_up_is_idempotent(paths: StackPaths) -> None:
    out = io.StringIO()
    sup = Supervisor([_http_service("web", _free_port())], paths, out=out)
    sup.up()
    first = _pid(paths, "web")
    sup.up()  # the port is now taken by our own healthy service: no error
    assert _pid(paths, "web") == first
    assert "already running" in out.getvalue()
    sup.down()


def test_after_start_runs_again_on_running_service(paths: StackPaths) -> None:
    calls: list[int] = []
    sup = Supervisor([_http_service("web", _free_port(), after_start=lambda: calls.append(1))],
                     paths, out=io.StringIO())
    sup.up()
    sup.up()
    assert calls == [1, 1]
    sup.down()


def test_taken_port_is_reported_with_service_and_port(paths: StackPaths) -> None:
    port = _free_port()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        sup = Supervisor([_http_service("web", port)], paths, out=io.StringIO())
        with pytest.raises(StackError) as err:
            sup.up()
    assert f"port {port}" in str(err.value) and "service web" in str(err.value)
    assert f"pid {os.getpid()}" in str(err.value)  # names the holder
    assert not paths.pidfile("web").exists()


def test_missing_tool_is_reported_with_hint(paths: StackPaths) -> None:
    spec = ServiceSpec(name="broker", argv=["no-such-tool-xyz"],
                       requires={"no-such-tool-xyz": "apt-get install xyz"})
    with pytest.raises(StackError, match=r"broker needs 'no-such-tool-xyz'.*apt-get install xyz"):
        Supervisor([spec], paths, out=io.StringIO()).up()


def test_stale_pid_file_is_replaced(paths: StackPaths) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    paths.pidfile("web").parent.mkdir(parents=True)
    paths.pidfile("web").write_text(json.dumps({"pid": dead.pid, "create_time": 1.0}))
    out = io.StringIO()
    sup = Supervisor([_http_service("web", _free_port())], paths, out=out)
    sup.up()
    assert "stale pid file" in out.getvalue()
    assert _pid(paths, "web") != dead.pid and sup.status()
    sup.down()


def test_garbage_pid_file_is_stale(paths: StackPaths) -> None:
    paths.pidfile("web").parent.mkdir(parents=True)
    paths.pidfile("web").write_text("not json")
    sup = Supervisor([_http_service("web", _free_port())], paths, out=io.StringIO())
    sup.up()
    assert sup.status()
    sup.down()


def test_failed_start_stops_what_was_started_and_shows_log(paths: StackPaths) -> None:
    good = _http_service("web", _free_port())
    bad = ServiceSpec(name="bad", argv=[sys.executable, "-c",
                                        "print('boom: config broken', flush=True); exit(3)"],
                      healthy=lambda: False, start_timeout_s=10)
    sup = Supervisor([good, bad], paths, out=io.StringIO())
    with pytest.raises(StackError) as err:
        sup.up()
    message = str(err.value)
    assert "service bad exited with status 3" in message
    assert "boom: config broken" in message and str(paths.log("bad")) in message
    assert not paths.pidfile("web").exists() and not paths.pidfile("bad").exists()


def test_health_timeout_fails_and_stops(paths: StackPaths) -> None:
    spec = ServiceSpec(name="slow", argv=[sys.executable, "-c", "import time; time.sleep(60)"],
                       healthy=lambda: False, start_timeout_s=1.5, stop_timeout_s=2)
    sup = Supervisor([spec], paths, out=io.StringIO())
    with pytest.raises(StackError, match="did not become healthy within 2s"):
        sup.up()
    assert not paths.pidfile("slow").exists()


def test_down_kills_whole_group_and_sigterm_resistant_processes(paths: StackPaths) -> None:
    # The leader ignores SIGTERM and has a child that ignores it too.
    code = ("import signal, subprocess, sys, time\n"
            "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "subprocess.Popen([sys.executable, '-c', 'import signal, time; "
            "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)'])\n"
            "print('ready', flush=True)\n"
            "time.sleep(120)\n")
    log_has_ready = lambda: "ready" in paths.log("stubborn").read_text()  # noqa: E731
    spec = ServiceSpec(name="stubborn", argv=[sys.executable, "-c", code],
                       healthy=log_has_ready, start_timeout_s=10, stop_timeout_s=1)
    sup = Supervisor([spec], paths, out=io.StringIO())
    sup.up()
    leader = psutil.Process(_pid(paths, "stubborn"))
    deadline = time.monotonic() + 5
    while not leader.children() and time.monotonic() < deadline:
        time.sleep(0.1)
    group = [leader, *leader.children(recursive=True)]
    assert len(group) == 2
    assert sup.down() is True
    for proc in group:
        assert not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE


def test_down_reaches_orphans_of_a_dead_leader(paths: StackPaths) -> None:
    code = ("import subprocess, sys\n"
            "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
            "print('ready', flush=True)\n")
    spec = ServiceSpec(name="forker", argv=[sys.executable, "-c", code],
                       healthy=lambda: "ready" in paths.log("forker").read_text())
    sup = Supervisor([spec], paths, out=io.StringIO())
    sup.up()  # healthy as soon as the leader printed; it then exits, its child lives on
    pgid = _pid(paths, "forker")
    deadline = time.monotonic() + 5
    orphans: list[psutil.Process] = []
    while time.monotonic() < deadline:
        orphans = [p for p in psutil.process_iter() if _pgid(p) == pgid and p.pid != pgid]
        if orphans:
            break
        time.sleep(0.1)
    assert orphans
    assert sup.down() is True
    assert all(not p.is_running() or p.status() == psutil.STATUS_ZOMBIE for p in orphans)


def _pgid(proc: psutil.Process) -> int | None:
    try:
        return os.getpgid(proc.pid)
    except (ProcessLookupError, psutil.NoSuchProcess):
        return None


def test_heartbeat_health(paths: StackPaths, tmp_path: Path) -> None:
    beat = tmp_path / "health" / "svc"
    code = f"import time, os; time.sleep(0.3); open({str(beat)!r}, 'w').close(); time.sleep(60)"
    spec = ServiceSpec(name="svc", argv=[sys.executable, "-c", code], start_timeout_s=10,
                       healthy=lambda: heartbeat_healthy(beat, paths.pidfile("svc")))
    beat.parent.mkdir(parents=True)
    write_heartbeat(beat)  # a leftover from "before": must not count
    os.utime(beat, (time.time() - 5, time.time() - 5))
    sup = Supervisor([spec], paths, out=io.StringIO())
    sup.up()
    assert heartbeat_healthy(beat, paths.pidfile("svc"))
    os.utime(beat, (time.time() - 60, time.time() - 60))
    assert not heartbeat_healthy(beat, paths.pidfile("svc"), max_age_s=30)
    sup.down()
    write_heartbeat(beat)
    assert not heartbeat_healthy(beat, paths.pidfile("svc"))  # no process: not healthy



def test_all_preflight_problems_reported_before_anything_starts(paths: StackPaths) -> None:
    first = _http_service("first", _free_port())
    port = _free_port()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        sup = Supervisor([first, _http_service("second", port)], paths, out=io.StringIO())
        with pytest.raises(StackError, match=f"port {port} needed by service second"):
            sup.up()
    assert not paths.pidfile("first").exists()
    assert not paths.log("first").exists()  # never started


def test_reused_pid_is_never_signalled(paths: StackPaths) -> None:
    """A pid file whose pid now belongs to another process (other start time) is stale."""
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                                 start_new_session=True)
    try:
        paths.pidfile("web").parent.mkdir(parents=True)
        paths.pidfile("web").write_text(json.dumps({"pid": bystander.pid, "create_time": 1.0}))
        assert Supervisor([], paths, out=io.StringIO()).down() is True
        assert not paths.pidfile("web").exists()
        assert bystander.poll() is None  # untouched
    finally:
        bystander.kill()
        bystander.wait()
