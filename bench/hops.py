"""Latency of single MQTT readings split by hop: ``python -m bench.hops -n 40``.

Publishes ``-n`` readings one at a time (QoS 1, ``--gap`` seconds apart) and, for each,
takes the time of every hop it passes, from the records themselves:

* ``publish -> raw``: the ``raw_telemetry`` record's timestamp (the bridge's produce);
* ``raw -> enriched``: the stored row's ``ingested_at`` (set in the job's first stage);
* ``enriched -> validated``: the ``validated_telemetry`` record's timestamp (produced in the
  keyed stage, right after dedup and alarms);
* ``validated -> committed``: the newest ``wal_transactions`` commit of ``sensor_readings``
  when the row became visible (the QuestDB sink flushes at the end of the bundle);
* ``committed -> visible``: WAL apply plus this tool's 10 ms polling.

Run it on an idle stack, or next to a load (``python -m bench.steady``) to see where the
waiting grows. Writes percentiles per hop to ``bench/results/hops-<UTC time>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import requests
from confluent_kafka import Consumer, TopicPartition

from bench import report
from bench.anchors import qdb_url
from bench.drain import RESULTS, _context
from bench.loadgen import fleet_item, mqtt_message
from config.settings import Settings, load_settings
from io_connectors.questdb_http import questdb_exec

__all__ = ["HOPS", "measure", "main"]

HOPS = ("publish_to_raw", "raw_to_enriched", "enriched_to_validated",
        "validated_to_committed", "committed_to_visible", "total")


def _epoch_ms(questdb_ts: str) -> float:
    return datetime.fromisoformat(questdb_ts.replace("Z", "+00:00")).timestamp() * 1000


class _RecordTimes:
    """Kafka record timestamps of the probe ids in the raw and validated topics."""

    def __init__(self, settings: Settings, ids: list[str]) -> None:
        self.raw: dict[str, int] = {}
        self.validated: dict[str, int] = {}
        self._ids = [(i, i.encode()) for i in ids]
        self._topics = {settings.kafka.topic_raw: self.raw,
                        settings.kafka.topic_validated: self.validated}
        self._consumer = Consumer({"bootstrap.servers": settings.kafka.bootstrap_servers,
                                   "group.id": f"bench-hops-{uuid.uuid4().hex[:6]}",
                                   "enable.auto.commit": False})
        partitions = settings.kafka.partitions
        self._consumer.assign([
            TopicPartition(t, p, self._consumer.get_watermark_offsets(TopicPartition(t, p))[1])
            for t in self._topics for p in range(partitions)])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for msg in self._consumer.consume(500, 0.2):
                if msg.error():
                    continue
                seen = self._topics[msg.topic()]
                value = msg.value()
                for eid, needle in self._ids:
                    if needle in value:
                        seen.setdefault(eid, msg.timestamp()[1])

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._consumer.close()


def measure(settings: Settings, n: int, gap_s: float, say: Any = print) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:6]
    ids = [f"hop{tag}-{i}" for i in range(n)]
    questdb = qdb_url(settings)
    records = _RecordTimes(settings, ids)
    time.sleep(1.0)  # the consumer holds its assignment before the first publish
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-hops-{tag}",
                         protocol=mqtt.MQTTv5)
    client.username_pw_set(settings.mqtt.sensor_username,
                           settings.mqtt.sensor_password)
    client.connect(settings.mqtt.host, settings.mqtt.port)
    client.loop_start()
    sent: dict[str, float] = {}
    visible: dict[str, tuple[float, float, float]] = {}
    session = requests.Session()

    def query(sql: str) -> list[list[Any]]:
        return questdb_exec(questdb, sql, timeout_s=10, session=session)["dataset"]

    try:
        for i, eid in enumerate(ids):
            topic, payload = mqtt_message(fleet_item(eid, i * 17, int(time.time() * 1000)))
            sent[eid] = time.time() * 1000
            client.publish(topic, payload, qos=1).wait_for_publish(10)
            deadline = time.time() + 15
            while time.time() < deadline:
                # Bounded by time: a scan of the whole day for one id costs ~0.2 s.
                rows = query("select ingested_at from sensor_readings where timestamp > "
                             f"dateadd('s', -60, now()) and event_id = '{eid}'")
                if rows:
                    seen_at = time.time() * 1000
                    commit = query("select timestamp from wal_transactions('sensor_readings')"
                                   " limit -1")[0][0]
                    visible[eid] = (seen_at, _epoch_ms(rows[0][0]), _epoch_ms(commit))
                    break
                time.sleep(0.01)
            if (i + 1) % 10 == 0:
                say(f"  {i + 1}/{n} probes, {len(visible)} visible")
            time.sleep(gap_s)
        time.sleep(1.0)
    finally:
        client.loop_stop()
        client.disconnect()
        records.close()
    spans: dict[str, list[float]] = {h: [] for h in HOPS}
    for eid, (seen_at, enriched, committed) in visible.items():
        raw, validated = records.raw.get(eid), records.validated.get(eid)
        if raw is None or validated is None:
            continue
        for hop, ms in zip(HOPS, (raw - sent[eid], enriched - raw, validated - enriched,
                                  committed - validated, seen_at - committed,
                                  seen_at - sent[eid]), strict=True):
            spans[hop].append(ms)
    return {"probes": n, "gap_s": gap_s, "visible": len(visible),
            "complete": len(spans["total"]),
            "hops_ms": {h: report.percentiles(v) for h, v in spans.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hops",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=40, help="readings to send, one at a time")
    parser.add_argument("--gap", type=float, default=0.2, help="seconds between readings")
    parser.add_argument("--label", default="", help="free text stored with the result "
                        "(e.g. 'idle' or 'next to bench.steady mqtt 500/s')")
    parser.add_argument("--out", type=Path, default=None,
                        help="result file (default bench/results/hops-<UTC time>.json)")
    args = parser.parse_args(argv)
    settings = load_settings()
    load_before = os.getloadavg()
    result = measure(settings, args.n, args.gap)
    result["label"] = args.label
    result["context"] = _context(settings, load_before, "bench.hops")
    out = args.out or RESULTS / f"hops-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    for hop in HOPS:
        p = result["hops_ms"][hop]
        print(f"  {hop:24s} p50 {p['p50']} ms  p99 {p['p99']} ms")
    print(f"{result['complete']}/{args.n} probes complete; written to {out}")
    return 0 if result["complete"] == args.n else 1


if __name__ == "__main__":
    raise SystemExit(main())
