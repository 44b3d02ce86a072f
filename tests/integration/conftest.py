"""Shared fixtures of the integration tests: Kafka topics, QuestDB queries, Flink jobs.

The integration tests only ever talk to the test profile's stack
(runners/profiles.py: run dir ``.run-test``, ports 2xxxx, its own bridge and
consumer group names), never to the stack of ``make run``: scripts/run-tests.sh
exports that profile and starts the stack, and :func:`pytest_configure` applies
it too when pytest is run directly (values already set win). Addresses come
from load_settings() (config/local.toml + DCMMS_* overrides). A service that
does not answer FAILS the test with a message naming the setting, never skips it.

QuestDB and the query API (test_query_api, test_query_rollup_tail, test_stack_questdb):
:func:`questdb_pg` (PG wire, autocommit), :func:`questdb_sender` (ILP/HTTP), the
``query_tables`` fixture (tables and rollup views created when missing), :func:`wait_rows`
/ :func:`wait_rollups` (WAL applied, views refreshed), and for a module that defines an
``app`` fixture, ``client`` (its test client), :data:`API_AUTH`, :func:`api_pages` and
:func:`same_buckets`.

``flink_job`` submits the REAL telemetry job (runners.run_pipeline.run) with
options isolated from the stack's own ``dcmms-telemetry`` job: the caller
passes its own topics, consumer group and assets file; the fixture adds a
unique job name, a per-name Flink conf and checkpoint dir
(runners.stack.flink.job_submission_args) and a free REST port, and cancels
every job it submitted through Flink REST at teardown (PipelineResult.cancel()
does not stop a [local] Flink job).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
import requests

from api.auth import configured_api_key
from config.settings import Settings, load_settings
from io_connectors.questdb_http import questdb_exec, questdb_http_url
from io_connectors.questdb_schema import (
    ALARMS,
    DDL_STATEMENTS,
    ROLLUP_1M,
    ROLLUP_STATEMENTS,
    ROLLUPS,
    SENSOR_READINGS,
)
from runners.profiles import apply_profile, profile_environ
from runners.stack.flink import (
    _grpc_ready,
    cancel_jobs,
    expansion_address,
    job_checkpoint_dir,
    job_submission_args,
)
from runners.stack.supervisor import paths_from_settings

__all__ = [
    "API_AUTH",
    "FlinkJob",
    "api_pages",
    "free_port",
    "qdb_exec",
    "questdb_pg",
    "questdb_sender",
    "require_flink",
    "stop_process_group",
    "create_topics",
    "same_buckets",
    "flink_metrics",
    "flink_metric_names",
    "wait_for",
    "wait_for_quietly",
    "wait_rollups",
    "wait_rows",
]

_LOGGER = logging.getLogger(__name__)


def pytest_configure(config: pytest.Config) -> None:
    """Put the test profile into os.environ before any test module reads its settings.

    Test modules call load_settings() at import and their subprocesses inherit the
    environment: both must see the test stack, not the default one.
    """
    apply_profile("test")


def stop_process_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group a test started (``start_new_session``), SIGKILL after 20 s."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def qdb_exec(settings: Settings, query: str) -> dict[str, Any]:
    """Run ``query`` on QuestDB's /exec; fails the test with the setting names when unreachable."""
    host, port = settings.questdb.host, settings.questdb.http_port
    try:
        return questdb_exec(questdb_http_url(host, port), query, timeout_s=10)
    except requests.RequestException as exc:
        pytest.fail(f"QuestDB not reachable at {host}:{port} (settings [questdb] host, "
                    f"http_port; start the test stack with `make test`): {exc}")


# -- QuestDB and the query API -----------------------------------------------------------------

# A read key of the test stack's [api] api_keys: the settings the test modules' apps are built
# from (this module may be imported before pytest_configure applied the profile).
API_AUTH = {"Authorization": "Bearer " + configured_api_key(
    load_settings(environ=profile_environ("test")), ("read",))}


def questdb_pg(settings: Settings, connect_timeout: int = 3) -> Any:
    """A PG-wire connection (autocommit) to QuestDB as ``[questdb] pg_user``; fails the test
    naming the settings when QuestDB does not answer."""
    import psycopg2

    q = settings.questdb
    try:
        conn = psycopg2.connect(host=q.host, port=q.pg_port, user=q.pg_user,
                                password=q.pg_password, dbname="qdb",
                                connect_timeout=connect_timeout)
    except psycopg2.OperationalError as exc:
        pytest.fail(f"QuestDB PG wire at {q.host}:{q.pg_port} unreachable ([questdb] host, "
                    f"pg_port, pg_user, pg_password): start the test stack with `make test`. "
                    f"{exc}")
    conn.autocommit = True
    return conn


def questdb_sender(settings: Settings) -> Any:
    """QuestDB's ILP/HTTP client for ``[questdb] host, http_port``, flushed explicitly."""
    from questdb.ingress import Sender

    q = settings.questdb
    return Sender.from_conf(f"http::addr={q.host}:{q.http_port};auto_flush=off;")


@pytest.fixture(scope="session")
def query_tables() -> None:
    """The tables the query API reads and the rollup views, created when missing (the
    stack's ``up`` creates them too; every statement is idempotent)."""
    conn = questdb_pg(load_settings())
    cur = conn.cursor()
    cur.execute("SELECT table_name FROM tables()")
    existing = {r[0] for r in cur.fetchall()}
    for table, ddl in zip((SENSOR_READINGS, ALARMS), DDL_STATEMENTS, strict=True):
        if table not in existing:
            cur.execute(ddl)
    for ddl in ROLLUP_STATEMENTS:  # IF NOT EXISTS; the timer of an older view
        cur.execute(ddl)
    conn.close()


def wait_rows(cur: Any, table: str, where: str, params: Sequence[Any], rows: int, *,
              column: str = "count()", refresh: bool = False, timeout_s: float = 90) -> None:
    """Until ``SELECT <column> FROM <table> WHERE <where>`` is ``rows`` (WAL tables apply
    writes asynchronously; a rollup counts ``sum(row_count)``). With ``refresh`` the
    1-minute view is asked to refresh now and again every 10 s (its timer runs once a
    minute; the 1-hour view follows it by itself)."""
    deadline = time.monotonic() + timeout_s
    refreshed = -math.inf
    while True:
        cur.execute(f"SELECT {column} FROM {table} WHERE {where}", tuple(params))
        got = cur.fetchone()[0] or 0
        if got == rows:
            return
        assert time.monotonic() < deadline, f"{table} holds {got} of {rows} rows ({where})"
        if refresh and time.monotonic() - refreshed > 10:
            cur.execute(f"REFRESH MATERIALIZED VIEW {ROLLUP_1M} INCREMENTAL")
            refreshed = time.monotonic()
        time.sleep(0.3)


def wait_rollups(cur: Any, where: str, params: Sequence[Any], rows: int,
                 timeout_s: float = 90) -> None:
    """Until both rollup views hold all ``rows`` raw rows matching ``where``."""
    for view in ROLLUPS:
        wait_rows(cur, view, where, params, rows, column="sum(row_count)", refresh=True,
                  timeout_s=timeout_s)


@pytest.fixture
def client(app: Any) -> Any:
    """The Flask test client of the module's ``app`` fixture."""
    return app.test_client()


def api_pages(client: Any, **params: str) -> tuple[list[dict[str, Any]], set[str]]:
    """Every row of ``GET /api/v1/telemetry`` with ``params`` (following ``next_cursor``)
    and the sources the pages came from (the X-Data-Source header equals the body's)."""
    out: list[dict[str, Any]] = []
    sources: set[str] = set()
    cursor = None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        response = client.get("/api/v1/telemetry", query_string=query, headers=API_AUTH)
        assert response.status_code == 200, response.json
        assert response.headers["X-Data-Source"] == response.json["source"]
        sources.add(response.json["source"])
        out += response.json["data"]
        cursor = response.json["next_cursor"]
        if cursor is None:
            return out, sources


def same_buckets(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> None:
    """The same buckets (timestamp and ids) with the same values (nulls where nulls)."""
    assert [(r["timestamp"], r["asset_id"], r["sensor_id"], r["sensor_type"]) for r in a] == \
        [(r["timestamp"], r["asset_id"], r["sensor_id"], r["sensor_type"]) for r in b]
    for x, y in zip(a, b, strict=True):
        if x["value"] is None or y["value"] is None:
            assert x["value"] is y["value"] is None, (x, y)
        else:
            assert math.isclose(x["value"], y["value"], rel_tol=1e-9, abs_tol=1e-9), (x, y)


# -- Flink -------------------------------------------------------------------------------------

def require_flink(settings: Settings) -> None:
    """Fail (not skip) when the job server, the expansion service or the worker pool is down."""
    job_port = settings.flink.job_port
    for name, target in (
            ("job server ([flink] job_port)", f"localhost:{job_port}"),
            ("Kafka expansion service ([flink] expansion_port)", expansion_address(settings)),
            ("Beam worker pool ([flink] worker_pool_port)",
             f"localhost:{settings.flink.worker_pool_port}")):
        if not _grpc_ready(target, timeout_s=5.0):
            pytest.fail(f"Flink {name} not answering at {target}; "
                        "start the test stack with `make test`")


def create_topics(settings: Settings, names_partitions: dict[str, int]) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    bootstrap = settings.kafka.bootstrap_servers
    admin = AdminClient({"bootstrap.servers": bootstrap})
    try:
        futures = admin.create_topics([NewTopic(n, p, 1) for n, p in names_partitions.items()],
                                      operation_timeout=30)
        for fut in futures.values():
            fut.result(timeout=30)
    except Exception as exc:  # noqa: BLE001 - any failure here means Kafka is not usable
        pytest.fail(f"Kafka not usable at {bootstrap} (setting [kafka] bootstrap_servers; "
                    f"start the test stack with `make test`): {exc}")


def delete_topics(settings: Settings, names: Sequence[str]) -> None:
    from confluent_kafka.admin import AdminClient

    AdminClient({"bootstrap.servers": settings.kafka.bootstrap_servers}
                ).delete_topics(list(names))


@contextlib.contextmanager
def scratch_topics(settings: Settings, names: Sequence[str], partitions: int = 8
                   ) -> Iterator[None]:
    """Create ``names`` for a test module and delete them afterwards (best effort)."""
    create_topics(settings, {name: partitions for name in names})
    try:
        yield
    finally:
        delete_topics(settings, names)


@dataclass
class FlinkJob:
    """A submitted job: its Beam result, its mini cluster's REST URL and its Flink name."""

    result: Any
    rest_url: str
    job_name: str
    conf_name: str

    def flink_job_id(self) -> str | None:
        try:
            jobs = requests.get(f"{self.rest_url}/jobs/overview", timeout=5).json()["jobs"]
        except (requests.RequestException, ValueError, KeyError):
            # Not up yet: a starting mini cluster answers {"errors": [...]} for a while.
            return None
        ids = [j["jid"] for j in jobs if j["name"] == self.job_name and j["state"] == "RUNNING"]
        return ids[0] if ids else None

    def state(self) -> str | None:
        try:
            jobs = requests.get(f"{self.rest_url}/jobs/overview", timeout=5).json()["jobs"]
        except (requests.RequestException, ValueError, KeyError):
            # Not up yet: a starting mini cluster answers {"errors": [...]} for a while.
            return None
        states = [j["state"] for j in jobs if j["name"] == self.job_name]
        return states[0] if states else None

    def cancel(self) -> int:
        return cancel_jobs(self.rest_url, self.job_name)


def flink_metrics(job: FlinkJob, suffixes: Sequence[str]) -> dict[str, float]:
    """Sum of the Beam user counters ending in each of ``suffixes`` over every vertex.

    The Flink runner reports Beam counters as Flink operator metrics whose names
    end in ``<namespace>.<counter>`` (e.g. ``dcmms.telemetry.duplicates_dropped``);
    ``GET /jobs/<jid>/vertices/<vid>/metrics`` lists them, ``?get=a,b`` reads them
    (summed over subtasks with ``/subtasks/metrics?get=...&agg=sum``).
    """
    jid = job.flink_job_id()
    if jid is None:
        return {}
    base = f"{job.rest_url}/jobs/{jid}"
    totals = dict.fromkeys(suffixes, 0.0)
    for vertex in requests.get(base, timeout=5).json()["vertices"]:
        vid = vertex["id"]
        names = [m["id"] for m in requests.get(f"{base}/vertices/{vid}/subtasks/metrics",
                                               timeout=5).json()]
        wanted = [n for n in names if any(n.endswith(s) for s in suffixes)]
        if not wanted:
            continue
        values = requests.get(f"{base}/vertices/{vid}/subtasks/metrics",
                              params={"get": ",".join(wanted), "agg": "sum"}, timeout=5).json()
        for item in values:
            for suffix in suffixes:
                if item["id"].endswith(suffix):
                    totals[suffix] += float(item.get("sum", 0))
    return totals


def flink_metric_names(job: FlinkJob, contains: str = "dcmms") -> list[str]:
    """Names of the job's operator metrics containing ``contains`` (for failure messages)."""
    jid = job.flink_job_id()
    if jid is None:
        return []
    base = f"{job.rest_url}/jobs/{jid}"
    names: list[str] = []
    for vertex in requests.get(base, timeout=5).json()["vertices"]:
        names += [m["id"] for m in requests.get(
            f"{base}/vertices/{vertex['id']}/subtasks/metrics", timeout=5).json()
            if contains in m["id"]]
    return names


@pytest.fixture()
def flink_job() -> Iterator[Callable[..., FlinkJob]]:
    """Factory ``submit(argv, name=None, restore=False) -> FlinkJob`` for the telemetry job.

    ``argv`` are run_pipeline arguments (topics, consumer group, assets file...).
    ``name`` (default: unique) names the job and its checkpoint dir: pass the same
    name with ``restore=True`` to resume from that job's newest checkpoint.
    Every job submitted is cancelled at teardown.
    """
    from runners.run_pipeline import run

    settings = load_settings()
    require_flink(settings)
    paths = paths_from_settings(settings)
    submitted: list[FlinkJob] = []

    def submit(argv: Sequence[str], name: str | None = None, restore: bool = False) -> FlinkJob:
        conf_name = name or f"it-{uuid.uuid4().hex[:8]}"
        job_name = f"{conf_name}-{len(submitted) + 1}"
        port = free_port()
        extra = job_submission_args(settings, paths, name=conf_name, restore=restore,
                                    web_ui_port=port)
        result = run(["--runner=FlinkRunner", f"--job_name={job_name}", *argv, *extra],
                     settings)
        job = FlinkJob(result, f"http://127.0.0.1:{port}", job_name, conf_name)
        submitted.append(job)
        return job

    try:
        yield submit
    finally:
        for job in submitted:
            try:
                job.cancel()
            except Exception as exc:  # noqa: BLE001 - keep cancelling the others
                _LOGGER.error("could not cancel Flink job %s: %s", job.job_name, exc)
        # The test jobs' retained checkpoints and conf dirs are of no use afterwards.
        for conf_name in {job.conf_name for job in submitted}:
            shutil.rmtree(job_checkpoint_dir(paths, conf_name), ignore_errors=True)
            shutil.rmtree(paths.conf("flink") / "jobs" / conf_name, ignore_errors=True)


def wait_for(what: str, check: Callable[[], Any], timeout_s: float, interval_s: float = 1.0
             ) -> Any:
    """Poll ``check`` until it returns a truthy value; fail naming ``what`` on timeout."""
    last = wait_for_quietly(check, timeout_s, interval_s)
    if not last:
        pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what} (last: {last!r})")
    return last


def wait_for_quietly(check: Callable[[], Any], timeout_s: float, interval_s: float = 1.0) -> Any:
    """Like :func:`wait_for` but returns the last (falsy) result on timeout instead of failing."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval_s)
    return last
