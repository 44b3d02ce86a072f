"""Generated bad input at the edge's entry points, with valid sentinels in between (make test).

The same generators and checks as ``make chaos`` (:mod:`chaos.badinput`), at a
small volume (``CASES`` per entry), against a throw-away bridge and gunicorn API
of this module that write to its own Kafka topics (so the shared stack's
processes and topics are neither disturbed nor counted):

* MQTT payloads and topics: each acknowledged publish is in the raw topic (when
  the edge's rules accept it) or in the dead-letter topic with its topic and
  original bytes (when they reject it); sentinels all arrive;
* REST bodies and headers: 202, or a 4xx with a reason; accepted items and
  sentinels all arrive; never a 5xx;
* query parameters on every GET route: 200, 400 or 404 with a reason;
* no process of the edge crashed (same pids before and after).

Raw bytes on ``raw_telemetry`` need the pipeline, so they are in ``make chaos`` only.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from confluent_kafka.admin import AdminClient, NewTopic

from chaos.badinput import Target, run_entry
from config.settings import REPO_ROOT, Settings, load_settings
from tests.integration.conftest import free_port, stop_process_group
from tests.integration.test_mqtt_bridge import _require_services

__all__: list[str] = []

_LOGGER = logging.getLogger(__name__)

pytestmark = pytest.mark.integration

CASES = 100
SETTINGS = load_settings()
KAFKA = SETTINGS.kafka.bootstrap_servers
RUN_ID = uuid.uuid4().hex[:8]
RAW, DLQ = f"bad_input_raw_{RUN_ID}", f"bad_input_dlq_{RUN_ID}"
KEY = f"bad-input-{RUN_ID}"
# Unknown to the asset catalogue: copies the stack's own bridge forwards are dead-lettered.
PLACE = (f"bad-input-site-{RUN_ID}", f"bad-input-asset-{RUN_ID}")


def _settings(api_port: int) -> Settings:
    values = {s: SETTINGS.section(s) for s in ("stack", "kafka", "schema_registry", "questdb",
                                               "mqtt", "api", "pipeline")}
    values["kafka"].update(topic_raw=RAW, topic_dlq=DLQ)
    values["api"].update(api_keys=f"{KEY}:read+write", port=api_port)
    return Settings(values, Path("bad-input-test"), {})


def _env(api_port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "DCMMS_HEALTH_FILE"}
    env.update({"DCMMS_KAFKA_TOPIC_RAW": RAW, "DCMMS_KAFKA_TOPIC_DLQ": DLQ,
                "DCMMS_API_API_KEYS": f"{KEY}:read+write", "DCMMS_API_PORT": str(api_port)})
    return env


def _wait(what: str, proc: subprocess.Popen[bytes], log: Path, ready: object) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if ready():  # type: ignore[operator]
                return
        except requests.RequestException:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.3)
    pytest.fail(f"the test {what} did not get ready; log {log}:\n"
                f"{log.read_text(errors='replace')[-2000:]}")


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    _require_services()
    admin = AdminClient({"bootstrap.servers": KAFKA})
    for fut in admin.create_topics([NewTopic(t, 8, 1) for t in (RAW, DLQ)],
                                   operation_timeout=30).values():
        fut.result()
    logs = tmp_path_factory.mktemp("bad-input")
    port = free_port()
    env = _env(port)
    bridge_log, api_log = logs / "bridge.log", logs / "api.log"
    procs = {
        "bridge": subprocess.Popen(
            [sys.executable, "-m", "runners.mqtt_bridge", "--client-id", f"bad-input-{RUN_ID}",
             "--share-group", f"bad-input-{RUN_ID}", "--session-expiry-s", "60",
             "--metrics-port", "0"],
            cwd=REPO_ROOT, env=env, stdout=bridge_log.open("ab"), stderr=subprocess.STDOUT,
            start_new_session=True),
        "api": subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "2",
             "--no-control-socket", "runners.wsgi:app"],
            cwd=REPO_ROOT, env=env, stdout=api_log.open("ab"), stderr=subprocess.STDOUT,
            start_new_session=True),
    }
    try:
        _wait("bridge", procs["bridge"], bridge_log,
              lambda: b"bridge ready" in bridge_log.read_bytes())
        _wait("API", procs["api"], api_log,
              lambda: requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).ok)

        def pids() -> dict[str, int]:
            return {name: proc.pid for name, proc in procs.items() if proc.poll() is None}

        yield Target(settings=_settings(port), api_url=f"http://127.0.0.1:{port}", api_key=KEY,
                     storage=False, pids=pids, place=PLACE)
    finally:
        for proc in procs.values():
            stop_process_group(proc)
        for fut in admin.delete_topics([RAW, DLQ]).values():
            try:
                fut.result()
            except Exception as exc:  # noqa: BLE001 - cleanup only
                _LOGGER.warning("could not delete a test topic: %s", exc)


@pytest.mark.parametrize("entry", ["mqtt", "rest-body", "rest-headers", "query"])
def test_generated_bad_input_is_handled(target: Target, entry: str) -> None:
    result = run_entry(target, entry, CASES)
    summary = (f"{entry}: {result.cases} cases, statuses {dict(result.statuses)}, dead letters "
               f"{result.dead_letters_found}/{result.dead_letters_expected}, valid "
               f"{result.valid_found}/{result.valid_expected}, sentinels "
               f"{result.sentinels_found}/{result.sentinels_sent}, crashed {result.crashed}, "
               f"problems {result.problems[:5]}")
    assert result.cases >= CASES // 2, summary
    assert result.http_5xx == 0, summary
    assert not result.crashed, summary
    assert result.missing_reason == 0, summary
    if entry != "query":  # queries write nothing: no sentinel to interleave
        assert result.sentinels_sent > 0, summary
    assert result.sentinels_found == result.sentinels_sent, summary
    assert result.valid_found == result.valid_expected, summary
    assert result.dead_letters_found == result.dead_letters_expected, summary
    assert result.ok, summary
