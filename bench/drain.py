"""Pipeline capacity: how fast the running job drains a backlog in ``raw_telemetry``.

``python -m bench.drain -n 200000`` (also a phase of ``make bench``): N fleet
events (the load generator's, valid Confluent Avro with the topic's registered
schema id) are produced straight into the stack's raw topic as fast as Kafka
takes them, then the harness counts their rows in ``sensor_readings`` until all
are stored. ``drain_eps`` = N / (last row stored - first record produced): the
rate the pipeline sustains when the edge is not the limit, i.e. an upper bound
of what the stepped MQTT/REST phases can hold. While it drains, the Flink
vertices' busy and back-pressured time show which stage is the bottleneck.
"""

from __future__ import annotations

import argparse
import time
import uuid
from typing import Any

import requests

from bench import anchors
from io_connectors.questdb_schema import SENSOR_READINGS
from runners.settings import Settings, load_settings

__all__ = ["drain", "flink_vertex_load", "main"]


def _records(settings: Settings, n: int, prefix: str) -> list[tuple[bytes, bytes]]:
    from io_connectors.schema_registry import RegistrySchemas
    from schemas.avro import TELEMETRY_EVENT, schema_text

    schema_id = RegistrySchemas(settings.get("schema_registry", "url")).register_for_topic(
        settings.get("kafka", "topic_raw"), schema_text(TELEMETRY_EVENT))
    return anchors.encoded_fleet_records(n, prefix, schema_id)


def flink_vertex_load(settings: Settings) -> list[dict[str, Any]]:
    """Busy / back-pressured ms per s (average over subtasks) of each vertex of the stack's job."""
    url = f"http://127.0.0.1:{settings.get('flink', 'web_ui_port', int)}"
    try:
        jobs = requests.get(f"{url}/jobs/overview", timeout=5).json()["jobs"]
        jid = next(j["jid"] for j in jobs if j["state"] == "RUNNING")
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
          say: Any = print) -> dict[str, Any]:
    """Produce ``n`` events into the raw topic, wait until all are stored; the figures."""
    from confluent_kafka import Producer

    from bench.harness import count_rows  # here: the harness imports this module
    from io_connectors.raw_producer import producer_config

    prefix = f"d{run}-"
    records = _records(settings, n, prefix)
    topic = settings.get("kafka", "topic_raw")
    producer = Producer(producer_config(settings.get("kafka", "bootstrap_servers"),
                                        f"bench-drain-{run}"))
    since = int(time.time() * 1000) - 3_600_000
    t0 = time.monotonic()
    for key, value in records:
        while True:
            try:
                producer.produce(topic, value=value, key=key)
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
        stored, _ = count_rows(settings, SENSOR_READINGS, prefix, since)
        now = time.monotonic() - t0
        samples.append((round(now, 1), stored))
        if stored >= n:
            break
        if len(samples) % 5 == 3:
            loads = flink_vertex_load(settings) or loads
        say(f"  drain t={now:5.1f}s stored {stored:,}/{n:,}")
        time.sleep(1.0)
    total_s = time.monotonic() - t0
    return {"events": n, "produce_s": round(produce_s, 2), "stored": stored,
            "seconds": round(total_s, 1),
            "drain_eps": round(stored / total_s) if stored >= n else None,
            "stored_eps_when_timed_out": None if stored >= n else round(stored / total_s),
            "samples": samples, "flink_vertices": loads}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=200_000, help="events to drain")
    args = parser.parse_args(argv)
    settings = load_settings()
    result = drain(settings, args.n, uuid.uuid4().hex[:6])
    print({k: v for k, v in result.items() if k != "samples"})
    return 0 if result["drain_eps"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
