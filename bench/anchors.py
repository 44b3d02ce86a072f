"""Anchors: what the same payloads cost without our pipeline, measured in the same run.

* ``kafka_raw``: confluent-kafka produces N Avro records (the edge's producer
  settings, Confluent framing, the same fleet items) to a scratch topic, then
  one consumer reads them all back; events/s = N / (produce + consume time).
* ``questdb_raw``: the official client writes N rows over ILP/HTTP in batches
  into ``bench_raw_readings`` (the sensor_readings DDL under another name, so
  WAL + DEDUP are on); rows/s = N / time until all rows are visible.
* ``direct_peer``: the pipeline a user might write instead: a paho subscriber
  (QoS 1, auto-ack) writing straight to ``bench_direct_readings`` over ILP/HTTP,
  no Kafka, no Beam, no validation. It runs as a child process; the harness
  drives it with the same MQTT load generator on its own topic root
  ``<[mqtt] bench_topic_root>/direct-<run>/...``, outside ``telemetry/`` so the
  stack's bridge never sees these messages (the broker's ACL lets the sensor
  account publish there only when that setting is set; see
  runners/stack/mosquitto.py).
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import threading
import time
from typing import Any

from bench.loadgen import fleet_item
from config.settings import Settings
from io_connectors.questdb_http import questdb_exec, questdb_http_url
from io_connectors.questdb_schema import DDL_STATEMENTS, SENSOR_READINGS

__all__ = ["kafka_raw", "questdb_raw", "start_direct_peer", "stop_direct_peer", "create_like",
           "count_rows", "qdb_exec", "qdb_url", "ts_filter", "RAW_TABLE", "DIRECT_TABLE"]

_LOGGER = logging.getLogger(__name__)

RAW_TABLE = "bench_raw_readings"
DIRECT_TABLE = "bench_direct_readings"


def qdb_url(settings: Settings) -> str:
    """QuestDB's HTTP base URL of the stack in ``settings``."""
    return questdb_http_url(settings.questdb.host,
                            settings.questdb.http_port)


def qdb_exec(settings: Settings, sql: str, timeout: float = 60.0) -> list[list[Any]]:
    """Run ``sql`` through QuestDB's /exec; the dataset rows. Only harness-built SQL goes here."""
    return questdb_exec(qdb_url(settings), sql, timeout_s=timeout).get("dataset", [])


def ts_filter(since_ms: int, until_ms: int | None = None) -> str:
    """SQL condition on the designated timestamp, from ``since_ms`` (to ``until_ms``)."""
    since = f"timestamp >= cast({int(since_ms) * 1000} as timestamp)"
    if until_ms is None:
        return since
    return f"{since} AND timestamp <= cast({int(until_ms) * 1000} as timestamp)"


# A distinct count over a 10-minute soak (6M rows at 10k/s) took more than a minute on a
# busy 2-core machine and crashed the full run (2026-11-30): distinct counts get longer.
DISTINCT_COUNT_TIMEOUT_S = 600.0


def count_rows(settings: Settings, table: str, prefix: str, since_ms: int,
               distinct: bool = False, until_ms: int | None = None) -> tuple[int, int]:
    """(rows, distinct event_ids) of ``table`` whose event_id starts with ``prefix``, among
    the rows timestamped from ``since_ms`` (to ``until_ms``): the narrower the range, the
    fewer rows the ``LIKE`` scans (it runs every second while the stack is measured)."""
    what = "count(), count_distinct(event_id)" if distinct else "count(), 0"
    row = qdb_exec(settings, f"SELECT {what} FROM {table} "
                             f"WHERE {ts_filter(since_ms, until_ms)}"
                             f" AND event_id LIKE '{prefix}%'",
                   timeout=DISTINCT_COUNT_TIMEOUT_S if distinct else 60.0)[0]
    return int(row[0]), int(row[1] or 0)


def create_like(settings: Settings, table: str, fresh: bool = True) -> None:
    """(Re)create ``table`` with the sensor_readings DDL (same columns, WAL, DEDUP, TTL)."""
    if fresh:
        qdb_exec(settings, f"DROP TABLE IF EXISTS {table}")
    ddl = DDL_STATEMENTS[0].replace(f"EXISTS {SENSOR_READINGS} (", f"EXISTS {table} (", 1)
    if table not in ddl:
        raise RuntimeError("sensor_readings DDL changed shape: cannot derive the bench table")
    qdb_exec(settings, ddl)


def _items(n: int, prefix: str) -> list[dict[str, Any]]:
    now = int(time.time() * 1000)
    return [fleet_item(f"{prefix}{i}", i, now - n + i) for i in range(n)]


def encoded_fleet_records(n: int, prefix: str, schema_id: int) -> list[tuple[bytes, bytes]]:
    """``n`` fleet events as the edge writes them to Kafka: (key asset_id, Confluent Avro)."""
    from schemas.avro import TELEMETRY_EVENT, load_schema
    from schemas.edge import event_from_item
    from schemas.validation import load_sensor_rules
    from schemas.wire import encode

    schema, rules = load_schema(TELEMETRY_EVENT), load_sensor_rules()
    now = int(time.time() * 1000)
    records = []
    for item in _items(n, prefix):
        event = event_from_item(item, now_ms=now, rules=rules).event
        assert event is not None, "bench fleet item failed validation"
        records.append((event["asset_id"].encode(), encode(event, schema_id, schema)))
    return records


def encoded_fleet_batches(n: int, prefix: str, batch_schema_id: int, partitions: int, *,
                          request_events: int = 1000, max_events: int = 500
                          ) -> list[tuple[int, bytes]]:
    """``n`` fleet events as the REST edge writes them: each request of ``request_events``
    split by partition into TelemetryBatch records of at most ``max_events``;
    ``(partition, Confluent Avro value)`` per record."""
    from io_connectors.kafka_partition import partition_for
    from schemas.avro import TELEMETRY_BATCH, load_schema
    from schemas.edge import event_from_item
    from schemas.validation import load_sensor_rules
    from schemas.wire import encode

    schema, rules = load_schema(TELEMETRY_BATCH), load_sensor_rules()
    now = int(time.time() * 1000)
    items = _items(n, prefix)
    records = []
    for start in range(0, n, request_events):
        groups: dict[int, list[dict[str, Any]]] = {}
        for item in items[start:start + request_events]:
            event = event_from_item(item, now_ms=now, rules=rules).event
            assert event is not None, "bench fleet item failed validation"
            groups.setdefault(partition_for(event["asset_id"].encode(), partitions),
                              []).append(event)
        for partition, events in groups.items():
            for at in range(0, len(events), max_events):
                records.append((partition, encode({"events": events[at:at + max_events]},
                                                  batch_schema_id, schema)))
    return records


def kafka_raw(settings: Settings, n: int, run: str) -> dict[str, Any]:
    """Produce then consume ``n`` Avro telemetry records on a scratch topic."""
    from confluent_kafka import Consumer, Producer, TopicPartition
    from confluent_kafka.admin import AdminClient, NewTopic

    from io_connectors.raw_producer import producer_config

    bootstrap = settings.kafka.bootstrap_servers
    topic = f"bench_anchor_{run}"
    partitions = settings.kafka.partitions
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, partitions, 1)])[topic].result()
    records = encoded_fleet_records(n, f"k{run}-", schema_id=1)
    try:
        producer = Producer(producer_config(bootstrap, f"bench-anchor-{run}"))
        delivered = [0]

        def on_delivery(err: Any, _msg: Any) -> None:
            if err is None:
                delivered[0] += 1

        t0 = time.perf_counter()
        for key, value in records:
            while True:
                try:
                    producer.produce(topic, value=value, key=key, on_delivery=on_delivery)
                    break
                except BufferError:
                    producer.poll(0.05)
            producer.poll(0)
        producer.flush(120)
        produce_s = time.perf_counter() - t0
        consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-anchor-{run}",
                             "enable.auto.commit": False, "auto.offset.reset": "earliest"})
        consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        got = 0
        t1 = time.perf_counter()
        deadline = t1 + 300
        while got < delivered[0] and time.perf_counter() < deadline:
            for msg in consumer.consume(10000, timeout=1.0):
                if msg.error() is None:
                    got += 1
        consume_s = time.perf_counter() - t1
        consumer.close()
    finally:
        for future in admin.delete_topics([topic]).values():
            try:
                future.result()
            except Exception:  # noqa: BLE001 - clean-up only
                pass
    return {"events": n, "delivered": delivered[0], "consumed": got,
            "produce_eps": round(n / produce_s), "consume_eps": round(got / consume_s),
            "kafka_raw_eps": round(got / (produce_s + consume_s))}


def questdb_raw(settings: Settings, n: int, run: str, batch: int = 10000) -> dict[str, Any]:
    """Write ``n`` rows in batches of ``batch`` over ILP/HTTP into RAW_TABLE; time to visible."""
    from questdb import Sender, TimestampNanos

    create_like(settings, RAW_TABLE)
    items = _items(n, f"q{run}-")
    conf = (f"http::addr={settings.questdb.host}:"
            f"{settings.questdb.http_port};auto_flush=off;request_timeout=120000;")
    t0 = time.perf_counter()
    with Sender.from_conf(conf) as sender:
        buf = sender.new_buffer()
        for i, it in enumerate(items, 1):
            buf.row(RAW_TABLE,
                    symbols={"site_id": it["site_id"], "asset_id": it["asset_id"],
                             "sensor_id": it["sensor_id"], "sensor_type": it["sensor_type"],
                             "unit": it["unit"], "quality_flag": it["quality_flag"],
                             "asset_type": "inverter"},
                    columns={"event_id": it["event_id"], "value": it["value"],
                             "site_name": "Bench Site", "location": "Benchmark region",
                             "ingested_at": TimestampNanos.now()},
                    at=TimestampNanos(it["timestamp"] * 1_000_000))
            if i % batch == 0:
                sender.flush(buf)
        sender.flush(buf)
    sent_s = time.perf_counter() - t0
    while True:
        count = int(qdb_exec(settings, f"SELECT count() FROM {RAW_TABLE}")[0][0])
        if count >= n or time.perf_counter() - t0 > 300:
            break
        time.sleep(0.2)
    visible_s = time.perf_counter() - t0
    return {"rows": n, "visible": count, "batch": batch, "send_rows_per_s": round(n / sent_s),
            "questdb_raw_rows_per_s": round(count / visible_s)}


def _direct_peer(settings_env: dict[str, Any], topic_filter: str, client_id: str,
                 ready: Any, stop: Any) -> None:
    """Child process: subscribe, write every message to DIRECT_TABLE (flush 1,000 rows / 100 ms)."""
    import paho.mqtt.client as mqtt
    from questdb import Sender, TimestampNanos

    lock = threading.Lock()
    conf = (f"http::addr={settings_env['qdb_host']}:{settings_env['qdb_http']};"
            "auto_flush=off;request_timeout=60000;")
    pending = [0]  # rows in buf (the client's Buffer has no row count)
    with Sender.from_conf(conf) as sender:
        buf = sender.new_buffer()

        def on_message(_c: Any, _u: Any, msg: Any) -> None:
            try:
                _root, _run, site, asset, kind = msg.topic.split("/")
                data = json.loads(msg.payload)
                row = dict(symbols={"site_id": site, "asset_id": asset,
                                    "sensor_id": str(data["sensor_id"]), "sensor_type": kind,
                                    "unit": str(data.get("unit", "")),
                                    "quality_flag": str(data.get("quality_flag", "GOOD"))},
                           columns={"event_id": str(data["event_id"]),
                                    "value": float(data["value"]),
                                    "ingested_at": TimestampNanos.now()},
                           at=TimestampNanos(int(data["timestamp"]) * 1_000_000))
            except (ValueError, KeyError, TypeError):
                return  # a direct peer has no dead-letter path: that is part of the comparison
            with lock:
                buf.row(DIRECT_TABLE, **row)
                pending[0] += 1

        def on_subscribe(*_a: Any) -> None:
            ready.set()

        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=mqtt.MQTTv5)
        client.username_pw_set(settings_env["user"], settings_env["password"])
        client.on_message = on_message
        client.on_subscribe = on_subscribe
        client.on_connect = lambda c, *_a: c.subscribe(topic_filter, qos=1)
        client.connect(settings_env["mqtt_host"], settings_env["mqtt_port"], keepalive=60)
        client.loop_start()
        last = time.monotonic()
        while not stop.is_set():
            time.sleep(0.01)
            with lock:
                due = pending[0] > 0 and (pending[0] >= 1000 or time.monotonic() - last > 0.1)
                if due:
                    try:
                        sender.flush(buf)
                        pending[0] = 0
                    except Exception:  # noqa: BLE001 - keep the rows, retry next turn
                        pass
                    last = time.monotonic()
        client.disconnect()
        client.loop_stop()
        with lock:
            if pending[0]:
                sender.flush(buf)


def start_direct_peer(settings: Settings, run: str) -> tuple[Any, Any, str]:
    """Create DIRECT_TABLE fresh and start the peer; (process, stop event, topic root)."""
    bench_root = settings.mqtt.bench_topic_root  # stripped of blanks and slashes
    if not bench_root:
        raise RuntimeError("the direct MQTT peer needs [mqtt] bench_topic_root (e.g. \"bench\") "
                           "in the settings file; the broker's ACL admits no other root")
    create_like(settings, DIRECT_TABLE)
    root = f"{bench_root}/direct-{run}"
    env = {"qdb_host": settings.questdb.host,
           "qdb_http": settings.questdb.http_port,
           "mqtt_host": settings.mqtt.host,
           "mqtt_port": settings.mqtt.port,
           "user": settings.mqtt.bridge_username,
           "password": settings.mqtt.bridge_password}
    ctx = mp.get_context("fork")
    ready, stop = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_direct_peer, args=(env, f"{root}/#", f"bench-direct-{run}",
                                                  ready, stop), daemon=True)
    proc.start()
    if not ready.wait(30):
        stop.set()
        proc.join(5)
        raise RuntimeError("direct peer did not subscribe within 30 s (check [mqtt] bridge_*)")
    return proc, stop, root


def stop_direct_peer(proc: Any, stop: Any) -> None:
    stop.set()
    proc.join(20)
    if proc.is_alive():
        proc.terminate()
