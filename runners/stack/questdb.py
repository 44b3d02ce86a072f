"""QuestDB 9.3.1 server (the last line that runs on Java 17) from its Maven Central jar.

QuestDB keeps its configuration inside its root directory, so ``server.conf``
is written to ``<run>/data/questdb/conf/server.conf`` on every start (from
config/local.toml; edit that, not the generated file). Once healthy, the
pipeline's tables are created through ``/exec`` from
:data:`io_connectors.questdb_schema.DDL_STATEMENTS`; a rejected statement fails
the start with QuestDB's error message.
"""

from __future__ import annotations

import logging

import requests

from io_connectors.questdb_schema import DDL_STATEMENTS, MIGRATIONS, ROLLUP_STATEMENTS
from runners.settings import Settings
from runners.stack.spec import ServiceSpec, StackPaths

__all__ = ["services", "run_ddl", "exec_sql", "QUESTDB_JAR", "MIN_HTTP_PORT"]

_LOGGER = logging.getLogger(__name__)

QUESTDB_JAR = "questdb-9.3.1.jar"
# QuestDB's "min" HTTP server (health/metrics): default of the optional setting
# [questdb] min_http_port (QuestDB's own default), bound to bind_host. A setting so a
# second stack (make chaos) can run beside the first.
MIN_HTTP_PORT = 9003
_JAVA_HINT = "install a JDK 17: apt-get install openjdk-17-jre-headless"


def exec_sql(base_url: str, sql: str, timeout_s: float = 30.0) -> dict[str, object]:
    """Run one statement through QuestDB's /exec; raise RuntimeError with QuestDB's message."""
    resp = requests.get(f"{base_url}/exec", params={"query": sql}, timeout=timeout_s)
    try:
        body = resp.json()
    except ValueError:
        body = {"error": resp.text[:500]}
    if resp.status_code != 200 or "error" in body:
        first_line = sql.strip().splitlines()[0]
        raise RuntimeError(f"QuestDB rejected '{first_line} ...' (HTTP {resp.status_code}): "
                           f"{body.get('error')} at position {body.get('position')}")
    return body


def run_ddl(base_url: str, rollups: bool = False) -> None:
    """Create the pipeline's tables if missing and migrate older ones (all idempotent);
    with ``rollups`` also the rollup views (``[questdb] rollups``)."""
    for statement in (*DDL_STATEMENTS, *MIGRATIONS, *(ROLLUP_STATEMENTS if rollups else ())):
        exec_sql(base_url, statement)


def services(settings: Settings, paths: StackPaths) -> list[ServiceSpec]:
    bind_host = settings.get("stack", "bind_host")
    host = settings.get("questdb", "host")
    http_port = settings.get("questdb", "http_port", int)
    pg_port = settings.get("questdb", "pg_port", int)
    ilp_port = settings.get("questdb", "ilp_tcp_port", int)
    min_port = settings.get("questdb", "min_http_port", int, MIN_HTTP_PORT)
    pg_user = settings.get("questdb", "pg_user")
    pg_password = settings.get("questdb", "pg_password")
    root = paths.data("questdb")
    jar = paths.jars("questdb") / QUESTDB_JAR
    base_url = f"http://{host}:{http_port}"

    def prepare() -> None:
        if not jar.exists():
            raise RuntimeError(f"QuestDB jar not found: {jar}; run `make jars` "
                               f"(bash scripts/fetch-jars.sh)")
        conf = root / "conf"
        conf.mkdir(parents=True, exist_ok=True)
        (conf / "server.conf").write_text("\n".join([
            "# Written by runners/stack/questdb.py on every start; edit config/local.toml instead.",
            f"http.bind.to={bind_host}:{http_port}",
            f"http.min.net.bind.to={bind_host}:{min_port}",
            f"pg.net.bind.to={bind_host}:{pg_port}",
            f"pg.user={pg_user}",
            f"pg.password={pg_password}",
            f"line.tcp.net.bind.to={bind_host}:{ilp_port}",
            "line.udp.enabled=false",
            # Otherwise every query start is logged: the API and health checks would
            # fill the log (completions and errors are still logged).
            "log.sql.query.progress.exe=false",
            # No phoning home: this machine only reaches package registries.
            "telemetry.enabled=false",
            # Two-core machines: leave cores to Kafka, Flink and Python.
            "shared.worker.count=2",
            # Worker threads spin (yield, then nap) for thousands of idle loops after each
            # wake-up before they sleep. At the pipeline's pace (a WAL commit every few
            # hundred ms) that spinning was most of QuestDB's CPU: 41 -> 11 us per row for
            # an in-order append, 76 -> 31 in the pipeline's shape (scratch server,
            # docs/decisions/0004-questdb-notes.md). Cost: up to ~10 ms more on the first
            # request after an idle spell.
            *(f"{pool}.worker.{knob}={value}"
              for pool in ("shared", "wal.apply", "mat.view.refresh", "view.compiler", "export")
              for knob, value in (("yield.threshold", 10), ("nap.threshold", 20),
                                  ("sleep.threshold", 50))),
            # Prometheus metrics on the min server (http://<bind_host>:<min_http_port>/metrics).
            "metrics.enabled=true",
            "",
        ]))
        # QuestDB logs every finished query at INFO: keep errors and the advisory lines
        # (start-up, listeners) only, so queries from the API do not fill the log.
        (conf / "log.conf").write_text("\n".join([
            "# Written by runners/stack/questdb.py on every start.",
            "writers=stdout",
            "w.stdout.class=io.questdb.log.LogConsoleWriter",
            "w.stdout.level=ERROR,CRITICAL,ADVISORY",
            "",
        ]))

    def healthy() -> bool:
        resp = requests.get(f"{base_url}/exec", params={"query": "SELECT 1"}, timeout=2.0)
        return resp.status_code == 200

    return [ServiceSpec(
        name="questdb",
        # Heap: [questdb] heap (2g). With 1g QuestDB died of OutOfMemoryError at the end of
        # the benchmark's 10-minute soak (a count_distinct over 6M event ids next to the
        # ingest at 10,000 rows/s, 2026-11-30).
        argv=["java", "-Xms256m", f"-Xmx{settings.get('questdb', 'heap', str, '2g')}",
              "-XX:+UseParallelGC",
              "-XX:+ExitOnOutOfMemoryError",
              "--add-exports", "java.base/jdk.internal.math=io.questdb",
              "-p", str(jar), "-m", "io.questdb/io.questdb.ServerMain", "-d", str(root)],
        ports=(http_port, pg_port, ilp_port, min_port),
        healthy=healthy,
        start_timeout_s=90.0,
        stop_timeout_s=30.0,
        prepare=prepare,
        after_start=lambda: run_ddl(base_url, settings.get("questdb", "rollups", bool)),
        requires={"java": _JAVA_HINT},
    )]
