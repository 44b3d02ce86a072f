"""The cluster topology end to end (``dcmms-telemetry up --profile cluster``, issue 14).

Brings up a stack of its own on the cluster topology: a Flink standalone session
cluster (JobManager + 2 TaskManagers) and three Kafka brokers, with the pipeline.
It must not touch the test profile's single-node stack that scripts/run-tests.sh
runs meanwhile on the same port block, so it takes that profile shifted by
:data:`PORT_OFFSET` (runners.profiles.shifted_environ): ports 2xxxx + 100, run dir
``.run-test-cluster``, its own bridge client id and consumer group. Both stacks
run side by side for the few minutes of this module; nothing is stopped or
restarted around it. The stack is stopped at the end whatever happens.

Checks: 2 TaskManagers registered with 1 slot each and the job's parallelism is 2;
3 brokers registered, the pipeline topics have 3 replicas and
``min.insync.replicas=2``; events posted over REST are stored once each; under
REST load, SIGKILL of one TaskManager: the job restarts (from its checkpoint),
the watcher restarts the TaskManager, and every acknowledged event is stored
exactly once. The heavier drills (a broker SIGKILL, MQTT load) are in
``make chaos CHAOS_ARGS="--profile cluster"``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from confluent_kafka.admin import AdminClient, ConfigResource

from api.auth import configured_api_key
from chaos.traffic import Asset, Traffic, make_event, post_until_accepted
from chaos.verify import QuestDBReader, compare
from config.settings import REPO_ROOT, load_settings
from runners.profiles import profile_environ, shifted_environ
from runners.stack import cluster

__all__: list[str] = []

pytestmark = pytest.mark.integration

PORT_OFFSET = 100


def _environ() -> dict[str, str]:
    # run-tests.sh exported the test profile; shift it so the single-node test stack and
    # this module's cluster never share a port, a run dir or a consumer group.
    base = profile_environ("test", {k: v for k, v in os.environ.items()
                                    if not k.startswith("DCMMS_") or k == "DCMMS_CONFIG"})
    env = shifted_environ(base, PORT_OFFSET, "cluster")
    env.pop("DCMMS_HEALTH_FILE", None)
    cluster.apply_topology("cluster", env)
    return env


ENV = _environ()
SETTINGS = load_settings(environ=ENV)
RUN = uuid.uuid4().hex[:8]


def _cli(*args: str, timeout_s: float = 600.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "runners.cli", *args], env=ENV, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=timeout_s, check=False)


def _rest(path: str) -> Any:
    url = f"http://127.0.0.1:{SETTINGS.flink.web_ui_port}{path}"
    return requests.get(url, timeout=5).json()


def _running_job() -> dict[str, Any] | None:
    jobs = [j for j in _rest("/jobs/overview")["jobs"] if j["state"] == "RUNNING"
            and j["tasks"]["running"] == j["tasks"]["total"]]
    return jobs[0] if jobs else None


def _wait(what: str, check, timeout_s: float, interval_s: float = 1.0) -> Any:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except (requests.RequestException, ValueError, KeyError) as exc:
            last_exc = exc
        time.sleep(interval_s)
    raise AssertionError(f"{what} not reached within {timeout_s:.0f} s (last error: {last_exc})")


@pytest.fixture(scope="module", autouse=True)
def cluster_stack() -> Iterator[None]:
    started = time.monotonic()
    up = _cli("up", "--profile", "cluster", "--with-pipeline")
    try:
        assert up.returncode == 0, (f"cluster stack did not start:\n{up.stdout[-3000:]}\n"
                                    f"{up.stderr[-3000:]}")
        print(f"cluster stack up in {time.monotonic() - started:.0f} s")
        _wait("the job running on every slot", _running_job, 240)
        yield
    finally:
        down = _cli("down")
        print(down.stdout[-2000:], down.stderr[-2000:])


def _api() -> tuple[str, str]:
    # The tests post events (write) and read them back (read).
    return f"http://127.0.0.1:{SETTINGS.api.port}", configured_api_key(SETTINGS, ("read", "write"))


def _assets() -> list[Asset]:
    import json

    doc = json.loads(SETTINGS.pipeline.assets_file.read_text())["assets"]
    return [Asset(a["site_id"], aid) for aid, a in doc.items()][:4]


def _reader() -> QuestDBReader:
    return QuestDBReader(f"http://127.0.0.1:{SETTINGS.questdb.http_port}")


def test_two_taskmanagers_three_brokers() -> None:
    status = _cli("status")
    assert status.returncode == 0, status.stdout + status.stderr
    for name in [*cluster.taskmanager_names(), *cluster.broker_names()]:
        assert name in status.stdout
    assert "NOT registered" not in status.stdout, status.stdout
    tms = _rest("/taskmanagers")["taskmanagers"]
    assert sorted(tm["id"] for tm in tms) == cluster.taskmanager_names()
    assert all(tm["slotsNumber"] == 1 for tm in tms)
    job = _running_job()
    assert job is not None
    vertices = _rest(f"/jobs/{job['jid']}")["vertices"]
    assert {v["parallelism"] for v in vertices} == {cluster.total_slots(SETTINGS)} == {2}

    admin = AdminClient({"bootstrap.servers": SETTINGS.kafka.bootstrap_servers})
    md = admin.list_topics(timeout=10)
    assert sorted(md.brokers) == [1, 2, 3]
    raw = SETTINGS.kafka.topic_raw
    assert all(len(p.replicas) == 3 for p in md.topics[raw].partitions.values())
    res = ConfigResource(ConfigResource.Type.TOPIC, raw)
    configs = next(iter(admin.describe_configs([res]).values())).result()
    assert configs["min.insync.replicas"].value == "2"


def test_events_round_trip() -> None:
    api_url, key = _api()
    assets = _assets()
    prefix = f"cl{RUN}-rt"
    since_ms = int(time.time() * 1000) - 1000
    events = [make_event(f"{prefix}-{i}", assets[i % len(assets)], f"{prefix}-s{i % 8}",
                         20.0 + i % 10) for i in range(300)]
    assert post_until_accepted(api_url, key, events)
    reader = _reader()
    reader.wait_drained(prefix, since_ms, len(events), timeout_s=120)
    verdict = compare({e["event_id"] for e in events}, reader.event_counts(prefix, since_ms))
    counts = reader.event_counts(prefix, since_ms)
    assert not verdict.lost, f"{len(verdict.lost)} lost, e.g. {sorted(verdict.lost)[:5]}"
    assert max(counts.values()) == 1


def test_taskmanager_sigkill_loses_nothing() -> None:
    api_url, key = _api()
    prefix = f"cl{RUN}-tm"
    since_ms = int(time.time() * 1000) - 1000
    traffic = Traffic(prefix, _assets(), mqtt_host="127.0.0.1",
                      mqtt_port=SETTINGS.mqtt.port, mqtt_user="", mqtt_password="",
                      api_url=api_url, api_key=key, mqtt_rate=0, rest_rate=150).start()
    victim = cluster.taskmanager_names()[0]
    try:
        time.sleep(8)
        before = _running_job()
        assert before is not None
        killed = _cli("kill", victim)
        assert killed.returncode == 0, killed.stderr
        t0 = time.monotonic()
        # Flink notices the lost TaskManager and restarts the job from its checkpoint ...
        _wait("the job leaving RUNNING", lambda: _running_job() is None, 60, 0.5)
        # ... and runs it again on both TaskManagers once the watcher restarted the victim.
        _wait("the job running on every slot again", _running_job, 240)
        tms = _wait("both TaskManagers registered",
                    lambda: all(cluster.taskmanager_health(SETTINGS).values()), 60)
        assert tms
        print(f"job running again {time.monotonic() - t0:.1f} s after SIGKILL {victim}")
        time.sleep(5)
    finally:
        traffic.stop()
    accepted = traffic.accepted
    assert len(accepted) > 1000, f"only {len(accepted)} events acknowledged under load"
    assert traffic.stats.http_5xx_defects == 0
    reader = _reader()
    reader.wait_drained(prefix, since_ms, len(accepted), timeout_s=120)
    counts = reader.event_counts(prefix, since_ms)
    verdict = compare(accepted, counts)
    assert not verdict.lost, f"{len(verdict.lost)} lost, e.g. {sorted(verdict.lost)[:5]}"
    doubled = {k: n for k, n in counts.items() if n > 1}
    assert not doubled, f"{len(doubled)} stored twice, e.g. {list(doubled)[:5]}"
