"""Throughput of the ingestion edge (a measurement script, not a test).

    .venv/bin/python -m bench.edge_bench mqtt --messages 200000 --publishers 2 --bridges 2
    .venv/bin/python -m bench.edge_bench rest --events 300000 --batch 1000 --clients 4

Both modes use the services named by load_settings() (Mosquitto, Kafka, the
registry), create their own Kafka topics ``bench_raw_<id>`` / ``bench_dlq_<id>``
and start their own bridge or gunicorn processes writing to them, so a running
stack is neither disturbed nor counted. Throughput is the number of records
that reached the raw topic (sum of its end offsets) divided by the time from
the first send until the last record was in Kafka.

* mqtt: ``--publishers`` processes, each one MQTT connection publishing QoS 1
  with at most ``--inflight`` unacknowledged messages, into ``--bridges``
  bridge processes sharing one MQTT 5 shared subscription.
* rest: ``gunicorn runners.wsgi:app`` with ``--workers`` x ``--threads`` on
  ``--port``, ``--clients`` processes POSTing batches of ``--batch`` events
  over keep-alive connections; every response must be 202.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from api.auth import configured_api_key

__all__ = ["main"]

REPO = Path(__file__).resolve().parent.parent


def _settings() -> Any:
    from config.settings import load_settings

    return load_settings()


def _end_offsets(bootstrap: str, topic: str) -> int:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "edge-bench"})
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        return sum(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                   for p in meta.partitions)
    finally:
        consumer.close()


def _make_topics(bootstrap: str, names: Sequence[str]) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(n, 8, 1) for n in names]).values():
        future.result()


def _drop_topics(bootstrap: str, names: Sequence[str]) -> None:
    from confluent_kafka.admin import AdminClient

    for future in AdminClient({"bootstrap.servers": bootstrap}).delete_topics(
            list(names)).values():
        try:
            future.result()
        except Exception:  # noqa: BLE001 - cleanup only
            pass


def _wait_offsets(bootstrap: str, topic: str, target: int, timeout_s: float) -> float:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _end_offsets(bootstrap, topic) >= target:
            return time.monotonic()
        time.sleep(0.2)
    raise SystemExit(f"only {_end_offsets(bootstrap, topic)} of {target} records reached "
                     f"{topic} within {timeout_s:.0f} s")


def _cpu_line(pids: Sequence[int], before: dict[int, float]) -> str:
    import psutil

    parts = []
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            parts.append(f"{pid}:{t.user + t.system - before.get(pid, 0.0):.1f}s")
        except psutil.Error:
            pass
    return " ".join(parts)


# -- MQTT ------------------------------------------------------------------

def _publish_with_mosquitto_pub(s: Any, run: str, per: int, args: argparse.Namespace,
                                logs: Path) -> tuple[float, float]:
    """C publishers (``mosquitto_pub -l``: one message per stdin line), so the
    load generator is not the bottleneck. Returns (start, all PUBACKed)."""
    base = int(time.time() * 1000) - 3_600_000
    files = []
    for i in range(args.publishers):
        path = logs / f"lines-{run}-{i}.txt"
        with path.open("w") as fh:
            for n in range(per):
                fh.write(f'{{"sensor_id":"s{n % 16}","timestamp":{base - i * 10_000_000 + n},'
                         f'"value":{n % 100}.5,"unit":"v"}}\n')
        files.append(path)
    t0 = time.monotonic()
    procs = [subprocess.Popen(
        ["mosquitto_pub", "-h", s.mqtt.host, "-p", str(s.mqtt.port),
         "-u", s.mqtt.sensor_username, "-P", s.mqtt.sensor_password,
         "-V", "5", "-q", "1", "-M", str(args.inflight), "-l",
         "-t", f"telemetry/bench-{run}/asset-{i}/voltage"], stdin=path.open("rb"))
        for i, path in enumerate(files)]
    for proc in procs:
        if proc.wait() != 0:
            raise SystemExit(f"mosquitto_pub exited with {proc.returncode}")
    # mosquitto_pub exits 0 even when the broker dropped it ("out of memory"
    # in the broker log when a publisher floods): the offsets check catches it.
    t_pub = time.monotonic()
    for path in files:
        path.unlink()
    return t0, t_pub


def bench_mqtt(args: argparse.Namespace) -> None:
    s = _settings()
    bootstrap = s.kafka.bootstrap_servers
    run = uuid.uuid4().hex[:6]
    raw, dlq = f"bench_raw_{run}", f"bench_dlq_{run}"
    _make_topics(bootstrap, [raw, dlq])
    env = {**os.environ, "DCMMS_KAFKA_TOPIC_RAW": raw, "DCMMS_KAFKA_TOPIC_DLQ": dlq}
    logs = s.stack.run_dir / "bench"
    logs.mkdir(parents=True, exist_ok=True)
    bridges = []
    try:
        for b in range(args.bridges):
            log = (logs / f"bridge-{run}-{b}.log").open("wb")
            bridges.append((subprocess.Popen(
                [sys.executable, "-m", "runners.mqtt_bridge", "--client-id",
                 f"bench-{run}-{b}", "--share-group", f"bench-{run}",
                 "--session-expiry-s", "60", "--log-level", args.bridge_log_level,
                 "--metrics-port", "0"],
                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT), log))
        time.sleep(args.bridge_startup_s)  # at WARNING level there is no "ready" line
        per = args.messages // args.publishers
        total = per * args.publishers
        import psutil
        pids = [b.pid for b, _ in bridges]
        before = {pid: sum(psutil.Process(pid).cpu_times()[:2]) for pid in pids}
        if args.tool == "mosquitto_pub":
            t0, t_pub = _publish_with_mosquitto_pub(s, run, per, args, logs)
        else:
            # the benchmark's one load generator (bench/loadgen.py), offered more
            # than it can send so it publishes as fast as its in-flight window allows
            from bench.loadgen import GeneratorConfig, run_load

            cfg = GeneratorConfig(
                path="mqtt", rate=args.rate, seconds=total / args.rate, id_prefix=f"e{run}-",
                processes=args.publishers, connections=1, inflight=args.inflight,
                mqtt_client="paho",
                mqtt_host=s.mqtt.host, mqtt_port=s.mqtt.port,
                mqtt_username=s.mqtt.sensor_username,
                mqtt_password=s.mqtt.sensor_password, give_up_s=args.timeout)
            t0 = time.monotonic() + 1.5  # run_load starts its workers 1.5 s after the call
            load, _ = run_load(cfg)
            t_pub = time.monotonic()
            if load.accepted < total:
                raise SystemExit(f"only {load.accepted} of {total} messages PUBACKed: "
                                 f"{load.errors}")
        t_end = _wait_offsets(bootstrap, raw, total, args.timeout)
        elapsed = t_end - t0
        print(f"mqtt: {total} messages, {args.publishers} {args.tool} connection(s) "
              f"(inflight {args.inflight}), {args.bridges} bridge process(es)")
        print(f"  published in {t_pub - t0:.2f} s ({total / (t_pub - t0):,.0f} msg/s PUBACKed)")
        print(f"  in Kafka after {elapsed:.2f} s: {total / elapsed:,.0f} msg/s end to end")
        print(f"  bridge CPU seconds: {_cpu_line(pids, before)}")
    finally:
        for proc, log in bridges:
            proc.terminate()
            proc.wait(30)
            log.close()
        _drop_topics(bootstrap, [raw, dlq])


# -- REST ------------------------------------------------------------------

def bench_rest(args: argparse.Namespace) -> None:
    import requests

    s = _settings()
    bootstrap = s.kafka.bootstrap_servers
    run = uuid.uuid4().hex[:6]
    raw, dlq = f"bench_raw_{run}", f"bench_dlq_{run}"
    _make_topics(bootstrap, [raw, dlq])
    key = args.api_key or configured_api_key(s)
    env = {**os.environ, "DCMMS_KAFKA_TOPIC_RAW": raw, "DCMMS_KAFKA_TOPIC_DLQ": dlq}
    logs = s.stack.run_dir / "bench"
    logs.mkdir(parents=True, exist_ok=True)
    log = (logs / f"gunicorn-{run}.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-b", f"127.0.0.1:{args.port}", "-w",
         str(args.workers), "--threads", str(args.threads), "-k", "gthread",
         "--keep-alive", "30", "runners.wsgi:app"], cwd=REPO, env=env, stdout=log,
        stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{args.port}/api/v1/telemetry"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                requests.get(f"http://127.0.0.1:{args.port}/healthz", timeout=2)
                break
            except requests.RequestException:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit(f"gunicorn did not start; see {log.name}") from None
                time.sleep(0.3)
        # Warm-up: every worker creates its producer and registers the schemas.
        warm = [{"site_id": "bench", "asset_id": "warm", "sensor_id": f"w{i}",
                 "sensor_type": "VOLTAGE", "timestamp": int(time.time() * 1000) - i,
                 "value": 1.0, "unit": "v"} for i in range(args.workers * 4)]
        for item in warm:
            requests.post(url, json=item, headers={"Authorization": f"Bearer {key}"}, timeout=30)
        offset0 = _end_offsets(bootstrap, raw)
        per_client = args.events // (args.clients * args.batch)
        total = per_client * args.clients * args.batch
        from bench.loadgen import GeneratorConfig, run_load

        cfg = GeneratorConfig(path="rest", rate=args.rate, seconds=total / args.rate,
                              id_prefix=f"e{run}-", processes=args.clients, batch=args.batch,
                              rest_url=url, api_key=key, give_up_s=args.timeout)
        t0 = time.monotonic() + 1.5  # run_load starts its workers 1.5 s after the call
        load, workers = run_load(cfg)
        t1 = time.monotonic()
        bad = total - load.accepted
        lat = sorted(x / 1000 for w in workers for x in w.request_ms) or [0.0]
        in_kafka = _end_offsets(bootstrap, raw) - offset0
        print(f"rest: {total} events in batches of {args.batch}, {args.clients} client(s), "
              f"gunicorn {args.workers} worker(s) x {args.threads} thread(s)")
        print(f"  all 202 responses after {t1 - t0:.2f} s: {total / (t1 - t0):,.0f} events/s "
              f"(not accepted: {bad}; in Kafka: {in_kafka})")
        print(f"  request latency p50 {lat[len(lat) // 2] * 1000:.0f} ms, "
              f"p99 {lat[int(len(lat) * 0.99) - 1] * 1000:.0f} ms")
    finally:
        server.terminate()
        server.wait(30)
        log.close()
        _drop_topics(bootstrap, [raw, dlq])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.edge_bench",
                                     description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    m = sub.add_parser("mqtt")
    m.add_argument("--messages", type=int, default=100_000)
    m.add_argument("--publishers", type=int, default=2)
    m.add_argument("--inflight", type=int, default=1000)
    m.add_argument("--tool", choices=("paho", "mosquitto_pub"), default="paho",
                   help="load generator: Python paho processes or the C mosquitto_pub")
    m.add_argument("--bridges", type=int, default=1)
    m.add_argument("--bridge-startup-s", type=float, default=4.0)
    m.add_argument("--bridge-log-level", default="WARNING")
    m.add_argument("--rate", type=float, default=1_000_000,
                   help="offered msg/s (default: more than the publishers can send)")
    m.add_argument("--timeout", type=float, default=600)
    r = sub.add_parser("rest")
    r.add_argument("--events", type=int, default=200_000)
    r.add_argument("--batch", type=int, default=1000)
    r.add_argument("--clients", type=int, default=4)
    r.add_argument("--workers", type=int, default=2)
    r.add_argument("--threads", type=int, default=4)
    r.add_argument("--port", type=int, default=43000)
    r.add_argument("--api-key", help="default: the first key of [api] api_keys")
    r.add_argument("--rate", type=float, default=1_000_000,
                   help="offered events/s (default: more than the clients can send)")
    r.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args(argv)
    bench_mqtt(args) if args.mode == "mqtt" else bench_rest(args)


if __name__ == "__main__":
    main()
