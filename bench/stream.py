"""Live stream latency under load: ``python -m bench.stream`` (``stream.e2e_ms``).

Sent -> pushed through the real stack: probe readings are POSTed one at a time to the
REST ingest (one every 100 ms, bench.probes ``make_probes``: sensor
``probe-<run>-rest`` of ``bench-asset-01-001``, the send time as their timestamp), go
through Kafka and the Flink job to ``validated_telemetry``, and are pushed by
``GET /api/v1/telemetry/stream?asset_id=bench-asset-01-001`` to one SSE client of this
process. Meanwhile the benchmark's generator (bench.loadgen ``run_load``, REST by
default) offers a steady ``--rate`` (5,000 events/s) over the whole fleet.

Over the probes sent after ``--warmup`` seconds of load, until the load ends:

* ``e2e_ms``: first pushed on the SSE client - sent (p50/p95/p99; a probe never
  pushed counts as ``end of wait - sent``, ``unseen`` > 0 and ``lower_bound``);
* ``queryable_ms``: the same probes' sent -> visible in ``GET /api/v1/telemetry``
  (polled every 100 ms), the pipeline's own freshness, for comparison;
* ``hops_ms``: where the time goes, from the ``validated_telemetry`` record's
  timestamp (the job's Kafka sink): ``sent_to_validated`` (REST ingest, raw topic,
  the Flink job) and ``validated_to_pushed`` (the stream: its consumer, decode,
  queue, the HTTP response).

The goal (issue 16) is p99 < 500 ms at 5,000 events/s. ``make bench`` runs this as
its ``stream`` phase (result key ``stream``); alone it writes
``bench/results/stream-<UTC time>.json`` with each component's cores (bench.resources)
and the context (commit, load average).
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import requests

from bench import report
from bench.loadgen import GeneratorConfig, resolve_mqtt_client, run_load
from bench.probes import PROBE_ASSET, api_endpoint, make_probes
from config.settings import Settings, load_settings

__all__ = ["GOAL_P99_MS", "latency_window", "hop_split", "skipped", "mode_seconds",
           "measure", "main"]

GOAL_P99_MS = 500.0
STREAM_PATH = "/api/v1/telemetry/stream"


# ---------------------------------------------------------------- pure parts

def latency_window(sent: Mapping[str, float], seen: Mapping[str, float], t0_ms: float,
                   t1_ms: float, until_ms: float) -> dict[str, Any]:
    """Latency (ms) of the probes sent in [t0, t1): ``seen - sent``; one never seen counts
    as ``until - sent`` (then ``lower_bound``)."""
    lat, unseen = [], 0
    for eid, t in sent.items():
        if t0_ms <= t < t1_ms:
            if eid in seen:
                lat.append(seen[eid] - t)
            else:
                unseen += 1
                lat.append(until_ms - t)
    return {**report.percentiles(lat), "n": len(lat), "unseen": unseen,
            "lower_bound": unseen > 0}


def hop_split(sent: Mapping[str, float], validated: Mapping[str, float],
              pushed: Mapping[str, float], t0_ms: float, t1_ms: float
              ) -> dict[str, dict[str, Any]]:
    """Per hop percentiles over the probes sent in [t0, t1) seen at both ends of the hop:
    ``sent_to_validated`` (ingest + job, up to the validated record's timestamp) and
    ``validated_to_pushed`` (the stream)."""
    window = [e for e, t in sent.items() if t0_ms <= t < t1_ms]
    to_validated = [validated[e] - sent[e] for e in window if e in validated]
    to_pushed = [pushed[e] - validated[e] for e in window if e in validated and e in pushed]
    return {"sent_to_validated": {**report.percentiles(to_validated), "n": len(to_validated)},
            "validated_to_pushed": {**report.percentiles(to_pushed), "n": len(to_pushed)}}


def skipped(reason: str) -> dict[str, Any]:
    """The ``stream`` section of a run without this phase: null figures, the reason."""
    return {"e2e_ms": {"p50": None, "p95": None, "p99": None}, "goal_p99_ms": GOAL_P99_MS,
            "goal_met": None, "skipped": reason}


def mode_seconds(mode: str) -> tuple[float, float]:
    """(load seconds, warm-up seconds) of ``make bench`` modes."""
    return (70.0, 10.0) if mode == "full" else (25.0, 5.0)


# ---------------------------------------------------------------- clients

class SSEClient:
    """One stream of an asset in a thread: the time each event_id was first pushed."""

    def __init__(self, url: str, key: str, asset_id: str) -> None:
        self.pushed: dict[str, float] = {}
        self.events = self.dropped = self.heartbeats = 0
        self.error: str | None = None
        self._closing = False
        self._response = requests.get(url, params={"asset_id": asset_id}, stream=True,
                                      headers={"Authorization": f"Bearer {key}"},
                                      timeout=(10, 60))
        if self._response.status_code != 200:
            raise RuntimeError(f"{STREAM_PATH}: HTTP {self._response.status_code} "
                               f"{self._response.text[:200]}")
        self._thread = threading.Thread(target=self._run, daemon=True, name="bench-sse")
        self._thread.start()

    def _run(self) -> None:
        # Chunked responses are read chunk by chunk as they arrive (no read-ahead buffer).
        chunked = "chunked" in self._response.headers.get("Transfer-Encoding", "")
        event = ""
        try:
            for line in self._response.iter_lines(chunk_size=None if chunked else 1,
                                                  decode_unicode=True):
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    now = time.time() * 1000
                    self.events += 1
                    data = json.loads(line[5:])
                    if event == "dropped":
                        self.dropped += data.get("dropped", 0)
                    elif event == "reading":
                        self.pushed.setdefault(data.get("event_id", ""), now)
                elif line.startswith(": heartbeat"):
                    self.heartbeats += 1
                elif line == "":
                    event = ""
        except (requests.RequestException, ValueError, AttributeError) as exc:
            # AttributeError: urllib3 when close() pulls the connection from under the read
            if not self._closing:
                self.error = f"{type(exc).__name__}: {exc}"[:200]

    def close(self) -> None:
        self._closing = True
        self._response.close()
        self._thread.join(timeout=5)


class ValidatedTimes:
    """The ``validated_telemetry`` record timestamp of each reading of one asset (the
    topic is keyed by asset_id: other records are not decoded)."""

    def __init__(self, settings: Settings, asset_id: str) -> None:
        from confluent_kafka import Consumer, TopicPartition

        from io_connectors.schema_registry import RegistrySchemas

        self.times: dict[str, float] = {}
        self._key = asset_id.encode()
        self._lookup = RegistrySchemas(settings.schema_registry.url)
        topic = settings.kafka.topic_validated
        self._consumer = Consumer({"bootstrap.servers": settings.kafka.bootstrap_servers,
                                   "group.id": f"bench-stream-{uuid.uuid4().hex[:6]}",
                                   "enable.auto.commit": False})
        meta = self._consumer.list_topics(topic, timeout=10).topics[topic]
        self._consumer.assign([
            TopicPartition(topic, p, self._consumer.get_watermark_offsets(
                TopicPartition(topic, p), timeout=10)[1]) for p in meta.partitions])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="bench-validated")
        self._thread.start()

    def _run(self) -> None:
        from io_connectors.kafka_inspect import decode_record

        while not self._stop.is_set():
            for msg in self._consumer.consume(500, 0.2):
                if msg.error() is None and msg.key() == self._key:
                    _, record, _ = decode_record(msg.value(), self._lookup)
                    if record is not None:
                        self.times.setdefault(record["event_id"], float(msg.timestamp()[1]))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._consumer.close()


# ---------------------------------------------------------------- the measurement

def _wait_first_push(probes: Any, client: SSEClient, say: Callable[[str], None],
                     timeout_s: float = 120.0) -> None:
    """Before the load: one probe must come out of the stream (the job is consuming)."""
    deadline = time.monotonic() + timeout_s
    next_say = time.monotonic() + 10
    while not any(e in client.pushed for e in dict(probes.sent)):
        if client.error or time.monotonic() > deadline:
            raise RuntimeError(f"stream: no probe pushed on {STREAM_PATH} within {timeout_s:.0f} "
                             f"s (SSE client: {client.error or 'open'}; is the Flink job "
                             "running? `dcmms-telemetry status`)")
        if time.monotonic() > next_say:
            say("stream: waiting for the first probe to come through the job and the stream")
            next_say += 10
        time.sleep(0.2)
    say("stream: first probe pushed")


def measure(settings: Settings, rate: float = 5000.0, seconds: float = 70.0,
            warmup: float = 10.0, path: str = "rest", gen: Mapping[str, Any] | None = None,
            say: Callable[[str], None] = print, wait_s: float = 15.0) -> dict[str, Any]:
    """Background load at ``rate`` for ``seconds``; stream latency of the probes sent after
    ``warmup`` (module docstring). ``gen``: GeneratorConfig fields of the harness (else
    the same defaults as bench.steady). RuntimeError (saying why) when the stream does not
    open or no probe comes through it within 120 s, before any load is offered."""

    if not 0 <= warmup < seconds:
        raise ValueError(f"warmup ({warmup}) must be shorter than seconds ({seconds})")
    base_url, key = api_endpoint(settings)
    run = uuid.uuid4().hex[:6]
    asset = PROBE_ASSET[1]
    if gen is None:
        gen = {"mqtt_host": settings.mqtt.host,
               "mqtt_port": settings.mqtt.port,
               "mqtt_username": settings.mqtt.sensor_username,
               "mqtt_password": settings.mqtt.sensor_password,
               "rest_url": f"{base_url}/api/v1/telemetry", "api_key": key,
               "mqtt_client": resolve_mqtt_client("auto")}
    cfg = GeneratorConfig(**{**gen, "path": path, "rate": rate, "seconds": seconds,
                             "id_prefix": f"st{run}-"})
    validated = ValidatedTimes(settings, asset)
    try:
        client = SSEClient(base_url + STREAM_PATH, key, asset)
    except BaseException:
        validated.close()
        raise
    probes = make_probes(settings, "rest", f"{run}stream")
    probes.start()
    try:
        _wait_first_push(probes, client, say)
        say(f"stream: {path} load {rate:,.0f} events/s for {seconds:.0f} s, probes of {asset} "
            f"measured after {warmup:.0f} s: sent -> pushed on {STREAM_PATH}")
        t_start = time.time() * 1000 + 1500  # run_load's workers start 1.5 s later
        load, _workers = run_load(cfg, on_tick=None)
        t1 = time.time() * 1000
        t0 = t_start + warmup * 1000
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:  # the last probes' way through the job
            window = [e for e, t in dict(probes.sent).items() if t0 <= t < t1]
            if all(e in client.pushed for e in window):
                break
            time.sleep(0.2)
    finally:
        probes.stop()
        client.close()
        validated.close()
    until = time.time() * 1000
    sent = dict(probes.sent)
    e2e = latency_window(sent, client.pushed, t0, t1, until)
    result = {
        "rate": rate, "path": path, "seconds": seconds, "warmup_s": warmup, "asset_id": asset,
        "load": {"sent": load.sent, "accepted": load.accepted,
                 "achieved_eps": round(load.achieved_eps),
                 "generator_max_cpu_util": load.generator_max_cpu_util,
                 "generator_short": load.generator_short, "errors": load.errors},
        "e2e_ms": e2e, "goal_p99_ms": GOAL_P99_MS,
        "goal_met": None if e2e["p99"] is None else (e2e["p99"] < GOAL_P99_MS
                                                     and not e2e["lower_bound"]),
        "queryable_ms": probes.window(int(t0), int(t1), int(until)),
        "hops_ms": hop_split(sent, validated.times, client.pushed, t0, t1),
        "sse": {"events": client.events, "dropped": client.dropped,
                "heartbeats": client.heartbeats, "error": client.error},
        "probe_errors": probes.errors, "skipped": None,
    }
    say(f"stream: sent -> pushed p50/p99 {e2e['p50']}/{e2e['p99']} ms over {e2e['n']} probes "
        f"(unseen {e2e['unseen']}; goal p99 < {GOAL_P99_MS:.0f}: "
        f"{'met' if result['goal_met'] else 'NOT met'}); sent -> queryable p50/p99 "
        f"{result['queryable_ms']['p50']}/{result['queryable_ms']['p99']} ms; hops p50 "
        f"sent->validated {result['hops_ms']['sent_to_validated']['p50']}, "
        f"validated->pushed {result['hops_ms']['validated_to_pushed']['p50']} ms; load "
        f"accepted {load.accepted:,}/{load.sent:,}")
    return result


def main(argv: list[str] | None = None) -> int:
    from bench.drain import RESULTS, _context
    from bench.resources import ResourceSampler

    parser = argparse.ArgumentParser(prog="python -m bench.stream",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--path", choices=("rest", "mqtt"), default="rest",
                        help="path of the background load (the probes always use REST)")
    parser.add_argument("--rate", type=float, default=5000.0, help="background events/s")
    parser.add_argument("--seconds", type=float, default=70.0, help="length of the load")
    parser.add_argument("--warmup", type=float, default=10.0,
                        help="seconds of load before probes are counted")
    parser.add_argument("--out", type=Path, default=None,
                        help="result file (default bench/results/stream-<UTC time>.json)")
    args = parser.parse_args(argv)
    settings = load_settings()
    load_before = os.getloadavg()
    sampler = ResourceSampler(settings.stack.run_dir / "pids")
    sampler.start()
    sampler.phase("stream")
    t0 = time.monotonic()
    try:
        result = measure(settings, args.rate, args.seconds, args.warmup, args.path)
    except RuntimeError as exc:
        print(exc)
        return 1
    finally:
        sampler.stop()
    wall = time.monotonic() - t0
    usage = report.sum_usage(sampler.by_phase(), ["stream"])
    result["cores"] = {c: round(v / wall, 3) for c, v in
                       sorted(usage.items(), key=lambda kv: -kv[1])}
    result["context"] = _context(settings, load_before, "bench.stream")
    out = args.out or RESULTS / f"stream-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    out.write_text(json.dumps({"stream": result}, indent=1) + "\n")
    print("cores:", ", ".join(f"{k} {v}" for k, v in result["cores"].items() if v >= 0.005))
    print(f"written to {out}")
    return 0 if result["e2e_ms"]["n"] and result["load"]["accepted"] == result["load"]["sent"] \
        else 1


if __name__ == "__main__":
    raise SystemExit(main())
