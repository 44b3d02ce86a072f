"""Load generators of the benchmark: paced MQTT (QoS 1) and REST publishers.

One implementation serves the pipeline steps and the direct-peer anchor:

* the simulated fleet is the 1,000 bench assets of ``config/assets.json``
  (``bench-site-NN`` / ``bench-asset-NN-NNN``), four sensors each
  (TEMPERATURE, POWER, VOLTAGE, CURRENT), values inside the alarm bands;
* every event has a unique ``event_id`` ``<prefix><worker>-<seq>`` so the
  harness can count what was stored with ``event_id LIKE '<prefix>%'``;
* MQTT, ``mqtt_client="raw"`` (the default, see :func:`resolve_mqtt_client`):
  ``processes`` pacing processes, each with ``connections``
  :class:`bench.mqtt_raw.RawPublisher` connections (MQTT 5, QoS 1, at most ``inflight``
  unacknowledged messages each), one fleet sensor's topic per connection; what is due is
  queued every ``write_interval_s`` and written many packets per ``send()``; ``accepted``
  counts PUBACKs with a success reason code. ~20 us per message instead of ~58 for
  ``mosquitto_pub`` (see bench/mqtt_raw.py);
* MQTT, ``mqtt_client="mosquitto_pub"``:
  ``processes`` Python pacing processes, each driving ``connections``
  compiled ``mosquitto_pub -l`` processes (MQTT 5, QoS 1, ``-M inflight``).
  ``mosquitto_pub`` publishes on one topic, so each process is one fleet
  sensor's topic (:func:`generator_sensors` spreads them over sites and
  sensor types) and the Python side only formats lines (:class:`TopicLines`)
  and writes what is due to its stdin every ``write_interval_s`` (20 ms). ``accepted`` counts the
  PUBACKs with a success code in ``mosquitto_pub -d``'s output
  (:class:`PubackTally`); ``mosquitto_pub`` exits 0 even when the broker
  dropped it, so its exit code proves nothing;
* MQTT, ``mqtt_client="paho"`` (the fallback): ``processes`` worker
  processes, each with ``connections`` paho connections, QoS 1, at most
  ``inflight`` unacknowledged messages per connection (paho message ids are
  16-bit); ``accepted`` counts PUBACKs. Publishing costs paho ~130 us of
  Python per event, which the generator takes from the box it measures;
* REST: ``processes`` worker processes, each one keep-alive session posting
  batches of ``batch`` events; ``accepted`` is the sum of ``accepted`` in the
  202 answers;
* pacing: a worker sends what is due at ``rate x elapsed`` (no bursts beyond
  one batch); a worker records its own CPU seconds (and its ``mosquitto_pub``
  children's) so a saturated generator is reported, not mistaken for a slow
  pipeline.

In both MQTT generators a PUBACK comes from Mosquitto when it has received
the message, not from the bridge after Kafka.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "SENSOR_KINDS", "MQTT_CLIENTS", "GeneratorConfig", "WorkerResult", "StepLoad", "fleet_item",
    "mqtt_message", "run_load", "due_count", "summarise_workers", "resolve_mqtt_client",
    "generator_sensors", "TopicLines", "PubackTally", "mosquitto_pub_argv",
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


MQTT_CLIENTS = ("auto", "raw", "mosquitto_pub", "paho")


def resolve_mqtt_client(name: str = "auto") -> str:
    """``raw``, ``mosquitto_pub`` or ``paho``: "auto" is ``raw`` (the cheapest per message)."""
    if name not in MQTT_CLIENTS:
        raise ValueError(f"mqtt client must be one of {MQTT_CLIENTS}, got {name!r}")
    return "raw" if name == "auto" else name


def generator_sensors(count: int) -> list[int]:
    """``count`` distinct fleet sensor numbers (see :func:`fleet_item`): the sensor types in
    turn, on assets spread evenly over the fleet's sites (16 topics: 16 assets on all 10 sites)."""
    if not 0 < count <= FLEET_SENSORS:
        raise ValueError(f"between 1 and {FLEET_SENSORS} topics, got {count}")
    assets = BENCH_SITES * BENCH_ASSETS_PER_SITE
    # at most 4 consecutive i share an asset, and those have distinct i % 4: no duplicates
    return [(i % len(SENSOR_KINDS)) * assets + i * assets // count for i in range(count)]


@dataclass(frozen=True)
class TopicLines:
    """``mosquitto_pub -l`` input for one fleet sensor's topic: one JSON payload per line.

    ``line(event_id, ts_ms)`` is byte for byte ``mqtt_message(fleet_item(event_id, n, ts_ms))``
    's payload plus a newline, for every ``n`` of this sensor (the fleet's value of a sensor
    is the same for all its readings), built from a format string: the Python side of the
    generator costs well under a microsecond per event.
    """

    sensor: int
    topic: str
    template: str

    @classmethod
    def for_sensor(cls, sensor: int, topic_root: str = "telemetry") -> TopicLines:
        item = fleet_item("", sensor, 0)
        topic, _ = mqtt_message(item, topic_root)
        fixed = {k: json.dumps(item[k]).replace("%", "%%")
                 for k in ("sensor_id", "value", "unit", "quality_flag")}
        template = (f'{{"event_id":"%s","sensor_id":{fixed["sensor_id"]},"timestamp":%d,'
                    f'"value":{fixed["value"]},"unit":{fixed["unit"]},'
                    f'"quality_flag":{fixed["quality_flag"]}}}\n')
        return cls(sensor, topic, template)

    def line(self, event_id: str, ts_ms: int) -> str:
        return self.template % (event_id, ts_ms)


class PubackTally:
    """Counts PUBACKs in ``mosquitto_pub -d`` output fed in arbitrary chunks.

    MQTT 5 reason codes below 128 are successes (0, or 16 "no matching
    subscribers" on a topic nobody reads); 128 and above are failures (135: not
    authorised). Only complete lines are counted, so a chunk boundary inside a
    line does not lose or double a PUBACK.
    """

    _PUBACK = b"received PUBACK"
    _OK = (b", RC:0)", b", RC:16)")

    def __init__(self) -> None:
        self.acked = 0
        self.failed = 0
        self._carry = b""

    def feed(self, chunk: bytes) -> None:
        data = self._carry + chunk
        cut = data.rfind(b"\n") + 1
        self._carry = data[cut:]
        self._count(data[:cut])

    def close(self) -> None:
        """Count a last line without a newline."""
        self._count(self._carry)
        self._carry = b""

    def _count(self, lines: bytes) -> None:
        if not lines:
            return
        total = lines.count(self._PUBACK)
        ok = sum(lines.count(code) for code in self._OK)
        self.acked += ok
        self.failed += total - ok


def mosquitto_pub_argv(cfg: GeneratorConfig, topic: str, client_id: str) -> list[str]:
    """``mosquitto_pub`` reading one message per stdin line: MQTT 5, QoS 1, at most
    ``cfg.inflight`` unacknowledged messages (the broker's max_inflight_messages is 1,000;
    a publisher that floods it is disconnected), ``-d`` so the PUBACKs can be counted."""
    return ["mosquitto_pub", "-h", cfg.mqtt_host, "-p", str(cfg.mqtt_port),
            "-u", cfg.mqtt_username, "-P", cfg.mqtt_password, "-V", "mqttv5", "-q", "1",
            "-M", str(cfg.inflight), "--id", client_id, "-d", "-l", "-t", topic]


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
    mqtt_client: str = "auto"       # mosquitto_pub, paho, or auto (see resolve_mqtt_client)
    # mosquitto_pub: what is due is written every this long. Its CPU per message falls
    # with the lines per write (measured at 1,250 msg/s: 32 us every 5 ms, 21 us every
    # 20 ms, 17 us every 50 ms), so 20 ms: bursts of at most 20 ms of load.
    write_interval_s: float = 0.02
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
    # CPU of the worker's children (the mosquitto_pub processes); cpu_s is the worker's own
    child_cpu_s: float = 0.0
    # REST requests sent again after the connection failed (rest_session)
    retried: int = 0


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
    generator_cpu_s: float          # workers and their children (mosquitto_pub)
    generator_max_cpu_util: float   # of one worker process, its children not included
    generator_saturated: bool
    generator_short: bool
    errors: list[str]
    retried: int = 0                # REST requests sent again after a dropped connection

    @property
    def achieved_eps(self) -> float:
        return self.accepted / self.seconds if self.seconds else 0.0


def summarise_workers(offered: float, seconds: float, results: list[WorkerResult]) -> StepLoad:
    """Add up worker results; flag a saturated (>= 90 % of a core) or short (< 95 %) generator.

    Saturation is judged on each worker's own CPU (one Python thread paces it);
    ``generator_cpu_s`` adds the workers' children (``mosquitto_pub``).
    """
    target = sum(r.target for r in results)
    sent = sum(r.sent for r in results)
    utils = [r.cpu_s / r.wall_s for r in results if r.wall_s > 0]
    max_util = max(utils, default=0.0)
    return StepLoad(
        offered=offered, seconds=seconds, target=target, sent=sent,
        accepted=sum(r.accepted for r in results), failed=sum(r.failed for r in results),
        send_wall_s=max((r.wall_s for r in results), default=0.0),
        generator_cpu_s=round(sum(r.cpu_s + r.child_cpu_s for r in results), 2),
        generator_max_cpu_util=round(max_util, 3), generator_saturated=max_util >= 0.9,
        generator_short=sent < 0.95 * target,
        errors=[e for r in results for e in r.errors][:20],
        retried=sum(r.retried for r in results))


def _cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def _wait_for_start(start_at: float) -> tuple[float, float]:
    """Wait until the common start time (epoch s) of a step's workers; ``(cpu s, t0)``."""
    while time.time() < start_at:
        time.sleep(0.005)
    return _cpu_s(), time.monotonic()


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
    cpu0, t0 = _wait_for_start(start_at)
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


def _children_cpu_s() -> float:
    t = os.times()
    return t.children_user + t.children_system


def _drain_stream(stream: Any, sink: Any) -> None:
    """Read ``stream`` to its end in large chunks, passing each to ``sink``."""
    fd = stream.fileno()
    while chunk := os.read(fd, 1 << 16):
        sink(chunk)


def _topic_worker_share(cfg: GeneratorConfig, index: int
                        ) -> tuple[float, int, list[TopicLines]]:
    """Worker ``index``'s events/s, its event count, and its ``connections`` fleet topics."""
    share = cfg.rate / cfg.processes
    sensors = generator_sensors(cfg.processes * cfg.connections)
    lines = [TopicLines.for_sensor(sensors[index * cfg.connections + c], cfg.topic_root)
             for c in range(cfg.connections)]
    return share, round(share * cfg.seconds), lines


def _mosquitto_pub_worker(cfg: GeneratorConfig, index: int, start_at: float, live: Any,
                          out_q: Any) -> None:
    share, target, lines = _topic_worker_share(cfg, index)
    tag = uuid.uuid4().hex[:6]
    errors: list[str] = []
    child0 = _children_cpu_s()
    procs, tallies, stderr_tails, readers = [], [], [], []
    for c, topic_lines in enumerate(lines):
        proc = subprocess.Popen(
            mosquitto_pub_argv(cfg, topic_lines.topic, f"bench-gen-{tag}-{index}-{c}"),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        tally, tail = PubackTally(), bytearray()

        def keep_tail(chunk: bytes, tail: bytearray = tail) -> None:
            if len(tail) < 2000:  # the first errors say why; a flood of warnings adds nothing
                tail.extend(chunk[:2000 - len(tail)])

        readers += [threading.Thread(target=_drain_stream, args=(proc.stdout, tally.feed),
                                     daemon=True),
                    threading.Thread(target=_drain_stream, args=(proc.stderr, keep_tail),
                                     daemon=True)]
        procs.append(proc)
        tallies.append(tally)
        stderr_tails.append(tail)
    for reader in readers:
        reader.start()
    open_pipes = [True] * len(procs)
    cpu0, t0 = _wait_for_start(start_at)
    seq = 0
    prefix = f"{cfg.id_prefix}{index}-"
    conns = len(procs)
    while seq < target:
        due = due_count(share, time.monotonic() - t0, target)
        if due > seq:
            now_ms = int(time.time() * 1000)
            chunks: list[list[str]] = [[] for _ in range(conns)]
            for s in range(seq, due):
                chunks[s % conns].append(lines[s % conns].line(f"{prefix}{s}", now_ms))
            for c, chunk in enumerate(chunks):
                if chunk and open_pipes[c]:
                    try:
                        procs[c].stdin.write("".join(chunk).encode())
                        procs[c].stdin.flush()
                    except (BrokenPipeError, OSError) as exc:
                        open_pipes[c] = False  # it exited: its lines are sent, never acked
                        errors.append(f"mosquitto_pub {c} stdin: {exc}"[:200])
            seq = due
            live[index] = seq
        if time.monotonic() - t0 > cfg.give_up_after:
            errors.append("generator gave up: could not send what was due")
            break
        time.sleep(cfg.write_interval_s)
    wall = time.monotonic() - t0
    cpu = _cpu_s() - cpu0
    for c, proc in enumerate(procs):
        if open_pipes[c]:
            try:
                proc.stdin.close()  # EOF: mosquitto_pub waits for its PUBACKs, then exits
            except OSError:
                pass
    deadline = time.monotonic() + 60
    for c, proc in enumerate(procs):
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            errors.append(f"mosquitto_pub {c}: PUBACKs still missing after 60 s, killed")
    for reader in readers:
        reader.join(timeout=10)
    acked = failed_acks = 0
    for c, (proc, tally, tail) in enumerate(zip(procs, tallies, stderr_tails, strict=True)):
        tally.close()
        acked += tally.acked
        failed_acks += tally.failed
        if proc.returncode or tail:
            errors.append(f"mosquitto_pub {c} rc {proc.returncode}: "
                          f"{tail.decode(errors='replace').strip()[:200]}")
    out_q.put(WorkerResult(index, target, seq, acked, seq - acked, cpu, wall, errors[:5],
                           child_cpu_s=_children_cpu_s() - child0))


def _raw_mqtt_worker(cfg: GeneratorConfig, index: int, start_at: float, live: Any,
                     out_q: Any) -> None:
    """``connections`` :class:`bench.mqtt_raw.RawPublisher` connections, one fleet sensor's
    topic each, in this process: what is due is queued every ``write_interval_s`` and the
    sockets are pumped in between (PUBACKs counted by reason code)."""
    from bench.mqtt_raw import RawPublisher, pump_all

    share, target, lines = _topic_worker_share(cfg, index)
    tag = uuid.uuid4().hex[:6]
    errors: list[str] = []
    pubs: list[RawPublisher] = []
    try:
        for c in range(cfg.connections):
            pubs.append(RawPublisher(cfg.mqtt_host, cfg.mqtt_port, cfg.mqtt_username,
                                     cfg.mqtt_password, f"bench-gen-{tag}-{index}-{c}",
                                     inflight=cfg.inflight))
    except (OSError, ConnectionError) as exc:
        for pub in pubs:
            pub.close()
        out_q.put(WorkerResult(index, target, 0, 0, 0, 0.0, cfg.seconds,
                               [f"MQTT connect to {cfg.mqtt_host}:{cfg.mqtt_port}: {exc}"]))
        return
    headers = [RawPublisher.topic_header(topic_lines.topic) for topic_lines in lines]
    # TopicLines' template ends in a newline (mosquitto_pub -l input); a payload does not.
    templates = [topic_lines.template[:-1] for topic_lines in lines]
    cpu0, t0 = _wait_for_start(start_at)
    seq = 0
    prefix = f"{cfg.id_prefix}{index}-"
    conns = len(pubs)
    next_write = time.monotonic()
    while seq < target:
        now = time.monotonic()
        if now >= next_write:
            due = due_count(share, now - t0, target)
            if due > seq:
                now_ms = int(time.time() * 1000)
                for c in range(conns):
                    template = templates[c]
                    pubs[c].publish(headers[c], [
                        (template % (f"{prefix}{s}", now_ms)).encode()
                        for s in range(seq + (c - seq) % conns, due, conns)])
                seq = due
                live[index] = seq
            next_write = now + cfg.write_interval_s
        if now - t0 > cfg.give_up_after:
            errors.append("generator gave up: could not send what was due")
            break
        # Pump once per write interval, not per PUBACK: acks pile up in the socket and are
        # read many per recv() (waking on each one cost ~15 us per message).
        for pub in pubs:
            pub.pump()
        time.sleep(max(0.0, next_write - time.monotonic()))
    wall = time.monotonic() - t0
    cpu = _cpu_s() - cpu0
    deadline = time.monotonic() + 60
    while any(p.waiting and p.error is None for p in pubs) and time.monotonic() < deadline:
        pump_all(pubs, 0.05)
    acked = failed = 0
    for c, pub in enumerate(pubs):
        if pub.error is None and pub.waiting:
            errors.append(f"connection {c}: {pub.waiting} PUBACKs still missing after 60 s")
        elif pub.error is not None:
            errors.append(f"connection {c}: {pub.error}"[:200])
        acked += pub.acked
        failed += pub.failed
        pub.close()
    out_q.put(WorkerResult(index, target, seq, acked, seq - acked, cpu, wall, errors[:5]))


def rest_session(api_key: str, retries: int = 2) -> Any:
    """A requests session for the ingest API that sends a request again when its
    connection fails before a response (urllib3's ``Retry``; never on an HTTP status).

    Why: gunicorn closes a keep-alive connection after 2 s idle, and a worker posting
    about every 2 s races that close: the POST goes out on a socket the server is closing
    and fails with ``RemoteDisconnected`` (seen at 2,000 events/s, 2026-12-01, decision 0004
    "Tenth session"). A real client would retry; it is safe because every event carries
    its id and the pipeline deduplicates, so a request the server did receive is stored
    once either way. :func:`response_retries` counts what was sent again.
    """
    import requests
    from requests.adapters import HTTPAdapter
    from urllib3.util.retry import Retry

    retry = Retry(total=retries, connect=retries, read=retries, status=0, other=0,
                  allowed_methods=None, raise_on_status=False, backoff_factor=0)
    session = requests.Session()
    adapter = HTTPAdapter(max_retries=retry)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers.update({"Authorization": f"Bearer {api_key}",
                            "Content-Type": "application/json"})
    return session


def response_retries(response: Any) -> int:
    """How many times urllib3 sent the request of ``response`` again (rest_session)."""
    retries = getattr(response.raw, "retries", None)
    return len(retries.history) if retries is not None else 0


def _rest_worker(cfg: GeneratorConfig, index: int, start_at: float, live: Any,
                 out_q: Any) -> None:
    import requests

    share = cfg.rate / cfg.processes
    target = round(share * cfg.seconds)
    session = rest_session(cfg.api_key)
    prefix = f"{cfg.id_prefix}{index}-"
    errors: list[str] = []
    request_ms: list[float] = []
    while time.time() < start_at:
        time.sleep(0.005)
    cpu0 = _cpu_s()
    t0 = time.monotonic()
    seq = accepted = failed = retried = 0
    while seq < target:
        due = due_count(share, time.monotonic() - t0, target)
        if due - seq >= min(cfg.batch, target - seq):
            n = min(cfg.batch, target - seq)
            now_ms = int(time.time() * 1000)
            body = json.dumps([fleet_item(f"{prefix}{seq + i}", index + (seq + i) * cfg.processes,
                                          now_ms) for i in range(n)]).encode()
            t = time.monotonic()
            try:
                r = session.post(cfg.rest_url, data=body, timeout=60)
                request_ms.append((time.monotonic() - t) * 1000)
                retried += response_retries(r)
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
    out_q.put(WorkerResult(index, target, seq, accepted, failed, cpu, wall, errors, request_ms,
                           retried=retried))


def run_load(cfg: GeneratorConfig, on_tick: Any = None) -> tuple[StepLoad, list[WorkerResult]]:
    """Run one step in ``cfg.processes`` forked workers; ``on_tick(sent_so_far)`` every second.

    Returns the totals and the per-worker results. Worker processes are this
    process's children, so the resource sampler counts them as the load generator.
    """
    ctx = mp.get_context("fork")
    live = ctx.Array("q", cfg.processes, lock=False)
    out_q = ctx.Queue()
    if cfg.path == "rest":
        target_fn = _rest_worker
    elif resolve_mqtt_client(cfg.mqtt_client) == "raw":
        target_fn = _raw_mqtt_worker
    elif resolve_mqtt_client(cfg.mqtt_client) == "mosquitto_pub":
        target_fn = _mosquitto_pub_worker
    else:
        target_fn = _mqtt_worker
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
