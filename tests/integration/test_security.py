"""Security checks against the running stack (issue 7, part 4).

What is checked, and against what:

* every ``/api`` route refuses a missing key, a wrong key (401) and a key
  without the route's scope (403): the route list comes from the app's own URL
  map, so a new route is covered automatically. Missing and wrong keys are
  tried on the stack's gunicorn; wrong scopes on an in-process server built by
  :func:`api.create_app` with a read-only and a write-only key (the stack has
  one key with both scopes);
* API keys are kept only as SHA-256 digests and compared with
  :func:`hmac.compare_digest` (asserted on the code path, not on timing);
* Mosquitto refuses anonymous clients and wrong passwords, and answers a
  sensor's publish outside ``telemetry/#`` with "not authorized";
* SQL-injection strings in every query parameter give 400 or rows that match
  the literal value only (never other rows; known rows are inserted first);
* an oversized body gets 413 before it is sent (the server answers after the
  headers alone);
* the per-key rate limit answers 429 with ``Retry-After``;
* every stack process listens on loopback only, the Beam job server and
  expansion service included (docs/reliability.md);
* ``DCMMS_ENV=production`` with development credentials makes every entry
  point exit before serving: registry, API (gunicorn), bridge, pipeline
  launcher and the supervisor (``dcmms-telemetry up``);
* no secret, neither configured nor presented by these tests, is in the
  stack's logs (``<run_dir>/logs``).
"""

from __future__ import annotations

import hashlib
import hmac
import inspect
import json
import logging
import os
import pickle
import re
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psutil
import pytest
import requests
from werkzeug.serving import make_server

from api import create_app
from api.auth import ApiKeyStore, configured_api_key, parse_api_keys
from config.settings import DEV_DEFAULTS, REPO_ROOT, Settings, env_name, load_settings
from io_connectors.questdb_http import questdb_exec
from runners.profiles import profile_environ
from runners.stack.supervisor import paths_from_settings

__all__: list[str] = []

_LOGGER = logging.getLogger(__name__)

pytestmark = pytest.mark.integration

SETTINGS = load_settings()
RUN_ID = uuid.uuid4().hex[:10]
API = f"http://{SETTINGS.stack.bind_host}:{SETTINGS.api.port}"
# The stack has one key with both scopes (the module docstring).
STACK_KEY = configured_api_key(SETTINGS, ("read", "write"))
MQTT_HOST = SETTINGS.mqtt.host
MQTT_PORT = SETTINGS.mqtt.port
QUESTDB_HTTP = f"http://{SETTINGS.questdb.host}:{SETTINGS.questdb.http_port}"
# Secrets presented by this module; none of them may ever reach a log.
WRONG_KEY = f"sec-wrong-key-{RUN_ID}"
WRONG_MQTT_PASSWORD = f"sec-wrong-pw-{RUN_ID}"
READ_KEY, WRITE_KEY = f"sec-read-{RUN_ID}", f"sec-write-{RUN_ID}"
# The asset of the rows the injection test must never see unless asked for by name.
SEC_SITE, SEC_ASSET = f"sec-site-{RUN_ID}", f"sec-asset-{RUN_ID}"

# Every service listens on loopback only ([stack] bind_host), the Beam job server, the
# expansion service and the worker pool included (runners/stack/jvm_patches.py,
# runners/worker_pool.py): no exception.
LOOPBACK = frozenset({"127.0.0.1", "::1", "::ffff:127.0.0.1"})

INJECTIONS = (
    "' OR '1'='1",
    "x' OR 1=1 --",
    "'; DROP TABLE sensor_readings; --",
    "\" OR \"\"=\"",
    "') UNION SELECT * FROM sensor_readings --",
    "1; SELECT * FROM alarms",
    "%' OR asset_id LIKE '%",
    "\\' OR 1=1 --",
)


# -- helpers ---------------------------------------------------------------------------------------

def _api_up() -> None:
    try:
        requests.get(f"{API}/healthz", timeout=5).raise_for_status()
    except requests.RequestException as exc:
        pytest.fail(f"the REST API is not reachable at {API} ([stack] bind_host, [api] port): "
                    f"{exc}; start the test stack with `make test`")


def _api_routes() -> list[tuple[str, str, str]]:
    """(method, concrete path, required scope) of every /api route, from the app's URL map."""
    app = create_app(SETTINGS, {"TELEMETRY_STORE": object(), "READY_CHECKS": {}})
    routes = []
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/api/"):
            continue
        path = rule.rule.replace("<path:asset_id>", "asset-001")
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            scope = "write" if method == "POST" else "read"
            routes.append((method, path, scope))
    assert routes, "the app has no /api routes: the URL map was not read"
    return routes


ROUTES = _api_routes()
# Public when [api] public_docs (no data): the document, Swagger UI and its files, the index.
PUBLIC = {"/api/v1/openapi.json", "/api/v1/docs/", "/api/v1/docs/<path:path>", "/api/v1"}
PROTECTED = [r for r in ROUTES if r[1] not in PUBLIC]


def _call(base: str, method: str, path: str, headers: dict[str, str]) -> requests.Response:
    body = json.dumps([]) if method == "POST" else None
    return requests.request(method, base + path, headers={**headers,
                            "Content-Type": "application/json"}, data=body, timeout=10)


class _Server:
    """create_app served by werkzeug in a thread (keys and limits of this module)."""

    def __init__(self, api: dict[str, Any]) -> None:
        values = {s: SETTINGS.section(s) for s in ("stack", "kafka", "schema_registry",
                                                   "questdb", "mqtt", "api", "pipeline")}
        values["api"].update(api)
        app = create_app(Settings(values, Path("security-test"), {}),
                         {"TELEMETRY_STORE": object(), "READY_CHECKS": {}})
        self._server = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._thread.join(10)


@pytest.fixture(scope="module")
def scoped_server() -> Iterator[_Server]:
    server = _Server({"api_keys": f"{READ_KEY}:read,{WRITE_KEY}:write",
                      "rate_limit_per_second": 1, "rate_limit_burst": 3})
    yield server
    server.close()


# -- authentication and scopes -------------------------------------------------------------------

@pytest.mark.parametrize(("method", "path", "scope"), PROTECTED,
                         ids=[f"{m} {p}" for m, p, _ in PROTECTED])
def test_route_refuses_missing_and_wrong_keys(method: str, path: str, scope: str) -> None:
    _api_up()
    for headers in ({}, {"Authorization": f"Bearer {WRONG_KEY}"},
                    {"Authorization": WRONG_KEY}, {"Authorization": "Basic dXNlcjpwdw=="},
                    {"Authorization": "Bearer "}):
        resp = _call(API, method, path, headers)
        assert resp.status_code == 401, (method, path, headers.keys(), resp.status_code,
                                         resp.text[:200])
        assert resp.json()["code"] == "unauthorized"
        assert "WWW-Authenticate" in resp.headers
    # Positive control: the stack's key passes authentication on the same route.
    ok = _call(API, method, path, {"Authorization": f"Bearer {STACK_KEY}"})
    assert ok.status_code not in (401, 403), (method, path, ok.status_code, ok.text[:200])


@pytest.mark.parametrize(("method", "path", "scope"), PROTECTED,
                         ids=[f"{m} {p}" for m, p, _ in PROTECTED])
def test_route_refuses_wrong_scope(scoped_server: _Server, method: str, path: str,
                                   scope: str) -> None:
    wrong = WRITE_KEY if scope == "read" else READ_KEY
    resp = _call(scoped_server.url, method, path, {"Authorization": f"Bearer {wrong}"})
    assert resp.status_code == 403, (method, path, resp.status_code, resp.text[:200])
    assert resp.json()["details"]["required_scope"] == scope


def test_rate_limit_answers_429_with_retry_after(scoped_server: _Server) -> None:
    headers = {"Authorization": f"Bearer {READ_KEY}"}
    codes = []
    for _ in range(10):  # burst 3 at 1/s: most of ten quick requests are over the limit
        resp = requests.get(f"{scoped_server.url}/api/v1/assets", headers=headers, timeout=10)
        codes.append(resp.status_code)
        if resp.status_code == 429:
            assert int(resp.headers["Retry-After"]) >= 1
            assert resp.json()["code"] == "rate_limited"
    assert 429 in codes and codes[0] != 429, codes


def test_keys_are_stored_hashed_and_compared_in_constant_time(
        monkeypatch: pytest.MonkeyPatch) -> None:
    secret = f"plain-{RUN_ID}"
    store = ApiKeyStore.from_spec(f"{secret}:read,other-{RUN_ID}:write")
    blob = pickle.dumps(store) + repr(vars(store)).encode()
    assert secret.encode() not in blob, "the key store keeps a plaintext key"
    assert hashlib.sha256(secret.encode()).digest() in blob, "the key store keeps no digest"

    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr("api.auth.hmac.compare_digest", spy)
    assert store.lookup(secret) is not None
    assert store.lookup("nope") is None
    # Both keys are compared on every lookup (no early exit), digests only.
    assert len(calls) == 4 and all(len(a) == len(b) == 32 for a, b in calls)
    source = inspect.getsource(ApiKeyStore.lookup)
    assert "==" not in source, "ApiKeyStore.lookup compares with == instead of compare_digest"


# -- MQTT ------------------------------------------------------------------------------------------

def _mqtt_connect(username: str | None, password: str | None,
                  protocol: int = mqtt.MQTTv311) -> tuple[int, mqtt.Client]:
    """Connect and return (CONNACK reason code, client); -1 when there was no answer."""
    result: dict[str, int] = {}
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                         client_id=f"sec-{RUN_ID}-{uuid.uuid4().hex[:6]}", protocol=protocol)
    if username is not None:
        client.username_pw_set(username, password)
    client.on_connect = lambda _c, _u, _f, rc, _p: result.setdefault("rc", rc.value)
    try:
        client.connect(MQTT_HOST, MQTT_PORT, keepalive=10)
    except OSError as exc:
        pytest.fail(f"Mosquitto not reachable at {MQTT_HOST}:{MQTT_PORT} ([mqtt] host/port): {exc}")
    deadline = time.monotonic() + 5
    while "rc" not in result and time.monotonic() < deadline:
        client.loop(timeout=0.1)
    return result.get("rc", -1), client


def test_mqtt_refuses_anonymous_and_wrong_passwords() -> None:
    sensor = SETTINGS.mqtt.sensor_username
    cases = {"anonymous": (None, None), "wrong password": (sensor, WRONG_MQTT_PASSWORD),
             "unknown user": (f"nobody-{RUN_ID}", WRONG_MQTT_PASSWORD),
             "empty password": (sensor, "")}
    for what, (user, password) in cases.items():
        rc, client = _mqtt_connect(user, password)
        client.disconnect()
        # paho reports MQTT 3.1.1 refusals as MQTT 5 reason codes: 0x86 bad user name
        # or password, 0x87 not authorized (4 and 5 on the wire).
        assert rc in (4, 5, 0x86, 0x87), f"{what}: CONNACK {rc}, expected a refusal"
    rc, client = _mqtt_connect(sensor, SETTINGS.mqtt.sensor_password)
    client.disconnect()
    assert rc == 0, f"positive control: the sensor account was refused (CONNACK {rc})"


def test_mqtt_sensor_cannot_publish_outside_telemetry() -> None:
    rc, client = _mqtt_connect(SETTINGS.mqtt.sensor_username,
                               SETTINGS.mqtt.sensor_password, protocol=mqtt.MQTTv5)
    assert rc == 0, f"sensor account refused (CONNACK {rc})"
    acks: dict[int, int] = {}
    client.on_publish = lambda _c, _u, mid, reason, _p: acks.__setitem__(mid, reason.value)
    topics = {"other/x": False, "$SYS/broker/x": False, f"sec/{RUN_ID}": False,
              "telemetryx/a/b/c": False, f"telemetry/{SEC_SITE}/nope/TEMPERATURE": True}
    mids = {}
    for topic in topics:
        payload = b"not json" if topics[topic] else b'{"value": 1}'
        mids[topic] = client.publish(topic, payload, qos=1).mid
    deadline = time.monotonic() + 10
    while len(acks) < len(mids) and time.monotonic() < deadline:
        client.loop(timeout=0.1)
    client.disconnect()
    for topic, allowed in topics.items():
        code = acks.get(mids[topic])
        assert code is not None, f"no PUBACK for {topic}"
        if allowed:
            assert code < 0x80, f"publish to {topic} refused with reason {code:#x}"
        else:
            assert code == 0x87, f"publish to {topic} not refused as not authorized: {code:#x}"


# -- SQL injection --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def known_rows() -> int:
    """Two readings and an alarm of this module's asset; returns a start_time before them."""
    _api_up()
    now = int(time.time() * 1000)
    stmts = [
        f"INSERT INTO sensor_readings (timestamp, event_id, site_id, asset_id, sensor_id, "
        f"sensor_type, value, unit, quality_flag, ingested_at) VALUES "
        f"({(now - i * 1000) * 1000}, 'sec-{RUN_ID}-{i}', '{SEC_SITE}', '{SEC_ASSET}', 's1', "
        f"'TEMPERATURE', {20 + i}, 'C', 'GOOD', now())" for i in range(2)
    ] + [
        f"INSERT INTO alarms (timestamp, alarm_id, site_id, asset_id, sensor_id, sensor_type, "
        f"severity, state, value, threshold, reason, event_id, ingested_at) VALUES "
        f"({now * 1000}, 'sec-alarm-{RUN_ID}', '{SEC_SITE}', '{SEC_ASSET}', 's1', 'TEMPERATURE', "
        f"'WARNING', 'RAISED', 99, 80, 'test', 'sec-{RUN_ID}-0', now())"
    ]
    for sql in stmts:
        questdb_exec(QUESTDB_HTTP, sql, timeout_s=10)
    headers = {"Authorization": f"Bearer {STACK_KEY}"}
    deadline = time.monotonic() + 30  # WAL apply is asynchronous
    while time.monotonic() < deadline:
        rows = requests.get(f"{API}/api/v1/telemetry", headers=headers, timeout=10,
                            params={"asset_id": SEC_ASSET, "start_time": now - 60_000}).json()
        if len(rows.get("data", [])) == 2:
            return now - 60_000
        time.sleep(0.5)
    pytest.fail(f"rows inserted into QuestDB ({QUESTDB_HTTP}) did not become queryable")


_INJECTABLE = {
    "/api/v1/telemetry": ("asset_id", "site_id", "sensor_id", "sensor_type", "start_time",
                          "end_time", "limit", "cursor", "order", "interval", "agg", "fill",
                          "format"),
    "/api/v1/telemetry/latest": ("asset_id", "site_id", "sensor_type", "max_age"),
    "/api/v1/alarms": ("site_id", "asset_id", "sensor_id", "severity", "state", "active",
                       "start_time", "end_time", "limit", "cursor", "order"),
}


def _rows_match(rows: list[dict[str, Any]], params: dict[str, str]) -> bool:
    """Every returned row equals the literal value of every id parameter given."""
    for row in rows:
        for name in ("asset_id", "site_id", "sensor_id", "sensor_type"):
            if name in params and name in row and row[name] != params[name]:
                return False
    return True


@pytest.mark.parametrize("path", sorted(_INJECTABLE))
def test_sql_injection_in_every_parameter(known_rows: int, path: str) -> None:
    headers = {"Authorization": f"Bearer {STACK_KEY}"}
    # The latest endpoint needs an asset or a site; give the other parameters a real one.
    base = {"site_id": SEC_SITE} if path.endswith("/latest") else {}
    checked = 0
    for name in _INJECTABLE[path]:
        for attack in INJECTIONS:
            for value in (attack, f"{SEC_ASSET}{attack}"):
                params = {**base, name: value}
                resp = requests.get(API + path, params=params, headers=headers, timeout=15)
                assert resp.status_code in (200, 400), (path, params, resp.status_code,
                                                        resp.text[:300])
                if resp.status_code == 200:
                    rows = resp.json()["data"]
                    assert _rows_match(rows, params), (path, params, rows[:3])
                    leaked = [r for r in rows if r.get("asset_id") == SEC_ASSET
                              and params.get("site_id") != SEC_SITE]
                    assert not leaked, (path, params, leaked[:3])
                checked += 1
    # The table is still there and still holds the known rows (no DROP went through).
    resp = requests.get(API + "/api/v1/telemetry", headers=headers, timeout=10,
                        params={"asset_id": SEC_ASSET, "start_time": str(known_rows)})
    assert resp.status_code == 200, resp.text[:300]
    assert len(resp.json()["data"]) == 2 and checked > 0


# -- request size ----------------------------------------------------------------------------------

def test_oversized_body_is_refused_before_it_is_read() -> None:
    _api_up()
    limit = SETTINGS.api.ingest_max_body_bytes
    host, port = SETTINGS.stack.bind_host, SETTINGS.api.port
    with socket.create_connection((host, port), timeout=10) as sock:
        # Headers only: a server that read the body first would wait here until the timeout.
        sock.sendall((f"POST /api/v1/telemetry HTTP/1.1\r\nHost: {host}\r\n"
                      f"Authorization: Bearer {STACK_KEY}\r\nContent-Type: application/json\r\n"
                      f"Content-Length: {limit * 20}\r\n\r\n[").encode())
        sock.settimeout(10)
        # The head and the JSON body may arrive in separate segments: read until the server
        # closes (it answers "Connection: close") or the body it announced is complete.
        received = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
            head, sep, body = received.partition(b"\r\n\r\n")
            length = re.search(rb"(?i)content-length:\s*(\d+)", head)
            if sep and length and len(body) >= int(length.group(1)):
                break
        answer = received.decode("latin-1")
    status_line = answer.split("\r\n", 1)[0]
    assert " 413 " in status_line, answer[:300]
    assert "payload_too_large" in answer


# -- listening sockets -----------------------------------------------------------------------------

def _stack_processes() -> dict[str, list[psutil.Process]]:
    pids = paths_from_settings(SETTINGS).pidfile("x").parent
    found: dict[str, list[psutil.Process]] = {}
    for pidfile in sorted(pids.glob("*.pid")):
        try:
            leader = psutil.Process(json.loads(pidfile.read_text())["pid"])
            found[pidfile.stem] = [leader, *leader.children(recursive=True)]
        except (psutil.NoSuchProcess, ValueError, KeyError, OSError):
            continue
    return found


def test_services_listen_on_loopback_only() -> None:
    _api_up()
    procs = _stack_processes()
    assert {"kafka", "questdb", "mosquitto", "api", "registry", "flink-jobserver",
            "kafka-expansion", "beam-worker-pool"} <= set(procs), sorted(procs)
    wrong = []
    for service, members in procs.items():
        for proc in members:
            try:
                conns = proc.net_connections(kind="inet")
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            for conn in conns:
                if conn.status != psutil.CONN_LISTEN or conn.laddr.ip in LOOPBACK:
                    continue
                wrong.append(f"{service} (pid {proc.pid}) listens on "
                             f"{conn.laddr.ip}:{conn.laddr.port}")
    assert not wrong, "services listening beyond loopback: " + "; ".join(wrong)


# -- production refuses dev credentials ------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_production_refuses_dev_credentials_everywhere(tmp_path: Path) -> None:
    # No operator override may hide a dev credential; the addresses left are the test
    # profile's, so even a missing check reaches the test stack, never the default one.
    env = profile_environ("test", {k: v for k, v in os.environ.items()
                                   if not k.startswith("DCMMS_")})
    env.update({env_name(s, k): v for (s, k), v in DEV_DEFAULTS.items()})
    env.update({"DCMMS_ENV": "production", "DCMMS_STACK_RUN_DIR": str(tmp_path / "run"),
                # Nothing may be reached even if a check were missing: dead ports.
                "DCMMS_SCHEMA_REGISTRY_PORT": str(_free_port()),
                "DCMMS_API_PORT": str(_free_port()),
                "DCMMS_KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{_free_port()}"})
    py = sys.executable
    entry_points = {
        "registry": [py, "-m", "runners.registry_server"],
        "api": [py, "-m", "gunicorn", "--bind", f"127.0.0.1:{env['DCMMS_API_PORT']}",
                "--workers", "1", "--no-control-socket", "runners.wsgi:app"],
        "bridge": [py, "-m", "runners.mqtt_bridge"],
        "pipeline launcher": [py, "-m", "runners.pipeline_launcher"],
        "supervisor": [py, "-m", "runners.cli", "up"],
    }
    procs = {name: subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, start_new_session=True)
             for name, argv in entry_points.items()}
    failures = []
    for name, proc in procs.items():
        try:
            out, _ = proc.communicate(timeout=120)  # a loaded 2-core machine is slow
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.communicate()
            failures.append(f"{name} kept running under DCMMS_ENV=production with dev "
                            "credentials")
            continue
        text = out.decode(errors="replace")
        if proc.returncode == 0 or "DCMMS_ENV=production" not in text:
            failures.append(f"{name} exited {proc.returncode} without naming the refusal: "
                            f"{text[-300:]}")
        for (section, key), value in DEV_DEFAULTS.items():
            if key.endswith(("password", "keys")) and len(value) > 8 and value in text:
                failures.append(f"{name} printed the secret of [{section}] {key}")
    assert not failures, "\n".join(failures)
    assert not list((tmp_path / "run").glob("pids/*.pid")), "the supervisor started something"


# -- secrets in logs (last: the tests above presented their secrets by now) ------------------------

def test_no_secret_in_stack_logs() -> None:
    logs = sorted(paths_from_settings(SETTINGS).run_dir.joinpath("logs").glob("*.log"))
    assert logs, "the stack has no logs to inspect"
    secrets = {"wrong API key presented by these tests": WRONG_KEY,
               "wrong MQTT password presented by these tests": WRONG_MQTT_PASSWORD}
    for key, _scopes in parse_api_keys(SETTINGS.api.api_keys, SETTINGS.origin("api", "api_keys")):
        key_id = hashlib.sha256(key.encode()).hexdigest()[:8]
        secrets[f"an API key of [api] api_keys ({key_id})"] = key
    for section, key in (("mqtt", "sensor_password"), ("mqtt", "bridge_password"),
                         ("questdb", "pg_password")):
        value = getattr(getattr(SETTINGS, section), key)
        # Dev values that are plain English words ("password", "quest") occur in ordinary
        # log text; the unique secrets above prove that presented secrets are not logged.
        if value not in ("password", "quest") and len(value) >= 6:
            secrets[f"[{section}] {key}"] = value
    found = []
    for log in logs:
        text = log.read_bytes().decode("utf-8", errors="replace")
        found += [f"{what} in {log}" for what, value in secrets.items() if value in text]
    assert not found, "secrets found in logs: " + "; ".join(found)
