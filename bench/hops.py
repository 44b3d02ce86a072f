"""Latency of MQTT readings split by hop: ``python -m bench.hops -n 40 | --trickle 10``.

Two load shapes. By default it publishes ``-n`` readings one at a time (QoS 1, ``--gap``
seconds after the previous one became visible): *isolated* readings, each meeting idle
stages. ``--trickle R`` instead sends the benchmark's own probes (bench/probes.py: one
reading every 1/R s on one probe sensor, over ``--path`` mqtt or rest) for ``--seconds``
without waiting, and also times when each became visible through the API, as the
benchmark's ``e2e_ms`` does. A steady trickle is what a real sensor sends, and it meets
each stage's bundle already open (decision 0004, "Ninth session"). For each reading it
takes the time of every hop it passes, from the records themselves:

* ``publish -> raw``: the ``raw_telemetry`` record's timestamp (the bridge's produce);
* ``raw -> enriched``: the stored row's ``ingested_at`` (set in the job's first stage);
* ``enriched -> validated``: the ``validated_telemetry`` record's timestamp (produced in the
  keyed stage, right after dedup and alarms);
* ``validated -> committed``: the newest ``wal_transactions`` commit of ``sensor_readings``
  when the row became visible (the QuestDB sink flushes at the end of the bundle);
* ``committed -> visible``: WAL apply plus this tool's 10 ms polling;
* ``visible_to_api`` (trickle only): until the probe's own API poll (every 100 ms) saw it.

Run it on an idle stack, or next to a load (``python -m bench.steady``) to see where the
waiting grows. Writes percentiles per hop to ``bench/results/hops-<UTC time>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
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
from bench.anchors import qdb_url, ts_filter
from bench.drain import RESULTS, _context
from bench.loadgen import fleet_item, mqtt_message
from bench.probes import PROBE_ASSET, make_probes
from config.settings import Settings, load_settings
from io_connectors.questdb_http import questdb_exec

__all__ = ["HOPS", "TRICKLE_HOPS", "measure", "measure_trickle", "trickle_spans", "main"]

HOPS = ("publish_to_raw", "raw_to_enriched", "enriched_to_validated",
        "validated_to_committed", "committed_to_visible", "total")


def _epoch_ms(questdb_ts: str) -> float:
    return datetime.fromisoformat(questdb_ts.replace("Z", "+00:00")).timestamp() * 1000


class _RecordTimes:
    """Kafka record timestamps of the ids matching ``id_pattern`` in the raw and validated
    topics (a record of a batch holds many ids; the first record holding an id counts)."""

    def __init__(self, settings: Settings, id_pattern: bytes) -> None:
        self.raw: dict[str, int] = {}
        self.validated: dict[str, int] = {}
        self._pattern = re.compile(id_pattern)
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
                for eid in self._pattern.findall(msg.value()):
                    seen.setdefault(eid.decode(), msg.timestamp()[1])

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._consumer.close()


def measure(settings: Settings, n: int, gap_s: float, say: Any = print) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:6]
    ids = [f"hop{tag}-{i}" for i in range(n)]
    questdb = qdb_url(settings)
    records = _RecordTimes(settings, rb"hop" + tag.encode() + rb"-\d+")
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


TRICKLE_HOPS = (*HOPS, "visible_to_api", "total_api")


def trickle_spans(sent: dict[str, int], api_seen: dict[str, int],
                  direct: dict[str, tuple[float, float, float]], raw: dict[str, int],
                  validated: dict[str, int]) -> dict[str, list[float]]:
    """Milliseconds of every hop of each probe seen everywhere: ``sent`` and ``api_seen``
    (the probe's send and API poll), ``direct`` (seen by the direct poll, ``ingested_at``,
    newest WAL commit then), ``raw``/``validated`` (Kafka record timestamps). A probe missing
    from any of them is left out (the caller reports how many were complete)."""
    spans: dict[str, list[float]] = {h: [] for h in TRICKLE_HOPS}
    for eid, sent_at in sent.items():
        raw_at, validated_at = raw.get(eid), validated.get(eid)
        if eid not in direct or eid not in api_seen or raw_at is None or validated_at is None:
            continue
        seen_at, enriched, committed = direct[eid]
        api = api_seen[eid]
        for hop, ms in zip(TRICKLE_HOPS, (raw_at - sent_at, enriched - raw_at,
                                          validated_at - enriched, committed - validated_at,
                                          seen_at - committed, seen_at - sent_at,
                                          api - seen_at, api - sent_at), strict=True):
            spans[hop].append(ms)
    return spans


def measure_trickle(settings: Settings, rate: float, seconds: float, path: str,
                    say: Any = print) -> dict[str, Any]:
    """Probes at ``rate`` a second for ``seconds``, as the benchmark sends them; hops of each."""
    run = f"hops{uuid.uuid4().hex[:6]}"
    probes = make_probes(settings, path, run, interval_s=1.0 / rate)
    sensor = f"probe-{run}-{path}"
    records = _RecordTimes(settings, re.escape(probes.id_prefix.encode()) + rb"\d+")
    questdb = qdb_url(settings)
    session = requests.Session()
    direct: dict[str, tuple[float, float, float]] = {}
    poll_errors = [0]
    stop = threading.Event()
    since_ms = int(time.time() * 1000) - 60_000

    def poll_direct() -> None:
        # The same 10 ms polling of QuestDB as the isolated mode, for every probe at once.
        while not stop.is_set():
            try:
                rows = questdb_exec(questdb, "select event_id, ingested_at from sensor_readings "
                                    f"where {ts_filter(since_ms)} and asset_id = "
                                    f"'{PROBE_ASSET[1]}' and sensor_id = '{sensor}'",
                                    timeout_s=10, session=session)["dataset"]
                fresh = [(eid, ingested) for eid, ingested in rows if eid not in direct]
                if fresh:
                    now = time.time() * 1000
                    commit = _epoch_ms(questdb_exec(
                        questdb, "select timestamp from wal_transactions('sensor_readings') "
                        "limit -1", timeout_s=10, session=session)["dataset"][0][0])
                    for eid, ingested in fresh:
                        direct[eid] = (now, _epoch_ms(ingested), commit)
            except Exception:  # noqa: BLE001 - QuestDB busy: counted and reported, keep polling
                poll_errors[0] += 1
            time.sleep(0.01)

    poller = threading.Thread(target=poll_direct, daemon=True)
    time.sleep(1.0)  # the consumer holds its assignment before the first probe
    poller.start()
    probes.start()
    deadline = time.time() + seconds
    while time.time() < deadline:
        time.sleep(min(10.0, max(0.0, deadline - time.time())))
        say(f"  {len(probes.sent)} probes sent, {len(direct)} visible")
    probes.stop()
    time.sleep(3.0)  # the last probes' visibility
    stop.set()
    poller.join(timeout=10)
    records.close()
    spans = trickle_spans(probes.sent, probes.seen, direct, records.raw, records.validated)
    return {"trickle_eps": rate, "seconds": seconds, "path": path, "probes": len(probes.sent),
            "visible": len(direct), "complete": len(spans["total"]),
            "poll_errors": poll_errors[0], "probe_errors": probes.errors,
            "hops_ms": {h: report.percentiles(v) for h, v in spans.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hops",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=40, help="readings to send, one at a time")
    parser.add_argument("--gap", type=float, default=0.2, help="seconds between readings")
    parser.add_argument("--trickle", type=float, default=0.0, metavar="R",
                        help="send the benchmark's probes at R a second instead of isolated "
                        "readings (then -n and --gap do not apply)")
    parser.add_argument("--seconds", type=float, default=30.0, help="trickle: how long")
    parser.add_argument("--path", choices=("mqtt", "rest"), default="mqtt",
                        help="trickle: the probes' entry point")
    parser.add_argument("--label", default="", help="free text stored with the result "
                        "(e.g. 'idle' or 'next to bench.steady mqtt 500/s')")
    parser.add_argument("--out", type=Path, default=None,
                        help="result file (default bench/results/hops-<UTC time>.json)")
    args = parser.parse_args(argv)
    settings = load_settings()
    load_before = os.getloadavg()
    if args.trickle > 0:
        result = measure_trickle(settings, args.trickle, args.seconds, args.path)
    else:
        result = measure(settings, args.n, args.gap)
    result["label"] = args.label
    result["context"] = _context(settings, load_before, "bench.hops")
    out = args.out or RESULTS / f"hops-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    for hop, p in result["hops_ms"].items():
        print(f"  {hop:24s} p50 {p['p50']} ms  p99 {p['p99']} ms")
    sent = result["probes"]
    print(f"{result['complete']}/{sent} probes complete; written to {out}")
    # A trickle's last probes may still be in flight when it stops; isolated ones may not.
    return 0 if result["complete"] >= (0.95 * sent if args.trickle > 0 else sent) else 1


if __name__ == "__main__":
    raise SystemExit(main())
