"""Nothing of the stack listens on a wildcard address ([stack] bind_host only).

The stack's services speak unauthenticated protocols (the Flink job API, the
Java expansion service and the SDK worker pool are plain gRPC: whoever reaches
them runs code). Every one must listen on ``[stack] bind_host`` (127.0.0.1 by
default), never on ``0.0.0.0`` / ``::``. The test takes every process of the
test-profile stack (the pid files of its services and all their children:
SDK workers, gunicorn workers) and, while a real telemetry job runs on the job
server (its Flink mini cluster, the Fn API servers the SDK workers talk to),
lists their listening TCP sockets with psutil.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from collections.abc import Callable

import psutil
import pytest

from config.settings import load_settings
from runners.stack.supervisor import paths_from_settings
from schemas.avro import SENSOR_READING
from tests.integration.conftest import FlinkJob, wait_for
from tests.integration.test_pipeline_flink import OUTPUT_WAIT_S, Scenario, scenario  # noqa: F401

pytestmark = [pytest.mark.integration, pytest.mark.flink]

SETTINGS = load_settings()


def _stack_processes() -> dict[int, str]:
    """pid -> service name for every running process of the stack (and its children)."""
    paths = paths_from_settings(SETTINGS)
    out: dict[int, str] = {}
    for pidfile in sorted((paths.run_dir / "pids").glob("*.pid")):
        service = pidfile.stem
        try:
            proc = psutil.Process(int(json.loads(pidfile.read_text())["pid"]))
            family = [proc, *proc.children(recursive=True)]
        except (OSError, ValueError, KeyError, psutil.Error):
            continue
        for p in family:
            out[p.pid] = service
    return out


def _wildcard_listeners(bind_host: str) -> tuple[list[str], int]:
    """(the stack's listening sockets not on ``bind_host``, how many sockets were checked)."""
    procs = _stack_processes()
    host = ipaddress.ip_address(bind_host)
    # A Java socket on an IPv4 address may be reported in its IPv4-mapped IPv6 form.
    allowed = {host, ipaddress.ip_address(f"::ffff:{host}")} if host.version == 4 else {host}
    bad: list[str] = []
    checked = 0
    for pid, service in procs.items():
        try:
            proc = psutil.Process(pid)
            conns = proc.net_connections(kind="inet")
            cmd = " ".join(proc.cmdline())[:120]
        except psutil.Error:
            continue
        for conn in conns:
            # TCP listeners, and UDP sockets bound to a local port (UDP has no LISTEN state).
            udp = conn.type == socket.SOCK_DGRAM and bool(conn.laddr) and not conn.raddr
            if conn.status != psutil.CONN_LISTEN and not udp:
                continue
            checked += 1
            if ipaddress.ip_address(conn.laddr.ip) not in allowed:
                bad.append(f"{service} (pid {pid}: {cmd}) {'UDP' if udp else 'listens'} on "
                           f"{conn.laddr.ip}:{conn.laddr.port}")
    return bad, checked


def test_no_service_listens_on_a_wildcard_address(
        scenario: Scenario, flink_job: Callable[..., FlinkJob]) -> None:  # noqa: F811
    bind_host = SETTINGS.stack.bind_host
    s = scenario
    flink_job(s.job_args())
    # A record through the job: the mini cluster, the SDK workers and their Fn API
    # servers all exist now.
    s.send(s.encode(s.event("bind-1", 21.0)))
    s.flush()
    wait_for("the event on the validated topic",
             lambda: s.decoded(s.validated, SENSOR_READING), OUTPUT_WAIT_S, 2.0)
    bad, checked = _wildcard_listeners(bind_host)
    services = set(_stack_processes().values())
    for needed in ("flink-jobserver", "kafka-expansion", "beam-worker-pool", "kafka",
                   "questdb", "mosquitto", "registry", "api"):
        assert needed in services, f"{needed} is not running ({sorted(services)})"
    assert checked >= 10, f"only {checked} listening sockets found; is psutil seeing them?"
    assert not bad, ("listening beyond [stack] bind_host = " + bind_host + ":\n  "
                     + "\n  ".join(bad))
