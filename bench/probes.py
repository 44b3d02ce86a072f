"""Probe events of the benchmarks: sent -> queryable latency on one probe sensor.

:class:`Probes` sends an event every ``interval_s`` and polls for the ids it sent;
:func:`make_probes` builds them for a path (``rest``, ``mqtt``, ``direct``) on the probe
asset :data:`PROBE_ASSET`; :func:`api_endpoint` is the API's URL and the benchmark's key.
Shared by bench.harness (every step), bench.steady and bench.stream; a module of its own
so that those need not import the harness (no import cycle between them).
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import requests

from api.auth import configured_api_key
from bench import anchors, report
from bench.anchors import ts_filter
from bench.loadgen import fleet_item, mqtt_message
from config.settings import Settings

__all__ = ["PROBE_ASSET", "Probes", "api_endpoint", "make_probes"]

PROBE_ASSET = ("bench-site-01", "bench-asset-01-001")


class Probes:
    """Probe events every ``interval_s`` through ``send``; ``fetch(since_ms)`` lists visible ids."""

    def __init__(self, name: str, send: Callable[[str, int], None],
                 fetch: Callable[[int], list[str]], interval_s: float = 0.1,
                 poll_s: float = 0.1) -> None:
        self.name = name
        self.send, self.fetch = send, fetch
        self.interval_s, self.poll_s = interval_s, poll_s
        self.sent: dict[str, int] = {}
        self.seen: dict[str, int] = {}
        self.since_ms = int(time.time() * 1000)
        self.errors = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._send_loop, daemon=True),
                         threading.Thread(target=self._poll_loop, daemon=True)]
        self._n = 0
        self._tag = uuid.uuid4().hex[:6]

    @property
    def id_prefix(self) -> str:
        """What every probe id of this object starts with (``p<tag>-<n>``)."""
        return f"p{self._tag}-"

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=10)

    def _send_loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._n += 1
            eid = f"{self.id_prefix}{self._n}"
            now = int(time.time() * 1000)
            try:
                self.send(eid, now)
                with self._lock:
                    self.sent[eid] = now
            except Exception:  # noqa: BLE001 - a failed probe is counted, not fatal
                self.errors += 1

    def _poll_loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                ids = self.fetch(self.since_ms)
            except Exception:  # noqa: BLE001 - the API may be busy; keep polling
                self.errors += 1
                continue
            now = int(time.time() * 1000)
            with self._lock:
                for eid in ids:
                    if eid in self.sent and eid not in self.seen:
                        self.seen[eid] = now

    def window(self, t0_ms: int, t1_ms: int, until_ms: int) -> dict[str, Any]:
        """Latencies of probes sent in [t0, t1); unseen ones count as ``until - sent``."""
        with self._lock:
            lat = []
            unseen = 0
            for eid, sent in self.sent.items():
                if t0_ms <= sent < t1_ms:
                    if eid in self.seen:
                        lat.append(self.seen[eid] - sent)
                    else:
                        unseen += 1
                        lat.append(until_ms - sent)
        return {**report.percentiles(lat), "n": len(lat), "unseen": unseen,
                "lower_bound": unseen > 0}


def api_endpoint(settings: Settings) -> tuple[str, str]:
    key = os.environ.get("DCMMS_BENCH_API_KEY") or configured_api_key(settings)
    return f"http://127.0.0.1:{settings.api.port}", key


def make_probes(settings: Settings, path: str, run: str, topic_root: str = "telemetry",
                interval_s: float = 0.1) -> Probes:
    """Probes for ``path`` (mqtt, rest, direct), sensor id ``probe-<run>-<path>``, one every
    ``interval_s``."""
    site, asset = PROBE_ASSET
    sensor = f"probe-{run}-{path}"
    base_url, key = api_endpoint(settings)
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {key}"

    def item(eid: str, ts: int) -> dict[str, Any]:
        return {**fleet_item(eid, 0, ts), "site_id": site, "asset_id": asset,
                "sensor_id": sensor, "sensor_type": "TEMPERATURE", "unit": "C", "value": 21.0}

    if path == "rest":
        post = requests.Session()
        post.headers["Authorization"] = f"Bearer {key}"

        def send(eid: str, ts: int) -> None:
            r = post.post(f"{base_url}/api/v1/telemetry", json=[item(eid, ts)], timeout=10)
            if r.status_code != 202:
                raise RuntimeError(f"probe POST: HTTP {r.status_code}")
    else:
        import paho.mqtt.client as mqtt

        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                             client_id=f"bench-probe-{run}-{path}", protocol=mqtt.MQTTv5)
        client.username_pw_set(settings.mqtt.sensor_username,
                               settings.mqtt.sensor_password)
        client.connect(settings.mqtt.host, settings.mqtt.port, 60)
        client.loop_start()

        def send(eid: str, ts: int) -> None:
            topic, payload = mqtt_message(item(eid, ts), topic_root)
            client.publish(topic, payload, qos=1)

    if path == "direct":
        def fetch(since_ms: int) -> list[str]:
            rows = anchors.qdb_exec(settings, f"SELECT event_id FROM {anchors.DIRECT_TABLE} WHERE "
                                              f"{ts_filter(since_ms)} AND sensor_id = '{sensor}'",
                                    timeout=10)
            return [r[0] for r in rows]
    else:
        def fetch(since_ms: int) -> list[str]:
            r = session.get(f"{base_url}/api/v1/telemetry",
                            # asset_id first: the table's only index, so each poll reads
                            # the probe asset's rows, not every row since the phase began.
                            params={"asset_id": asset, "sensor_id": sensor,
                                    "start_time": str(since_ms),
                                    "end_time": str(int(time.time() * 1000) + 600_000),
                                    "limit": "10000"}, timeout=10)
            r.raise_for_status()
            return [row["event_id"] for row in r.json()["data"]]

    return Probes(path, send, fetch, interval_s=interval_s)
