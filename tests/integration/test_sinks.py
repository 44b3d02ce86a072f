"""QuestDB and Kafka sinks on the DirectRunner against the real QuestDB, Kafka and registry.

Addresses come from load_settings() ([questdb], [kafka], [schema_registry]).
Each test writes under a unique site/topic so runs do not interfere.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator

import apache_beam as beam
import pytest
import requests
from apache_beam.testing.util import assert_that, equal_to
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from config.settings import load_settings
from io_connectors.kafka_sink import KafkaDeliveryError, WriteToKafkaTopic
from io_connectors.questdb_http import questdb_exec, questdb_http_url
from io_connectors.questdb_schema import DDL_STATEMENTS
from io_connectors.questdb_sink import QuestDBWriter, WriteToQuestDB, questdb_conf, reading_row
from io_connectors.schema_registry import RegistrySchemas
from schemas.avro import load_schema
from schemas.wire import decode

pytestmark = pytest.mark.integration

SETTINGS = load_settings()
QDB_HOST = SETTINGS.questdb.host
QDB_HTTP = SETTINGS.questdb.http_port
BOOTSTRAP = SETTINGS.kafka.bootstrap_servers
REGISTRY = SETTINGS.schema_registry.url


def _exec(query: str) -> dict:
    return questdb_exec(questdb_http_url(QDB_HOST, QDB_HTTP), query, timeout_s=10)


@pytest.fixture(scope="module", autouse=True)
def questdb_tables() -> None:
    try:
        for ddl in DDL_STATEMENTS:
            _exec(ddl)
    except requests.RequestException as exc:
        pytest.fail(f"QuestDB not reachable at {QDB_HOST}:{QDB_HTTP} (settings [questdb] host, "
                    f"http_port; start the test stack with `make test`): {exc}")


def _readings(site: str, n: int, start_ms: int = 1_790_000_000_000) -> list[dict]:
    now = int(time.time() * 1000)
    return [{"timestamp": start_ms + i * 1000, "event_id": f"{site}-e{i}", "site_id": site,
             "asset_id": "asset-001", "sensor_id": "temp-1", "sensor_type": "TEMPERATURE",
             "value": 20.0 + i, "unit": "C", "quality_flag": "GOOD", "site_name": "Test site",
             "asset_type": "inverter", "location": "here", "ingested_at": now}
            for i in range(n)]


def _wal_applied(table: str = "sensor_readings", timeout_s: float = 30.0) -> None:
    """Wait until QuestDB has applied every WAL transaction committed so far to ``table``.

    Writes acknowledged by QuestDB are committed to the WAL but applied to the table
    asynchronously; once the table's ``writerTxn`` reaches the ``sequencerTxn`` seen
    now, a count includes every row written before this call (no sleeping for absence).
    """
    def txns() -> tuple[int, int]:
        rows = _exec("SELECT writerTxn, sequencerTxn FROM wal_tables() "
                     f"WHERE name = '{table}'")["dataset"]
        assert rows, f"table {table} is not a WAL table"
        return int(rows[0][0]), int(rows[0][1])

    target = txns()[1]
    deadline = time.monotonic() + timeout_s
    while txns()[0] < target:
        if time.monotonic() > deadline:
            pytest.fail(f"QuestDB did not apply {table}'s WAL up to txn {target} within "
                        f"{timeout_s:.0f} s (at {txns()[0]})")
        time.sleep(0.2)


def _count(site: str) -> int:
    """Rows of ``site`` once every write made so far is applied (see :func:`_wal_applied`)."""
    _wal_applied()
    return _exec(f"SELECT count() FROM sensor_readings WHERE site_id = '{site}'")[
        "dataset"][0][0]


def _site() -> str:
    return f"test-{uuid.uuid4().hex[:10]}"


def test_rows_land_exactly_once_when_flushed_twice() -> None:
    site = _site()
    readings = _readings(site, 50)
    conf = questdb_conf(QDB_HOST, QDB_HTTP)
    for _attempt in range(2):  # the runner retrying a bundle re-sends the same rows
        with beam.Pipeline() as p:
            dead = p | beam.Create(readings) | WriteToQuestDB("sensor_readings", conf,
                                                              batch_rows=7)
            assert_that(dead, equal_to([]))
    writer = QuestDBWriter(conf)
    assert writer.write([reading_row(r) for r in readings[:10]]) == []
    writer.close()
    assert _count(site) == 50
    row = _exec(f"SELECT event_id, value, unit, ingested_at FROM sensor_readings "
                f"WHERE site_id = '{site}' AND event_id = '{site}-e3'")["dataset"]
    assert row[0][:3] == [f"{site}-e3", 23.0, "C"]


@pytest.mark.parametrize("batched", [False, True], ids=["rows", "lists-of-rows"])
def test_permanent_rejections_go_to_dead_letters(batched: bool) -> None:
    """Elements are single rows, or lists of rows (DeduplicateByEventId's batches)."""
    site = _site()
    readings = _readings(site, 20)
    readings[4]["location"] = 12345          # QuestDB refuses INTEGER for a VARCHAR column
    readings[11]["site_name"] = 1.5          # ... and FLOAT
    del readings[15]["event_id"]             # refused before sending (mapping)
    conf = questdb_conf(QDB_HOST, QDB_HTTP)

    def check(dead: list[dict]) -> None:
        assert len(dead) == 3, dead
        assert {d["stage"] for d in dead} == {"sink"}
        by_reason = sorted(" ".join(d["reasons"]) for d in dead)
        assert any("location" in r and "cast error" in r for r in by_reason), by_reason
        assert any("site_name" in r for r in by_reason), by_reason
        assert any("event_id" in r and "missing" in r for r in by_reason), by_reason
        assert all(d["original"] for d in dead)

    elements = [readings[:10], readings[10:]] if batched else readings
    with beam.Pipeline() as p:
        dead = p | beam.Create(elements) | WriteToQuestDB("sensor_readings", conf,
                                                          batch_rows=100)
        assert_that(dead, check)
    assert _count(site) == 17


class _LateProxy:
    """A TCP forwarder to QuestDB that starts listening only after ``delay_s``:
    QuestDB looks down (connection refused) at first, then comes up."""

    def __init__(self, target: tuple[str, int], delay_s: float) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.target = target
        self.delay_s = delay_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> _LateProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _serve(self) -> None:
        if self._stop.wait(self.delay_s):
            return
        with socket.socket() as server:
            server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            server.bind(("127.0.0.1", self.port))
            server.listen(16)
            server.settimeout(0.2)
            while not self._stop.is_set():
                try:
                    client, _ = server.accept()
                except TimeoutError:
                    continue
                upstream = socket.create_connection(self.target)
                for a, b in ((client, upstream), (upstream, client)):
                    threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def test_questdb_down_then_up_gets_every_row() -> None:
    site = _site()
    readings = _readings(site, 30)
    with _LateProxy((QDB_HOST, QDB_HTTP), delay_s=3.0) as proxy:
        conf = questdb_conf("127.0.0.1", proxy.port)
        started = time.monotonic()
        with beam.Pipeline() as p:
            dead = p | beam.Create(readings) | WriteToQuestDB("sensor_readings", conf,
                                                              retry_deadline_s=60)
            assert_that(dead, equal_to([]))
        waited = time.monotonic() - started
    assert waited >= 2.5, "the sink should have had to wait for QuestDB"
    assert _count(site) == 30


def test_questdb_down_past_deadline_fails_the_bundle() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    with pytest.raises(Exception, match="unavailable"):
        with beam.Pipeline() as p:
            _ = (p | beam.Create(_readings(_site(), 3))
                 | WriteToQuestDB("sensor_readings", questdb_conf("127.0.0.1", dead_port),
                                  retry_deadline_s=1.5))


# --- Kafka -----------------------------------------------------------------------------

@pytest.fixture()
def topic() -> Iterator[str]:
    admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
    name = f"test_sink_{uuid.uuid4().hex[:8]}"
    try:
        admin.create_topics([NewTopic(name, num_partitions=2, replication_factor=1)])[
            name].result(timeout=20)
    except Exception as exc:
        pytest.fail(f"Kafka not reachable at {BOOTSTRAP} (setting [kafka] bootstrap_servers): "
                    f"{exc}")
    try:
        requests.get(f"{REGISTRY}/subjects", timeout=5).raise_for_status()
    except requests.RequestException as exc:
        pytest.fail(f"schema registry not reachable at {REGISTRY} (setting [schema_registry] "
                    f"url): {exc}")
    yield name
    admin.delete_topics([name])


def _consume(topic: str, n: int, timeout_s: float = 30.0) -> list:
    consumer = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": f"t-{uuid.uuid4()}",
                         "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(2)])
    out = []
    deadline = time.monotonic() + timeout_s
    while len(out) < n and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is not None and not msg.error():
            out.append(msg)
    consumer.close()
    return out


@pytest.mark.parametrize("batched", [False, True], ids=["rows", "lists-of-rows"])
def test_kafka_sink_writes_wire_format_and_dead_letters_unencodable(topic: str,
                                                                    batched: bool) -> None:
    site = _site()
    readings = _readings(site, 25)
    bad = dict(readings[0], event_id="broken", value="not a number")
    elements = [readings[:12], [*readings[12:], bad]] if batched else [*readings, bad]
    with beam.Pipeline() as p:
        dead = (p | beam.Create(elements)
                | WriteToKafkaTopic(topic, BOOTSTRAP, schema_name="sensor-reading",
                                    registry_url=REGISTRY))
        assert_that(dead, lambda d: _check_one_dead(d, "broken"))
    messages = _consume(topic, 25)
    assert len(messages) == 25
    lookup = RegistrySchemas(REGISTRY)
    expected_id = lookup.latest_id(f"{topic}-value")
    reader = load_schema("sensor-reading")
    decoded = []
    for msg in messages:
        assert msg.key() == b"asset-001"
        schema_id, record = decode(msg.value(), lookup, reader)
        assert schema_id == expected_id
        decoded.append(record)
    assert sorted(r["event_id"] for r in decoded) == sorted(r["event_id"] for r in readings)
    assert {r["site_id"] for r in decoded} == {site}


def _check_one_dead(dead: list[dict], event_id: str) -> None:
    assert len(dead) == 1, dead
    assert dead[0]["event_id"] == event_id and dead[0]["stage"] == "sink"
    assert "cannot encode" in dead[0]["reasons"][0]


def test_kafka_sink_fails_bundle_when_delivery_fails() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    with pytest.raises(Exception) as failed:
        with beam.Pipeline() as p:
            _ = (p | beam.Create([b"x", b"y"])
                 | WriteToKafkaTopic("anything", f"127.0.0.1:{dead_port}", value_fn=bytes,
                                     key_fn=lambda _e: None, flush_timeout_s=10,
                                     producer_overrides={"delivery.timeout.ms": 3000,
                                                         "linger.ms": 0}))
    assert "delivery failure" in str(failed.value) or isinstance(failed.value,
                                                                  KafkaDeliveryError)
