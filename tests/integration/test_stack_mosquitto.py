"""The stack's Mosquitto: password auth, anonymous refused, and the topic ACL.

Runs against the running stack ([mqtt] settings). The sensor account publishes,
the bridge account subscribes (plain and shared subscriptions); MQTT 5 reason
codes show what the broker refused.
"""

from __future__ import annotations

import queue
import time
import uuid
from collections.abc import Iterator

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.reasoncodes import ReasonCode

from config.settings import load_settings
from runners.stack.mosquitto import check_login

pytestmark = pytest.mark.integration

SETTINGS = load_settings()
HOST = SETTINGS.mqtt.host
PORT = SETTINGS.mqtt.port
SENSOR = (SETTINGS.mqtt.sensor_username, SETTINGS.mqtt.sensor_password)
BRIDGE = (SETTINGS.mqtt.bridge_username, SETTINGS.mqtt.bridge_password)
NOT_AUTHORIZED = (5, 135)  # MQTT 3.1.1 CONNACK 5 / MQTT 5 reason 0x87


class _Client:
    """A connected paho client (MQTT 5) whose callbacks land in queues."""

    def __init__(self, user: tuple[str, str]) -> None:
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.acks: queue.Queue[tuple[int, int]] = queue.Queue()
        self.subacks: queue.Queue[list[ReasonCode]] = queue.Queue()
        connected: queue.Queue[int] = queue.Queue()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                  client_id=f"test-{uuid.uuid4().hex[:12]}",
                                  protocol=mqtt.MQTTv5)
        self.client.username_pw_set(*user)
        self.client.on_connect = lambda c, u, f, rc, p: connected.put(rc.value)
        self.client.on_message = lambda c, u, m: self.messages.put(m)
        self.client.on_publish = lambda c, u, mid, rc, p: self.acks.put((mid, rc.value))
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self.subacks.put(list(rcs))
        self.client.connect(HOST, PORT, keepalive=30)
        self.client.loop_start()
        rc = connected.get(timeout=10)
        assert rc == 0, f"connect as {user[0]} refused with reason {rc}"

    def subscribe(self, topic: str) -> list[int]:
        self.client.subscribe(topic, qos=1)
        return [rc.value for rc in self.subacks.get(timeout=10)]

    def publish(self, topic: str, payload: bytes) -> int:
        """Publish at QoS 1 and return the PUBACK reason code (0 = accepted)."""
        info = self.client.publish(topic, payload, qos=1)
        mid, rc = self.acks.get(timeout=10)
        assert mid == info.mid
        return rc

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture(scope="module", autouse=True)
def _broker_up() -> None:
    if check_login(HOST, PORT, *BRIDGE) == -1:
        pytest.fail(f"Mosquitto not reachable at {HOST}:{PORT} (settings [mqtt] host/port; "
                    f"start the test stack with `make test`)")


@pytest.fixture()
def sensor() -> Iterator[_Client]:
    client = _Client(SENSOR)
    yield client
    client.close()


@pytest.fixture()
def bridge() -> Iterator[_Client]:
    client = _Client(BRIDGE)
    yield client
    client.close()


def _topic() -> str:
    return f"telemetry/test-site/asset-{uuid.uuid4().hex[:8]}/s1"


def _receive(client: _Client, timeout_s: float = 5.0) -> mqtt.MQTTMessage | None:
    try:
        return client.messages.get(timeout=timeout_s)
    except queue.Empty:
        return None


def test_sensor_publish_reaches_bridge(sensor: _Client, bridge: _Client) -> None:
    topic = _topic()
    assert bridge.subscribe(topic) == [1]
    payload = uuid.uuid4().bytes
    assert sensor.publish(topic, payload) == 0
    msg = _receive(bridge)
    assert msg is not None and (msg.topic, msg.payload) == (topic, payload)


def test_shared_subscription_reaches_bridge(sensor: _Client, bridge: _Client) -> None:
    topic = _topic()
    assert bridge.subscribe(f"$share/test-{uuid.uuid4().hex[:6]}/{topic}") == [1]
    payload = uuid.uuid4().bytes
    assert sensor.publish(topic, payload) == 0
    msg = _receive(bridge)
    assert msg is not None and msg.payload == payload


def test_empty_credentials_refused() -> None:
    assert check_login(HOST, PORT, "", "") in NOT_AUTHORIZED


def _anonymous_connack() -> int:
    result: queue.Queue[int] = queue.Queue()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"anon-{uuid.uuid4().hex}",
                         protocol=mqtt.MQTTv311)  # no username at all
    client.on_connect = lambda c, u, f, rc, p: result.put(rc.value)
    client.connect(HOST, PORT)
    client.loop_start()
    try:
        return result.get(timeout=10)
    finally:
        client.disconnect()
        client.loop_stop()


def test_no_username_refused() -> None:
    assert _anonymous_connack() in NOT_AUTHORIZED


def test_wrong_password_refused() -> None:
    assert check_login(HOST, PORT, SENSOR[0], SENSOR[1] + "-wrong") in NOT_AUTHORIZED


def test_sensor_publish_outside_telemetry_refused(sensor: _Client, bridge: _Client) -> None:
    assert bridge.subscribe("telemetry/#") == [1]
    # The broker answers the QoS 1 publish with "not authorized" and forwards nothing.
    assert sensor.publish(f"alarms/test-{uuid.uuid4().hex[:6]}", b"x") == 135
    assert sensor.publish(f"telemetry-x/{uuid.uuid4().hex[:6]}", b"x") == 135
    assert _receive(bridge, timeout_s=1.0) is None


def test_bench_root_is_separate_from_telemetry(sensor: _Client, bridge: _Client) -> None:
    """[mqtt] bench_topic_root: the benchmark's direct peer publishes there; the pipeline's
    bridge (subscribed to telemetry/#) must never receive it."""
    root = SETTINGS.mqtt.bench_topic_root
    if not root:
        pytest.skip("[mqtt] bench_topic_root is not set")
    assert bridge.subscribe("telemetry/#") == [1]
    peer = _Client(BRIDGE)
    try:
        assert peer.subscribe(f"{root}/#") == [1]
        topic = f"{root}/direct-{uuid.uuid4().hex[:6]}/site/asset/TEMPERATURE"
        assert sensor.publish(topic, b"direct") == 0
        got = _receive(peer, timeout_s=5.0)
        assert got is not None and got.payload == b"direct"
        assert _receive(bridge, timeout_s=1.0) is None
    finally:
        peer.close()


def test_sensor_cannot_read_and_bridge_cannot_write(sensor: _Client, bridge: _Client) -> None:
    topic = _topic()
    sensor.subscribe(topic)  # granted or not, nothing may arrive: sensors only write
    assert bridge.publish(topic, b"from-bridge") == 135
    time.sleep(0.2)
    other = _Client(SENSOR)
    try:
        assert other.publish(topic, b"y") == 0
        assert _receive(sensor, timeout_s=1.0) is None
    finally:
        other.close()


def _session_client(client_id: str, clean: bool) -> tuple[mqtt.Client, queue.Queue[bytes]]:
    """A bridge-account client with a persistent session (MQTT 5, 5-minute expiry)."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    received: queue.Queue[bytes] = queue.Queue()
    connected: queue.Queue[tuple[int, bool]] = queue.Queue()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                         protocol=mqtt.MQTTv5)
    client.username_pw_set(*BRIDGE)
    client.on_connect = lambda c, u, f, rc, p: connected.put((rc.value, f.session_present))
    client.on_message = lambda c, u, m: received.put(m.payload)
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 300
    client.connect(HOST, PORT, keepalive=30, clean_start=clean, properties=props)
    client.loop_start()
    rc, _present = connected.get(timeout=10)
    assert rc == 0
    return client, received


def test_persistent_session_keeps_backlog_while_bridge_is_away(sensor: _Client) -> None:
    """What the bridge relies on: QoS 1 messages wait in the broker while it is disconnected."""
    client_id = f"test-session-{uuid.uuid4().hex[:8]}"
    base = f"telemetry/test-site/asset-{uuid.uuid4().hex[:8]}"
    client, _ = _session_client(client_id, clean=True)
    subscribed: queue.Queue[int] = queue.Queue()
    client.on_subscribe = lambda c, u, mid, rcs, p: subscribed.put(rcs[0].value)
    client.subscribe(f"{base}/#", qos=1)
    assert subscribed.get(timeout=10) == 1
    client.disconnect()
    client.loop_stop()

    count = 2000  # above Mosquitto's default max_queued_messages (1000)
    for i in range(count):
        assert sensor.publish(f"{base}/s1", str(i).encode()) == 0

    client, received = _session_client(client_id, clean=False)
    try:
        got = set()
        deadline = time.monotonic() + 30
        while len(got) < count and time.monotonic() < deadline:
            try:
                got.add(int(received.get(timeout=1)))
            except queue.Empty:
                continue
        assert got == set(range(count)), f"{count - len(got)} queued messages lost"
    finally:
        # End the session so it does not keep queueing in the broker.
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        props = Properties(PacketTypes.DISCONNECT)
        props.SessionExpiryInterval = 0
        client.disconnect(properties=props)
        client.loop_stop()


def test_burst_read_client_receives_a_flood_whole_and_in_order() -> None:
    """The bridge's BurstReadClient (many packets per recv, buffered) against the real broker:
    5,000 QoS 1 messages of uneven sizes published as fast as paho can, so packets arrive
    glued together and split across recv chunks; each arrives whole and in order."""
    from io_connectors.mqtt_bridge import BurstReadClient

    topic = f"telemetry/it-site/it-asset-{uuid.uuid4().hex[:8]}/TEMPERATURE"
    got: queue.Queue[tuple[int, bytes]] = queue.Queue()
    subscribed: queue.Queue[list[ReasonCode]] = queue.Queue()
    sub = BurstReadClient(mqtt.CallbackAPIVersion.VERSION2,
                          client_id=f"test-burst-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv5)
    sub.username_pw_set(*BRIDGE)
    sub.on_message = lambda c, u, m: got.put((m.qos, m.payload))
    sub.on_subscribe = lambda c, u, mid, rcs, p: subscribed.put(list(rcs))
    sub.connect(HOST, PORT, keepalive=30)
    sub.loop_start()
    pub = _Client(SENSOR)
    try:
        sub.subscribe(topic, qos=1)
        assert [rc.value for rc in subscribed.get(timeout=10)] == [1]
        sent = [(b"%06d:" % i) + b"x" * (i * 37 % 3000) for i in range(5000)]
        infos = [pub.client.publish(topic, body, qos=1) for body in sent]
        for info in infos:
            info.wait_for_publish(timeout=30)
        received = []
        deadline = time.monotonic() + 30
        while len(received) < len(sent) and time.monotonic() < deadline:
            try:
                received.append(got.get(timeout=1))
            except queue.Empty:
                continue
        assert [body for _qos, body in received] == sent
        assert {qos for qos, _body in received} == {1}
    finally:
        pub.client.loop_stop()
        pub.client.disconnect()
        sub.loop_stop()
        sub.disconnect()


def test_burst_read_client_fast_path_cuts_qos1_publishes_in_batches_and_acks_them() -> None:
    """BurstReadClient's fast path (on_publish_batch + ack_many, as the bridge uses it)
    against the real broker: with Receive Maximum 50 and manual acks, 3,000 messages only
    all arrive if ack_many's PUBACKs reach the broker. QoS 1 messages arrive whole and in
    order, in batches, also those carrying MQTT 5 properties (skipped); QoS 0 messages
    interleaved with them still take paho's own path."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    from io_connectors.mqtt_bridge import BurstReadClient

    topic = f"telemetry/it-site/it-asset-{uuid.uuid4().hex[:8]}/TEMPERATURE"
    batches: queue.Queue[list[tuple[int, bytes, bytes]]] = queue.Queue()
    paho_path: queue.Queue[tuple[int, bytes]] = queue.Queue()
    subscribed: queue.Queue[list[ReasonCode]] = queue.Queue()
    sub = BurstReadClient(mqtt.CallbackAPIVersion.VERSION2,
                          client_id=f"test-fast-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv5)
    sub.username_pw_set(*BRIDGE)
    sub.manual_ack_set(True)
    sub.on_publish_batch = batches.put

    def on_message(client: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
        paho_path.put((message.qos, message.payload))
        client.ack(message.mid, message.qos)

    sub.on_message = on_message
    sub.on_subscribe = lambda c, u, mid, rcs, p: subscribed.put(list(rcs))
    connect_props = Properties(PacketTypes.CONNECT)
    connect_props.ReceiveMaximum = 50
    sub.connect(HOST, PORT, keepalive=30, properties=connect_props)
    sub.loop_start()
    pub = _Client(SENSOR)
    try:
        sub.subscribe(topic, qos=1)
        assert [rc.value for rc in subscribed.get(timeout=10)] == [1]
        with_props = Properties(PacketTypes.PUBLISH)
        with_props.UserProperty = ("origin", "x" * 300)   # long: a 2-byte property length
        with_props.ContentType = "application/json"
        sent: list[tuple[int, bytes]] = []
        infos = []
        for i in range(3000):
            body = (b"%06d:" % i) + b"y" * (i * 53 % 2000)
            qos = 0 if i % 11 == 0 else 1
            props = with_props if i % 7 == 0 else None
            infos.append(pub.client.publish(topic, body, qos=qos, properties=props))
            sent.append((qos, body))
        for info in infos:
            info.wait_for_publish(timeout=30)
        want_qos1 = [body for qos, body in sent if qos == 1]
        want_qos0 = {body for qos, body in sent if qos == 0}
        fast: list[bytes] = []
        slow: list[tuple[int, bytes]] = []
        largest_batch = 0
        deadline = time.monotonic() + 60
        while len(fast) + len(slow) < len(sent) and time.monotonic() < deadline:
            try:
                batch = batches.get(timeout=0.2)
            except queue.Empty:
                batch = []
            if batch:
                largest_batch = max(largest_batch, len(batch))
                assert {t for _mid, t, _body in batch} == {topic.encode()}
                fast += [body for _mid, _topic, body in batch]
                sub.ack_many([mid for mid, _topic, _body in batch])
            while not paho_path.empty():
                slow.append(paho_path.get())
        # A QoS 1 packet split across two reads takes paho's path (acked in on_message).
        qos1_slow = [body for qos, body in slow if qos == 1]
        assert sorted(fast + qos1_slow) == want_qos1, (
            f"{len(want_qos1) - len(fast) - len(qos1_slow)} QoS 1 messages missing "
            "(unacked: the broker stops at Receive Maximum)")
        assert fast == [body for body in want_qos1 if body not in set(qos1_slow)]
        assert {body for qos, body in slow if qos == 0} == want_qos0
        assert largest_batch > 1, "the fast path never took more than one message per read"
    finally:
        pub.client.loop_stop()
        pub.client.disconnect()
        sub.loop_stop()
        sub.disconnect()


def test_bench_raw_publisher_delivers_every_message_and_counts_its_pubacks() -> None:
    """The benchmark's cheapest MQTT generator (bench/mqtt_raw.py) is plain MQTT 5 to the real
    broker: a subscriber gets every message whole and in order, and its PUBACK count is
    exact; a wrong password is refused with a message naming the credentials."""
    from bench.mqtt_raw import RawPublisher, pump_all

    topic = f"telemetry/it-site/it-asset-{uuid.uuid4().hex[:8]}/TEMPERATURE"
    sub = _Client(BRIDGE)
    pub = None
    try:
        assert sub.subscribe(topic) == [1]
        pub = RawPublisher(HOST, PORT, *SENSOR, client_id=f"test-raw-{uuid.uuid4().hex[:8]}",
                           inflight=100)
        assert pub.window == 100
        bodies = [(b"%05d:" % i) + b"z" * (i * 31 % 500) for i in range(2000)]
        header = RawPublisher.topic_header(topic)
        assert pub.publish(header, bodies[:1000]) == 1000
        pump_all([pub], 0.05)
        pub.publish(header, bodies[1000:])
        deadline = time.monotonic() + 30
        while pub.waiting and pub.error is None and time.monotonic() < deadline:
            pump_all([pub], 0.05)
        assert pub.error is None
        assert (pub.acked, pub.failed, pub.waiting) == (2000, 0, 0)
        received = []
        while len(received) < len(bodies) and time.monotonic() < deadline:
            try:
                received.append(sub.messages.get(timeout=1).payload)
            except queue.Empty:
                continue
        assert received == bodies
        with pytest.raises(ConnectionError, match="username/password"):
            RawPublisher(HOST, PORT, SENSOR[0], "wrong-password", client_id="test-raw-bad")
    finally:
        if pub is not None:
            pub.close()
        sub.client.loop_stop()
        sub.client.disconnect()
