"""A Beam job on the real Flink job server reads Kafka and writes QuestDB.

Proves the whole no-Docker path: the job server from the classpath jars, the
Python worker pool (EXTERNAL environment), the KafkaIO expansion service,
:class:`ReadRawTelemetry` reading a topic unbounded with checkpointing on,
and a QuestDB DoFn flushing in ``finish_bundle``. Addresses come from load_settings() ([kafka],
[questdb], [flink], [stack] run_dir); each run uses its own topic, consumer
group and table, and cancels its job at the end.
"""

from __future__ import annotations

import socket
import time
import uuid
import warnings
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
import pytest
import requests
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.runner import PipelineState
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from config.settings import load_settings
from io_connectors.kafka_source import KafkaRecord, ReadRawTelemetry
from io_connectors.questdb_http import questdb_exec, questdb_http_url
from runners.stack.flink import (
    _grpc_ready,
    cancel_jobs,
    expansion_address,
    job_submission_args,
    running_jobs,
)
from runners.stack.supervisor import paths_from_settings

pytestmark = [pytest.mark.integration, pytest.mark.flink]

SETTINGS = load_settings()
BOOTSTRAP = SETTINGS.kafka.bootstrap_servers
QDB_HOST = SETTINGS.questdb.host
QDB_HTTP = SETTINGS.questdb.http_port
JOB_PORT = SETTINGS.flink.job_port
POOL_PORT = SETTINGS.flink.worker_pool_port
N_RECORDS = 20
WAIT_S = 180.0
# A job that has delivered nothing after this long is taken as stalled (see _submit's caller).
STALL_S = 45.0


def _exec(query: str) -> dict[str, Any]:
    return questdb_exec(questdb_http_url(QDB_HOST, QDB_HTTP), query, timeout_s=10)


class _WriteRecordsToQuestDB(beam.DoFn):
    """Test sink: one row per Kafka record, buffered and flushed in finish_bundle."""

    def __init__(self, conf: str, table: str) -> None:
        self._conf = conf
        self._table = table

    def setup(self) -> None:
        from questdb import Sender

        self._sender = Sender.from_conf(self._conf)
        self._sender.establish()
        self._buf = self._sender.new_buffer()

    def process(self, rec: KafkaRecord) -> None:
        from questdb import TimestampNanos

        self._buf.row(self._table, symbols={"k": (rec.key or b"").decode()},
                      columns={"v": rec.value.decode(), "p": rec.partition, "o": rec.offset},
                      at=TimestampNanos(rec.timestamp_ms * 1_000_000))

    def finish_bundle(self) -> None:
        if len(self._buf):
            self._sender.flush(self._buf)  # clears the buffer only on success

    def teardown(self) -> None:
        self._sender.close()


@pytest.fixture()
def topic() -> Iterator[str]:
    name = f"it_flink_{uuid.uuid4().hex[:10]}"
    admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
    try:
        for fut in admin.create_topics([NewTopic(name, 2, 1)], operation_timeout=30).values():
            fut.result(timeout=30)
    except Exception as exc:  # noqa: BLE001 - any failure here means Kafka is not usable
        pytest.fail(f"Kafka not usable at {BOOTSTRAP} (setting [kafka] bootstrap_servers; "
                    f"start the test stack with `make test`): {exc}")
    yield name
    admin.delete_topics([name])


@pytest.fixture()
def table() -> Iterator[str]:
    name = f"it_flink_{uuid.uuid4().hex[:10]}"
    try:
        _exec(f"CREATE TABLE {name} (k SYMBOL, v VARCHAR, p INT, o LONG, ts TIMESTAMP) "
              "TIMESTAMP(ts) PARTITION BY DAY WAL")
    except requests.RequestException as exc:
        pytest.fail(f"QuestDB not reachable at {QDB_HOST}:{QDB_HTTP} (settings [questdb] host, "
                    f"http_port; start the test stack with `make test`): {exc}")
    yield name
    _exec(f"DROP TABLE IF EXISTS {name}")


def _produce(topic: str, n: int) -> set[tuple[str, str]]:
    producer = Producer({"bootstrap.servers": BOOTSTRAP, "acks": "all"})
    sent: set[tuple[str, str]] = set()
    errors: list[str] = []
    for i in range(n):
        key, value = f"asset-{i % 3}", f"reading-{i}"
        producer.produce(topic, key=key.encode(), value=value.encode(),
                         on_delivery=lambda err, _msg: errors.append(str(err)) if err else None)
        sent.add((key, value))
    assert producer.flush(30) == 0 and not errors, f"Kafka did not acknowledge: {errors}"
    return sent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _submit(topic: str, table: str, attempt: int) -> tuple[Any, str, str]:
    """Submit the read->write job; return (result, its Flink REST URL, its job name)."""
    run_id = f"{topic.removeprefix('it_flink_')}-{attempt}"
    job_name = f"it-flink-kafka-questdb-{run_id}"
    # The job's own mini cluster REST port (not the pipeline's 8082): the test cancels
    # through it, since PipelineResult.cancel() leaves a [local] Flink job running.
    rest_port = _free_port()
    options = PipelineOptions([
        "--runner=PortableRunner",
        f"--job_endpoint=localhost:{JOB_PORT}",
        "--environment_type=EXTERNAL",
        f"--environment_config=localhost:{POOL_PORT}",
        "--streaming",
        "--checkpointing_interval=5000",
        "--parallelism=1",
        f"--job_name={job_name}",
        # Its own Flink conf: no restore from the pipeline's checkpoints, its own UI port.
        *job_submission_args(SETTINGS, paths_from_settings(SETTINGS), name=f"it-{run_id}",
                             restore=False, web_ui_port=rest_port),
    ])
    pipeline = beam.Pipeline(options=options)
    _ = (pipeline
         | "Read" >> ReadRawTelemetry(BOOTSTRAP, topic, group_id=f"it-{run_id}",
                                      start_from="earliest",
                                      expansion_service=expansion_address(SETTINGS))
         | "Write" >> beam.ParDo(_WriteRecordsToQuestDB(
             f"http::addr={QDB_HOST}:{QDB_HTTP};auto_flush=off;", table)))
    return pipeline.run(), f"http://127.0.0.1:{rest_port}", job_name


def _wait_rows(result: Any, table: str, want: int, wait_s: float) -> list[tuple[str, str]]:
    deadline = time.monotonic() + wait_s
    rows: list[list[Any]] = []
    while time.monotonic() < deadline:
        state = result.state
        assert state not in (PipelineState.FAILED, PipelineState.CANCELLED,
                             PipelineState.DONE), f"Flink job ended early: {state}"
        rows = _exec(f"SELECT k, v FROM {table}")["dataset"]
        if len(rows) >= want:
            break
        time.sleep(1.0)
    return [(k, v) for k, v in rows]


def test_flink_job_reads_kafka_and_writes_questdb(topic: str, table: str) -> None:
    for name, target in (("job server ([flink] job_port)", f"localhost:{JOB_PORT}"),
                         ("Kafka expansion service ([flink] expansion_port)",
                          expansion_address(SETTINGS)),
                         ("Beam worker pool ([flink] worker_pool_port)", f"localhost:{POOL_PORT}")):
        if not _grpc_ready(target, timeout_s=5.0):
            pytest.fail(f"Flink {name} not answering at {target}; "
                        "start the test stack with `make test`")
    sent = _produce(topic, N_RECORDS)

    result, rest_url, job_name = _submit(topic, table, attempt=1)
    try:
        got = _wait_rows(result, table, N_RECORDS, STALL_S)
        if not got:
            # Known issue (docs/decisions/0001-beam-flink-kafka.md): about one submission in
            # five on this job server runs without ever processing a bundle. Resubmit once;
            # a broken component still fails, since the second job must deliver everything.
            warnings.warn(f"Flink job {job_name} processed nothing in {STALL_S:.0f} s; "
                          "resubmitting once", stacklevel=1)
            result.cancel()
            cancel_jobs(rest_url, job_name)
            result, rest_url, job_name = _submit(topic, table, attempt=2)
            got = _wait_rows(result, table, N_RECORDS, WAIT_S)
        assert len(got) == N_RECORDS, f"{len(got)} of {N_RECORDS} rows reached QuestDB: {got}"
        assert set(got) == sent
        assert any(job["name"] == job_name and job["state"] == "RUNNING"
                   for job in running_jobs(rest_url)), "the streaming job is not RUNNING on Flink"
    finally:
        result.cancel()
        cancelled = cancel_jobs(rest_url, job_name)
    assert cancelled == 1, f"expected to cancel 1 Flink job named {job_name}, cancelled {cancelled}"
