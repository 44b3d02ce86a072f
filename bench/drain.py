"""Pipeline capacity: how fast the running job drains a backlog in ``raw_telemetry``.

``python -m bench.drain -n 200000`` (also a phase of ``make bench``): N fleet
events (the load generator's, valid Confluent Avro with the topic's registered
schema ids) are produced straight into the stack's raw topic as fast as Kafka
takes them, by default as the REST edge writes them (TelemetryBatch records:
requests of 1,000 events split by partition), with ``--batch-events 1`` one
record per event (what a producer outside the edge may write), then the
harness counts their rows in ``sensor_readings`` until all are stored.
``drain_eps`` = N / (last row stored - first record produced): the rate the
pipeline sustains when the edge is not the limit, i.e. an upper bound of what
the stepped MQTT/REST phases can hold. While it drains, the Flink vertices'
busy and back-pressured time show which stage is the bottleneck, and
``cpu_us_per_event`` the CPU each stack component spent per event
(bench/report.py ``cpu_us_per_event``, the same helper as the harness's
figures over the pipeline steps; ``generator`` is this process: encoding and
producing the backlog, excluded from ``stack_total``). ``make bench`` runs it
twice: as the edge writes (``pipeline.drain``) and with single-event records
(``pipeline.drain_single``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import requests

from bench import anchors, report
from bench.anchors import count_rows
from config.settings import REPO_ROOT, Settings, load_settings
from io_connectors.questdb_schema import SENSOR_READINGS

__all__ = ["drain", "flink_vertex_load", "main"]

RESULTS = REPO_ROOT / "bench" / "results"


def _records(settings: Settings, n: int, prefix: str, batch_events: int
             ) -> list[tuple[dict[str, Any], bytes]]:
    """``(produce() placement kwargs, value)`` of the records carrying ``n`` events."""
    from io_connectors.schema_registry import RegistrySchemas, subject_for_record
    from schemas.avro import TELEMETRY_BATCH, TELEMETRY_BATCH_FULLNAME, TELEMETRY_EVENT, schema_text

    registry = RegistrySchemas(settings.schema_registry.url)
    topic = settings.kafka.topic_raw
    if batch_events <= 1:
        schema_id = registry.register_for_topic(topic, schema_text(TELEMETRY_EVENT))
        return [({"key": key}, value)
                for key, value in anchors.encoded_fleet_records(n, prefix, schema_id)]
    batch_id = registry.register(subject_for_record(topic, TELEMETRY_BATCH_FULLNAME),
                                 schema_text(TELEMETRY_BATCH))
    batches = anchors.encoded_fleet_batches(n, prefix, batch_id,
                                            settings.kafka.partitions,
                                            max_events=batch_events)
    return [({"partition": partition}, value) for partition, value in batches]


def flink_vertex_load(settings: Settings) -> list[dict[str, Any]]:
    """Busy / back-pressured ms per s (average over subtasks) of each vertex of the stack's job."""
    url = f"http://127.0.0.1:{settings.flink.web_ui_port}"
    try:
        jobs = requests.get(f"{url}/jobs/overview", timeout=5).json()["jobs"]
        jid = next(j["jid"] for j in jobs
                   if j["state"] == "RUNNING" and j.get("name") == settings.pipeline.job_name)
        vertices = requests.get(f"{url}/jobs/{jid}", timeout=5).json()["vertices"]
        out = []
        for v in vertices:
            metrics = requests.get(
                f"{url}/jobs/{jid}/vertices/{v['id']}/subtasks/metrics",
                params={"get": "busyTimeMsPerSecond,backPressuredTimeMsPerSecond", "agg": "avg"},
                timeout=5).json()
            out.append({"vertex": v["name"][:120]} | {m["id"]: m.get("avg") for m in metrics})
        return out
    except (requests.RequestException, StopIteration, KeyError, ValueError):
        return []


def drain(settings: Settings, n: int, run: str, timeout_s: float = 600.0,
          say: Any = print, batch_events: int = 500) -> dict[str, Any]:
    """Produce ``n`` events into the raw topic, wait until all are stored; the figures."""
    from confluent_kafka import Producer

    from bench.resources import ResourceSampler
    from io_connectors.raw_producer import producer_config

    prefix = f"d{run}-"
    # The fleet items are timestamped now - n .. now (ms): count only that range.
    since, until = int(time.time() * 1000) - n - 5_000, int(time.time() * 1000) + 60_000
    records = _records(settings, n, prefix, batch_events)
    sampler = ResourceSampler(settings.stack.run_dir / "pids")
    sampler.start()
    sampler.phase("drain")
    topic = settings.kafka.topic_raw
    producer = Producer(producer_config(settings.kafka.bootstrap_servers,
                                        f"bench-drain-{run}"))
    t0 = time.monotonic()
    for placement, value in records:
        while True:
            try:
                producer.produce(topic, value=value, **placement)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    if producer.flush(120) != 0:
        raise RuntimeError("drain: Kafka did not confirm every record within 120 s")
    produce_s = time.monotonic() - t0
    say(f"  produced {n:,} records in {produce_s:.1f} s; waiting for the job to store them")
    stored, samples, loads = 0, [], []
    deadline = t0 + timeout_s
    while time.monotonic() < deadline:
        stored, _ = count_rows(settings, SENSOR_READINGS, prefix, since, until_ms=until)
        now = time.monotonic() - t0
        samples.append((round(now, 1), stored))
        if stored >= n:
            break
        if len(samples) % 5 == 3:
            loads = flink_vertex_load(settings) or loads
        say(f"  drain t={now:5.1f}s stored {stored:,}/{n:,}")
        time.sleep(1.0)
    total_s = time.monotonic() - t0
    sampler.stop()
    cpu_us = report.cpu_us_per_event(report.sum_usage(sampler.by_phase(), ["drain"]), n)
    return {"cpu_us_per_event": cpu_us, "events": n, "records": len(records),
            "batch_events": batch_events,
            "produce_s": round(produce_s, 2), "stored": stored,
            "seconds": round(total_s, 1),
            "drain_eps": round(stored / total_s) if stored >= n else None,
            "stored_eps_when_timed_out": None if stored >= n else round(stored / total_s),
            "samples": samples, "flink_vertices": loads}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=200_000, help="events to drain")
    parser.add_argument("--batch-events", type=int, default=500,
                        help="events per TelemetryBatch record (1: one TelemetryEvent record "
                             "per event); default: as the edge writes")
    parser.add_argument("--out", type=Path, default=None,
                        help="result file (default bench/results/drain-<UTC time>.json)")
    parser.add_argument("--profile", choices=("single", "cluster"), default=None,
                        help="topology of the running stack (default: what its `up` recorded)")
    args = parser.parse_args(argv)
    from runners.stack.cluster import apply_topology
    topology = apply_topology(args.profile, run_dir=load_settings().stack.run_dir)
    settings = load_settings()
    load_before = os.getloadavg()
    result = drain(settings, args.n, uuid.uuid4().hex[:6], batch_events=args.batch_events)
    result["context"] = _context(settings, load_before) | {"topology": topology}
    out = args.out or RESULTS / f"drain-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print({k: v for k, v in result.items() if k not in ("samples", "flink_vertices")})
    print(f"written to {out}")
    return 0 if result["drain_eps"] else 1


def _context(settings: Settings, load_before: tuple[float, float, float],
             module: str = "bench.drain") -> dict[str, Any]:
    """What a figure needs next to it: machine, load, the job's settings, the commit."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT,
                                capture_output=True, text=True, check=False).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                    cwd=REPO_ROOT, capture_output=True, text=True,
                                    check=False).stdout.strip())
    except OSError:
        commit, dirty = "", False
    return {
        "command": f"python -m {module} " + " ".join(sys.argv[1:]),
        "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commit": commit,
        "commit_dirty": dirty,
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "flink": {k: getattr(settings.flink, k) for k in (
            "parallelism", "max_bundle_size", "max_bundle_time_ms", "sdk_worker_parallelism")},
        "state_buckets": settings.pipeline.state_buckets,
    }


if __name__ == "__main__":
    raise SystemExit(main())
