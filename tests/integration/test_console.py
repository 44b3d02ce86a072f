"""The operator console in real headless Chromium, against real services (issue 13).

Everything runs on the test stack: a telemetry job on Flink reading a scratch raw topic
fed by an MQTT bridge of this module (so the readings really travel over MQTT), scratch
validated/alarms/dead-letter topics, a copy of the asset catalog the job re-reads every
2 s, and the console app of :mod:`api.console` served from this process for that job.
Chromium is Debian's (``/usr/bin/chromium``, scripts/install-system-deps.sh), driven by
Playwright from PyPI; no browser is downloaded.

One test walks an operator's path: sign in with the API key, see a reading sent over
MQTT in the rates and on the asset's chart, see a reading of an unknown asset under
Dead letters, add the asset to the catalog, replay it twice and find it stored once,
acknowledge an alarm. It also checks the console service of the stack answers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from config.settings import load_settings
from tests.integration.conftest import (
    FlinkJob,
    flink_metrics,
    free_port,
    qdb_exec,
    scratch_topics,
    wait_for,
)

pytestmark = pytest.mark.integration

SETTINGS = load_settings()
REPO_ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("DCMMS_CHROMIUM", "/usr/bin/chromium")
KEY = "dev-api-key"
RUN = uuid.uuid4().hex[:8]
SITE = "site-001"
ASSET = f"asset-ui-{RUN}"
NEW_ASSET = f"asset-ui-new-{RUN}"
TOPICS = {k: f"console_test_{k}_{RUN}" for k in ("raw", "validated", "alarms", "dlq")}
MQTT = (SETTINGS.mqtt.host, SETTINGS.mqtt.port)
SENSOR_AUTH = {"username": SETTINGS.mqtt.sensor_username,
               "password": SETTINGS.mqtt.sensor_password}
WAIT_S = 90


def publish(asset: str, sensor: str, value: float, event_id: str) -> None:
    from paho.mqtt import publish as mqtt_publish

    body = {"event_id": event_id, "timestamp": int(time.time() * 1000), "sensor_id": sensor,
            "value": value, "unit": "celsius", "quality_flag": "GOOD"}
    mqtt_publish.single(f"telemetry/{SITE}/{asset}/TEMPERATURE", json.dumps(body), qos=1,
                        hostname=MQTT[0], port=MQTT[1], auth=SENSOR_AUTH,
                        client_id=f"console-test-{uuid.uuid4().hex[:6]}")


def stored(event_id: str) -> int:
    body = qdb_exec(SETTINGS, "SELECT count() FROM sensor_readings "
                              f"WHERE event_id = '{event_id}'")
    return int(body["dataset"][0][0])


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], None]]:
    """A copy of config/assets.json with ASSET in it; ``add(asset_id)`` adds another."""
    path = tmp_path_factory.mktemp("console") / "assets.json"
    doc = json.loads((REPO_ROOT / "config/assets.json").read_text())
    template = doc["assets"]["asset-001"]
    doc["assets"][ASSET] = dict(template, site_id=SITE)
    path.write_text(json.dumps(doc))

    def add(asset_id: str) -> None:
        doc["assets"][asset_id] = dict(template, site_id=SITE)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc))
        tmp.replace(path)  # atomic: the job never reads half a file

    add.path = path  # type: ignore[attr-defined]
    yield add


@pytest.fixture(scope="module")
def bridge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """An MQTT bridge of this module writing to the scratch raw and dead-letter topics."""
    log_path = tmp_path_factory.mktemp("bridge") / "bridge.log"
    env = {**os.environ, "DCMMS_KAFKA_TOPIC_RAW": TOPICS["raw"],
           "DCMMS_KAFKA_TOPIC_DLQ": TOPICS["dlq"], "PYTHONUNBUFFERED": "1"}
    with scratch_topics(SETTINGS, list(TOPICS.values())), log_path.open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "runners.mqtt_bridge", "--client-id", f"console-{RUN}",
             "--share-group", f"console-{RUN}", "--session-expiry-s", "60",
             "--metrics-port", "0"],
            cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for("the test's MQTT bridge", lambda: "bridge ready" in log_path.read_text(
                errors="replace") or proc.poll() is not None, 30, 0.2)
            assert proc.poll() is None, log_path.read_text(errors="replace")
            yield
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture()
def console_url(bridge: None, catalog: Any, flink_job: Callable[..., FlinkJob]
                ) -> Iterator[tuple[str, FlinkJob]]:
    """The job, and the console app for it served from this process (werkzeug, threads)."""
    from werkzeug.serving import make_server

    from api.console import create_console_app

    args = {"raw_topic": TOPICS["raw"], "validated_topic": TOPICS["validated"],
            "alarms_topic": TOPICS["alarms"], "dlq_topic": TOPICS["dlq"],
            "consumer_group": f"console-{RUN}", "assets_file": str(catalog.path),
            "asset_refresh_seconds": 2, "checkpointing_interval": 5000}
    job = flink_job([f"--{k}={v}" for k, v in args.items()])
    wait_for("the job to run", lambda: job.flink_job_id(), WAIT_S)
    env = {**os.environ,
           "DCMMS_KAFKA_TOPIC_RAW": TOPICS["raw"], "DCMMS_KAFKA_TOPIC_VALIDATED":
           TOPICS["validated"], "DCMMS_KAFKA_TOPIC_ALARMS": TOPICS["alarms"],
           "DCMMS_KAFKA_TOPIC_DLQ": TOPICS["dlq"],
           "DCMMS_PIPELINE_CONSUMER_GROUP": f"console-{RUN}",
           "DCMMS_PIPELINE_JOB_NAME": job.job_name,
           "DCMMS_FLINK_WEB_UI_PORT": str(urlsplit(job.rest_url).port),
           "DCMMS_PIPELINE_ASSETS_FILE": str(catalog.path),
           "DCMMS_CONSOLE_SAMPLE_INTERVAL_S": "2"}
    app = create_console_app(load_settings(environ=env))
    port = free_port()
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}", job
    finally:
        server.shutdown()
        app.extensions["dcmms_console"].sampler.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium not found at {CHROMIUM} (DCMMS_CHROMIUM); "
                    "scripts/install-system-deps.sh installs Debian's chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            yield browser
        finally:
            browser.close()


def test_console_service_of_the_stack_answers() -> None:
    host = SETTINGS.stack.bind_host
    port = SETTINGS.console.port
    base = f"http://{host}:{port}"
    try:
        assert requests.get(f"{base}/healthz", timeout=5).status_code == 200
    except requests.ConnectionError as exc:
        pytest.fail(f"the stack's console service is not answering at {base} "
                    f"([console] port): {exc}")
    assert "console.js" in requests.get(f"{base}/login", timeout=5).text
    assert requests.get(f"{base}/console/api/overview", timeout=5).status_code == 401
    ok = requests.get(f"{base}/console/api/overview", timeout=15,
                      headers={"Authorization": f"Bearer {KEY}"})
    assert ok.status_code == 200 and {s["name"] for s in ok.json()["services"]} >= {
        "kafka", "api", "console"}


def test_operator_path_in_the_browser(console_url: tuple[str, FlinkJob], browser: Any,
                                      catalog: Any, tmp_path: Path) -> None:
    base, job = console_url
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(20_000)
    try:
        _walk(page, base, job, catalog)
    except BaseException:
        page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
        print(f"screenshot of the failure: {tmp_path / 'failure.png'}")
        raise
    finally:
        page.close()


def _reload_until(page: Any, what: str, check: Callable[[], Any], timeout_s: float = WAIT_S
                  ) -> Any:
    def attempt() -> Any:
        page.reload()
        page.wait_for_function("document.body.dataset.loaded !== undefined")
        return check()

    return wait_for(what, attempt, timeout_s, 2.0)


def _walk(page: Any, base: str, job: FlinkJob, catalog: Any) -> None:
    # Sign in: any page sends a visitor without a key to the login page and back.
    page.goto(f"{base}/assets/{ASSET}")
    page.wait_for_url("**/login?next=*")
    page.fill("#api-key", "wrong-key")
    page.click("#login-form button")
    page.wait_for_selector("#login-error:has-text('not valid')")
    page.fill("#api-key", KEY)
    page.click("#login-form button")
    page.wait_for_url(f"**/assets/{ASSET}")

    # A reading sent over MQTT shows on the asset's chart page...
    reading = f"ui-{RUN}-reading"
    publish(ASSET, "temp-b", 42.5, reading)
    _reload_until(page, "the MQTT reading on the asset page",
                  lambda: page.locator(".sensor[data-sensor='temp-b'] .latest-value")
                  .all_inner_texts() == ["42.5"])
    assert page.locator(".sensor[data-sensor='temp-b'] canvas").count() >= 1, \
        "uPlot drew no chart (is api/console/static/vendor/uplot there? make install)"

    # ...and in the overview's rates (the sampler reads the job's counters every 2 s).
    page.goto(base + "/")
    page.wait_for_selector("#job :text('RUNNING')")

    def read_rate() -> bool:
        row = page.locator("#rates tr", has_text="read").first.inner_text()
        return float(row.split("\t")[1].replace(",", "").replace("–", "0") or 0) > 0
    _reload_until(page, "a non-zero read rate on the overview", read_rate)

    # A reading of an unknown asset is a dead letter with its reason and payload.
    lost = f"ui-{RUN}-unknown"
    publish(NEW_ASSET, "temp-n", 17.25, lost)
    page.goto(f"{base}/dead-letters?event_id={lost}")
    _reload_until(page, "the dead letter of the unknown asset",
                  lambda: page.locator("input.pick").count() >= 1)
    assert "unknown asset" in page.locator("table").last.inner_text()
    assert lost in page.locator("pre.payload").first.inner_text()
    assert stored(lost) == 0

    # Fix the catalog; a probe reading of the new asset proves the job has reloaded it.
    catalog(NEW_ASSET)
    probe = f"ui-{RUN}-probe"
    publish(NEW_ASSET, "temp-p", 1.0, probe)
    wait_for("the job to load the fixed catalog", lambda: stored(probe) == 1 or (
        publish(NEW_ASSET, "temp-p", 1.0, probe) and False), WAIT_S, 3.0)

    # Replay it, twice: stored once (the second copy is dropped as a duplicate).
    dropped_before = flink_metrics(job, ["duplicates_dropped"])["duplicates_dropped"]
    for attempt in (1, 2):
        page.locator("input.pick").first.check()
        page.click("#replay-selected")
        page.wait_for_selector("#replay-result :text('1 event(s) re-published')")
        if attempt == 1:
            wait_for("the replayed reading in QuestDB", lambda: stored(lost) >= 1, WAIT_S)
    wait_for("the second replay to reach the job's dedup",
             lambda: flink_metrics(job, ["duplicates_dropped"])["duplicates_dropped"]
             > dropped_before, WAIT_S)
    assert stored(lost) == 1

    # An alarm: raised by a reading above critical_high, acknowledged in the browser.
    publish(ASSET, "temp-hot", 99.0, f"ui-{RUN}-hot")
    page.goto(f"{base}/alarms")
    button = f"button.ack[data-alarm^='{ASSET}:temp-hot:']"
    _reload_until(page, "the active alarm", lambda: page.locator(button).count() == 1)
    page.fill("#ack-by", "browser-test")
    page.click(button)
    page.wait_for_selector("#ack-result :text('by browser-test')")
    _reload_until(page, "the acknowledgement in the active list",
                  lambda: page.locator("tr", has_text=f"{ASSET}:temp-hot:")
                  .first.inner_text().count("browser-test") == 1)
    row = page.locator("tr", has_text=f"{ASSET}:temp-hot:").first.inner_text()
    assert "ACKNOWLEDGED" in row

    # The topics page decodes the newest messages with the schema registry.
    page.goto(f"{base}/topics")
    page.locator(f".topic[data-topic='{TOPICS['validated']}'] button").click()
    page.wait_for_selector(f"#messages :text('{reading}')")
