"""Bad input at every entry point, generated with hypothesis, with valid sentinels in between.

Entry points and what counts as handled:

* ``mqtt`` — generated payloads (mutated events, random JSON, random bytes) and
  topics (random levels). Each acknowledged publish must end as exactly one of:
  a dead letter of the bridge (stage ``bridge``), or an event (in
  ``raw_telemetry``; with ``storage=True`` in QuestDB or dead-lettered by the
  pipeline). The expectation per case comes from the edge's own pure function
  (:func:`schemas.edge.event_from_mqtt`), so a bridge that drops or mis-routes
  a case is caught. Topics outside the bridge's subscription
  (``telemetry/+/+/+``) are refused by the broker's ACL.
* ``rest-body`` — generated bodies: status must be 202, 400, 413 or 415 with a
  JSON reason; every item a 202 accepted must arrive like an MQTT event.
* ``rest-headers`` — generated headers around a valid body: 202 or a 4xx with
  a reason.
* ``query`` — generated query parameters on every GET route: 200, 400 or 404.
* ``raw-kafka`` (``storage=True`` only: needs the pipeline) — random bytes and
  garbage Confluent frames written straight to ``raw_telemetry``: each must
  come back as a pipeline dead letter with its original bytes.

Every entry interleaves valid sentinel events (one per ``SENTINEL_EVERY``
cases) that must all arrive; the services' pids must not change (no crash).
"""

from __future__ import annotations

import json
import logging
import string
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
import requests
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from io_connectors.raw_producer import build_raw_producer
from io_connectors.schema_registry import RegistrySchemas
from runners.settings import Settings
from schemas import wire
from schemas.edge import event_from_item, event_from_mqtt
from schemas.validation import default_sensor_rules

__all__ = [
    "BadInputReport", "EntryResult", "ENTRIES", "Target", "kafka_end_offsets", "read_topic",
    "run_bad_input", "run_entry",
]

_LOGGER = logging.getLogger(__name__)

SENTINEL_EVERY = 50
VALID_SITE, VALID_ASSET = "site-001", "asset-001"
_FIELDS = ("event_id", "timestamp", "site_id", "asset_id", "sensor_id", "sensor_type",
           "value", "unit", "quality_flag", "source")
_ENV_HEALTH = "bridge", "api", "pipeline", "flink-jobserver", "kafka", "questdb", "mosquitto"


# -- generated values ------------------------------------------------------------------------------

_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=40),
    st.sampled_from(["", " ", "NaN", "1e309", "-0", "TEMPERATURE", "celsius", "GOOD", "BAD",
                     "'; DROP TABLE sensor_readings; --", "\u0000", "\ud800x", "é" * 300,
                     "asset-001", "site-001", "x" * 5000]),
)
_json = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)),
    max_leaves=12)


def _valid_event(tag: str, n: int, place: tuple[str, str] = (VALID_SITE, VALID_ASSET)
                 ) -> dict[str, Any]:
    return {"event_id": f"{tag}-{n}", "timestamp": int(time.time() * 1000),
            "site_id": place[0], "asset_id": place[1], "sensor_id": f"{tag}-s",
            "sensor_type": "TEMPERATURE", "value": 21.5, "unit": "celsius",
            "quality_flag": "GOOD"}


@st.composite
def _mutated_event(draw: st.DrawFn, tag: str, place: tuple[str, str]) -> Any:
    """A valid event with some fields removed or replaced by anything (or not an event)."""
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(_json)
    event = _valid_event(tag, draw(st.integers(0, 10**9)), place)
    for name in draw(st.lists(st.sampled_from(_FIELDS + ("extra",)), max_size=3, unique=True)):
        if draw(st.booleans()):
            event.pop(name, None)
        else:
            event[name] = draw(_json)
    return event


# No control characters: Mosquitto answers a topic holding one by dropping the connection
# (a protocol violation by the client), which says nothing about our code.
# Nor noncharacters/unassigned code points (Cn), which Mosquitto's UTF-8 check also refuses.
_level = st.text(alphabet=st.characters(blacklist_characters="/+#\x00\x7f",
                                        blacklist_categories=("Cs", "Cc", "Cn", "Co")),
                 max_size=20)


@st.composite
def _mqtt_case(draw: st.DrawFn, tag: str, place: tuple[str, str]) -> tuple[str, bytes]:
    item = draw(_mutated_event(tag, place))
    if draw(st.integers(0, 4)) == 0:
        topic = f"telemetry/{draw(_level)}/{draw(_level)}/{draw(_level)}"
    elif isinstance(item, dict):
        topic = (f"telemetry/{item.get('site_id', place[0])}/"
                 f"{item.get('asset_id', place[1])}/{item.get('sensor_type', 'TEMPERATURE')}")
        topic = topic if all(c not in topic for c in "+#\x00") and len(topic) < 1000 \
            else f"telemetry/{place[0]}/{place[1]}/TEMPERATURE"
    else:
        topic = f"telemetry/{place[0]}/{place[1]}/TEMPERATURE"
    if draw(st.integers(0, 5)) == 0:
        payload = draw(st.binary(max_size=200))
    else:
        payload = json.dumps(item, allow_nan=True, ensure_ascii=False).encode(
            "utf-8", "surrogatepass")
    return topic, payload


@st.composite
def _rest_body(draw: st.DrawFn, tag: str, place: tuple[str, str]) -> tuple[str, bytes]:
    """(content type, body)."""
    ctype = draw(st.sampled_from(["application/json"] * 8 + [
        "text/plain", "application/json; charset=latin-1", "",
        "application/x-www-form-urlencoded"]))
    form = draw(st.integers(0, 6))
    if form == 0:
        return ctype, draw(st.binary(max_size=300))
    if form == 1:
        return ctype, json.dumps(draw(_json), allow_nan=True).encode()
    items = draw(st.lists(_mutated_event(tag, place), min_size=0, max_size=5))
    body: Any = items if form > 2 or len(items) != 1 else items[0]
    return ctype, json.dumps(body, allow_nan=True, ensure_ascii=False).encode(
        "utf-8", "surrogatepass")


_header_value = st.text(alphabet=string.printable.replace("\r", "").replace("\n", ""),
                        max_size=60)


@st.composite
def _headers(draw: st.DrawFn, key: str) -> dict[str, str]:
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
    for _ in range(draw(st.integers(0, 4))):
        name = draw(st.sampled_from(["Content-Type", "Authorization", "Accept", "X-Request-Id",
                                     "Content-Encoding", "Transfer-Encoding-X", "X-Fuzz",
                                     "Accept-Charset", "Expect-X", "Origin"]))
        headers[name] = draw(_header_value)
    return headers


_GET_ROUTES = ("/api/v1/telemetry", "/api/v1/telemetry/latest", "/api/v1/alarms",
               "/api/v1/assets")
_PARAM_NAMES = ("asset_id", "site_id", "sensor_id", "sensor_type", "start_time", "end_time",
                "limit", "cursor", "order", "interval", "agg", "fill", "format", "max_age",
                "severity", "state", "active")


@st.composite
def _query(draw: st.DrawFn) -> tuple[str, list[tuple[str, str]]]:
    route = draw(st.sampled_from(_GET_ROUTES + ("/api/v1/assets/",)))
    if route.endswith("/"):
        route += draw(st.text(alphabet=string.ascii_letters + string.digits + "-_.%'\" ",
                              min_size=1, max_size=40))
    names = st.one_of(st.sampled_from(_PARAM_NAMES), st.text(max_size=10))
    values = st.one_of(st.text(max_size=60), st.sampled_from(
        ["0", "-1", "1e99", "99999999999999999999", "2026-13-45T99:99:99Z", "now", "1m", "1s",
         "avg", "desc", "csv", "true", "' OR '1'='1", "\u0000", "asset-001"]))
    return route, draw(st.lists(st.tuples(names, values), max_size=5))


# -- results ---------------------------------------------------------------------------------------

@dataclass
class EntryResult:
    entry: str
    cases: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    rejected_with_reason: int = 0
    missing_reason: int = 0
    dead_letters_expected: int = 0
    dead_letters_found: int = 0       # distinct expected cases with a dead letter
    dead_letter_copies: int = 0       # extra copies (at-least-once replays), allowed
    valid_expected: int = 0
    valid_found: int = 0
    sentinels_sent: int = 0
    sentinels_found: int = 0
    crashed: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    # Filled by the entry: ids that must arrive (stored, or in raw_telemetry without storage).
    valid_ids: set[str] = field(default_factory=set)
    sentinel_ids: set[str] = field(default_factory=set)
    # What each expected dead letter looks like: Counter of (topic, original bytes).
    expected_dead: Counter[tuple[str | None, bytes]] = field(default_factory=Counter)

    @property
    def http_5xx(self) -> int:
        return sum(n for s, n in self.statuses.items() if s >= 500)

    @property
    def ok(self) -> bool:
        return (self.http_5xx == 0 and not self.crashed and self.missing_reason == 0
                and self.sentinels_found == self.sentinels_sent
                and self.dead_letters_found >= self.dead_letters_expected
                and self.valid_found == self.valid_expected and not self.problems)


@dataclass
class BadInputReport:
    entries: list[EntryResult]

    @property
    def ok(self) -> bool:
        return all(e.ok for e in self.entries)

    def table(self) -> str:
        lines = ["| entry point | cases | HTTP statuses | 5xx | dead letters expected/found "
                 "| valid items expected/found | sentinels sent/arrived | crashes | result |",
                 "|" + "---|" * 9]
        for e in self.entries:
            statuses = ", ".join(f"{s}: {n}" for s, n in sorted(e.statuses.items())) or "-"
            lines.append(
                f"| {e.entry} | {e.cases} | {statuses} | {e.http_5xx} | "
                f"{e.dead_letters_expected}/{e.dead_letters_found} | "
                f"{e.valid_expected}/{e.valid_found} | {e.sentinels_sent}/{e.sentinels_found} | "
                f"{len(e.crashed)} | {'ok' if e.ok else 'FAIL ' + '; '.join(e.problems)[:200]} |")
        return "\n".join(lines)


# -- the environment an entry runs in --------------------------------------------------------------

@dataclass
class Target:
    """Addresses and checks of the stack under test."""

    settings: Settings
    api_url: str
    api_key: str
    storage: bool                     # the pipeline runs: check QuestDB, not only Kafka
    pids: Callable[[], dict[str, int]]
    questdb_url: str = ""
    # site and asset of the valid events (the chaos stack: a catalogued asset, so they are
    # stored; make test: unknown ids, so a shared stack's pipeline dead-letters them).
    place: tuple[str, str] = (VALID_SITE, VALID_ASSET)

    @classmethod
    def from_settings(cls, settings: Settings, storage: bool,
                      pids: Callable[[], dict[str, int]]) -> Target:
        host = settings.get("stack", "bind_host")
        return cls(settings=settings,
                   api_url=f"http://{host}:{settings.get('api', 'port', int)}",
                   api_key=settings.get("api", "api_keys").split(",")[0].rpartition(":")[0]
                   .strip(),
                   storage=storage, pids=pids,
                   questdb_url=f"http://{settings.get('questdb', 'host')}:"
                               f"{settings.get('questdb', 'http_port')}")


def kafka_end_offsets(bootstrap: str, topic: str, timeout_s: float = 30.0) -> dict[int, int]:
    """End offset per partition (retried while a new topic's leaders are being elected)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"chaos-{uuid.uuid4()}",
                         "enable.auto.commit": False})
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                meta = consumer.list_topics(topic, timeout=10).topics[topic]
                return {p: consumer.get_watermark_offsets(TopicPartition(topic, p),
                                                          timeout=10)[1]
                        for p in meta.partitions}
            except KafkaException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
    finally:
        consumer.close()


def read_topic(settings: Settings, topic: str, start: dict[int, int],
               until: Callable[[list[dict[str, Any]]], bool], timeout_s: float
               ) -> list[dict[str, Any]]:
    """Decode every record of ``topic`` after ``start`` until ``until(records)`` or timeout."""
    bootstrap = settings.get("kafka", "bootstrap_servers")
    registry = RegistrySchemas(settings.get("schema_registry", "url"))
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"chaos-{uuid.uuid4()}",
                         "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, p, o) for p, o in start.items()])
    records: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    quiet_since = time.monotonic()
    try:
        while time.monotonic() < deadline:
            batch = consumer.consume(2000, 0.5)
            for msg in batch:
                if msg.error():
                    continue
                try:
                    records.append(wire.decode(msg.value(), registry)[1])
                except Exception as exc:  # noqa: BLE001 - an undecodable record is a finding
                    records.append({"_undecodable": repr(exc)})
            if batch:
                quiet_since = time.monotonic()
            elif until(records) and time.monotonic() - quiet_since > 3.0:
                break
    finally:
        consumer.close()
    return records


def _stored_ids(target: Target, ids: set[str], since_ms: int) -> set[str]:
    """Which of ``ids`` are in sensor_readings (QuestDB /exp)."""
    if not ids:
        return set()
    found: set[str] = set()
    listed = sorted(ids)
    for i in range(0, len(listed), 500):
        chunk = ",".join("'" + x.replace("'", "''") + "'" for x in listed[i:i + 500])
        resp = requests.get(f"{target.questdb_url}/exp", timeout=60, params={
            "query": f"SELECT event_id FROM sensor_readings WHERE timestamp >= "
                     f"{since_ms * 1000} AND event_id IN ({chunk})"})
        resp.raise_for_status()
        found |= {line.strip().strip('"') for line in resp.text.splitlines()[1:] if line}
    return found


def _check_arrivals(target: Target, result: EntryResult, valid_ids: set[str],
                    sentinel_ids: set[str], dlq_start: dict[int, int],
                    raw_start: dict[int, int], since_ms: int,
                    mine: Callable[[dict[str, Any]], bool] | None,
                    timeout_s: float = 180.0) -> list[dict[str, Any]]:
    """Fill the found-counters: valid ids and sentinels arrived, dead letters present."""
    s = target.settings
    want = valid_ids | sentinel_ids
    deadline = time.monotonic() + timeout_s
    dlq: list[dict[str, Any]] = []
    if target.storage:
        found: set[str] = set()
        while time.monotonic() < deadline:
            dlq = read_topic(s, s.get("kafka", "topic_dlq"), dlq_start,
                             lambda r: True, timeout_s=20.0)
            dead_ids = {r.get("event_id") for r in dlq if r.get("event_id")}
            found = _stored_ids(target, want, since_ms) | (want & dead_ids)
            edge = sum(1 for r in dlq if mine is not None and mine(r))
            if found >= want and edge >= result.dead_letters_expected:
                break
            time.sleep(3.0)
    else:
        raw = read_topic(s, s.get("kafka", "topic_raw"), raw_start,
                         lambda r: want <= {x.get("event_id") for x in r}, timeout_s)
        found = want & {r.get("event_id") for r in raw}
        dlq = read_topic(s, s.get("kafka", "topic_dlq"), dlq_start,
                         lambda r: sum(1 for x in r if mine is not None and mine(x))
                         >= result.dead_letters_expected, 60.0)
    result.valid_found = len(found & valid_ids)
    result.sentinels_found = len(found & sentinel_ids)
    if mine is not None:
        found_dead = Counter(_dead_key(r, result) for r in dlq if mine(r))
        result.dead_letters_found = sum(min(n, found_dead[k])
                                        for k, n in result.expected_dead.items())
        result.dead_letter_copies = sum(found_dead.values()) - result.dead_letters_found
        no_reason = [r for r in dlq if mine(r) and not r.get("reasons")]
        if no_reason:
            result.problems.append(f"{len(no_reason)} dead letters without a reason")
    missing = sorted(want - found)[:5]
    if missing:
        result.problems.append(f"not arrived e.g. {missing}")
    return dlq


def _acked(info: mqtt.MQTTMessageInfo) -> bool:
    """PUBACK received; False also for a message paho gave up on (connection lost)."""
    try:
        return info.is_published()
    except RuntimeError:
        return False


def _dead_key(record: dict[str, Any], result: EntryResult) -> tuple[str | None, bytes]:
    topic = record.get("topic") if result.entry == "mqtt" else None
    return topic, bytes(record.get("original") or b"")


def _run_given(strategy: st.SearchStrategy[Any], cases: int, body: Callable[[Any], None]) -> None:
    @settings(max_examples=cases, database=None, deadline=None, derandomize=False,
              phases=(Phase.generate,), suppress_health_check=list(HealthCheck))
    @given(strategy)
    def run(case: Any) -> None:
        body(case)

    run()


# -- the entries -----------------------------------------------------------------------------------

def _entry_mqtt(target: Target, cases: int, tag: str, result: EntryResult) -> None:
    s = target.settings
    rules = default_sensor_rules()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{tag}-pub",
                         protocol=mqtt.MQTTv5)
    client.username_pw_set(s.get("mqtt", "sensor_username"), s.get("mqtt", "sensor_password"))
    client.max_inflight_messages_set(500)
    connected = threading.Event()
    client.on_connect = lambda _c, _u, _f, rc, _p: connected.set() if rc.value == 0 else None
    disconnects: list[str] = []
    client.on_disconnect = lambda _c, _u, _f, rc, _p: disconnects.append(str(rc))
    client.connect(s.get("mqtt", "host"), s.get("mqtt", "port", int), keepalive=30)
    client.loop_start()
    if not connected.wait(15):
        client.loop_stop()
        raise RuntimeError("the bad-input MQTT publisher could not connect")
    expected_edge = 0
    valid: set[str] = set()
    sentinels: set[str] = set()
    acks: dict[int, int] = {}
    client.on_publish = lambda _c, _u, mid, rc, _p: acks.__setitem__(mid, rc.value)
    infos: list[tuple[mqtt.MQTTMessageInfo, str, bytes]] = []
    counter = {"n": 0}

    def one(case: tuple[str, bytes]) -> None:
        nonlocal expected_edge
        topic, payload = case
        counter["n"] += 1
        if counter["n"] % SENTINEL_EVERY == 0:
            event = _valid_event(f"{tag}-sentinel", counter["n"], target.place)
            sentinels.add(event["event_id"])
            result.sentinels_sent += 1
            infos.append((client.publish(f"telemetry/{target.place[0]}/{target.place[1]}/TEMPERATURE",
                                         json.dumps(event), qos=1), "sentinel", b""))
        try:
            info = client.publish(topic, payload, qos=1)
        except ValueError as exc:  # paho refuses it locally (e.g. topic too long): no publish
            _LOGGER.debug("paho refused topic: %s", exc)
            return
        result.cases += 1
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            result.problems.append(f"publish failed locally: {mqtt.error_string(info.rc)}")
            return
        infos.append((info, topic, payload))
        deadline = time.monotonic() + 30
        # At most ~400 unacknowledged publishes (paho's ids and the broker's inflight window).
        while sum(1 for i, _t, _p in infos[-600:] if not _acked(i)) > 400:
            if time.monotonic() > deadline:
                result.problems.append("the broker stopped acknowledging publishes")
                break
            time.sleep(0.01)

    _run_given(_mqtt_case(tag, target.place), cases, one)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not all(_acked(i) for i, _t, _p in infos):
        time.sleep(0.2)
    client.on_disconnect = None  # our own disconnect below is not a finding
    client.loop_stop()
    client.disconnect()
    if disconnects:
        result.problems.append(f"the broker dropped the publisher: {disconnects[:3]}")
    now_ms = int(time.time() * 1000)
    for info, topic, payload in infos:
        code = acks.get(info.mid, -1)
        if topic == "sentinel":
            continue
        if code >= 0x80:
            result.statuses[code] += 1  # refused by the broker (ACL): the publisher was told
            continue
        if not _acked(info):
            result.problems.append("a publish was never acknowledged")
            continue
        outcome = event_from_mqtt(payload, topic, now_ms=now_ms, rules=rules)
        if outcome.event is not None:
            valid.add(outcome.event["event_id"])
        else:
            expected_edge += 1
            result.expected_dead[(topic, payload)] += 1
    result.dead_letters_expected = expected_edge
    result.valid_expected = len(valid)
    result.rejected_with_reason = expected_edge
    result.valid_ids, result.sentinel_ids = valid, sentinels


def _entry_rest_body(target: Target, cases: int, tag: str, result: EntryResult) -> None:
    rules = default_sensor_rules()
    session = requests.Session()
    auth = {"Authorization": f"Bearer {target.api_key}"}
    valid: set[str] = set()
    sentinels: set[str] = set()

    def one(case: tuple[str, bytes]) -> None:
        ctype, body = case
        result.cases += 1
        if result.cases % SENTINEL_EVERY == 0:
            event = _valid_event(f"{tag}-sentinel", result.cases, target.place)
            if _post(session, target, [event], auth) == 202:
                sentinels.add(event["event_id"])
            result.sentinels_sent += 1
        resp = _request(session, "POST", f"{target.api_url}/api/v1/telemetry",
                        headers={**auth, "Content-Type": ctype}, data=body)
        result.statuses[resp.status_code] += 1
        _check_reason(resp, result)
        if resp.status_code == 202:
            accepted = _predicted_ids(body, rules)
            if resp.json().get("accepted") != len(accepted):
                result.problems.append(f"202 accepted {resp.json().get('accepted')} items, "
                                       f"the edge rules accept {len(accepted)}")
            valid.update(accepted)

    _run_given(_rest_body(tag, target.place), cases, one)
    result.valid_expected = len(valid)
    result.valid_ids, result.sentinel_ids = valid, sentinels


def _entry_rest_headers(target: Target, cases: int, tag: str, result: EntryResult) -> None:
    session = requests.Session()
    valid: set[str] = set()
    sentinels: set[str] = set()

    def one(headers: dict[str, str]) -> None:
        result.cases += 1
        event = _valid_event(f"{tag}-h", result.cases, target.place)
        try:
            resp = _request(session, "POST", f"{target.api_url}/api/v1/telemetry",
                            headers=headers, data=json.dumps([event]).encode())
        except ValueError:  # requests refuses the header itself (not sent)
            return
        result.statuses[resp.status_code] += 1
        _check_reason(resp, result)
        if resp.status_code == 202:
            valid.add(event["event_id"])
        if result.cases % SENTINEL_EVERY == 0:
            sentinel = _valid_event(f"{tag}-sentinel", result.cases, target.place)
            result.sentinels_sent += 1
            if _post(session, target, [sentinel],
                     {"Authorization": f"Bearer {target.api_key}"}) == 202:
                sentinels.add(sentinel["event_id"])

    _run_given(_headers(target.api_key), cases, one)
    result.valid_expected = len(valid)
    result.valid_ids, result.sentinel_ids = valid, sentinels


def _entry_query(target: Target, cases: int, tag: str, result: EntryResult) -> None:
    session = requests.Session()
    auth = {"Authorization": f"Bearer {target.api_key}"}

    def one(case: tuple[str, list[tuple[str, str]]]) -> None:
        route, params = case
        result.cases += 1
        resp = _request(session, "GET", target.api_url + route, headers=auth, params=params)
        result.statuses[resp.status_code] += 1
        if resp.status_code not in (200, 400, 404):
            result.problems.append(f"{route} {params!r:.120} answered {resp.status_code}")
        _check_reason(resp, result)

    _run_given(_query(), cases, one)


def _entry_raw_kafka(target: Target, cases: int, tag: str, result: EntryResult) -> None:
    s = target.settings
    topic = s.get("kafka", "topic_raw")
    producer = Producer({"bootstrap.servers": s.get("kafka", "bootstrap_servers"),
                         "acks": "all", "enable.idempotence": True})
    raw_producer = build_raw_producer(s, client_id=f"{tag}-sentinels")
    sentinels: set[str] = set()
    delivered = {"n": 0, "failed": 0}

    def report(err: Any, msg: Any) -> None:
        delivered["failed" if err else "n"] += 1
        if not err:
            result.expected_dead[(None, bytes(msg.value() or b""))] += 1

    frames = st.one_of(
        st.binary(max_size=300),
        st.builds(lambda sid, body: b"\x00" + sid.to_bytes(4, "big") + body,
                  st.integers(0, 50), st.binary(max_size=200)))

    def one(data: bytes) -> None:
        result.cases += 1
        producer.produce(topic, value=data, key=f"{tag}".encode(), on_delivery=report)
        producer.poll(0)
        if result.cases % SENTINEL_EVERY == 0:
            event = _valid_event(f"{tag}-sentinel", result.cases, target.place)
            event["source"] = "http"
            if raw_producer.send_batch([event], timeout_s=30).ok:
                sentinels.add(event["event_id"])
            result.sentinels_sent += 1

    _run_given(frames, cases, one)
    producer.flush(60)
    raw_producer.close(10)
    if delivered["failed"]:
        result.problems.append(f"{delivered['failed']} records not delivered to Kafka")
    # Garbage that decodes to a valid event would be stored: rare, counted as valid.
    result.dead_letters_expected = delivered["n"]
    result.sentinel_ids = sentinels


DeadLetterFilter = Callable[[dict[str, Any], str], bool]

ENTRIES: dict[str, tuple[Callable[[Target, int, str, EntryResult], None],
                         DeadLetterFilter | None, bool]] = {
    # name: (runner, which dead letters are this entry's (record, tag), needs the pipeline)
    "mqtt": (_entry_mqtt, lambda r, _tag: r.get("stage") == "bridge", False),
    "rest-body": (_entry_rest_body, None, False),
    "rest-headers": (_entry_rest_headers, None, False),
    "query": (_entry_query, None, False),
    # Every record of this entry carries the tag as its Kafka key (sentinels do not).
    "raw-kafka": (_entry_raw_kafka, lambda r, tag: r.get("key") == tag.encode(), True),
}


# -- helpers of the entries -----------------------------------------------------------------------

def _request(session: requests.Session, method: str, url: str, **kwargs: Any
             ) -> requests.Response:
    """One request; 429 is waited out and retried (rate limiting is not the point here)."""
    for _ in range(20):
        resp = session.request(method, url, timeout=30, **kwargs)
        if resp.status_code != 429:
            return resp
        time.sleep(min(float(resp.headers.get("Retry-After", "1")), 2.0))
    return resp


def _post(session: requests.Session, target: Target, events: list[dict[str, Any]],
          auth: dict[str, str]) -> int:
    return _request(session, "POST", f"{target.api_url}/api/v1/telemetry",
                    headers={**auth, "Content-Type": "application/json"},
                    data=json.dumps(events)).status_code


def _check_reason(resp: requests.Response, result: EntryResult) -> None:
    if 400 <= resp.status_code < 500:
        try:
            body = resp.json()
        except ValueError:
            body = {}
        if body.get("message") or body.get("rejected"):
            result.rejected_with_reason += 1
        elif resp.text.strip() and "Bad Request" in resp.text:
            # gunicorn refuses malformed header lines itself, before the app, with an
            # HTML page naming the problem: a reason, though not the API's JSON shape.
            result.rejected_with_reason += 1
        else:
            result.missing_reason += 1
            if len(result.problems) < 5:
                result.problems.append(f"{resp.status_code} without a JSON reason: "
                                       f"{resp.text[:100]!r}")


def _predicted_ids(body: bytes, rules: Any) -> list[str]:
    """Ids of the items the edge accepts (a list: a batch may repeat an id)."""
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        return []
    items = parsed if isinstance(parsed, list) else [parsed]
    now_ms = int(time.time() * 1000)
    ids = []
    for item in items:
        outcome = event_from_item(item, now_ms=now_ms, rules=rules)
        if outcome.event is not None:
            ids.append(outcome.event["event_id"])
    return ids


def run_entry(target: Target, name: str, cases: int) -> EntryResult:
    """Run one entry point's cases and check them (see the module docstring)."""
    runner, stage, _needs_pipeline = ENTRIES[name]
    s = target.settings
    tag = f"bad{uuid.uuid4().hex[:8]}-{name}"
    result = EntryResult(name)
    since_ms = int(time.time() * 1000) - 1000
    bootstrap = s.get("kafka", "bootstrap_servers")
    dlq_start = kafka_end_offsets(bootstrap, s.get("kafka", "topic_dlq"))
    raw_start = kafka_end_offsets(bootstrap, s.get("kafka", "topic_raw"))
    pids_before = target.pids()
    runner(target, cases, tag, result)
    _check_arrivals(target, result, result.valid_ids, result.sentinel_ids, dlq_start,
                    raw_start, since_ms, (lambda r: stage(r, tag)) if stage else None)
    pids_after = target.pids()
    result.crashed = sorted(n for n, pid in pids_before.items() if pids_after.get(n) != pid)
    return result


def run_bad_input(settings: Settings, supervisor: Any, *, cases: int,
                  say: Callable[[str], None] = print) -> BadInputReport:
    """Every entry point against the chaos stack (pipeline running), ``cases`` each."""

    def pids() -> dict[str, int]:
        return {s.name: s.pid for s in supervisor.statuses() if s.pid is not None}

    target = Target.from_settings(settings, storage=True, pids=pids)
    entries = []
    for name in ENTRIES:
        say(f"[bad input] {name}: {cases} generated cases")
        t0 = time.monotonic()
        entries.append(run_entry(target, name, cases))
        say(f"[bad input] {name}: done in {time.monotonic() - t0:.0f} s -> "
            f"{'ok' if entries[-1].ok else 'FAIL'}")
    return BadInputReport(entries)
