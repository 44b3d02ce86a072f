"""The bad-input MQTT publisher (chaos/badinput.py) against a fake broker: topics the protocol
lets a broker refuse by disconnecting, reconnecting after a drop without losing sentinels,
bounded in-flight publishes, and the entry selection of ``python -m chaos --entries``."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from chaos.badinput import (
    ENTRIES,
    EntryResult,
    Target,
    _BrokerStalled,
    _entry_mqtt,
    _Publisher,
    select_entries,
    topic_protocol_problem,
)

POISON = "telemetry/site-001/asset-001/POISON"  # a drop the classifier does not predict


class FakeBroker:
    """Acts like Mosquitto 2.0 + paho: closes the connection on a malformed topic (and on
    POISON), refuses other depths with 0x87; paho's local refusals raise ValueError."""

    def __init__(self, hold_first: bool = False, hold_all: bool = False) -> None:
        self.connections: list[FakeConnection] = []
        self.hold_first, self.hold_all = hold_first, hold_all
        self.max_outstanding = 0
        self.lock = threading.Lock()

    def connect(self, client_id: str, on_publish: Callable[[int, int], None],
                on_drop: Callable[[str], None]) -> FakeConnection:
        hold = self.hold_all or (self.hold_first and not self.connections)
        conn = FakeConnection(self, client_id, on_publish, on_drop, hold)
        self.connections.append(conn)
        return conn


class FakeConnection:
    def __init__(self, broker: FakeBroker, client_id: str,
                 on_publish: Callable[[int, int], None], on_drop: Callable[[str], None],
                 hold: bool) -> None:
        self.broker, self.client_id = broker, client_id
        self.on_publish, self.on_drop, self.hold = on_publish, on_drop, hold
        self.alive = True
        self.mid = 0
        self.held: list[tuple[int, int]] = []
        self.topics: list[str] = []

    def publish(self, topic: str, payload: bytes) -> tuple[int, int]:
        topic.encode("utf-8")  # paho: UnicodeEncodeError (a ValueError) for surrogates
        if "+" in topic or "#" in topic:
            raise ValueError("Publish topic cannot contain wildcards.")
        self.mid += 1
        if not self.alive:
            return mqtt.MQTT_ERR_NO_CONN, self.mid
        if topic == POISON or topic_protocol_problem(topic):
            self.alive = False
            self.on_drop("Malformed packet")
            return mqtt.MQTT_ERR_SUCCESS, self.mid
        self.topics.append(topic)
        code = 0 if topic.count("/") == 3 else 0x87
        with self.broker.lock:
            if self.hold:
                self.held.append((self.mid, code))
                self.broker.max_outstanding = max(self.broker.max_outstanding, len(self.held))
                return mqtt.MQTT_ERR_SUCCESS, self.mid
        self.on_publish(self.mid, code)
        return mqtt.MQTT_ERR_SUCCESS, self.mid

    def release(self) -> None:
        with self.broker.lock:
            held, self.held = self.held, []
        for mid, code in held:
            self.on_publish(mid, code)

    def close(self) -> None:
        self.alive = False


def test_topic_protocol_problem_matches_what_mosquitto_drops_on() -> None:
    for ok in ("telemetry/site-001/asset-001/TEMPERATURE", "telemetry///", "telemetry/é/x/y",
               "telemetry/\u0378/\ue000/\U000e0080", "telemetry/\ufeff/\ufffd/\U0010fffd"):
        assert topic_protocol_problem(ok) is None, repr(ok)
    for bad in ("telemetry/a\x00/b/c", "telemetry/a\nb/c/d", "telemetry/\x1f/a/b",
                "telemetry/\x7f/a/b", "telemetry/site-001/I\x88W/TEMPERATURE",
                "telemetry/\x9f/a/b", "telemetry/\ufdd0/a/b", "telemetry/\ufdef/a/b",
                "telemetry/\ufffe/a/b", "telemetry/\uffff/a/b", "telemetry/\U0001fffe/a/b",
                "telemetry/\U0010ffff/a/b"):
        assert topic_protocol_problem(bad) is not None, repr(bad)


def test_publisher_reconnects_and_resends_unacknowledged_sentinels() -> None:
    broker = FakeBroker(hold_first=True)  # nothing is acknowledged before the drop
    pub = _Publisher(broker.connect, "t-pub", max_inflight=100, ack_timeout_s=2.0)
    first = pub.send("telemetry/s/a/T", b"sentinel-1", sentinel=True)
    pub.send("telemetry/s/a/T", b"case-1")
    culprit = pub.send(POISON, b"12345")
    after = [pub.send("telemetry/s/a/T", b"sentinel-2", sentinel=True),
             pub.send("telemetry/s/a", b"wrong depth")]
    pub.drain(2.0)
    pub.close()
    assert culprit.dropped_connection and culprit.code is None
    assert first.code == 0 and after[0].code == 0 and after[1].code == 0x87
    assert all(x.code is not None for x in pub.sent if x is not culprit)
    # the drop is reported with the case that caused it (confirmed by re-sending it alone)
    assert len(pub.drops) == 1 and repr(POISON) in pub.drops[0]
    assert "payload 5 bytes" in pub.drops[0] and "re-sent alone" in pub.drops[0]
    # dropped on connection 1, dropped again on 2 (the culprit alone), the rest on 3
    assert [c.client_id for c in broker.connections] == ["t-pub-1", "t-pub-2", "t-pub-3"]
    assert broker.connections[1].topics == ["telemetry/s/a/T", "telemetry/s/a/T"]
    assert POISON not in broker.connections[2].topics


def test_publisher_keeps_in_flight_publishes_bounded() -> None:
    broker = FakeBroker(hold_all=True)
    pub = _Publisher(broker.connect, "t-pub", max_inflight=20, ack_timeout_s=5.0)
    stop = threading.Event()

    def acker() -> None:
        while not stop.is_set():
            broker.connections[-1].release()
            time.sleep(0.002)

    thread = threading.Thread(target=acker, daemon=True)
    thread.start()
    try:
        for i in range(300):
            pub.send(f"telemetry/s/a/T{i}", b"x")
        pub.drain(5.0)
    finally:
        stop.set()
        thread.join()
    assert broker.max_outstanding <= 20
    assert all(x.code == 0 for x in pub.sent) and len(pub.sent) == 300 and not pub.drops


def test_publisher_gives_up_when_the_broker_stops_acknowledging() -> None:
    broker = FakeBroker(hold_all=True)
    pub = _Publisher(broker.connect, "t-pub", max_inflight=5, ack_timeout_s=0.2)
    for i in range(5):
        pub.send(f"telemetry/s/a/T{i}", b"x")
    with pytest.raises(_BrokerStalled):
        pub.send("telemetry/s/a/T", b"x")


class _Settings:
    def get(self, *_a: Any, **_k: Any) -> str:
        raise AssertionError("the fake connection needs no settings")


def test_entry_mqtt_handles_every_generated_case_without_losing_the_connection() -> None:
    broker = FakeBroker()
    target = Target(settings=_Settings(), api_url="", api_key="", storage=False,  # type: ignore[arg-type]
                    pids=dict)
    result = EntryResult("mqtt")
    _entry_mqtt(target, 300, "t", result, connect=broker.connect)
    assert result.problems == []
    assert result.cases == 300 and result.sentinels_sent == 6
    assert len(result.sentinel_ids) == 6
    # one publisher connection; throw-away ones only for protocol-invalid topics
    shared = [c for c in broker.connections if "-pub-" in c.client_id]
    assert len(shared) == 1
    alone = len(broker.connections) - 1
    assert result.handled["broker disconnected client (protocol error)"] == alone
    accounted = (sum(result.statuses.values()) + sum(result.handled.values())
                 + result.dead_letters_expected + result.valid_expected)
    assert accounted <= result.cases  # valid ids may repeat; nothing counted twice


def test_select_entries() -> None:
    assert select_entries("all") == list(ENTRIES)
    assert select_entries("mqtt") == ["mqtt"]
    assert select_entries("query, mqtt") == ["mqtt", "query"]
    with pytest.raises(ValueError, match="nope"):
        select_entries("mqtt,nope")


def test_entry_mqtt_classifies_each_kind_of_refusal(monkeypatch: pytest.MonkeyPatch) -> None:
    good = b'{"event_id": "e1", "timestamp": 1, "sensor_id": "s", "value": 1.0}'
    cases = [("telemetry/site-001/I\x88W/TEMPERATURE", b"{}"),   # broker closes (protocol)
             ("telemetry/\ud800x/a/b", b"{}"),                    # paho: not UTF-8
             # a protocol problem and a surrogate (found by hypothesis): paho refuses it on
             # the throw-away connection too, nothing is sent
             ("telemetry/\ud800x/a/e\x13b", b"{}"),
             ("telemetry/a+/b/c", b"{}"),                          # paho: wildcard
             ("telemetry/a/b", b"{}"),                             # ACL: 0x87
             (POISON, b"123"),                                     # unexpected drop
             ("telemetry/site-001/asset-001/TEMPERATURE", good)]
    monkeypatch.setattr("chaos.badinput._run_given",
                        lambda _strategy, _n, body: [body(c) for c in cases])
    broker = FakeBroker()
    target = Target(settings=_Settings(), api_url="", api_key="", storage=False,  # type: ignore[arg-type]
                    pids=dict)
    result = EntryResult("mqtt")
    _entry_mqtt(target, len(cases), "t", result, connect=broker.connect)
    assert result.cases == 7
    assert result.handled == {"broker disconnected client (protocol error)": 1,
                              "not sendable: topic not encodable as UTF-8": 2,
                              "not sendable: Publish topic cannot contain wildcards": 1,
                              "broker dropped the publisher (unexpected)": 1}
    assert result.statuses == {0x87: 1}
    assert len(result.problems) == 1 and repr(POISON) in result.problems[0]
    assert result.dead_letters_expected + result.valid_expected == 1
