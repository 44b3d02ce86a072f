"""Quick crash drills for ``make test`` (the full suite is ``make chaos``, docs/reliability.md).

Both drills run throw-away edge processes of their own (a bridge, a gunicorn
API) against the stack's Mosquitto, Kafka and registry, writing to this
module's own Kafka topics, so the shared stack's processes are never killed:

* SIGKILL the MQTT bridge under MQTT load and start it again with the same
  client id: every event the publisher got a PUBACK for is in the raw topic;
* SIGKILL a gunicorn worker under REST load: every event answered 202 is in
  the raw topic, and no answer was a 5xx other than 503.

Duplicates in Kafka are allowed (at-least-once edge; the pipeline and
QuestDB's DEDUP remove them) and reported.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from chaos.badinput import kafka_end_offsets, read_topic
from chaos.traffic import Asset, Traffic
from config.settings import REPO_ROOT, Settings, load_settings
from tests.integration.conftest import free_port, stop_process_group
from tests.integration.test_mqtt_bridge import _require_services

__all__: list[str] = []

_LOGGER = logging.getLogger(__name__)

pytestmark = pytest.mark.integration

SETTINGS = load_settings()
KAFKA = SETTINGS.kafka.bootstrap_servers
RUN_ID = uuid.uuid4().hex[:8]
RAW, DLQ = f"chaos_smoke_raw_{RUN_ID}", f"chaos_smoke_dlq_{RUN_ID}"
KEY = f"chaos-smoke-{RUN_ID}"
# Asset ids unknown to the catalogue: if the stack's own bridge forwards these
# publishes too (shared subscriptions give each group a copy), its pipeline
# dead-letters them instead of storing test rows.
ASSETS = [Asset(f"chaos-smoke-site-{RUN_ID}", f"chaos-smoke-asset-{RUN_ID}-{i}")
          for i in range(4)]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update({"DCMMS_KAFKA_TOPIC_RAW": RAW, "DCMMS_KAFKA_TOPIC_DLQ": DLQ,
                "DCMMS_API_API_KEYS": f"{KEY}:read+write"})
    env.pop("DCMMS_HEALTH_FILE", None)
    return env


def _topic_settings() -> Settings:
    values = {s: SETTINGS.section(s) for s in ("stack", "kafka", "schema_registry")}
    values["kafka"].update(topic_raw=RAW, topic_dlq=DLQ)
    return Settings(values, Path("chaos-smoke"), {})


@pytest.fixture(scope="module", autouse=True)
def topics() -> Iterator[None]:
    _require_services()
    admin = AdminClient({"bootstrap.servers": KAFKA})
    for fut in admin.create_topics([NewTopic(t, 8, 1) for t in (RAW, DLQ)],
                                   operation_timeout=30).values():
        fut.result()
    yield
    for fut in admin.delete_topics([RAW, DLQ]).values():
        try:
            fut.result()
        except Exception as exc:  # noqa: BLE001 - cleanup only
            _LOGGER.warning("could not delete a test topic: %s", exc)


def _start_bridge(log: Path, client_id: str) -> subprocess.Popen[bytes]:
    fh = log.open("ab")
    proc = subprocess.Popen([sys.executable, "-m", "runners.mqtt_bridge", "--client-id",
                             client_id, "--share-group", f"chaos-smoke-{RUN_ID}",
                             "--session-expiry-s", "300", "--metrics-port", "0"],
                            cwd=REPO_ROOT, env=_env(),
                            stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    start = log.stat().st_size if log.exists() else 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if b"bridge ready" in log.read_bytes()[max(0, start - 2000):] and proc.poll() is None:
            return proc
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    pytest.fail(f"the test bridge did not get ready; log {log}:\n"
                f"{log.read_text(errors='replace')[-2000:]}")


def _events(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The events of raw records: a TelemetryBatch's events, or the record itself."""
    return [event for record in records for event in record.get("events", [record])]


def _arrived(accepted: set[str], start: dict[int, int]) -> Counter[str]:
    records = read_topic(_topic_settings(), RAW, start,
                         lambda r: accepted <= {x.get("event_id") for x in _events(r)},
                         timeout_s=90)
    return Counter(r.get("event_id") for r in _events(records))


def test_bridge_sigkill_under_mqtt_load_loses_nothing(tmp_path: Path) -> None:
    start = kafka_end_offsets(KAFKA, RAW)
    log = tmp_path / "bridge.log"
    client_id = f"chaos-smoke-bridge-{RUN_ID}"
    bridge = _start_bridge(log, client_id)
    traffic = Traffic(f"smoke{RUN_ID}-b", ASSETS, mqtt_host=SETTINGS.mqtt.host,
                      mqtt_port=SETTINGS.mqtt.port,
                      mqtt_user=SETTINGS.mqtt.sensor_username,
                      mqtt_password=SETTINGS.mqtt.sensor_password,
                      api_url="http://unused", api_key="", mqtt_rate=300, rest_rate=0).start()
    try:
        time.sleep(4)
        os.killpg(bridge.pid, signal.SIGKILL)
        bridge.wait(10)
        time.sleep(2)  # publishes go on; the broker queues them for the dead session
        bridge = _start_bridge(log, client_id)  # same client id: resumes the session
        time.sleep(4)
    finally:
        traffic.stop()
    try:
        accepted = traffic.accepted
        assert len(accepted) > 1500, f"too little load got through: {len(accepted)} acked"
        arrived = _arrived(accepted, start)
    finally:
        stop_process_group(bridge)
    lost = sorted(accepted - set(arrived))
    assert not lost, f"{len(lost)} PUBACKed events missing from Kafka, e.g. {lost[:5]}"
    _LOGGER.info("bridge drill: %d acked, %d copies in Kafka", len(accepted),
                 sum(arrived.values()))


def test_gunicorn_worker_sigkill_under_rest_load_loses_nothing(tmp_path: Path) -> None:
    start = kafka_end_offsets(KAFKA, RAW)
    port = free_port()
    log = (tmp_path / "api.log").open("ab")
    api = subprocess.Popen([sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}",
                            "--workers", "2", "--no-control-socket", "runners.wsgi:app"],
                           cwd=REPO_ROOT, env=_env(), stdout=log, stderr=subprocess.STDOUT,
                           start_new_session=True)
    try:
        import requests

        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).ok:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline or api.poll() is not None:
                pytest.fail(f"the test API did not start: {(tmp_path / 'api.log').read_text()}")
            time.sleep(0.3)
        traffic = Traffic(f"smoke{RUN_ID}-r", ASSETS, mqtt_host="", mqtt_port=0, mqtt_user="",
                          mqtt_password="", api_url=f"http://127.0.0.1:{port}", api_key=KEY,
                          mqtt_rate=0, rest_rate=300, rest_batch=20).start()
        try:
            time.sleep(4)
            workers = psutil.Process(api.pid).children()
            assert len(workers) == 2, workers
            before_kill = len(traffic.accepted)
            os.kill(workers[0].pid, signal.SIGKILL)
            time.sleep(5)
        finally:
            traffic.stop()
        accepted = traffic.accepted
        # The API kept accepting after the kill (the other worker, then the replacement).
        assert len(accepted) > before_kill + 200, (before_kill, len(accepted),
                                                   traffic.stats.http_status)
        assert traffic.stats.http_5xx_defects == 0, traffic.stats.http_status
        assert len(psutil.Process(api.pid).children()) == 2, "gunicorn did not replace the worker"
        arrived = _arrived(accepted, start)
    finally:
        stop_process_group(api)
        log.close()
    lost = sorted(accepted - set(arrived))
    assert not lost, f"{len(lost)} events answered 202 missing from Kafka, e.g. {lost[:5]}"
