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

from config.settings import QuestdbSettings, Settings
from io_connectors.questdb_http import QuestDBError, as_dicts, questdb_exec, questdb_http_url
from io_connectors.questdb_schema import (
    DDL_STATEMENTS,
    MIGRATIONS,
    ROLLUP_STATEMENTS,
    SENSOR_READINGS,
    asset_index_statement,
)
from runners.stack.spec import ServiceSpec, StackPaths

__all__ = ["services", "run_ddl", "sync_asset_index", "QUESTDB_JAR", "MIN_HTTP_PORT"]

_LOGGER = logging.getLogger(__name__)

QUESTDB_JAR = "questdb-9.3.1.jar"
# QuestDB's "min" HTTP server (health/metrics): default of the optional setting
# [questdb] min_http_port (QuestDB's own default), bound to bind_host. A setting so a
# second stack (make chaos) can run beside the first.
MIN_HTTP_PORT: int = QuestdbSettings.min_http_port
_JAVA_HINT = "install a JDK 17: apt-get install openjdk-17-jre-headless"


def run_ddl(base_url: str, rollups: bool = False, asset_id_index: bool = True) -> None:
    """Create the pipeline's tables if missing and migrate older ones (all idempotent);
    give sensor_readings' asset_id the index ``[questdb] asset_id_index`` asks for; with
    ``rollups`` also the rollup views (``[questdb] rollups``)."""
    for statement in (*DDL_STATEMENTS, *MIGRATIONS):
        questdb_exec(base_url, statement)
    sync_asset_index(base_url, asset_id_index)
    for statement in ROLLUP_STATEMENTS if rollups else ():
        questdb_exec(base_url, statement)


def sync_asset_index(base_url: str, indexed: bool, table: str = SENSOR_READINGS) -> bool:
    """Add or drop ``table``'s asset_id index to match ``indexed``; True if it issued the
    ALTER. Read first, so that a start issues the ALTER only when the setting changed: an ADD
    INDEX builds the index over every row (11 s for 171M rows, 2026-12-01)."""
    rows = as_dicts(questdb_exec(
        base_url, f"SELECT indexed FROM table_columns('{table}') WHERE \"column\" = 'asset_id'"))
    if rows and bool(rows[0]["indexed"]) == indexed:
        return False
    questdb_exec(base_url, asset_index_statement(indexed, table))
    _LOGGER.info("%s.asset_id index %s ([questdb] asset_id_index)", table,
                 "added" if indexed else "dropped")
    return True


def services(settings: Settings, paths: StackPaths) -> list[ServiceSpec]:
    bind_host = settings.stack.bind_host
    host = settings.questdb.host
    http_port = settings.questdb.http_port
    pg_port = settings.questdb.pg_port
    ilp_port = settings.questdb.ilp_tcp_port
    min_port = settings.questdb.min_http_port
    pg_user = settings.questdb.pg_user
    pg_password = settings.questdb.pg_password
    root = paths.data("questdb")
    jar = paths.jars("questdb") / QUESTDB_JAR
    base_url = questdb_http_url(host, http_port)

    # Both checked by config.settings: a size like 2m, 512k or 1048576; at least 1.
    split_min_size = settings.questdb.o3_split_min_size
    export_limit = settings.questdb.export_connection_limit

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
            # An out-of-order commit rewrites the newest part of the day partition from its
            # oldest row on; QuestDB splits that part off only once the rows before it exceed
            # this size (default 50 MB, ~350k rows). With the default each of the job's commits
            # (always out of order) rewrote ~100x its own rows; 2 MB: 6-16x and QuestDB's CPU at
            # 7,500 MQTT events/s 0.33 -> 0.25 cores (decision 0004, "Fifth session").
            f"cairo.o3.partition.split.min.size={split_min_size}",
            # The API's CSV export streams QuestDB's /exp (decision 0006, "Third pass");
            # QuestDB's default allows min(cores, 25 % of HTTP connections) concurrent
            # exports (2 on this machine) and refuses the others with 429.
            f"http.export.connection.limit={export_limit}",
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
        try:
            questdb_exec(base_url, "SELECT 1", timeout_s=2.0)
        except QuestDBError:
            return False
        return True

    return [ServiceSpec(
        name="questdb",
        # Heap: [questdb] heap (2g). With 1g QuestDB died of OutOfMemoryError at the end of
        # the benchmark's 10-minute soak (a count_distinct over 6M event ids next to the
        # ingest at 10,000 rows/s, 2026-11-30).
        argv=["java", "-Xms256m", f"-Xmx{settings.questdb.heap}",
              "-XX:+UseParallelGC",
              "-XX:+ExitOnOutOfMemoryError",
              "--add-exports", "java.base/jdk.internal.math=io.questdb",
              "-p", str(jar), "-m", "io.questdb/io.questdb.ServerMain", "-d", str(root)],
        ports=(http_port, pg_port, ilp_port, min_port),
        healthy=healthy,
        start_timeout_s=90.0,
        stop_timeout_s=30.0,
        prepare=prepare,
        after_start=lambda: run_ddl(base_url, settings.questdb.rollups,
                                    settings.questdb.asset_id_index),
        requires={"java": _JAVA_HINT},
    )]
