"""MQTT -> Kafka bridge: at-least-once, acknowledged only after Kafka confirmed.

:class:`MqttBridge` subscribes (MQTT 5, QoS 1) to
``$share/<group>/telemetry/+/+/+`` with a persistent session: a fixed client id,
``clean_start=False`` and a long session expiry, so messages wait in the
broker while the bridge is down and several bridges (different client ids,
same group) share the load.

Flow: paho's network thread only appends each message to an in-memory inbox.
The bridge thread (:meth:`MqttBridge.run`) drains the inbox in batches (a take
waits up to ``linger_ms`` for ``batch_max`` messages),
turns each payload into an event or a dead letter (:mod:`schemas.edge`),
produces them asynchronously with the shared :class:`RawProducer` (the valid
events of one take as TelemetryBatch records, one per partition chunk; each
dead letter as its own record), serves delivery reports, and acknowledges
MQTT messages (manual acks, PUBACK) in the order they arrived, each only once
Kafka has confirmed it (the batch holding its event in ``raw_telemetry`` or
its dead letter in ``telemetry_dlq``). A failed delivery is retried with
backoff, one message at a time, and holds back later acks, so a crash at any
moment leaves every unconfirmed message unacknowledged in the broker, which
resends it to the resumed session: duplicates are possible, loss is not.

MQTT packet ids are per connection: acks owed from a previous connection are
dropped (the broker resends those messages), so an id reused by the broker is
never acknowledged by mistake.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from io_connectors.raw_producer import DeliveryFailure, FailureKind, RawProducer
from schemas.edge import SUBSCRIPTION_FILTER, dead_letter, event_from_mqtt

__all__ = ["AVRO_ENCODING_FAILED", "BridgeConfig", "BridgeSnapshot", "BridgeStats",
           "BurstReadClient", "MqttBridge"]

_LOGGER = logging.getLogger(__name__)

_PENDING, _DONE = 0, 1
# on_healthy is called at this interval while healthy() holds (stack heartbeat).
HEALTH_INTERVAL_S = 5.0
# A message unconfirmed by Kafka for this long means the bridge is stuck.
STALL_S = 30.0
# Reason code of an event the Avro schema refused (dead-lettered after validation passed).
AVRO_ENCODING_FAILED = "event.avro_encoding"


class BurstReadClient(mqtt.Client):
    """paho's client reading everything the socket holds per wake-up, through a buffer.

    paho (2.2) reads one packet per ``select()`` while no QoS 2 message is in flight, and
    each packet with 3-4 ``recv()`` calls (command byte, length bytes, body). For a QoS 1
    subscriber at thousands of messages/s that was the bridge's largest cost (py-spy at
    5,000 msg/s: the select loop 13 %, ``recv`` 9 % of its busy samples). Here one wake-up
    parses packets out of 64 KiB ``recv()`` chunks until the socket has nothing more. The
    loop ends: the broker sends at most Receive Maximum unacknowledged messages, and the
    PUBACKs that free more are written by this same thread after the read. Reading until
    the socket is empty matters: ``select()`` only sees the kernel's buffer, so bytes left
    in ours would wait for the next packet.

    Two fast paths for a QoS 1 subscriber with manual acks (the bridge):

    * with :attr:`on_publish_batch` set, complete QoS 1 PUBLISH packets at the head of the
      buffer are cut out here, many per call, and handed over as ``(mid, topic bytes,
      payload)`` tuples; paho's own parse built a ``Properties`` object, an
      ``MQTTMessage`` and ran the topic matcher for each (~35 % of the bridge's CPU at
      5,000 msg/s). Anything else (another packet type, QoS 0 or 2, a topic alias, a packet
      not complete yet) goes through paho's parser unchanged. PUBLISH properties are
      skipped: the bridge uses none, and without a Topic Alias Maximum in CONNECT the broker
      sends no alias;
    * :meth:`ack_many` queues the PUBACKs of many messages as one write instead of one
      queued packet, lock and wake-up byte each.

    Relies on paho's ``_packet_read``, ``_in_packet``, ``_loop_rc_handle``, ``_sock``,
    ``_sock_close``, ``_packet_queue`` and ``_msgtime_mutex``: paho-mqtt is pinned in
    setup.py, and tests/integration/test_stack_mosquitto.py runs this client against a real
    Mosquitto.
    """

    RECV_CHUNK = 65536

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rx = bytearray()
        # Called on the network thread with a list of (mid, topic, payload) per read.
        self.on_publish_batch: Callable[[list[tuple[int, bytes, bytes]]], None] | None = None

    def _sock_recv(self, bufsize: int) -> bytes:
        rx = self._rx
        if not rx:
            # Raises BlockingIOError / ConnectionError exactly as paho's own read does.
            rx += super()._sock_recv(max(bufsize, self.RECV_CHUNK))
        data = bytes(rx[:bufsize])
        del rx[:bufsize]
        return data

    def _sock_close(self) -> None:
        # Every way a connection ends passes here: a new one must not see its bytes.
        self._rx.clear()
        super()._sock_close()

    def loop_read(self, max_packets: int = 1) -> mqtt.MQTTErrorCode:
        while True:
            if self._sock is None:
                return mqtt.MQTTErrorCode.MQTT_ERR_NO_CONN
            if self.on_publish_batch is not None and self._in_packet["command"] == 0:
                if not self._rx:
                    rc = self._fill()
                    if rc is not None:
                        return rc
                self._take_publishes()
                if not self._rx:
                    continue
            rc = self._packet_read()
            if rc > 0:
                return self._loop_rc_handle(rc)
            if rc == mqtt.MQTTErrorCode.MQTT_ERR_AGAIN:   # buffer and socket both empty
                return mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS

    def _fill(self) -> mqtt.MQTTErrorCode | None:
        """Read one chunk into the empty buffer: None if it got bytes, else what to return."""
        try:
            data = super()._sock_recv(self.RECV_CHUNK)
        except BlockingIOError:
            return mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS        # nothing more to read
        except OSError as err:
            _LOGGER.warning("MQTT socket read failed: %s", err)
            return self._loop_rc_handle(mqtt.MQTTErrorCode.MQTT_ERR_CONN_LOST)
        if not data:
            return self._loop_rc_handle(mqtt.MQTTErrorCode.MQTT_ERR_CONN_LOST)
        self._rx += data
        return None

    def _take_publishes(self) -> None:
        """Cut the complete QoS 1 PUBLISH packets at the head of the buffer out of it."""
        rx = self._rx
        end = len(rx)
        v5 = self._protocol == mqtt.MQTTv5
        pos = 0
        taken: list[tuple[int, bytes, bytes]] = []
        while pos + 2 <= end:
            if rx[pos] & 0xF6 != 0x32:                # PUBLISH, QoS 1 (dup/retain any)
                break
            # Remaining length: 1-4 bytes, 7 bits each.
            length, shift, i = 0, 0, pos + 1
            while i < end and i < pos + 5:
                byte = rx[i]
                length |= (byte & 0x7F) << shift
                i += 1
                if not byte & 0x80:
                    break
                shift += 7
            else:
                break                                 # length bytes incomplete (or > 4)
            packet_end = i + length
            if packet_end > end:
                break                                 # body not all here yet
            if length < 4:
                break                                 # malformed: paho's parser reports it
            topic_end = i + 2 + ((rx[i] << 8) | rx[i + 1])
            if topic_end == i + 2 or topic_end + 2 > packet_end:
                break                                 # topic alias or malformed: paho decides
            mid = (rx[topic_end] << 8) | rx[topic_end + 1]
            body = topic_end + 2
            if v5:                                    # skip the properties
                plen, shift = 0, 0
                while body < packet_end:
                    byte = rx[body]
                    body += 1
                    plen |= (byte & 0x7F) << shift
                    if not byte & 0x80:
                        break
                    shift += 7
                else:
                    break                             # malformed: paho's parser reports it
                body += plen
            if body > packet_end:
                break                                 # malformed: paho's parser reports it
            taken.append((mid, bytes(rx[i + 2:topic_end]), bytes(rx[body:packet_end])))
            pos = packet_end
        if taken:
            del rx[:pos]
            with self._msgtime_mutex:
                self._last_bytes_received = mqtt.time_func()
            self.on_publish_batch(taken)  # type: ignore[misc]

    def ack_many(self, mids: list[int]) -> None:
        """PUBACK (success) each of ``mids``, in order, queued as one write."""
        if not mids:
            return
        # A PUBACK is 4 bytes: type, remaining length 2, packet id (no reason code:
        # success), i.e. one big-endian 32-bit word each.
        packet = struct.pack(f"!{len(mids)}I", *[_PUBACK_WORD | mid for mid in mids])
        self._packet_queue(mqtt.PUBACK, packet, 0, 0)


_PUBACK_WORD = (mqtt.PUBACK << 24) | (2 << 16)


@dataclass(frozen=True)
class BridgeConfig:
    """Connection and flow-control settings of one bridge instance."""

    host: str
    port: int
    username: str
    password: str
    # Stable per instance: a restarted bridge resumes its session (and its
    # queued messages); two live bridges must never share an id.
    client_id: str
    share_group: str = "dcmms-bridge"
    # Subscribe as a member of share_group ($share/<group>/...) or plainly. Plain is the
    # safe default: Mosquitto 2.0.11 (Debian 12's) drops every message for a shared
    # subscription whose member is offline after a broker restart (the subscription comes
    # back from its persistence file but no longer queues), which lost readings in the
    # mosquitto-restart drill; a plain subscription's session keeps queueing. Share only
    # to spread the load over several bridges (docs/ingestion.md).
    shared: bool = False
    topic_filter: str = SUBSCRIPTION_FILTER
    session_expiry_s: int = 7 * 24 * 3600
    # MQTT 5 Receive Maximum: how many unacked QoS1 messages the broker may
    # have in flight to us. Acks wait for Kafka, so this bounds throughput.
    receive_maximum: int = 20000
    keepalive_s: int = 30
    batch_max: int = 5000
    # Hold the first message of a take this long (unless batch_max arrive first) so a
    # take holds many events: the job pays a fixed cost per Kafka record, and a take
    # of what happens to be in the inbox is a handful of events per partition.
    linger_ms: float = 50.0
    reconnect_min_s: int = 1
    reconnect_max_s: int = 30
    retry_backoff_s: float = 1.0
    shutdown_flush_s: float = 15.0

    def __post_init__(self) -> None:
        if not self.client_id:
            raise ValueError("bridge client id is empty (setting [mqtt] bridge_client_id "
                             "or --client-id)")
        if not 0 <= self.linger_ms <= 5000:
            raise ValueError(f"linger_ms must be 0..5000, got {self.linger_ms} "
                             "([mqtt] bridge_linger_ms)")
        if not 1 <= self.receive_maximum <= 65535:
            raise ValueError(f"receive_maximum must be 1..65535, got {self.receive_maximum}")
        if self.shared and not self.share_group:
            raise ValueError("a shared subscription needs a share group ([mqtt] "
                             "bridge_share_group or --share-group)")
        if self.topic_filter.startswith("$share/"):
            raise ValueError("topic_filter must not include the $share prefix; "
                             "set share_group instead")

    @property
    def subscription(self) -> str:
        return self._shared_subscription if self.shared else self.topic_filter

    @property
    def _shared_subscription(self) -> str | None:
        return f"$share/{self.share_group}/{self.topic_filter}" if self.share_group else None

    @property
    def stale_subscription(self) -> str | None:
        """The other form of this bridge's subscription, which a resumed session may still
        hold from an earlier configuration (both would deliver every message twice)."""
        return self.topic_filter if self.shared else self._shared_subscription


@dataclass
class BridgeStats:
    """Counters since start (read by logs, tests and the Prometheus collector of
    :mod:`io_connectors.edge_metrics`). Valid messages are counted once per take and per
    delivered batch record, not one by one; dead letters and retries one by one."""

    received: int = 0
    # Messages that passed validation (events) / were dead-lettered at the bridge, by the
    # first reason code of each (closed set: schemas.edge codes, AVRO_ENCODING_FAILED).
    accepted: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    produced: int = 0
    dead_lettered: int = 0
    acked: int = 0
    delivery_failures: int = 0
    stale_acks_dropped: int = 0
    connects: int = 0
    disconnects: int = 0


@dataclass(frozen=True)
class BridgeSnapshot:
    """What :meth:`MqttBridge.snapshot` reads for a metrics scrape (any thread)."""

    stats: BridgeStats
    connected: bool
    subscribed: bool
    inbox: int
    in_flight: int
    retrying: int
    kafka_queue: int
    oldest_unconfirmed_s: float


@dataclass
class _Entry:
    """One received MQTT message on its way to Kafka."""

    mid: int
    qos: int
    generation: int
    topic: str
    payload: bytes
    state: int = _PENDING
    # What to (re)produce: ("event", record) or ("dlq", record). A first
    # attempt at an event goes in a TelemetryBatch, a retry as a single record.
    kind: str = "event"
    record: dict[str, Any] = field(default_factory=dict)
    attempts: int = 0
    born: float = field(default_factory=time.monotonic)


class MqttBridge:
    """Bridge MQTT telemetry into Kafka. Call :meth:`run` (blocking) and :meth:`stop`."""

    # The linger's clock (tests replace it).
    _now = staticmethod(time.monotonic)

    def __init__(self, config: BridgeConfig, producer: RawProducer, *, rules: Any,
                 clock_ms: Callable[[], int] | None = None,
                 on_ready: Callable[[], None] | None = None,
                 on_healthy: Callable[[], None] | None = None) -> None:
        self.config = config
        self.stats = BridgeStats()
        self._producer = producer
        self._rules = rules
        self._clock_ms = clock_ms or (lambda: int(time.time() * 1000))
        self._on_ready = on_ready
        self._ready_announced = False
        self._on_healthy = on_healthy
        self._next_health = 0.0
        self._inbox: collections.deque[tuple[int, int, int, str, bytes]] = collections.deque()
        # When the bridge thread first saw the inbox non-empty (None: empty at last look).
        self._inbox_seen: float | None = None
        self._wakeup = threading.Event()
        self._stop = threading.Event()
        # Acks must go out in arrival order (MQTT 5 section 4.6).
        self._pending: collections.deque[_Entry] = collections.deque()
        self._retry: list[tuple[float, _Entry]] = []
        self._generation = 0
        self._gen_lock = threading.Lock()
        self.subscribed = threading.Event()
        self.connected = False
        self._client = self._make_client()

    # -- public API ------------------------------------------------------

    def run(self) -> None:
        """Connect and bridge until :meth:`stop`; then flush, ack and disconnect."""
        cfg = self.config
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = cfg.session_expiry_s
        props.ReceiveMaximum = cfg.receive_maximum
        self._client.connect_async(cfg.host, cfg.port, keepalive=cfg.keepalive_s,
                                   clean_start=False, properties=props)
        self._client.loop_start()
        try:
            while not self._stop.is_set():
                self._step()
            self._shutdown()
        finally:
            self._client.loop_stop()

    def stop(self) -> None:
        """Ask :meth:`run` to finish (safe from signal handlers and other threads)."""
        self._stop.set()
        self._wakeup.set()

    @property
    def backlog(self) -> int:
        """Messages received but not yet acknowledged."""
        return len(self._inbox) + len(self._pending)

    def snapshot(self) -> BridgeSnapshot:
        """Counters and queue depths now, for a metrics scrape from another thread.

        Reads only (no lock on the hot path): each number is a consistent value, the set
        of them may straddle a take.
        """
        stats = dataclasses.replace(self.stats, rejected=dict(self.stats.rejected))
        try:
            oldest = time.monotonic() - self._pending[0].born
        except IndexError:
            oldest = 0.0
        return BridgeSnapshot(stats=stats, connected=self.connected,
                              subscribed=self.subscribed.is_set(), inbox=len(self._inbox),
                              in_flight=len(self._pending), retrying=len(self._retry),
                              kafka_queue=len(self._producer), oldest_unconfirmed_s=oldest)

    # -- paho callbacks (network thread: keep them tiny) -------------------

    def _make_client(self) -> BurstReadClient:
        cfg = self.config
        client = BurstReadClient(mqtt.CallbackAPIVersion.VERSION2, client_id=cfg.client_id,
                                 protocol=mqtt.MQTTv5)
        client.username_pw_set(cfg.username, cfg.password)
        client.manual_ack_set(True)
        client.reconnect_delay_set(cfg.reconnect_min_s, cfg.reconnect_max_s)
        # paho's own outgoing queue is irrelevant (we only publish acks).
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_publish_batch = self._on_publish_batch
        return client

    def _on_connect(self, client: mqtt.Client, _userdata: Any, _flags: Any,
                    reason: ReasonCode, _props: Any) -> None:
        if reason.is_failure:
            _LOGGER.error("MQTT connection to %s:%d refused: %s (check [mqtt] bridge_username/"
                          "bridge_password); retrying", self.config.host, self.config.port,
                          reason)
            return
        self.connected = True
        self.stats.connects += 1
        _LOGGER.info("MQTT connected to %s:%d as %s (session present: %s)", self.config.host,
                     self.config.port, self.config.client_id,
                     getattr(_flags, "session_present", "?"))
        # Resubscribing on a resumed session is harmless and covers a lost one.
        client.subscribe(self.config.subscription, options=mqtt.SubscribeOptions(qos=1))
        stale = self.config.stale_subscription
        if stale is not None:
            # After the subscription above, so no message falls between the two forms.
            client.unsubscribe(stale)

    def _on_disconnect(self, _client: mqtt.Client, _userdata: Any, _flags: Any,
                       reason: ReasonCode, _props: Any) -> None:
        with self._gen_lock:
            # Packet ids of the old connection are meaningless from now on.
            self._generation += 1
        self.subscribed.clear()
        if self.connected:
            self.connected = False
            self.stats.disconnects += 1
        if not self._stop.is_set():
            _LOGGER.warning("MQTT disconnected (%s); reconnecting with backoff", reason)

    def _on_subscribe(self, _client: mqtt.Client, _userdata: Any, _mid: int,
                      reasons: list[ReasonCode], _props: Any) -> None:
        failures = [r for r in reasons if r.is_failure]
        if failures:
            _LOGGER.error("subscription to %s refused: %s (check the broker ACL for the bridge "
                          "account)", self.config.subscription, failures)
            return
        self.subscribed.set()
        if not self._ready_announced:
            self._ready_announced = True
            if self._on_ready is not None:
                self._on_ready()

    def _on_message(self, _client: mqtt.Client, _userdata: Any,
                    message: mqtt.MQTTMessage) -> None:
        # deque.append is atomic; generation read without the lock is fine
        # because this runs on the same thread that changes it.
        self._inbox.append((message.mid, message.qos, self._generation,
                            message._topic.decode("utf-8", "replace"), message.payload))
        self._wakeup.set()

    def _on_publish_batch(self, messages: list[tuple[int, bytes, bytes]]) -> None:
        # QoS 1 messages cut out of one read by BurstReadClient (same thread as above).
        generation = self._generation
        self._inbox.extend((mid, 1, generation, topic.decode("utf-8", "replace"), payload)
                           for mid, topic, payload in messages)
        self._wakeup.set()

    # -- bridge thread ---------------------------------------------------

    def _step(self) -> None:
        linger_left = self._linger_left()
        took = self._take_batch() if linger_left == 0.0 else 0
        self._retry_due()
        # Serve delivery reports; block briefly only when idle or lingering.
        self._producer.poll(0 if took else min(linger_left or 0.005, 0.005))
        self._ack_ready()
        if self._producer.fatal_error:
            raise RuntimeError(f"Kafka producer failed fatally: {self._producer.fatal_error}")
        if self._on_healthy is not None and time.monotonic() >= self._next_health:
            self._next_health = time.monotonic() + HEALTH_INTERVAL_S
            if self.healthy():
                self._on_healthy()
        if linger_left is None and not self._pending:
            self._wakeup.wait(0.05)
            self._wakeup.clear()

    def _linger_left(self) -> float | None:
        """Seconds until the inbox is due for a take: None when empty, 0.0 when due.

        Due once ``batch_max`` messages wait or ``linger_ms`` after the bridge first
        saw the inbox non-empty, and at once while stopping.
        """
        inbox = self._inbox
        if not inbox:
            self._inbox_seen = None
            return None
        if len(inbox) >= self.config.batch_max or self._stop.is_set():
            return 0.0
        now = self._now()
        if self._inbox_seen is None:
            self._inbox_seen = now
        left = self._inbox_seen + self.config.linger_ms / 1000.0 - now
        return left if left > 0 else 0.0

    def healthy(self) -> bool:
        """Subscribed, and Kafka confirms messages (none waits longer than STALL_S)."""
        if not self.subscribed.is_set():
            return False
        pending = self._pending
        return not pending or time.monotonic() - pending[0].born < STALL_S

    def _take_batch(self) -> int:
        self._inbox_seen = None
        now_ms = self._clock_ms()
        taken = 0
        inbox = self._inbox
        events: list[_Entry] = []
        while inbox and taken < self.config.batch_max:
            mid, qos, generation, topic, payload = inbox.popleft()
            taken += 1
            entry = _Entry(mid, qos, generation, topic, payload)
            result = event_from_mqtt(payload, topic, now_ms=now_ms, rules=self._rules)
            if result.event is not None:
                entry.kind, entry.record = "event", result.event
            else:
                entry.kind = "dlq"
                entry.record = dead_letter(stage="bridge", reasons=list(result.errors),
                                           original=payload, source="mqtt", topic=topic,
                                           failed_at_ms=now_ms)
                self._count_rejected(result.codes[0] if result.codes else "event.invalid")
            self._pending.append(entry)
            if entry.kind == "event":
                events.append(entry)
            else:
                self._send(entry)
        if events:
            self._send_events(events)
        stats = self.stats
        stats.received += taken
        stats.accepted += len(events)
        return taken

    def _count_rejected(self, code: str) -> None:
        rejected = self.stats.rejected
        rejected[code] = rejected.get(code, 0) + 1

    def _send_events(self, entries: list[_Entry]) -> None:
        """Produce the events of ``entries`` as TelemetryBatch records (first attempt)."""
        for entry in entries:
            entry.attempts += 1

        def delivered(positions: list[int], error: DeliveryFailure | None) -> None:
            if error is None:
                for position in positions:
                    entries[position].state = _DONE
                self.stats.produced += len(positions)      # once per batch record
                return
            # A failed chunk's entries are retried one by one (produce_event, keyed
            # by asset, same partition): failures are rare (Kafka down, timeouts),
            # and per-entry retries keep each message's own backoff, attempt count
            # and the dead-lettering of unencodable events, as before batching.
            for position in positions:
                self._delivered(entries[position], error)

        self._producer.produce_events([entry.record for entry in entries], delivered)

    def _delivered(self, entry: _Entry, error: DeliveryFailure | None) -> None:
        if error is None:
            entry.state = _DONE
            if entry.kind == "event":
                self.stats.produced += 1
            else:
                self.stats.dead_lettered += 1
            return
        self.stats.delivery_failures += 1
        delay = min(self.config.retry_backoff_s * 2 ** min(entry.attempts - 1, 5), 30.0)
        _LOGGER.warning("delivery of MQTT message from %s failed (attempt %d): %s; "
                        "retrying in %.1f s", entry.topic, entry.attempts, error, delay)
        if entry.kind == "event" and error.kind is FailureKind.ENCODING_REFUSED:
            # Not transient: dead-letter it instead of retrying forever.
            self._count_rejected(AVRO_ENCODING_FAILED)
            entry.kind = "dlq"
            entry.record = dead_letter(stage="bridge", reasons=[error.message],
                                       original=entry.payload, source="mqtt",
                                       topic=entry.topic, failed_at_ms=self._clock_ms())
            delay = 0.0
        self._retry.append((time.monotonic() + delay, entry))

    def _send(self, entry: _Entry) -> None:
        """(Re)produce one entry as a single record: its dead letter, or a retried event."""
        entry.attempts += 1

        def delivered(error: DeliveryFailure | None) -> None:
            self._delivered(entry, error)

        if entry.kind == "event":
            self._producer.produce_event(entry.record, delivered)
        else:
            self._producer.produce_dead_letter(
                entry.record, delivered, key=entry.topic.encode("utf-8", "replace"))

    def _retry_due(self) -> None:
        if not self._retry:
            return
        now = time.monotonic()
        due = [e for t, e in self._retry if t <= now]
        if due:
            self._retry = [(t, e) for t, e in self._retry if t > now]
            for entry in due:
                self._send(entry)

    def _ack_ready(self) -> None:
        pending = self._pending
        client = self._client
        mids: list[int] = []
        with self._gen_lock:
            generation = self._generation
            while pending and pending[0].state == _DONE:
                entry = pending.popleft()
                if entry.qos == 0:
                    continue
                if entry.generation != generation:
                    # Owed to a connection that is gone; the broker resends it.
                    self.stats.stale_acks_dropped += 1
                    continue
                if entry.qos == 1:
                    mids.append(entry.mid)
                else:
                    client.ack_many(mids)             # keep the arrival order
                    mids = []
                    client.ack(entry.mid, entry.qos)
                self.stats.acked += 1
            client.ack_many(mids)

    def _shutdown(self) -> None:
        """Stop taking messages, let Kafka confirm what is in flight, ack it, disconnect."""
        _LOGGER.info("bridge stopping: %d message(s) awaiting Kafka confirmation",
                     len(self._pending))
        deadline = time.monotonic() + self.config.shutdown_flush_s
        while self._pending and time.monotonic() < deadline:
            self._retry_due()
            self._producer.poll(0.05)
            self._ack_ready()
        self._producer.flush(max(0.0, deadline - time.monotonic()))
        self._ack_ready()
        unconfirmed = len(self._pending)
        untaken = len(self._inbox)
        # DISCONNECT is queued behind the PUBACKs, so they reach the broker first.
        # Messages never acked stay in the session and are redelivered later.
        self._client.disconnect()
        _LOGGER.info("bridge stopped: acked %d, %d unconfirmed and %d untaken left for "
                     "redelivery", self.stats.acked, unconfirmed, untaken)
