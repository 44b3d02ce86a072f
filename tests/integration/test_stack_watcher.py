"""The watcher of the test-profile stack: a SIGKILLed service comes back by itself.

Kills Mosquitto (cheap to restart) with ``dcmms-telemetry kill``, exactly as a
crash drill does, and waits until the watcher has started it again: healthy,
a new pid, one more restart and the kill as last exit in ``dcmms-telemetry
status``. Ends only when the whole stack is healthy again (the bridge
reconnects or is restarted too), so the tests after it find a working stack.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from config.settings import REPO_ROOT, load_settings
from runners.stack.mosquitto import check_login
from runners.stack.supervisor import (
    ServiceStatus,
    Supervisor,
    load_specs,
    paths_from_settings,
    stack_modules,
)
from tests.integration.conftest import wait_for

__all__: list[str] = []

pytestmark = pytest.mark.integration

SETTINGS = load_settings()
VICTIM = "mosquitto"


def _supervisor() -> Supervisor:
    paths = paths_from_settings(SETTINGS)
    specs = load_specs(SETTINGS, paths, stack_modules(with_pipeline=False))
    return Supervisor(specs, paths, bind_host=SETTINGS.stack.bind_host)


def _row(sup: Supervisor, name: str) -> ServiceStatus:
    return next(r for r in sup.statuses() if r.name == name)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    # The conftest put the test profile into os.environ: the CLI works on the test stack.
    return subprocess.run([sys.executable, "-m", "runners.cli", *args], cwd=REPO_ROOT,
                          env=dict(os.environ), capture_output=True, text=True, timeout=120)


def test_sigkilled_service_is_restarted_by_the_watcher() -> None:
    sup = _supervisor()
    watcher = _row(sup, "watcher")
    if not watcher.healthy:
        pytest.fail(f"the test stack's watcher is not running (log {sup.paths.log('watcher')}); "
                    "start the stack with `make test` or `dcmms-telemetry up` (test profile)")
    before = _row(sup, VICTIM)
    assert before.healthy and before.pid is not None, f"{VICTIM} is not up: {before}"

    killed = _cli("kill", VICTIM)
    assert killed.returncode == 0, killed.stdout + killed.stderr

    def restarted() -> ServiceStatus | None:
        # The count is part of the condition: status reads the watcher's restarts.json and
        # the process table separately, so one read can see the new process before the
        # count (make test 19:20 UTC, 2026-11-30: new pid, restarts still 0). A count that
        # never moves still fails here, after the timeout.
        row = _row(sup, VICTIM)
        done = (row.healthy and row.pid not in (None, before.pid)
                and row.restarts == before.restarts + 1)
        return row if done else None

    after = wait_for(f"{VICTIM} restarted by the watcher and counted once "
                     f"(log {sup.paths.log('watcher')})", restarted, timeout_s=90, interval_s=0.5)
    assert after.restarts == before.restarts + 1
    assert after.last_exit == "SIGKILL from dcmms-telemetry kill"
    host, port = SETTINGS.mqtt.host, SETTINGS.mqtt.port
    assert check_login(host, port, SETTINGS.mqtt.sensor_username,
                       SETTINGS.mqtt.sensor_password) == 0

    status = _cli("status")
    line = next(ln for ln in status.stdout.splitlines() if ln.startswith(VICTIM))
    assert "SIGKILL from dcmms-telemetry kill" in line, status.stdout
    restarts_column = status.stdout.splitlines()[0].index("restarts") + len("restarts")
    assert line[:restarts_column].split()[-1] == str(before.restarts + 1), status.stdout

    wait_for("every service of the test stack healthy again",
             lambda: all(r.healthy for r in sup.statuses()), timeout_s=120)
