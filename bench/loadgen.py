"""Load generators of the benchmark: paced MQTT (QoS 1) and REST publishers.

One implementation serves the pipeline steps and the direct-peer anchor:

* the simulated fleet is the 1,000 bench assets of ``config/assets.json``
  (``bench-site-NN`` / ``bench-asset-NN-NNN``), four sensors each
  (TEMPERATURE, POWER, VOLTAGE, CURRENT), values inside the alarm bands;
* every event has a unique ``event_id`` ``<prefix><worker>-<seq>`` so the
  harness can count what was stored with ``event_id LIKE '<prefix>%'``;
* MQTT: ``processes`` worker processes, each with ``connections`` paho
  connections, QoS 1, at most ``inflight`` unacknowledged messages per
  connection (paho message ids are 16-bit); ``accepted`` counts PUBACKs;
* REST: ``processes`` worker processes, each one keep-alive session posting
  batches of ``batch`` events; ``accepted`` is the sum of ``accepted`` in the
  202 answers;
* pacing: a worker sends what is due at ``rate x elapsed`` (no bursts beyond
  one batch); a worker records its own CPU seconds so a saturated generator
  is reported, not mistaken for a slow pipeline.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "SENSOR_KINDS", "GeneratorConfig", "WorkerResult", "StepLoad", "fleet_item",
    "mqtt_message", "run_load", "due_count", "summarise_workers",
]

_LOGGER = logging.getLogger(__name__)

BENCH_SITES = 10
BENCH_ASSETS_PER_SITE = 100
# (sensor_type, unit, base value, spread): values stay inside the bench assets' alarm bands.
SENSOR_KINDS = (("TEMPERATURE", "C", 25.0, 30.0), ("POWER", "kW", 200.0, 250.0),
                ("VOLTAGE", "V", 600.0, 100.0), ("CURRENT", "A", 50.0, 40.0))
FLEET_SENSORS = BENCH_SITES * BENCH_ASSETS_PER_SITE * len(SENSOR_KINDS)


def fleet_item(event_id: str, n: int, ts_ms: int) -> dict[str, Any]:
    """The ``n``-th reading of the fleet (round robin over 4,000 sensors) as a REST item."""
    sensor = n % FLEET_SENSORS
    asset = sensor % (BENCH_SITES * BENCH_ASSETS_PER_SITE)
    site, a = divmod(asset, BENCH_ASSETS_PER_SITE)
    kind, unit, base, spread = SENSOR_KINDS[sensor // (BENCH_SITES * BENCH_ASSETS_PER_SITE)]
    # config/assets.json numbers bench sites and assets from 1
    asset_id = f"bench-asset-{site + 1:02d}-{a + 1:03d}"
    return {"event_id": event_id, "site_id": f"bench-site-{site + 1:02d}", "asset_id": asset_id,
            "sensor_id": f"{asset_id}-{kind.lower()}", "sensor_type": kind, "timestamp": ts_ms,
            "value": round(base + (n * 7919 % 1000) / 1000 * spread, 3), "unit": unit,
            "quality_flag": "GOOD"}


def mqtt_message(item: dict[str, Any], topic_root: str = "telemetry") -> tuple[str, bytes]:
    """Topic ``<root>/<site>/<asset>/<type>`` and JSON payload of one item."""
    topic = f"{topic_root}/{item['site_id']}/{item['asset_id']}/{item['sensor_type']}"
    payload = {k: item[k] for k in ("event_id", "sensor_id", "timestamp", "value", "unit",
                                    "quality_flag")}
    return topic, json.dumps(payload, separators=(",", ":")).encode()


def due_count(rate: float, elapsed_s: float, total: int) -> int:
    """Events due after ``elapsed_s`` at ``rate`` events/s, capped at ``total``."""
    if elapsed_s <= 0 or rate <= 0:
        return 0
    return min(total, int(rate * elapsed_s))


@dataclass(frozen=True)
class GeneratorConfig:
    """How one step's load is generated (see the module docstring)."""

    path: str                       # "mqtt" or "rest"
    rate: float                     # offered events/s over all workers
    seconds: float
    id_prefix: str                  # every event_id starts with it
    processes: int = 4
    connections: int = 4            # MQTT connections per process
    inflight: int = 1000            # unacknowledged QoS 1 messages per connection
    batch: int = 1000               # REST events per request
    topic_root: str = "telemetry"   # MQTT topics; the direct peer uses its own root
    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = 1883
    mqtt_username: str = ""
    mqtt_password: str = ""
    rest_url: str = ""
    api_key: str = ""
    # A worker that cannot send what is due gives up after this long (default
    # 1.5 x seconds + 30 s); edge_bench, which offers more than a worker can send
    # on purpose, raises it.
    give_up_s: float | None = None

    @property
    def give_up_after(self) -> float:
        return self.give_up_s if self.give_up_s is not None else self.seconds * 1.5 + 30


@dataclass
class WorkerResult:
    """What one worker process did."""

    index: int
    target: int
    sent: int
    accepted: int
    failed: int
    cpu_s: float
    wall_s: float
    errors: list[str] = field(default_factory=list)
    request_ms: list[float] = field(default_factory=list)


@dataclass
class StepLoad:
    """Totals of one step over all workers (``summarise_workers``)."""

    offered: float
    seconds: float
    target: int
    sent: int
    accepted: int
    failed: int
    send_wall_s: float
    generator_cpu_s: float
    generator_max_cpu_util: float
    generator_saturated: bool
    generator_short: bool
    errors: list[str]

    @property
    def achieved_eps(self) -> float:
        return self.accepted / self.seconds if self.seconds else 0.0


def summarise_workers(offered: float, seconds: float, results: list[WorkerResult]) -> StepLoad:
    """Add up worker results; flag a saturated (>= 90 % of a core) or short (< 95 %) generator."""
    target = sum(r.target for r in results)
    sent = sum(r.sent for r in results)
    utils = [r.cpu_s / r.wall_s for r in results if r.wall_s > 0]
    max_util = max(utils, default=0.0)
    return StepLoad(
        offered=offered, seconds=seconds, target=target, sent=sent,
        accepted=sum(r.accepted for r in results), failed=sum(r.failed for r in results),
        send_wall_s=max((r.wall_s for r in results), default=0.0),
        generator_cpu_s=round(sum(r.cpu_s for r in results), 2),
        generator_max_cpu_util=round(max_util, 3), generator_saturated=max_util >= 0.9,
        generator_short=sent < 0.95 * target,
        errors=[e for r in results for e in r.errors][:20])


def _cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def _mqtt_worker(cfg: GeneratorConfig, index: int, start_at: float, live: Any,
                 out_q: Any) -> None:
    import paho.mqtt.client as mqtt

    share = cfg.rate / cfg.processes
    target = round(share * cfg.seconds)
    acked = [0]
    failed = [0]
    lock = threading.Lock()
    slots = [threading.Semaphore(cfg.inflight) for _ in range(cfg.connections)]
    errors: list[str] = []
    clients = []
    tag = uuid.uuid4().hex[:6]
    for c in range(cfg.connections):
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                             client_id=f"bench-gen-{tag}-{index}-{c}", protocol=mqtt.MQTTv5)
        client.username_pw_set(cfg.mqtt_username, cfg.mqtt_password)
        client.max_inflight_messages_set(cfg.inflight)
        client.max_queued_messages_set(0)

        def on_publish(_c: Any, _u: Any, _mid: int, rc: Any, _p: Any, sem: Any = slots[c]) -> None:
            with lock:
                if getattr(rc, "is_failure", False):
                    failed[0] += 1
                else:
                    acked[0] += 1
            sem.release()

        client.on_publish = on_publish
        client.connect(cfg.mqtt_host, cfg.mqtt_port, keepalive=60)
        client.loop_start()
        clients.append(client)
    while time.time() < start_at:
        time.sleep(0.005)
    cpu0 = _cpu_s()
    t0 = time.monotonic()
    seq = 0
    prefix = f"{cfg.id_prefix}{index}-"
    while seq < target:
        due = due_count(share, time.monotonic() - t0, target)
        while seq < due:
            conn = seq % cfg.connections
            if not slots[conn].acquire(timeout=1.0):
                break  # this connection is full: the pipeline pushes back; retry later
            now_ms = int(time.time() * 1000)
            topic, payload = mqtt_message(
                fleet_item(f"{prefix}{seq}", index + seq * cfg.processes, now_ms), cfg.topic_root)
            info = clients[conn].publish(topic, payload, qos=1)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                slots[conn].release()
                failed[0] += 1
                if len(errors) < 5:
                    errors.append(f"publish rc {info.rc}")
            seq += 1
        live[index] = seq
        if time.monotonic() - t0 > cfg.give_up_after:
            errors.append("generator gave up: could not send what was due")
            break
        time.sleep(0.002)
    wall = time.monotonic() - t0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # wait for the outstanding PUBACKs
        with lock:
            if acked[0] + failed[0] >= seq:
                break
        time.sleep(0.05)
    cpu = _cpu_s() - cpu0
    for client in clients:
        client.disconnect()
        client.loop_stop()
    out_q.put(WorkerResult(index, target, seq, acked[0], failed[0], cpu, wall, errors))


def _rest_worker(cfg: GeneratorConfig, index: int, start_at: float, live: Any,
                 out_q: Any) -> None:
    import requests

    share = cfg.rate / cfg.processes
    target = round(share * cfg.seconds)
    session = requests.Session()
    headers = {"Authorization": f"Bearer {cfg.api_key}", "Content-Type": "application/json"}
    prefix = f"{cfg.id_prefix}{index}-"
    errors: list[str] = []
    request_ms: list[float] = []
    while time.time() < start_at:
        time.sleep(0.005)
    cpu0 = _cpu_s()
    t0 = time.monotonic()
    seq = accepted = failed = 0
    while seq < target:
        due = due_count(share, time.monotonic() - t0, target)
        if due - seq >= min(cfg.batch, target - seq):
            n = min(cfg.batch, target - seq)
            now_ms = int(time.time() * 1000)
            body = json.dumps([fleet_item(f"{prefix}{seq + i}", index + (seq + i) * cfg.processes,
                                          now_ms) for i in range(n)]).encode()
            t = time.monotonic()
            try:
                r = session.post(cfg.rest_url, data=body, headers=headers, timeout=60)
                request_ms.append((time.monotonic() - t) * 1000)
                if r.status_code == 202:
                    accepted += int(r.json().get("accepted", 0))
                    failed += n - int(r.json().get("accepted", 0))
                else:
                    failed += n
                    if len(errors) < 5:
                        errors.append(f"HTTP {r.status_code}: {r.text[:160]}")
            except requests.RequestException as exc:
                failed += n
                if len(errors) < 5:
                    errors.append(f"{type(exc).__name__}: {exc}"[:200])
            seq += n
            live[index] = seq
        else:
            time.sleep(0.002)
    wall = time.monotonic() - t0
    cpu = _cpu_s() - cpu0
    out_q.put(WorkerResult(index, target, seq, accepted, failed, cpu, wall, errors, request_ms))


def run_load(cfg: GeneratorConfig, on_tick: Any = None) -> tuple[StepLoad, list[WorkerResult]]:
    """Run one step in ``cfg.processes`` forked workers; ``on_tick(sent_so_far)`` every second.

    Returns the totals and the per-worker results. Worker processes are this
    process's children, so the resource sampler counts them as the load generator.
    """
    ctx = mp.get_context("fork")
    live = ctx.Array("q", cfg.processes, lock=False)
    out_q = ctx.Queue()
    target_fn = _mqtt_worker if cfg.path == "mqtt" else _rest_worker
    start_at = time.time() + 1.5  # connections are made before the start
    procs = [ctx.Process(target=target_fn, args=(cfg, i, start_at, live, out_q), daemon=True)
             for i in range(cfg.processes)]
    for p in procs:
        p.start()
    results: list[WorkerResult] = []
    deadline = start_at + cfg.give_up_after + 90
    while len(results) < cfg.processes:
        try:
            results.append(out_q.get(timeout=1.0))
        except Exception:  # noqa: BLE001 - queue.Empty: report progress, check liveness
            if on_tick is not None:
                on_tick(sum(live))
            if time.time() > deadline or not any(p.is_alive() for p in procs):
                if len(results) < cfg.processes and not any(p.is_alive() for p in procs):
                    # a worker died (connection refused, ...): count what it was due to send
                    break
                if time.time() > deadline:
                    break
    for p in procs:
        p.join(timeout=10)
        if p.is_alive():
            p.terminate()
    got = {r.index for r in results}
    share = round(cfg.rate / cfg.processes * cfg.seconds)
    for i in range(cfg.processes):
        if i not in got:
            results.append(WorkerResult(i, share, int(live[i]), 0, int(live[i]), 0.0,
                                        cfg.seconds, [f"worker {i} died or timed out"]))
    return summarise_workers(cfg.rate, cfg.seconds, results), results
