"""Steady mixed load (MQTT + REST) whose senders record what was acknowledged.

Every event carries a unique id ``<prefix>-m-<n>`` (MQTT) or ``<prefix>-r-<n>``
(REST) and its send time as timestamp. An id enters :attr:`Traffic.accepted`
only once acknowledged: for MQTT when paho reports the PUBACK (QoS 1,
``MQTTMessageInfo.is_published``), for REST when the answer is 202. A 503/429
(back-pressure) or a broken connection makes the REST sender retry the same
batch after ``Retry-After`` (capped); a 5xx other than 503 is counted as a
defect. The MQTT sender caps unacknowledged messages (paho's 16-bit ids, and a
bounded memory when the broker is away).

:func:`make_event` and :func:`mqtt_topic` are pure and unit-tested.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
import requests

__all__ = ["Asset", "Traffic", "TrafficStats", "make_event", "mqtt_topic", "post_until_accepted"]

_LOGGER = logging.getLogger(__name__)

MAX_UNACKED_MQTT = 5000
MAX_RETRY_WAIT_S = 2.0


@dataclass(frozen=True)
class Asset:
    site_id: str
    asset_id: str


def make_event(event_id: str, asset: Asset, sensor_id: str, value: float,
               ts_ms: int | None = None, sensor_type: str = "TEMPERATURE",
               unit: str = "celsius") -> dict[str, Any]:
    """A valid telemetry event.

    The load uses values 20..39 (celsius): inside every TEMPERATURE band of
    config/assets.json (the lowest warning_high is 45), so the load raises no alarms.
    """
    return {"event_id": event_id, "timestamp": int(time.time() * 1000) if ts_ms is None
            else ts_ms, "site_id": asset.site_id, "asset_id": asset.asset_id,
            "sensor_id": sensor_id, "sensor_type": sensor_type, "value": float(value),
            "unit": unit, "quality_flag": "GOOD"}


def mqtt_topic(event: dict[str, Any]) -> str:
    return f"telemetry/{event['site_id']}/{event['asset_id']}/{event['sensor_type']}"


@dataclass
class TrafficStats:
    mqtt_sent: int = 0
    rest_sent: int = 0
    http_status: dict[int, int] = field(default_factory=dict)
    connection_errors: int = 0
    mqtt_publish_errors: int = 0

    def count_status(self, status: int) -> None:
        self.http_status[status] = self.http_status.get(status, 0) + 1

    @property
    def http_5xx_defects(self) -> int:
        return sum(n for s, n in self.http_status.items() if s >= 500 and s != 503)


class Traffic:
    """Background MQTT and REST senders at the given rates (events/s) until :meth:`stop`."""

    def __init__(self, prefix: str, assets: Sequence[Asset], *, mqtt_host: str, mqtt_port: int,
                 mqtt_user: str, mqtt_password: str, api_url: str, api_key: str,
                 mqtt_rate: float, rest_rate: float, rest_batch: int = 50) -> None:
        if not assets:
            raise ValueError("no assets to send for")
        self.prefix = prefix
        self.assets = list(assets)
        self.mqtt_conf = (mqtt_host, mqtt_port, mqtt_user, mqtt_password)
        self.api_url = api_url.rstrip("/")
        self.api_key = api_key
        self.mqtt_rate = mqtt_rate
        self.rest_rate = rest_rate
        self.rest_batch = rest_batch
        self.stats = TrafficStats()
        self._accepted: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- public --------------------------------------------------------------------------------

    def start(self) -> Traffic:
        if self.mqtt_rate > 0:
            self._threads.append(threading.Thread(target=self._mqtt_loop, name="chaos-mqtt",
                                                  daemon=True))
        if self.rest_rate > 0:
            self._threads.append(threading.Thread(target=self._rest_loop, name="chaos-rest",
                                                  daemon=True))
        for t in self._threads:
            t.start()
        return self

    def stop(self, ack_grace_s: float = 10.0) -> None:
        """Stop sending; wait up to ``ack_grace_s`` for outstanding acknowledgements."""
        self._ack_grace_s = ack_grace_s
        self._stop.set()
        for t in self._threads:
            t.join(ack_grace_s + 30)

    @property
    def accepted(self) -> set[str]:
        with self._lock:
            return set(self._accepted)

    @property
    def sent(self) -> int:
        return self.stats.mqtt_sent + self.stats.rest_sent

    # -- MQTT ----------------------------------------------------------------------------------

    def _mqtt_loop(self) -> None:
        host, port, user, password = self.mqtt_conf
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                             client_id=f"chaos-pub-{uuid.uuid4().hex[:8]}",
                             protocol=mqtt.MQTTv311, clean_session=True)
        client.username_pw_set(user, password)
        client.max_inflight_messages_set(1000)
        client.max_queued_messages_set(MAX_UNACKED_MQTT)
        client.reconnect_delay_set(1, 2)
        try:
            client.connect(host, port, keepalive=10)
        except OSError as exc:
            _LOGGER.warning("MQTT publisher cannot connect yet (%s); paho keeps trying", exc)
            client.connect_async(host, port, keepalive=10)
        client.loop_start()
        pending: list[tuple[mqtt.MQTTMessageInfo, str]] = []
        n = 0
        t0 = time.monotonic()
        last_sweep = 0.0
        try:
            while not self._stop.is_set():
                due = int((time.monotonic() - t0) * self.mqtt_rate)
                while n < due and len(pending) < MAX_UNACKED_MQTT and not self._stop.is_set():
                    event_id = f"{self.prefix}-m-{n}"
                    asset = self.assets[n % len(self.assets)]
                    event = make_event(event_id, asset, f"{self.prefix}-s{n % 20}",
                                       20.0 + (n % 20))
                    info = client.publish(mqtt_topic(event), json.dumps(event), qos=1)
                    if info.rc == mqtt.MQTT_ERR_SUCCESS or info.rc == mqtt.MQTT_ERR_NO_CONN:
                        # NO_CONN: paho keeps the QoS 1 message and sends it on reconnect.
                        pending.append((info, event_id))
                    else:
                        self.stats.mqtt_publish_errors += 1
                    n += 1
                    self.stats.mqtt_sent += 1
                if len(pending) >= MAX_UNACKED_MQTT:
                    n = max(n, due)  # fall behind rather than queue without bound
                now = time.monotonic()
                if now - last_sweep > 0.1:
                    pending = self._sweep(pending)
                    last_sweep = now
                time.sleep(0.005)
            deadline = time.monotonic() + getattr(self, "_ack_grace_s", 10.0)
            while pending and time.monotonic() < deadline:
                pending = self._sweep(pending)
                time.sleep(0.1)
        finally:
            client.loop_stop()
            client.disconnect()

    def _sweep(self, pending: list[tuple[mqtt.MQTTMessageInfo, str]]
               ) -> list[tuple[mqtt.MQTTMessageInfo, str]]:
        done, still = [], []
        for info, eid in pending:
            (done if _acknowledged(info) else still).append((info, eid))
        if done:
            with self._lock:
                self._accepted.update(eid for _info, eid in done)
        return still

    # -- REST ----------------------------------------------------------------------------------

    def _rest_loop(self) -> None:
        session = requests.Session()
        headers = {"Authorization": f"Bearer {self.api_key}",
                   "Content-Type": "application/json"}
        n = 0
        t0 = time.monotonic()
        while not self._stop.is_set():
            due = int((time.monotonic() - t0) * self.rest_rate)
            if due - n < self.rest_batch:
                time.sleep(0.01)
                continue
            batch = []
            for _ in range(self.rest_batch):
                asset = self.assets[n % len(self.assets)]
                batch.append(make_event(f"{self.prefix}-r-{n}", asset,
                                        f"{self.prefix}-s{n % 20}", 20.0 + (n % 20)))
                n += 1
            self.stats.rest_sent += len(batch)
            self._post(session, headers, batch, give_up=self._stop)
            if due - n > 20 * self.rest_batch:
                n_skip = due - n  # fell far behind during an outage: do not burst
                t0 += n_skip / self.rest_rate

    def _post(self, session: requests.Session, headers: dict[str, str],
              batch: list[dict[str, Any]], give_up: threading.Event) -> bool:
        body = json.dumps(batch)
        while True:
            try:
                resp = session.post(f"{self.api_url}/api/v1/telemetry", data=body,
                                    headers=headers, timeout=15)
            except requests.RequestException:
                self.stats.connection_errors += 1
                session = requests.Session()
                if give_up.is_set():
                    return False
                time.sleep(0.5)
                continue
            self.stats.count_status(resp.status_code)
            if resp.status_code == 202:
                with self._lock:
                    self._accepted.update(e["event_id"] for e in batch)
                return True
            if give_up.is_set():
                return False
            wait = 0.5
            if resp.status_code in (429, 503):
                wait = min(float(resp.headers.get("Retry-After", "1")), MAX_RETRY_WAIT_S)
            else:
                _LOGGER.warning("REST ingest answered %d: %s", resp.status_code, resp.text[:200])
            time.sleep(wait)


def post_until_accepted(api_url: str, api_key: str, events: list[dict[str, Any]],
                        timeout_s: float = 120.0) -> bool:
    """POST ``events`` until a 202 (retrying through outages); False after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
    while time.monotonic() < deadline:
        try:
            resp = requests.post(f"{api_url.rstrip('/')}/api/v1/telemetry",
                                 data=json.dumps(events), headers=headers, timeout=15)
            if resp.status_code == 202:
                return True
        except requests.RequestException:
            pass
        time.sleep(1.0)
    return False


def _acknowledged(info: mqtt.MQTTMessageInfo) -> bool:
    """Whether the broker PUBACKed the message. paho raises from ``is_published`` while
    the client is disconnected (the mosquitto-restart drill): not acknowledged *yet*; paho
    resends it after the reconnect. Raising there killed the drill's MQTT thread
    (2026-11-30), so the rest of that drill ran without MQTT traffic."""
    try:
        return info.is_published()
    except RuntimeError:
        return False
