"""`make bench` / `make bench-quick`: the whole benchmark against the local stack.

Phases (each with its own CPU/RSS figures, see bench/resources.py):

1. ``preflight``: the stack is up (``dcmms-telemetry up --with-pipeline`` if not,
   and then stopped again at the end: a stack the benchmark did not start is
   never torn down) and one probe per path goes through end to end.
2. ``anchors``: raw Kafka, raw QuestDB; ``direct``: the direct MQTT->QuestDB
   peer (stepped like the pipeline).
3. ``mqtt`` and ``rest``: stepped offered rates through the pipeline, the ladder
   of bench/report.py ``rate_steps`` (2k, 5k, 7.5k, 10k, 15k, 20k, 30k events/s;
   quick mode stops the ladder at 20k); the MQTT path first runs one extra
   500 events/s step (``report.path_ladder``: ``pipeline.mqtt.e2e_ms_at_500``),
   as long as the others and judged like them. Each step runs
   ``step_seconds``, then waits up to ``drain_seconds`` for every accepted
   event to be stored; the harness counts ``event_id LIKE '<step prefix>%'`` in
   sensor_readings. Lag is measured as sent minus stored rows over time (the
   pipeline's KafkaIO commits consumer offsets only on checkpoints, every 60 s,
   too coarse to see a trend in a step). Probes (10/s, their own sensor id) are
   polled through ``GET /api/v1/telemetry`` every 100 ms: sent -> queryable.
   Stepping stops at the first step not held (``report.next_rate``); in full
   mode a 10,000 events/s step is then still run (at most 20 s) so the latency
   at 10k is measured (and labelled not held if it is not). MQTT load comes from
   the raw publisher of bench/mqtt_raw.py (``--mqtt-client`` picks another; bench/loadgen.py).
4. ``soak``: the highest held REST rate (``--soak-path mqtt``: MQTT's) again for
   ``soak_seconds`` (full 10 min, quick 60 s): lost, duplicated, backlog slope, RSS
   growth of every component.
   ``stream``: bench/stream.py, sent -> pushed on the live stream (SSE) at a steady
   5,000 events/s REST load (``stream.e2e_ms``; full 70 s, quick 25 s).
5. ``drain``: bench/drain.py preloads N events into ``raw_telemetry`` and times
   until the job has stored them all: the job's capacity without the edge, once
   as the edge writes (TelemetryBatch records, ``pipeline.drain``) and once one
   event per record (``pipeline.drain_single``).
6. ``query``: bench/query_bench.py's load and measurement on the ``qbench``
   fleet in sensor_readings (reused when present).

``cpu_us_per_event``: CPU microseconds per stored event of every stack
component over the mqtt and rest step phases (bench/resources.py samples),
``stack_total`` and, apart, ``generator`` (the harness process and its
children: generator workers, ``mosquitto_pub``, probes); the same per path
(``pipeline.<path>.cpu_us_per_event``), for the soak and for each drain.

Writes bench/results/<UTC timestamp>.json, bench/results/latest.json (keys:
bench/report.py REQUIRED_KEYS) and latest.png / <timestamp>.png, prints a table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

from bench import anchors, drain, report
from bench import stream as stream_bench
from bench.anchors import count_rows
from bench.loadgen import (
    MQTT_CLIENTS,
    GeneratorConfig,
    resolve_mqtt_client,
    run_load,
)
from bench.probes import Probes, api_endpoint, make_probes
from bench.resources import ResourceSampler
from config.settings import REPO_ROOT, Settings, load_settings
from io_connectors.questdb_schema import SENSOR_READINGS

__all__ = ["main", "ModeConfig", "mode_config", "PHASES"]

_LOGGER = logging.getLogger(__name__)
RESULTS = REPO_ROOT / "bench" / "results"
# What `--phases` can select, in the order they run.
PHASES = ("anchors", "direct", "mqtt", "rest", "soak", "stream", "drain", "query")


@dataclass(frozen=True)
class ModeConfig:
    """Durations and sizes of one mode."""

    mode: str
    step_seconds: float
    drain_seconds: float
    kafka_events: int
    questdb_rows: int
    query_min_rows: int       # reuse the qbench fleet when it holds at least this many rows
    query_load_rows: int      # else load this many
    query_requests: int
    drain_events: int         # preloaded into raw_telemetry for the drain phase
    soak_seconds: float       # the highest held REST rate again, this long


def mode_config(mode: str) -> ModeConfig:
    if mode == "quick":
        return ModeConfig("quick", 15, 20, 100_000, 300_000, 1_000_000, 3_000_000, 60, 100_000,
                          60)
    if mode == "full":
        return ModeConfig("full", 60, 90, 1_000_000, 2_000_000, 50_000_000, 50_000_000, 300,
                          500_000, 600)
    raise ValueError(f"mode must be quick or full, got {mode!r}")


def say(msg: str) -> None:
    """Progress line on stdout (the harness is interactive)."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- stack ----------------------------------------------------------------

def _cli() -> list[str]:
    return [str(Path(sys.executable).parent / "dcmms-telemetry")]


def ensure_stack() -> bool:
    """True only if no service was running before and this call started the stack.

    A stack with any live service is someone's (other sessions share it): it is
    brought up idempotently when parts are unhealthy, but never stopped by us.
    """
    out = subprocess.run([*_cli(), "status"], capture_output=True, text=True, cwd=REPO_ROOT)
    rows = [line.split() for line in out.stdout.splitlines()[1:] if line.strip()]
    live = {r[0] for r in rows if len(r) > 1 and r[1].isdigit()}
    healthy = {r[0] for r in rows if len(r) > 3 and r[3] == "yes"}
    if {"api", "bridge", "pipeline", "kafka", "questdb", "mosquitto"} <= healthy:
        return False
    say(f"stack not fully healthy (live: {sorted(live)}, healthy: {sorted(healthy)}): "
        "dcmms-telemetry up --with-pipeline")
    subprocess.run([*_cli(), "up", "--with-pipeline"], check=True, cwd=REPO_ROOT)
    return not live


def machine_info() -> dict[str, Any]:
    model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = psutil.virtual_memory().total
    return {"cores": os.cpu_count(), "memory": mem, "memory_gib": round(mem / 2**30, 1),
            "cpu_model": model, "load_avg_before": [round(x, 2) for x in os.getloadavg()]}


def git_sha() -> tuple[str, bool]:
    sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                         cwd=REPO_ROOT).stdout.strip() or "unknown"
    dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "."], cwd=REPO_ROOT
                           ).returncode != 0
    return sha, dirty


# -- counting -------------------------------------------------------------

class DlqCounter:
    """Sum of the end offsets of the dead-letter topic (all sources: others share the stack)."""

    def __init__(self, settings: Settings) -> None:
        from confluent_kafka import Consumer

        self.topic = settings.kafka.topic_dlq
        self.consumer = Consumer({"bootstrap.servers": settings.kafka.bootstrap_servers,
                                  "group.id": "bench-dlq-watermarks"})

    def total(self) -> int:
        from confluent_kafka import TopicPartition

        meta = self.consumer.list_topics(self.topic, timeout=10).topics[self.topic]
        return sum(self.consumer.get_watermark_offsets(TopicPartition(self.topic, p),
                                                       timeout=10)[1]
                   for p in meta.partitions)

    def close(self) -> None:
        self.consumer.close()


# -- steps ----------------------------------------------------------------

def run_step(settings: Settings, mc: ModeConfig, path: str, rate: int, index: int | str,
             run: str, probes: Probes, dlq: DlqCounter | None, gen: dict[str, Any],
             sample_s: float = 1.0) -> dict[str, Any]:
    """One offered rate on one path; returns the step record (see report.judge_step).

    The backlog (sent - stored) is counted every ``sample_s``: each count scans the
    step's rows, so the 10-minute soak samples less often.
    """
    table = anchors.DIRECT_TABLE if path == "direct" else SENSOR_READINGS
    prefix = f"b{run}{path[0]}{index}-"
    cfg = GeneratorConfig(path="rest" if path == "rest" else "mqtt", rate=rate,
                          seconds=mc.step_seconds, id_prefix=prefix, **gen)
    since_ms = int(time.time() * 1000) - 5000
    probes.since_ms = since_ms
    dlq0 = dlq.total() if dlq else 0
    backlog: list[tuple[float, float]] = []
    live_sent = [0]
    stop = threading.Event()

    def sample_backlog() -> None:
        while not stop.wait(sample_s):
            try:
                stored, _ = count_rows(settings, table, prefix, since_ms)
            except Exception:  # noqa: BLE001 - a slow count just skips one sample
                continue
            backlog.append((time.monotonic(), float(live_sent[0] - stored)))
            say(f"  {path} {rate:>6,}/s  sent {live_sent[0]:>9,}  stored {stored:>9,}  "
                f"backlog {live_sent[0] - stored:>8,}")

    def tick(sent: int) -> None:
        live_sent[0] = sent

    sampler = threading.Thread(target=sample_backlog, daemon=True)
    t0 = time.monotonic()
    t0_ms = int(time.time() * 1000) + 1500  # workers start 1.5 s after run_load begins
    sampler.start()
    load, workers = run_load(cfg, on_tick=tick)
    live_sent[0] = load.sent
    t1_ms = int(time.time() * 1000)
    t_end = time.monotonic()
    # drain: wait until everything accepted is stored (or no progress / timeout)
    stored = 0
    last_progress, last_stored = time.monotonic(), -1
    while True:
        stored, _ = count_rows(settings, table, prefix, since_ms)
        if stored >= load.accepted:
            break
        if stored != last_stored:
            last_progress, last_stored = time.monotonic(), stored
        if (time.monotonic() - t_end > mc.drain_seconds
                or time.monotonic() - last_progress > 20):
            break
        time.sleep(0.5)
    drain_s = time.monotonic() - t_end
    stop.set()
    sampler.join(timeout=5)
    time.sleep(0.5)  # last probes become visible
    rows, distinct = count_rows(settings, table, prefix, since_ms, distinct=True)
    backlog_rel = [(t - t0 - 1.5, b) for t, b in backlog]
    held, reasons = report.judge_step(
        offered=rate, seconds=mc.step_seconds, sent=load.sent, accepted=load.accepted,
        stored=distinct, duplicates=rows - distinct, generator_short=load.generator_short,
        backlog=backlog_rel)
    e2e = probes.window(t0_ms, t1_ms, int(time.time() * 1000))
    step = {
        "path": path, "offered": rate, "seconds": mc.step_seconds, "id_prefix": prefix,
        "target": load.target, "sent": load.sent, "accepted": load.accepted,
        "failed": load.failed, "stored": distinct, "rows": rows, "duplicated": rows - distinct,
        "dead_lettered_all_sources": (dlq.total() - dlq0) if dlq else None,
        "achieved_eps": round(load.accepted / mc.step_seconds),
        "stored_eps": round(distinct / (mc.step_seconds + drain_s)),
        "drain_s": round(drain_s, 1), "backlog": [(round(t, 1), b) for t, b in backlog_rel],
        "e2e_ms": e2e, "held": held, "reasons": reasons,
        "generator": "requests" if path == "rest" else resolve_mqtt_client(cfg.mqtt_client),
        "generator_cpu_s": load.generator_cpu_s,
        "generator_max_cpu_util": load.generator_max_cpu_util,
        "generator_saturated": load.generator_saturated, "generator_short": load.generator_short,
        "generator_errors": load.errors,
        "generator_retries": load.retried if path == "rest" else None,
        "rest_request_ms": report.percentiles([x for w in workers for x in w.request_ms])
        if path == "rest" else None,
    }
    say(f"{path} {rate:,}/s: accepted {load.accepted:,} stored {distinct:,} dup {rows - distinct}"
        f" drain {drain_s:.1f}s e2e p50/p99 {e2e['p50']}/{e2e['p99']} ms gen cpu "
        f"{load.generator_max_cpu_util:.0%}"
        f"{f' ({load.retried} requests retried)' if load.retried else ''} -> "
        f"{'HELD' if held else 'not held: ' + '; '.join(reasons)}")
    return step


def run_path(settings: Settings, mc: ModeConfig, path: str, run: str, ladder: list[int],
             probes: Probes, dlq: DlqCounter | None, gen: dict[str, Any]) -> list[dict[str, Any]]:
    """Climb ``ladder`` (report.path_ladder) until a step is not held (report.next_rate).

    Full mode then still runs a 10,000 events/s step (at most 20 s) so the latency
    at 10k is measured, labelled not held. Quick mode skips it: below the
    sustained rate's backlog it would only measure queueing, and draining it
    would take longer than the whole quick run.
    """
    steps: list[dict[str, Any]] = []
    drain_cap = 60 if mc.mode == "quick" else 900
    forced = report.FORCED_RATE if mc.mode == "full" and path != "direct" else None
    while (rate := report.next_rate(ladder, [(s["offered"], s["held"]) for s in steps],
                                    forced)) is not None:
        step_mc = mc
        if steps and not steps[-1]["held"]:  # the forced 10k step after a step not held
            _wait_drained(settings, path, steps[-1], drain_cap)
            step_mc = ModeConfig(**{**asdict(mc), "step_seconds": min(mc.step_seconds, 20)})
        steps.append(run_step(settings, step_mc, path, rate, len(steps), run, probes, dlq, gen))
    if steps and not steps[-1]["held"]:
        _wait_drained(settings, path, steps[-1], drain_cap)
    return steps


def _wait_drained(settings: Settings, path: str, step: dict[str, Any], timeout_s: float) -> None:
    """Let a failed step's backlog clear so it does not leak into the next measurement."""
    table = anchors.DIRECT_TABLE if path == "direct" else SENSOR_READINGS
    deadline = time.monotonic() + timeout_s
    since = int(time.time() * 1000) - 3_600_000
    while time.monotonic() < deadline:
        stored, _ = count_rows(settings, table, step["id_prefix"], since)
        if stored >= step["accepted"]:
            return
        say(f"  waiting for the {path} backlog to drain: {step['accepted'] - stored:,} left")
        time.sleep(5)


def summarise_path(path: str, steps: list[dict[str, Any]], ladder: list[int] | None = None
                   ) -> dict[str, Any]:
    """Sustained rate = highest held step; its latency (or, if none held, the lowest step's);
    the latency at the rates issue 11 names (``e2e_ms_at_<label>``, see report.e2e_at)."""
    held = [s for s in steps if s["held"]]
    best = max(held, key=lambda s: s["offered"]) if held else None
    shown = best or (min(steps, key=lambda s: s["offered"]) if steps else None)
    empty = {"p50": None, "p95": None, "p99": None}
    out = {
        "sustained_eps": best["offered"] if best else 0,
        "sustained_achieved_eps": best["achieved_eps"] if best else None,
        "e2e_ms": ({k: shown["e2e_ms"][k] for k in ("p50", "p95", "p99")} if shown else empty),
        # which step e2e_ms comes from: the sustained one, else the lowest (not held) step
        "e2e_ms_offered_eps": shown["offered"] if shown else None,
        "e2e_ms_step_held": shown["held"] if shown else None,
        "ladder": ladder,
    }
    for label, rate in report.E2E_AT.get(path, ()):
        out[f"e2e_ms_at_{label}"] = report.e2e_at(steps, rate, ladder)
    return out


def run_soak(settings: Settings, mc: ModeConfig, run: str, rate: int, dlq: DlqCounter,
             gen: dict[str, Any], sampler: ResourceSampler, path: str = "rest"
             ) -> dict[str, Any]:
    """``path`` (rest or mqtt) at ``rate`` for ``mc.soak_seconds`` (sampler phase "soak"
    must be on): ``pipeline.soak`` (report.soak_summary) with the step record under
    ``step`` and the path under ``path``."""
    soak_mc = ModeConfig(**{**asdict(mc), "step_seconds": mc.soak_seconds})
    probes = make_probes(settings, path, f"{run}soak")
    probes.start()
    try:
        step = run_step(settings, soak_mc, path, rate, "soak", run, probes, dlq, gen,
                        sample_s=1.0 if mc.soak_seconds <= 120 else 5.0)
    finally:
        probes.stop()
    if not step["held"]:
        _wait_drained(settings, path, step, 60 if mc.mode == "quick" else 900)
    return {**report.soak_summary(step, sampler.rss_series("soak")), "step": step,
            "path": path}


def _cpu_figures(result: dict[str, Any], by_phase: dict[str, Any]) -> None:
    """``cpu_us_per_event`` over the pipeline step phases, per path, for the soak."""
    pipe = result["pipeline"]
    phases, events = [], 0
    worker_steps: list[dict[str, Any]] = []
    for path in ("mqtt", "rest"):
        mine = [s for s in result["steps"] if s["path"] == path]
        phase = f"{path}_steps"
        if not mine or phase not in by_phase:
            continue
        stored = sum(s.get("stored_final", s["stored"]) for s in mine)
        pipe[path]["cpu_us_per_event"] = report.cpu_us_per_event(
            report.sum_usage(by_phase, [phase]), stored)
        pipe[path]["cpu_us_per_event"]["generator_workers"] = _per_event(mine, stored)
        phases.append(phase)
        events += stored
        worker_steps += mine
    if phases:
        result["cpu_us_per_event"] = report.cpu_us_per_event(
            report.sum_usage(by_phase, phases), events)
        # the generator's worker processes (and mosquitto_pub) alone: `generator` also
        # holds the harness's probes, counts and resource sampling
        result["cpu_us_per_event"]["generator_workers"] = _per_event(worker_steps, events)
        result["cpu_us_per_event_phases"] = phases
    soak = pipe.get("soak") or {}
    if soak.get("step") and "soak" in by_phase:
        soak["cpu_us_per_event"] = report.cpu_us_per_event(
            report.sum_usage(by_phase, ["soak"]), soak["stored"])
        soak["cpu_us_per_event"]["generator_workers"] = _per_event([soak["step"]],
                                                                   soak["stored"])


def _per_event(steps: list[dict[str, Any]], events: int) -> float | None:
    """The generator workers' CPU (their own measure) per stored event, microseconds."""
    cpu = sum(s.get("generator_cpu_s") or 0.0 for s in steps)
    return round(cpu / events * 1e6, 1) if events else None


# -- query ----------------------------------------------------------------

def run_query(settings: Settings, mc: ModeConfig) -> dict[str, Any]:
    from bench import query_bench, query_dense

    dense_loaded = False
    if mc.mode == "full":
        # First: when the sparse fleet is missing too, the dense load writes both in one
        # pass in timestamp order (QuestDB's append path); the check below then reuses it.
        say("query: dense fleet (bench/query_dense.py): load, resume or reuse")
        dense_loaded = bool(query_dense.load(settings).get("complete"))
    fleet = query_bench.Fleet("qbench", 20, 25, 8)
    sites = ",".join(f"'{fleet.site(s)}'" for s in range(fleet.sites))
    row = anchors.qdb_exec(settings, f"SELECT count(), min(timestamp), max(timestamp) FROM "
                                     f"{SENSOR_READINGS} WHERE site_id IN ({sites})",
                           timeout=300)[0]
    existing = int(row[0])
    reused = existing >= mc.query_min_rows
    load_info = None
    if not reused:
        rows = max(mc.query_load_rows - existing, 1_000_000)
        say(f"query: loading {rows:,} rows into {SENSOR_READINGS} (qbench fleet, 89.5 days)")
        end_ms = int(time.time() // 60 * 60_000)
        load_info = query_bench.load(settings, fleet, rows, 89.5, end_ms,
                                     event_prefix=f"qbench{end_ms}")
        row = anchors.qdb_exec(settings, f"SELECT count(), min(timestamp), max(timestamp) FROM "
                                         f"{SENSOR_READINGS} WHERE site_id IN ({sites})",
                               timeout=300)[0]
    else:
        say(f"query: reusing {existing:,} qbench rows already in {SENSOR_READINGS}")
    count = int(row[0])
    lo = dt.datetime.fromisoformat(row[1].replace("Z", "+00:00")).timestamp() * 1000
    hi = dt.datetime.fromisoformat(row[2].replace("Z", "+00:00")).timestamp() * 1000
    days = (hi - lo) / query_bench.DAY_MS
    base_url, key = api_endpoint(settings)
    measured = query_bench.measure(base_url, settings, fleet, days, int(hi), mc.query_requests,
                                   max(5, mc.query_requests // 10), 1, key)

    def pick(name: str) -> dict[str, float]:
        return {"p50": measured[name]["p50_ms"], "p99": measured[name]["p99_ms"]}

    dense: dict[str, Any] = {"skipped": "full mode only (loads 120M rows)"}
    if dense_loaded:
        dense = query_dense.run(settings, 60, 15, index=False, kinds=None, base_url=base_url,
                                api_key=key)
    return {"rows": count, "reused": reused, "days": round(days, 2), "load": load_info,
            "requests_per_kind": mc.query_requests, "raw_1d_ms": pick("raw_day"),
            "bucket_1d_ms": pick("bucket_day"), "latest_ms": pick("latest"), "detail": measured,
            "dense": dense}


# -- main -----------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("quick", "full"), default="quick")
    parser.add_argument("--phases", default=",".join(PHASES),
                        help=f"comma list of the phases to run, of {', '.join(PHASES)} "
                             "(default: all); e.g. mqtt,rest,soak for a short run")
    parser.add_argument("--paths", default=None,
                        help="comma list of direct, mqtt, rest: the stepped phases to run "
                             "(narrows --phases)")
    parser.add_argument("--skip-anchors", action="store_true", help="no raw Kafka/QuestDB anchor")
    parser.add_argument("--skip-query", action="store_true")
    parser.add_argument("--skip-drain", action="store_true",
                        help="no drain phase (job capacity on a preloaded backlog)")
    parser.add_argument("--steps", default=None,
                        help="override the offered rates, e.g. 2000,5000 (MQTT still starts "
                             "with its 500 events/s step)")
    parser.add_argument("--step-seconds", type=float, default=None)
    parser.add_argument("--soak-seconds", type=float, default=None,
                        help="soak length (full 600, quick 60)")
    parser.add_argument("--soak-path", choices=("rest", "mqtt"), default="rest",
                        help="the path whose highest held rate the soak repeats (default rest)")
    parser.add_argument("--processes", type=int, default=4, help="generator processes per step")
    parser.add_argument("--connections", type=int, default=4,
                        help="MQTT connections per process (mosquitto_pub: one process and "
                             "one topic each)")
    parser.add_argument("--mqtt-client", choices=MQTT_CLIENTS, default="auto",
                        help="MQTT load generator; auto: raw (bench/mqtt_raw.py, the cheapest)")
    parser.add_argument("--output-dir", type=Path, default=RESULTS)
    parser.add_argument("--profile", choices=("single", "cluster"), default=None,
                        help="stack topology to start if the stack is down ('cluster': Flink "
                             "session cluster and 3 Kafka brokers, docs/scaling.md; default: "
                             "what the running stack's `up` recorded, else single)")
    args = parser.parse_args(argv)
    # Into the environment, so the stack's `up` and every component list see it.
    from runners.stack.cluster import apply_topology
    topology = apply_topology(args.profile,
                              run_dir=load_settings().stack.run_dir)
    phases = _phases(args, parser)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("bench.query_bench").setLevel(logging.INFO)  # load progress

    mc = mode_config(args.mode)
    if args.step_seconds:
        mc = ModeConfig(**{**asdict(mc), "step_seconds": args.step_seconds})
    if args.soak_seconds:
        mc = ModeConfig(**{**asdict(mc), "soak_seconds": args.soak_seconds})
    settings = load_settings()
    started = dt.datetime.now(dt.UTC)
    run = uuid.uuid4().hex[:6]
    sha, dirty = git_sha()
    machine = machine_info()
    say(f"bench {mc.mode} run {run}: {machine['cores']} cores, load avg "
        f"{machine['load_avg_before']}, git {sha[:10]}{' (dirty)' if dirty else ''}")
    stack_started = ensure_stack()
    sampler = ResourceSampler(settings.stack.run_dir / "pids")
    sampler.start()
    base_url, key = api_endpoint(settings)
    gen = {"processes": args.processes, "connections": args.connections,
           "mqtt_host": settings.mqtt.host,
           "mqtt_port": settings.mqtt.port,
           "mqtt_username": settings.mqtt.sensor_username,
           "mqtt_password": settings.mqtt.sensor_password,
           "rest_url": f"{base_url}/api/v1/telemetry", "api_key": key,
           "mqtt_client": resolve_mqtt_client(args.mqtt_client)}
    paths = [p for p in ("direct", "mqtt", "rest") if p in phases]
    not_run = "phase not run (--phases)"
    result: dict[str, Any] = {
        "git_sha": sha, "git_dirty": dirty, "started_at": started.isoformat(timespec="seconds"),
        "mode": mc.mode, "run_id": run, "topology": topology, "step_seconds": mc.step_seconds,
        "drain_seconds": mc.drain_seconds, "soak_seconds": mc.soak_seconds,
        "phases": [p for p in PHASES if p in phases], "machine": machine,
        "stack_started_by_bench": stack_started,
        "generator": {k: gen[k] for k in ("processes", "connections", "mqtt_client")} | {
            "inflight_per_connection": 1000, "rest_batch": 1000, "probe_interval_ms": 100,
            "probe_poll_ms": 100},
        "anchors": {"kafka_raw_eps": None, "questdb_raw_rows_per_s": None,
                    "direct_bridge_eps": None,
                    "direct_bridge_e2e_ms": {"p50": None, "p95": None, "p99": None}},
        "pipeline": {"lag_method": "sent minus stored rows over time (KafkaIO commits offsets "
                                   "only on checkpoints)",
                     "soak": report.soak_skipped(not_run),
                     "drain": {"drain_eps": None, "cpu_us_per_event": None, "skipped": not_run},
                     "drain_single": {"drain_eps": None, "cpu_us_per_event": None,
                                      "skipped": not_run}},
        "cpu_us_per_event": {"stack_total": None, "generator": None,
                             "reason": "no mqtt or rest step ran"},
        "query": {"rows": None, "raw_1d_ms": {"p50": None, "p99": None},
                  "bucket_1d_ms": {"p50": None, "p99": None},
                  "latest_ms": {"p50": None, "p99": None}},
        "steps": [],
        "stream": stream_bench.skipped(not_run),
    }
    dlq = DlqCounter(settings)
    try:
        sampler.phase("preflight")
        for path in ("mqtt", "rest"):
            if path in paths:
                _preflight(settings, path, run)
        if "anchors" in phases:
            sampler.phase("anchor_kafka")
            say(f"anchor: raw Kafka, {mc.kafka_events:,} Avro records")
            kr = anchors.kafka_raw(settings, mc.kafka_events, run)
            result["anchors"]["kafka_raw_eps"] = kr["kafka_raw_eps"]
            result["anchors"]["kafka_raw"] = kr
            say(f"  {kr}")
            sampler.phase("anchor_questdb")
            say(f"anchor: raw QuestDB, {mc.questdb_rows:,} rows over ILP/HTTP")
            qr = anchors.questdb_raw(settings, mc.questdb_rows, run)
            result["anchors"]["questdb_raw_rows_per_s"] = qr["questdb_raw_rows_per_s"]
            result["anchors"]["questdb_raw"] = qr
            say(f"  {qr}")
        rates_override = [int(x) for x in args.steps.split(",")] if args.steps else None
        for path in paths:
            sampler.phase(f"{path}_steps" if path != "direct" else "anchor_direct")
            ladder = report.path_ladder(path, rates_override or report.rate_steps(mc.mode, path))
            say(f"{path}: steps {ladder} x {mc.step_seconds:.0f} s (until one is not held)")
            gen_path = dict(gen)
            peer = None
            if path == "direct":
                proc, stop, root = anchors.start_direct_peer(settings, run)
                sampler.add("direct-peer", proc.pid)
                peer = (proc, stop)
                gen_path["topic_root"] = root
                probes = make_probes(settings, path, run, root)
            else:
                probes = make_probes(settings, path, run)
            probes.start()
            try:
                steps = run_path(settings, mc, path, run, ladder, probes,
                                 dlq if path != "direct" else None, gen_path)
            finally:
                probes.stop()
                if peer:
                    anchors.stop_direct_peer(*peer)
                    sampler.remove("direct-peer")
            result["steps"].extend(steps)
            summary = summarise_path(path, steps, ladder)
            if path == "direct":
                result["anchors"]["direct_bridge_eps"] = summary["sustained_eps"]
                result["anchors"]["direct_bridge_e2e_ms"] = summary["e2e_ms"]
                result["anchors"]["direct_bridge"] = summary
            else:
                result["pipeline"][path] = summary
        for path in ("mqtt", "rest"):
            result["pipeline"].setdefault(path, summarise_path(path, []))
        if "soak" in phases:
            soak_path = args.soak_path
            held = result["pipeline"][soak_path]
            if not held["sustained_eps"]:
                result["pipeline"]["soak"] = report.soak_skipped(
                    f"no {soak_path} step was held in this run" if soak_path in phases
                    else f"the {soak_path} phase did not run (--phases): no held rate to soak")
            else:
                sampler.phase("soak")
                say(f"soak: {soak_path} at {held['sustained_eps']:,}/s for "
                    f"{mc.soak_seconds:.0f} s")
                result["pipeline"]["soak"] = run_soak(settings, mc, run, held["sustained_eps"],
                                                      dlq, gen, sampler, path=soak_path)
        if "stream" in phases:
            sampler.phase("stream")
            seconds, warmup = stream_bench.mode_seconds(mc.mode)
            try:
                result["stream"] = stream_bench.measure(settings, seconds=seconds,
                                                        warmup=warmup, gen=gen, say=say)
            except RuntimeError as exc:  # the stream did not open or nothing came through
                say(str(exc))
                result["stream"] = stream_bench.skipped(str(exc))
        sampler.phase("recount")  # the final counts below are no step's or soak's load
        _zero_loss(settings, result)
        if "drain" in phases:
            for key, batch_events, tag in (("drain", 500, run), ("drain_single", 1, f"{run}s")):
                sampler.phase(key)
                say(f"{key}: {mc.drain_events:,} events preloaded into the raw topic, "
                    f"{batch_events} per record")
                result["pipeline"][key] = drain.drain(settings, mc.drain_events, tag, say=say,
                                                      batch_events=batch_events)
                say(f"  {key} {result['pipeline'][key]['drain_eps']} events/s")
        if "query" in phases:
            sampler.phase("query")
            result["query"] = run_query(settings, mc)
    finally:
        sampler.stop()
        dlq.close()
        result["resources"] = sampler.totals()
        result["resources_by_phase"] = sampler.by_phase()
        _cpu_figures(result, result["resources_by_phase"])
        result["machine"]["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]
        result["finished_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        _write(result, args.output_dir, started)
        if stack_started:
            say("stopping the stack this benchmark started")
            subprocess.run([*_cli(), "down"], cwd=REPO_ROOT)
    missing = report.missing_keys(result)
    if missing:
        say(f"WARNING: result lacks keys {missing}")
    return 0


def _phases(args: argparse.Namespace, parser: argparse.ArgumentParser) -> set[str]:
    """The phases to run: ``--phases``, narrowed by ``--paths`` and the ``--skip-*`` flags."""
    phases = {p.strip() for p in args.phases.split(",") if p.strip()}
    if phases - set(PHASES):
        parser.error(f"unknown phase(s) {sorted(phases - set(PHASES))}; choose from {PHASES}")
    if args.paths is not None:
        paths = {p.strip() for p in args.paths.split(",") if p.strip()}
        phases -= {"direct", "mqtt", "rest"} - paths
    for flag, phase in ((args.skip_anchors, "anchors"), (args.skip_query, "query"),
                        (args.skip_drain, "drain")):
        if flag:
            phases.discard(phase)
    return phases


def _preflight(settings: Settings, path: str, run: str) -> None:
    """One probe must go through end to end within 120 s, else the stack is not working."""
    probes = make_probes(settings, path, f"{run}pre")
    probes.interval_s = 1.0
    probes.start()
    deadline = time.monotonic() + 120
    try:
        while not probes.seen:
            if time.monotonic() > deadline:
                raise SystemExit(f"preflight: no {path} probe became queryable within 120 s "
                                 "(is the Flink job running? `dcmms-telemetry status`)")
            time.sleep(0.5)
    finally:
        probes.stop()
    say(f"preflight: {path} probe queryable")


def _zero_loss(settings: Settings, result: dict[str, Any]) -> None:
    """Final recount over every pipeline step and the soak: sent, accepted, stored,
    duplicated, lost (by event id)."""
    steps = [s for s in result["steps"] if s["path"] in ("mqtt", "rest")]
    soak = result["pipeline"].get("soak") or {}
    if soak.get("step"):
        steps.append(soak["step"])
    since = int(time.time() * 1000) - 6 * 3_600_000
    stored = dup = 0
    for s in steps:
        rows, distinct = count_rows(settings, SENSOR_READINGS, s["id_prefix"], since, True)
        s["stored_final"] = distinct
        s["duplicated_final"] = rows - distinct
        stored += distinct
        dup += rows - distinct
    if soak.get("step"):
        step = soak["step"]
        soak.update(stored=step["stored_final"], duplicated=step["duplicated_final"],
                    lost=max(0, step["accepted"] - step["stored_final"]))
    pipe = result["pipeline"]
    pipe["sent"] = sum(s["sent"] for s in steps)
    pipe["accepted"] = sum(s["accepted"] for s in steps)
    pipe["stored"] = stored
    pipe["duplicated"] = dup
    pipe["lost_events"] = max(0, pipe["accepted"] - stored)
    pipe["dead_lettered"] = sum(s["dead_lettered_all_sources"] or 0 for s in steps)


def _write(result: dict[str, Any], out_dir: Path, started: dt.datetime) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    png = out_dir / f"{stamp}.png"
    if report.draw_chart(result, png):
        result["chart"] = str(png.relative_to(REPO_ROOT)) if png.is_relative_to(REPO_ROOT) \
            else str(png)
        (out_dir / "latest.png").write_bytes(png.read_bytes())
    text = json.dumps(result, indent=2, default=str)
    (out_dir / f"{stamp}.json").write_text(text)
    (out_dir / "latest.json").write_text(text)
    print()
    print(report.format_table(result))
    print()
    say(f"wrote {out_dir / (stamp + '.json')} and latest.json")
