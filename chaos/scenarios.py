"""Crash scenarios under load, each followed by a drain and an exactly-once check.

A scenario is a name plus a *fault* (what breaks) and a *recovery* (the
documented command, run by the driver, or waiting while the stack heals by
itself: the watcher restarts a SIGKILLed service, gunicorn a worker).
:func:`run_scenario` drives one:

1. start :class:`chaos.traffic.Traffic` with a fresh id prefix; warm up;
2. send the RAISE reading of this scenario's alarm episode (its own sensor);
3. inject the fault; sample the RSS of the bridge and API while it lasts;
4. run the recovery; measure the recovery time: from the fault until rows of
   *both* paths (MQTT and REST) sent after the fault are in QuestDB;
5. send the CLEAR reading, keep the load a few seconds, stop it;
6. drain: wait until QuestDB holds at least every acknowledged id and stops
   growing; compare (lost, duplicated); check the alarm episode (one RAISED,
   one CLEARED row).
"""

from __future__ import annotations

import logging
import os
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psutil

from chaos.traffic import Asset, Traffic, make_event, post_until_accepted
from chaos.verify import QuestDBReader, ScenarioResult, alarm_verdict, compare
from runners.stack.supervisor import Supervisor

__all__ = ["CLUSTER_SCENARIOS", "KNOWN_LIMIT_SCENARIOS", "ChaosContext", "Scenario", "SCENARIOS",
           "run_scenario", "service_rss_mb"]

_LOGGER = logging.getLogger(__name__)


@dataclass
class ChaosContext:
    """What every scenario needs: the supervisor of the chaos stack and its addresses."""

    supervisor: Supervisor
    reader: QuestDBReader
    api_url: str
    api_key: str
    mqtt: tuple[str, int, str, str]   # host, port, sensor user, sensor password
    assets: list[Asset]
    alarm_asset: Asset                # has a TEMPERATURE critical_high below ALARM_VALUE
    mqtt_rate: float = 300.0
    rest_rate: float = 300.0
    warmup_s: float = 10.0
    outage_s: float = 15.0
    tail_s: float = 8.0
    recovery_timeout_s: float = 300.0
    drain_timeout_s: float = 120.0   # without progress
    say: Callable[[str], None] = print
    # Process group each SIGKILL fault hit, by service: the recovery waits for another one.
    killed: dict[str, int] = field(default_factory=dict)


ALARM_VALUE = 99.0   # above asset-001's TEMPERATURE critical_high (95)
CLEAR_VALUE = 25.0   # well inside the band


@dataclass(frozen=True)
class Scenario:
    name: str
    fault: Callable[[ChaosContext], str]
    recovery: Callable[[ChaosContext], str]
    description: str = ""
    notes: list[str] = field(default_factory=list)


# -- process helpers -------------------------------------------------------------------------------

def _leader(ctx: ChaosContext, service: str) -> psutil.Process | None:
    import json

    try:
        record = json.loads(ctx.supervisor.paths.pidfile(service).read_text())
        return psutil.Process(int(record["pid"]))
    except (OSError, ValueError, KeyError, psutil.NoSuchProcess):
        return None


def service_rss_mb(ctx: ChaosContext, service: str) -> float | None:
    """Resident memory of a service's process tree in MB (None when it is not running)."""
    leader = _leader(ctx, service)
    if leader is None:
        return None
    total = 0
    try:
        for proc in [leader, *leader.children(recursive=True)]:
            try:
                total += proc.memory_info().rss
            except psutil.NoSuchProcess:
                continue
    except psutil.NoSuchProcess:
        return None
    return total / 1e6


def _wait(ctx: ChaosContext, seconds: float, rss: dict[str, float]) -> None:
    """Sleep ``seconds`` while recording the peak RSS of the bridge and the API."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for service in ("bridge", "api"):
            value = service_rss_mb(ctx, service)
            if value is not None:
                rss[service] = max(rss.get(service, 0.0), value)
        time.sleep(1.0)


# -- faults and recoveries -------------------------------------------------------------------------

def _kill(service: str) -> Callable[[ChaosContext], str]:
    def fault(ctx: ChaosContext) -> str:
        pgid = ctx.supervisor.kill(service, signal.SIGKILL)
        if pgid is None:
            raise RuntimeError(f"{service} was not running before its SIGKILL drill")
        ctx.killed[service] = pgid
        return f"SIGKILL {service} (group {pgid})"
    return fault


def _watcher_restart(service: str) -> Callable[[ChaosContext], str]:
    """Wait until the stack's watcher has restarted ``service`` (no command: that is the drill).

    An explicit ``dcmms-telemetry restart`` here would race the watcher's own restart.
    """
    def recovery(ctx: ChaosContext) -> str:
        t0 = time.monotonic()
        deadline = t0 + ctx.recovery_timeout_s
        while time.monotonic() < deadline:
            row = next(s for s in ctx.supervisor.statuses() if s.name == service)
            if row.pid is not None and row.pid != ctx.killed.get(service) and row.healthy:
                return (f"restarted by the watcher, healthy after {time.monotonic() - t0:.1f} s "
                        f"(restarts {row.restarts}, last exit: {row.last_exit})")
            time.sleep(0.5)
        raise RuntimeError(f"the watcher did not restart {service} within "
                           f"{ctx.recovery_timeout_s:.0f} s; see "
                           f"{ctx.supervisor.paths.log('watcher')} and "
                           f"{ctx.supervisor.paths.log(service)}")
    return recovery


def _kill_api_worker(ctx: ChaosContext) -> str:
    leader = _leader(ctx, "api")
    workers = leader.children() if leader is not None else []
    if not workers:
        raise RuntimeError("no gunicorn worker to kill (is the api service up?)")
    victim = workers[0]
    os.kill(victim.pid, signal.SIGKILL)
    return f"SIGKILL gunicorn worker {victim.pid}"


def _nothing(_ctx: ChaosContext) -> str:
    return "none (self-healing)"


def _outage(service: str) -> Callable[[ChaosContext], str]:
    # A stop on purpose: the pid file goes, so the watcher leaves it down for the outage.
    def fault(ctx: ChaosContext) -> str:
        ctx.supervisor.stop_service(service)
        return f"stopped {service} for {ctx.outage_s:.0f} s"
    return fault


def _start(service: str) -> Callable[[ChaosContext], str]:
    def recovery(ctx: ChaosContext) -> str:
        ctx.supervisor.start_service(service)
        return f"dcmms-telemetry up (starts {service})"
    return recovery


def _cluster_job_back(service: str) -> Callable[[ChaosContext], str]:
    """The watcher's restart of ``service``, then the Flink job RUNNING on every TaskManager.

    On the cluster topology (runners/stack/cluster.py) a lost TaskManager makes Flink
    restart the job from its last checkpoint; it runs again once the restarted
    TaskManager has registered and every task is RUNNING.
    """
    restart = _watcher_restart(service)

    def recovery(ctx: ChaosContext) -> str:
        import requests

        from config.settings import load_settings
        from runners.stack import cluster

        t0 = time.monotonic()
        how = restart(ctx)
        settings = load_settings()
        url = f"http://127.0.0.1:{settings.flink.web_ui_port}"
        deadline = t0 + ctx.recovery_timeout_s
        while time.monotonic() < deadline:
            try:
                jobs = requests.get(f"{url}/jobs/overview", timeout=5).json()["jobs"]
            except (requests.RequestException, ValueError, KeyError):
                jobs = []
            running = [j for j in jobs if j.get("name") == settings.pipeline.job_name
                       and j.get("state") == "RUNNING"
                       and j["tasks"]["running"] == j["tasks"]["total"]]
            if running and all(cluster.taskmanager_health(settings).values()) \
                    and all(cluster.broker_health(settings).values()):
                return (f"{how}; job RUNNING on all TaskManagers, every broker registered, "
                        f"after {time.monotonic() - t0:.1f} s")
            time.sleep(1.0)
        raise RuntimeError(f"the Flink job did not run again on every TaskManager within "
                           f"{ctx.recovery_timeout_s:.0f} s after {service} was restarted")
    return recovery


def _kill_mosquitto_with_backlog(ctx: ChaosContext) -> str:
    """Stop the bridge on purpose, let readings queue in its session, then SIGKILL Mosquitto.

    The queue is what a Kafka outage or a bridge restart leaves in the broker; Mosquitto
    keeps it in memory and saves it only every ``autosave_interval``.
    """
    ctx.supervisor.stop_service("bridge")
    time.sleep(ctx.outage_s)   # the backlog's length: outage_s of MQTT load
    pgid = ctx.supervisor.kill("mosquitto", signal.SIGKILL)
    if pgid is None:
        ctx.supervisor.start_service("bridge")   # leave the stack as it was for the next drill
        raise RuntimeError("mosquitto was not running before its SIGKILL drill")
    ctx.killed["mosquitto"] = pgid
    return (f"bridge stopped, {ctx.outage_s:.0f} s of MQTT readings queued in Mosquitto, "
            f"then SIGKILL mosquitto (group {pgid})")


def _mosquitto_and_bridge_back(ctx: ChaosContext) -> str:
    how = _watcher_restart("mosquitto")(ctx)
    ctx.supervisor.start_service("bridge")
    return f"mosquitto {how}; bridge started (dcmms-telemetry up)"


# Scenarios that need the cluster topology (python -m chaos --profile cluster).
CLUSTER_SCENARIOS = ("taskmanager-sigkill", "kafka-broker-sigkill")
# Scenarios run only when named: they show a documented limit (docs/reliability.md,
# "Known limits"), so they fail by design on today's Mosquitto.
KNOWN_LIMIT_SCENARIOS = ("mosquitto-sigkill-backlog",)

SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    Scenario("bridge-sigkill", _kill("bridge"), _watcher_restart("bridge"),
             "SIGKILL the MQTT bridge; the watcher restarts it"),
    Scenario("api-worker-sigkill", _kill_api_worker, _nothing,
             "SIGKILL one gunicorn worker; the master replaces it"),
    Scenario("flink-jobserver-sigkill", _kill("flink-jobserver"),
             _watcher_restart("flink-jobserver"),
             "SIGKILL the Flink job server (the job dies with it); the watcher restarts it; "
             "the pipeline launcher resubmits from the newest checkpoint"),
    Scenario("questdb-restart", _outage("questdb"), _start("questdb"),
             "QuestDB down for the outage, then started again"),
    Scenario("kafka-restart", _outage("kafka"), _start("kafka"),
             "Kafka down for the outage (REST must answer 503, the bridge holds acks)"),
    Scenario("mosquitto-restart", _outage("mosquitto"), _start("mosquitto"),
             "Mosquitto stopped (SIGTERM: it saves its sessions) and started again"),
    Scenario("questdb-sigkill", _kill("questdb"), _watcher_restart("questdb"),
             "SIGKILL QuestDB (no clean shutdown); the watcher restarts it; the job's sinks "
             "fail until it is back and the job replays from its checkpoint"),
    Scenario("kafka-sigkill", _kill("kafka"), _watcher_restart("kafka"),
             "SIGKILL the Kafka broker (unclean log recovery at start); the watcher restarts "
             "it; REST answers 503 and the bridge holds acks meanwhile"),
    Scenario("mosquitto-sigkill", _kill("mosquitto"), _watcher_restart("mosquitto"),
             "SIGKILL Mosquitto (no save of its state) while the bridge keeps up; the "
             "watcher restarts it from its last autosave"),
    Scenario("mosquitto-sigkill-backlog", _kill_mosquitto_with_backlog,
             _mosquitto_and_bridge_back,
             "the bridge stopped, readings queue in Mosquitto for its session, then SIGKILL "
             "Mosquitto: what was queued since its last autosave is lost (a known limit, "
             "docs/reliability.md); not in 'all'"),
    Scenario("taskmanager-sigkill", _kill("flink-taskmanager-1"),
             _cluster_job_back("flink-taskmanager-1"),
             "cluster: SIGKILL one Flink TaskManager; the job restarts from its checkpoint, "
             "the watcher restarts the TaskManager"),
    Scenario("kafka-broker-sigkill", _kill("kafka-2"), _cluster_job_back("kafka-2"),
             "cluster: SIGKILL one of three Kafka brokers; producers and the job go on "
             "(replication 3, min.insync.replicas 2); the watcher restarts it"),
)}

_OUTAGE_SCENARIOS = {"questdb-restart", "kafka-restart", "mosquitto-restart"}


# -- one scenario ----------------------------------------------------------------------------------

def _first_rows_after(ctx: ChaosContext, prefix: str, since_ms: int) -> bool:
    rows = ctx.reader.query(
        f"SELECT count() n FROM sensor_readings WHERE timestamp > {since_ms * 1000} "
        f"AND event_id LIKE '{prefix}%'")
    return bool(rows) and int(rows[0]["n"]) > 0


def _measure_recovery(ctx: ChaosContext, traffic: Traffic, fault_ms: int) -> float | None:
    paths = [p for p, rate in (("m", ctx.mqtt_rate), ("r", ctx.rest_rate)) if rate > 0]
    pending = {f"{traffic.prefix}-{p}-" for p in paths}
    deadline = time.monotonic() + ctx.recovery_timeout_s
    while pending and time.monotonic() < deadline:
        for prefix in list(pending):
            try:
                if _first_rows_after(ctx, prefix, fault_ms):
                    pending.discard(prefix)
            except Exception as exc:  # noqa: BLE001 - QuestDB may be the one that is down
                _LOGGER.debug("recovery probe: %s", exc)
        if pending:
            time.sleep(1.0)
    if pending:
        return None
    return time.time() - fault_ms / 1000


def run_scenario(ctx: ChaosContext, scenario: Scenario) -> ScenarioResult:
    result = ScenarioResult(scenario.name)
    prefix = f"c{uuid.uuid4().hex[:8]}-{scenario.name}"
    since_ms = int(time.time() * 1000) - 1000
    host, port, user, password = ctx.mqtt
    traffic = Traffic(prefix, ctx.assets, mqtt_host=host, mqtt_port=port, mqtt_user=user,
                      mqtt_password=password, api_url=ctx.api_url, api_key=ctx.api_key,
                      mqtt_rate=ctx.mqtt_rate, rest_rate=ctx.rest_rate)
    alarm_sensor = f"{prefix}-alarm"
    ctx.say(f"[{scenario.name}] load {ctx.mqtt_rate:.0f}/s MQTT + {ctx.rest_rate:.0f}/s REST, "
            f"prefix {prefix}")
    traffic.start()
    rss_base: dict[str, float] = {}
    rss_peak: dict[str, float] = {}
    try:
        _wait(ctx, ctx.warmup_s, rss_base)
        if not post_until_accepted(ctx.api_url, ctx.api_key, [make_event(
                f"{prefix}-alarm-raise", ctx.alarm_asset, alarm_sensor, ALARM_VALUE)]):
            raise RuntimeError("the alarm RAISE reading was never accepted")
        time.sleep(1.0)
        fault_ms = int(time.time() * 1000)
        what = scenario.fault(ctx)
        ctx.say(f"[{scenario.name}] fault: {what}")
        if scenario.name in _OUTAGE_SCENARIOS:
            _wait(ctx, ctx.outage_s, rss_peak)
        how = scenario.recovery(ctx)
        ctx.say(f"[{scenario.name}] recovery: {how}")
        result.recovery_s = _measure_recovery(ctx, traffic, fault_ms)
        if result.recovery_s is None:
            result.error = f"no end-to-end recovery within {ctx.recovery_timeout_s:.0f} s"
        ctx.say(f"[{scenario.name}] end-to-end again after "
                f"{result.recovery_s if result.recovery_s is not None else 'NEVER'} s")
        if not post_until_accepted(ctx.api_url, ctx.api_key, [make_event(
                f"{prefix}-alarm-clear", ctx.alarm_asset, alarm_sensor, CLEAR_VALUE)]):
            raise RuntimeError("the alarm CLEAR reading was never accepted")
        _wait(ctx, ctx.tail_s, rss_peak)
    except Exception as exc:  # noqa: BLE001 - reported in the table, the suite goes on
        _LOGGER.exception("scenario %s failed", scenario.name)
        result.error = str(exc)[:200]
    finally:
        traffic.stop()

    accepted = traffic.accepted
    accepted |= {f"{prefix}-alarm-raise", f"{prefix}-alarm-clear"} if result.error is None \
        else set()
    result.sent = traffic.sent + 2  # the load plus the alarm episode's two readings
    result.accepted = len(accepted)
    result.http_5xx = traffic.stats.http_5xx_defects
    result.http_503 = traffic.stats.http_status.get(503, 0)
    # Kept so a run can be re-checked later against the stored rows.
    ids_file = ctx.supervisor.paths.run_dir / "chaos-accepted" / f"{prefix}.txt"
    ids_file.parent.mkdir(parents=True, exist_ok=True)
    ids_file.write_text("\n".join(sorted(accepted)) + "\n")
    ctx.say(f"[{scenario.name}] sent {result.sent}, acknowledged {result.accepted}; draining "
            f"(ids in {ids_file})")
    ctx.reader.wait_drained(prefix, since_ms, len(accepted), ctx.drain_timeout_s)
    counts = ctx.reader.event_counts(prefix, since_ms)
    verdict = compare(accepted, counts)
    result.stored = sum(counts.values())
    result.lost = len(verdict.lost)
    result.duplicates = sum(n - 1 for n in counts.values() if n > 1)
    if verdict.lost:
        result.notes.append(f"lost ids e.g. {list(verdict.lost)[:5]}")
    if verdict.unacknowledged_stored:
        result.notes.append(f"{verdict.unacknowledged_stored} sent without ack and stored once")
    alarms = _alarm_rows(ctx, alarm_sensor, since_ms)
    av = alarm_verdict(alarms)
    result.alarms, result.alarms_ok = av.describe(), av.ok
    for service in ("bridge", "api"):
        if service in rss_base:
            result.notes.append(f"{service} RSS {rss_base[service]:.0f} MB before, peak "
                                f"{rss_peak.get(service, rss_base[service]):.0f} MB after fault")
    result.notes.append(f"HTTP statuses {dict(sorted(traffic.stats.http_status.items()))}, "
                        f"connection errors {traffic.stats.connection_errors}")
    ctx.say(f"[{scenario.name}] stored {result.stored}, lost {result.lost}, duplicates "
            f"{result.duplicates}, alarms {result.alarms} -> {'ok' if result.ok else 'FAIL'}")
    return result


def _alarm_rows(ctx: ChaosContext, sensor: str, since_ms: int,
                timeout_s: float = 60.0) -> list[dict[str, Any]]:
    """The episode's alarm rows once the CLEARED row is there (or whatever is after timeout)."""
    deadline = time.monotonic() + timeout_s
    rows: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        rows = ctx.reader.query_safe(sensor, since_ms)
        if any(r.get("state") == "CLEARED" for r in rows):
            time.sleep(3.0)  # a duplicate would arrive right behind it
            return ctx.reader.query_safe(sensor, since_ms)
        time.sleep(1.0)
    return rows
