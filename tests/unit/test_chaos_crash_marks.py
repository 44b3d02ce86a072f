"""What the bad-input drill counts as a crash besides service pids (chaos/badinput.py):
gunicorn worker pids and the Flink job's id, restart count and exception history; the
setting syntax of the Mosquitto persistence probe (chaos/mqtt_persistence.py) and the
autosave settings it measures reaching mosquitto.conf (runners/stack/mosquitto.py)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

from chaos.badinput import flink_job_marks, gunicorn_workers
from chaos.mqtt_persistence import Setting, parse_setting
from config.settings import PipelineSettings
from tests.unit.json_server import JsonServer

JOB = PipelineSettings.job_name  # [pipeline] job_name's default


def test_a_replaced_worker_changes_the_marks() -> None:
    workers = [subprocess.Popen(["sleep", "30"]) for _ in range(2)]
    try:
        me = psutil.Process()
        before = gunicorn_workers(me)
        assert {f"api worker {w.pid}": w.pid for w in workers}.items() <= before.items()
        workers[0].kill()
        workers[0].wait(5)
        workers.append(subprocess.Popen(["sleep", "30"]))   # the master's replacement
        after = gunicorn_workers(me)
        assert f"api worker {workers[0].pid}" not in after
        assert after[f"api worker {workers[1].pid}"] == workers[1].pid
    finally:
        for w in workers:
            w.kill()
            w.wait(5)
    assert gunicorn_workers(None) == {}


class _FakeFlink:
    """Flink REST's three answers the marks read; ``state`` is changed by the test."""

    def __init__(self) -> None:
        self.state: dict[str, Any] = {"jid": "j1", "restarts": 0, "failures": 0,
                                      "name": JOB, "job_state": "RUNNING"}
        self.server = JsonServer(self._route)
        self.url = self.server.url

    def _route(self, path: str) -> Any:
        st = self.state
        if path == "/jobs/overview":
            return {"jobs": [{"jid": st["jid"], "name": st["name"], "state": st["job_state"],
                              "start-time": 1}]}
        if path == f"/jobs/{st['jid']}/metrics":
            return [{"id": "numRestarts", "value": str(st["restarts"])}]
        if path == f"/jobs/{st['jid']}/exceptions":
            return {"exceptionHistory": {"entries": [{"exceptionName": "x"}] * st["failures"]}}
        return None


@pytest.fixture()
def flink() -> Iterator[_FakeFlink]:
    fake = _FakeFlink()
    with fake.server:
        yield fake


def test_flink_restart_failure_or_new_job_changes_the_marks(flink: _FakeFlink) -> None:
    first = flink_job_marks(flink.url, JOB)
    assert first == {"flink job j1 restarts": 0, "flink job j1 failures": 0}
    assert flink_job_marks(flink.url, JOB) == first            # nothing happened: equal
    flink.state["restarts"] = 1                           # a task failed, job restarted
    assert flink_job_marks(flink.url, JOB)["flink job j1 restarts"] == 1
    flink.state["failures"] = 2
    assert flink_job_marks(flink.url, JOB)["flink job j1 failures"] == 2
    flink.state.update(jid="j2", restarts=0, failures=0)  # resubmitted after a crash
    assert not set(first) & set(flink_job_marks(flink.url, JOB))


def test_no_marks_without_a_running_job(flink: _FakeFlink) -> None:
    flink.state["job_state"] = "RESTARTING"
    assert flink_job_marks(flink.url, JOB) == {}
    flink.state.update(job_state="RUNNING", name="another-job")
    assert flink_job_marks(flink.url, JOB) == {}
    flink.server.close()
    assert flink_job_marks(flink.url, JOB) == {}   # not answering: the job server's pid tells


def test_persistence_probe_settings() -> None:
    assert parse_setting("30") == Setting(30)
    assert parse_setting(" changes:100 ") == Setting(100, on_changes=True)
    assert Setting(100, True).lines() == ["autosave_interval 100", "autosave_on_changes true"]
    with pytest.raises(ValueError):
        parse_setting("every:5")


def test_mosquitto_conf_carries_the_autosave_settings(tmp_path: Any) -> None:
    """[mqtt] autosave_interval / autosave_on_changes reach mosquitto.conf (the settings the
    persistence probe measures); 0 (autosave off) is refused naming the setting."""
    from config.settings import load_settings
    from runners.stack import mosquitto
    from runners.stack.spec import StackPaths

    paths = StackPaths(run_dir=tmp_path, jar_cache=tmp_path / "jars")
    env = {"DCMMS_MQTT_AUTOSAVE_INTERVAL": "5", "DCMMS_MQTT_AUTOSAVE_ON_CHANGES": "true"}
    (spec,) = mosquitto.services(load_settings(environ=env), paths)
    spec.prepare()
    conf = (paths.conf("mosquitto") / "mosquitto.conf").read_text().splitlines()
    assert "autosave_interval 5" in conf and "autosave_on_changes true" in conf
    with pytest.raises(ValueError, match="DCMMS_MQTT_AUTOSAVE_INTERVAL"):
        mosquitto.services(load_settings(environ={"DCMMS_MQTT_AUTOSAVE_INTERVAL": "0"}), paths)
