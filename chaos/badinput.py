"""Bad input at every entry point, generated with hypothesis, with valid sentinels in between.

Entry points and what counts as handled:

* ``mqtt`` — generated payloads (mutated events, random JSON, random bytes) and
  topics (random levels). Each acknowledged publish must end as exactly one of:
  a dead letter of the bridge (stage ``bridge``), or an event (in
  ``raw_telemetry``; with ``storage=True`` in QuestDB or dead-lettered by the
  pipeline). The expectation per case comes from the edge's own pure function
  (:func:`schemas.edge.event_from_mqtt`), so a bridge that drops or mis-routes
  a case is caught. Topics outside the bridge's subscription
  (``telemetry/+/+/+``) are refused by the broker's ACL (PUBACK 0x87). Topics the
  protocol lets the broker answer by closing the connection (control characters,
  noncharacters) go on a throw-away connection, topics paho cannot send are counted
  as not sendable, and the publisher reconnects after any other drop, reporting the
  case that caused it (see :func:`_entry_mqtt`).
* ``rest-body`` — generated bodies: status must be 202, 400, 413 or 415 with a
  JSON reason; every item a 202 accepted must arrive like an MQTT event.
* ``rest-headers`` — generated headers around a valid body: 202 or a 4xx with
  a reason.
* ``query`` — generated query parameters on every GET route: 200, 400 or 404.
* ``raw-kafka`` (``storage=True`` only: needs the pipeline) — random bytes and
  garbage Confluent frames written straight to ``raw_telemetry``: each must
  come back as a pipeline dead letter with its original bytes.

Every entry interleaves valid sentinel events (one per ``SENTINEL_EVERY``
cases) that must all arrive; nothing may crash: the services' pids, the API's gunicorn
worker pids and the Flink job (its id, restart count and exception history) must not
change (see :func:`run_bad_input`).
"""

from __future__ import annotations

import json
import logging
import string
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
import psutil
import requests
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from api.auth import configured_api_key
from config.settings import Settings
from io_connectors.raw_producer import EdgeTarget, build_raw_producer
from io_connectors.schema_registry import RegistrySchemas
from schemas import wire
from schemas.edge import event_from_item, event_from_mqtt
from schemas.events import EVENT_FIELDS
from schemas.validation import default_sensor_rules

__all__ = [
    "BadInputReport", "EntryResult", "ENTRIES", "Target", "flink_job_marks", "gunicorn_workers",
    "kafka_end_offsets", "read_topic", "run_bad_input", "run_entry", "select_entries",
    "topic_protocol_problem",
]

_LOGGER = logging.getLogger(__name__)

SENTINEL_EVERY = 50
VALID_SITE, VALID_ASSET = "site-001", "asset-001"
_FIELDS = EVENT_FIELDS   # telemetry-event.avsc's fields: what the mutations remove or replace
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
    # Cases refused before or instead of the normal path, by reason (MQTT: not sendable by
    # paho, or the broker closed the throw-away connection as the protocol prescribes).
    handled: Counter[str] = field(default_factory=Counter)
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
            statuses = ", ".join([f"{s}: {n}" for s, n in sorted(e.statuses.items())]
                                 + [f"{r}: {n}" for r, n in sorted(e.handled.items())]) or "-"
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
        host = settings.stack.bind_host
        return cls(settings=settings,
                   api_url=f"http://{host}:{settings.api.port}",
                   api_key=configured_api_key(settings),
                   storage=storage, pids=pids,
                   questdb_url=f"http://{settings.questdb.host}:"
                               f"{settings.questdb.http_port}")


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
    bootstrap = settings.kafka.bootstrap_servers
    registry = RegistrySchemas(settings.schema_registry.url)
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
                    record = wire.decode(msg.value(), registry)[1]
                    # A TelemetryBatch record (what the edge writes) holds many events.
                    records.extend(record["events"] if "events" in record else [record])
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
            dlq = read_topic(s, s.kafka.topic_dlq, dlq_start,
                             lambda r: True, timeout_s=20.0)
            dead_ids = {r.get("event_id") for r in dlq if r.get("event_id")}
            found = _stored_ids(target, want, since_ms) | (want & dead_ids)
            edge = sum(1 for r in dlq if mine is not None and mine(r))
            if found >= want and edge >= result.dead_letters_expected:
                break
            time.sleep(3.0)
    else:
        raw = read_topic(s, s.kafka.topic_raw, raw_start,
                         lambda r: want <= {x.get("event_id") for x in r}, timeout_s)
        found = want & {r.get("event_id") for r in raw}
        dlq = read_topic(s, s.kafka.topic_dlq, dlq_start,
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


# -- the MQTT publisher ----------------------------------------------------------------------------

def topic_protocol_problem(topic: str) -> str | None:
    """Why an MQTT broker may close the connection of a client publishing to ``topic``.

    MQTT 5 section 1.5.4 (the same in 3.1.1): a UTF-8 string MUST NOT hold U+0000 and SHOULD
    NOT hold control characters (U+0001-U+001F, U+007F-U+009F) or noncharacters; a receiver
    getting them "MAY" close the connection as a malformed packet. Mosquitto 2.0 does, for
    every one of them (checked one code point at a time against 2.0.11: "Client ...
    disconnected due to malformed packet"); unassigned and private-use code points it accepts.
    Surrogates, wildcards and over-long topics never reach the broker: paho refuses them.
    """
    for ch in topic:
        cp = ord(ch)
        if cp == 0:
            return "U+0000 in topic"
        if cp < 0x20 or 0x7F <= cp <= 0x9F:
            return "control character in topic"
        if 0xFDD0 <= cp <= 0xFDEF or (cp & 0xFFFE) == 0xFFFE:
            return "noncharacter in topic"
    return None


@dataclass(eq=False)
class _Sent:
    """One publish: a generated case or a sentinel, and what became of it."""

    topic: str
    payload: bytes
    sentinel: bool = False
    mid: int = -1
    gen: int = -1                     # the connection it was last sent on
    code: int | None = None           # PUBACK reason code, once acknowledged
    dropped_connection: bool = False  # the broker closed the connection on this publish


class _BrokerStalled(RuntimeError):
    """The broker neither acknowledges nor drops us."""


class _Connection:
    """One paho MQTT 5 connection: clean start, no automatic reconnect, so a publish the broker
    refuses at protocol level is never re-sent by paho on its own (it was, with the old
    single client: paho resumed the session and retransmitted the same malformed PUBLISH
    every second, and every later publish failed with "not currently connected")."""

    def __init__(self, settings: Settings, client_id: str,
                 on_publish: Callable[[int, int], None], on_drop: Callable[[str], None],
                 max_inflight: int) -> None:
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                                   protocol=mqtt.MQTTv5, reconnect_on_failure=False)
        self._client.username_pw_set(settings.mqtt.sensor_username,
                                     settings.mqtt.sensor_password)
        self._client.max_inflight_messages_set(max_inflight + 100)
        connected = threading.Event()
        self._closing = False
        self._client.on_connect = \
            lambda _c, _u, _f, rc, _p: connected.set() if rc.value == 0 else None
        self._client.on_publish = lambda _c, _u, mid, rc, _p: on_publish(mid, rc.value)
        self._client.on_disconnect = \
            lambda _c, _u, _f, rc, _p: None if self._closing else on_drop(str(rc))
        self._client.connect(settings.mqtt.host, settings.mqtt.port,
                             keepalive=30, clean_start=True)
        self._client.loop_start()
        if not connected.wait(15):
            self.close()
            raise RuntimeError(f"MQTT publisher {client_id} could not connect")

    def publish(self, topic: str, payload: bytes) -> tuple[int, int]:
        """(paho rc, mid); raises ValueError for what paho will not send."""
        info = self._client.publish(topic, payload, qos=1)
        return info.rc, info.mid

    def close(self) -> None:
        self._closing = True
        self._client.loop_stop()
        self._client.disconnect()


ConnectionFactory = Callable[[str, Callable[[int, int], None], Callable[[str], None]], Any]


class _Publisher:
    """QoS 1 publisher with bounded in-flight publishes that survives being dropped.

    After an unexpected disconnect it opens a new connection and re-sends every publish not
    yet PUBACKed *one at a time*, each waiting for its PUBACK: the publish the broker drops
    us on again is the one that caused it; it is recorded in ``drops`` (topic repr and
    payload length) and marked ``dropped_connection``; the others (sentinels included)
    are acknowledged normally, so a drop never silently loses a sentinel.
    """

    def __init__(self, connect: ConnectionFactory, client_id: str, max_inflight: int = 400,
                 max_reconnects: int = 50, ack_timeout_s: float = 30.0) -> None:
        self._connect_factory = connect
        self._client_id = client_id
        self.max_inflight = max_inflight
        self.max_reconnects = max_reconnects
        self.ack_timeout_s = ack_timeout_s
        self.sent: list[_Sent] = []
        self.drops: list[str] = []
        self.reconnects = 0
        self._window: deque[_Sent] = deque()
        self._gen = 0
        self._acks: dict[int, int] = {}
        self._dropped: list[str] = []
        self._conn: Any = None
        self._open()

    def _open(self) -> None:
        self._gen += 1
        acks: dict[int, int] = {}
        dropped: list[str] = []
        self._acks, self._dropped = acks, dropped
        self._conn = self._connect_factory(f"{self._client_id}-{self._gen}",
                                           acks.__setitem__, dropped.append)

    def _resolved(self, x: _Sent) -> bool:
        if x.code is None and x.gen == self._gen and x.mid in self._acks:
            x.code = self._acks.pop(x.mid)
        return x.code is not None

    def _transmit(self, x: _Sent) -> bool:
        """Send on the current connection; False when it is gone."""
        rc, mid = self._conn.publish(x.topic, x.payload)
        x.mid, x.gen = mid, self._gen
        return rc == mqtt.MQTT_ERR_SUCCESS and not self._dropped

    def send(self, topic: str, payload: bytes, sentinel: bool = False) -> _Sent:
        """Queue one publish (ValueError: paho will not send it; nothing was sent)."""
        x = _Sent(topic, payload, sentinel)
        deadline = time.monotonic() + self.ack_timeout_s
        while True:
            if self._dropped:
                self._recover()
                deadline = time.monotonic() + self.ack_timeout_s
            if len(self._window) < self.max_inflight:
                break
            self._window = deque(w for w in self._window if not self._resolved(w))
            if len(self._window) < self.max_inflight:
                break
            if time.monotonic() > deadline:
                raise _BrokerStalled(f"no PUBACK for {self.ack_timeout_s:.0f} s with "
                                     f"{len(self._window)} publishes in flight")
            time.sleep(0.002)
        ok = self._transmit(x)  # raises ValueError before anything is recorded
        self.sent.append(x)
        self._window.append(x)
        if not ok:
            self._recover()
        return x

    def drain(self, timeout_s: float = 60.0) -> None:
        """Wait until every publish is acknowledged (recovering from drops)."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self._dropped:
                self._recover()
            self._window = deque(w for w in self._window if not self._resolved(w))
            if not self._window or time.monotonic() > deadline:
                return
            time.sleep(0.05)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _wait_one(self, x: _Sent) -> bool:
        deadline = time.monotonic() + self.ack_timeout_s
        while not self._resolved(x):
            if self._dropped:
                return False
            if time.monotonic() > deadline:
                raise _BrokerStalled(f"no PUBACK for {x.topic!r:.80} within "
                                     f"{self.ack_timeout_s:.0f} s after a reconnect")
            time.sleep(0.002)
        return True

    def _drop_reason(self) -> str:
        """paho's reason for the drop (its callback may come just after a failed publish)."""
        deadline = time.monotonic() + 2.0
        while not self._dropped and time.monotonic() < deadline:
            time.sleep(0.01)
        return self._dropped[0] if self._dropped else "not connected"

    def _recover(self) -> None:
        why = self._drop_reason()
        pending = deque(w for w in self._window if not self._resolved(w))
        self._window.clear()
        culprits = 0
        while True:
            self.close()
            self.reconnects += 1
            if self.reconnects > self.max_reconnects:
                raise _BrokerStalled(f"dropped {self.reconnects} times, giving up")
            self._open()
            while pending:
                x = pending[0]
                if self._transmit(x) and self._wait_one(x):
                    pending.popleft()
                    continue
                pending.popleft()
                x.dropped_connection = True
                culprits += 1
                self.drops.append(f"the broker dropped the publisher ({why}) on topic "
                                  f"{x.topic!r:.160}, payload {len(x.payload)} bytes "
                                  f"(dropped again when re-sent alone: "
                                  f"{self._drop_reason()})")
                break
            else:
                break
        if not culprits:
            self.drops.append(f"the broker dropped the publisher ({why}); re-sending the "
                              f"unacknowledged publishes one by one did not reproduce it")


def _refusal(exc: ValueError) -> str:
    """Why paho would not send a publish, as counted in ``EntryResult.handled``."""
    return ("topic not encodable as UTF-8" if isinstance(exc, UnicodeError)
            else str(exc).rstrip("."))


def _publish_alone(connect: ConnectionFactory, client_id: str, topic: str, payload: bytes,
                   timeout_s: float = 15.0) -> int | None:
    """Publish once on a throw-away connection: the PUBACK code, or None when dropped."""
    acks: dict[int, int] = {}
    dropped: list[str] = []
    conn = connect(client_id, acks.__setitem__, dropped.append)
    try:
        rc, mid = conn.publish(topic, payload)
        deadline = time.monotonic() + timeout_s
        while rc == mqtt.MQTT_ERR_SUCCESS and not dropped and mid not in acks:
            if time.monotonic() > deadline:
                raise _BrokerStalled(f"neither PUBACK nor disconnect for {topic!r:.80}")
            time.sleep(0.002)
        return acks.get(mid)
    finally:
        conn.close()


# -- the entries -----------------------------------------------------------------------------------

def _entry_mqtt(target: Target, cases: int, tag: str, result: EntryResult,
                connect: ConnectionFactory | None = None) -> None:
    """Generated publishes on one publisher; see :class:`_Publisher` for drops.

    Cases that cannot be carried honestly on the shared connection are not sent on it:

    * paho refuses the topic (surrogates, wildcards, longer than 65,535 bytes): nothing can
      be sent; counted under ``not sendable: <reason>`` in ``result.handled``;
    * :func:`topic_protocol_problem` says the broker may close the connection (MQTT 5
      1.5.4): published alone on a throw-away connection. The broker closing that connection
      is the rejection the protocol prescribes: counted as ``broker disconnected client
      (protocol error)``. Were it acknowledged instead, the case is checked like any other.

    Anything else that makes the broker drop the publisher is a finding (``result.problems``).
    """
    s = target.settings
    rules = default_sensor_rules()
    if connect is None:
        def connect(cid: str, on_publish: Callable[[int, int], None],
                    on_drop: Callable[[str], None]) -> _Connection:
            return _Connection(s, cid, on_publish, on_drop, max_inflight=400)
    publisher = _Publisher(connect, f"{tag}-pub")
    alone: list[_Sent] = []
    sentinel_topic = f"telemetry/{target.place[0]}/{target.place[1]}/TEMPERATURE"

    def one(case: tuple[str, bytes]) -> None:
        topic, payload = case
        result.cases += 1
        if result.cases % SENTINEL_EVERY == 0:
            event = _valid_event(f"{tag}-sentinel", result.cases, target.place)
            result.sentinel_ids.add(event["event_id"])
            result.sentinels_sent += 1
            publisher.send(sentinel_topic, json.dumps(event).encode(), sentinel=True)
        problem = topic_protocol_problem(topic)
        if problem is not None:
            x = _Sent(topic, payload)
            try:
                x.code = _publish_alone(connect, f"{tag}-alone-{result.cases}", topic, payload)
            except ValueError as exc:  # also paho-refused (e.g. a surrogate): nothing was sent
                result.handled[f"not sendable: {_refusal(exc)}"] += 1
                return
            if x.code is None:
                result.handled["broker disconnected client (protocol error)"] += 1
                _LOGGER.debug("broker refused %r: %s", topic, problem)
            else:
                alone.append(x)
            return
        try:
            publisher.send(topic, payload)
        except ValueError as exc:  # paho refuses it locally: nothing was sent
            result.handled[f"not sendable: {_refusal(exc)}"] += 1

    try:
        _run_given(_mqtt_case(tag, target.place), cases, one)
        publisher.drain(60.0)
    except _BrokerStalled as exc:
        result.problems.append(f"MQTT publisher gave up: {exc}")
    finally:
        publisher.close()
    result.problems.extend(publisher.drops)
    now_ms = int(time.time() * 1000)
    unacked = 0
    for x in publisher.sent + alone:
        if x.dropped_connection:
            result.handled["broker dropped the publisher (unexpected)"] += 1
            continue
        if x.code is None:
            unacked += 1
            continue
        if x.sentinel:
            continue
        if x.code >= 0x80:
            result.statuses[x.code] += 1  # refused by the broker (ACL): the publisher was told
            continue
        outcome = event_from_mqtt(x.payload, x.topic, now_ms=now_ms, rules=rules)
        if outcome.event is not None:
            result.valid_ids.add(outcome.event["event_id"])
        else:
            result.expected_dead[(x.topic, x.payload)] += 1
    if unacked:
        result.problems.append(f"{unacked} publishes were never acknowledged")
    result.dead_letters_expected = sum(result.expected_dead.values())
    result.valid_expected = len(result.valid_ids)
    result.rejected_with_reason = result.dead_letters_expected


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
    topic = s.kafka.topic_raw
    producer = Producer({"bootstrap.servers": s.kafka.bootstrap_servers,
                         "acks": "all", "enable.idempotence": True})
    raw_producer = build_raw_producer(EdgeTarget.from_settings(s), client_id=f"{tag}-sentinels")
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
    bootstrap = s.kafka.bootstrap_servers
    dlq_start = kafka_end_offsets(bootstrap, s.kafka.topic_dlq)
    raw_start = kafka_end_offsets(bootstrap, s.kafka.topic_raw)
    pids_before = target.pids()
    runner(target, cases, tag, result)
    _check_arrivals(target, result, result.valid_ids, result.sentinel_ids, dlq_start,
                    raw_start, since_ms, (lambda r: stage(r, tag)) if stage else None)
    pids_after = target.pids()
    result.crashed = sorted(n for n, pid in pids_before.items() if pids_after.get(n) != pid)
    if result.crashed:
        result.problems.append("crashed or restarted: " + ", ".join(
            f"{n} ({pids_before[n]} -> {pids_after.get(n, 'gone')})" for n in result.crashed))
    return result


def gunicorn_workers(master: Any) -> dict[str, int]:
    """``{"api worker <pid>": pid}`` for each worker of a gunicorn master (a psutil.Process).

    A worker that dies (a crash, a timeout kill) is replaced by one with another pid, so
    its mark is missing afterwards and :func:`run_entry` counts it as a crash; the
    master's own pid is the ``api`` service's.
    """
    if master is None:
        return {}
    try:
        return {f"api worker {w.pid}": w.pid for w in master.children()}
    except psutil.Error:
        return {}


def flink_job_marks(rest_url: str, job_name: str) -> dict[str, int]:
    """Marks of the running telemetry job (``job_name``: [pipeline] job_name) that change
    when Flink restarts or replaces it.

    ``flink job <jid> restarts`` (the job's ``numRestarts`` metric: a failed task makes
    Flink restart the job from its checkpoint, same job id) and ``flink job <jid>
    failures`` (entries of its exception history). A new job id (the job server died and
    the launcher resubmitted) drops both marks. Empty when Flink does not answer: then
    the ``flink-jobserver`` service's pid tells.
    """
    try:
        jobs = [j for j in requests.get(f"{rest_url}/jobs/overview", timeout=5).json()["jobs"]
                if j.get("name") == job_name and j.get("state") == "RUNNING"]
        if not jobs:
            return {}
        jid = max(jobs, key=lambda j: int(j.get("start-time", 0)))["jid"]
        metric = requests.get(f"{rest_url}/jobs/{jid}/metrics", params={"get": "numRestarts"},
                              timeout=5).json()
        history = requests.get(f"{rest_url}/jobs/{jid}/exceptions", timeout=5).json()
    except (requests.RequestException, ValueError, KeyError):
        return {}
    restarts = int(float(metric[0]["value"])) if metric else -1
    failures = len((history.get("exceptionHistory") or {}).get("entries") or [])
    return {f"flink job {jid} restarts": restarts, f"flink job {jid} failures": failures}


def select_entries(spec: str) -> list[str]:
    """Entry names from ``--entries`` (comma-separated, or 'all'), in :data:`ENTRIES` order."""
    if spec.strip() in ("", "all"):
        return list(ENTRIES)
    names = [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in ENTRIES]
    if unknown:
        raise ValueError(f"unknown entry point(s) {unknown}; known: {', '.join(ENTRIES)}")
    return [n for n in ENTRIES if n in names]


def run_bad_input(settings: Settings, supervisor: Any, *, cases: int,
                  say: Callable[[str], None] = print,
                  entries: Sequence[str] | None = None) -> BadInputReport:
    """Entry points (default: every one) against the chaos stack (pipeline running)."""

    flink_url = (f"http://{settings.stack.bind_host}:"
                 f"{settings.flink.web_ui_port}")

    def pids() -> dict[str, int]:
        marks = {s.name: s.pid for s in supervisor.statuses() if s.pid is not None}
        marks.update(gunicorn_workers(supervisor.running_process("api")))
        marks.update(flink_job_marks(flink_url, settings.pipeline.job_name))
        return marks

    target = Target.from_settings(settings, storage=True, pids=pids)
    done = []
    for name in (list(ENTRIES) if entries is None else entries):
        say(f"[bad input] {name}: {cases} generated cases")
        t0 = time.monotonic()
        done.append(run_entry(target, name, cases))
        say(f"[bad input] {name}: done in {time.monotonic() - t0:.0f} s -> "
            f"{'ok' if done[-1].ok else 'FAIL'}")
    return BadInputReport(done)
