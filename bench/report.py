"""Pure parts of the benchmark report: percentiles, step verdicts, ratios, JSON keys, table, chart.

Everything here is deterministic and unit-tested (tests/unit/test_bench_report.py);
the chart needs matplotlib (the ``bench`` extra) and is skipped with a warning
when it is missing.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "percentiles", "backlog_slope", "second_half_slope", "judge_step", "rate_steps",
    "path_ladder", "next_rate", "e2e_at", "E2E_AT", "sum_usage", "cpu_us_per_event",
    "rss_growth", "soak_summary", "soak_skipped", "ratio_rows", "stream_summary", "REQUIRED_KEYS",
    "missing_keys", "format_table", "format_markdown", "draw_chart", "main",
]

_LOGGER = logging.getLogger(__name__)

# Offered rates (events/s) of the REST and MQTT ladders (issue 11: fine enough that a
# sustained figure is not a step-size artefact); quick mode runs a prefix of it.
FULL_STEPS = (2_000, 5_000, 7_500, 10_000, 15_000, 20_000, 30_000)
QUICK_STEPS = FULL_STEPS[:6]
# The rate a not-held step is followed by once (full mode), so its latency is measured.
FORCED_RATE = 10_000
# The MQTT path starts with one extra step at this rate: pipeline.mqtt.e2e_ms_at_500.
MQTT_LATENCY_RATE = 500
# pipeline.<path>.e2e_ms_at_<label>: the latency of the step offered at that rate
E2E_AT = {"mqtt": (("500", MQTT_LATENCY_RATE), ("5k", 5_000), ("10k", 10_000)),
          "rest": (("5k", 5_000), ("10k", 10_000))}
# Components of the benchmark itself, not of the stack: never in cpu_us_per_event.stack_total.
GENERATOR = "loadgen"
NOT_STACK = (GENERATOR, "direct-peer")

# Dotted keys latest.json must hold (issues 6 and 11); resources.<component> and
# cpu_us_per_event.<component> are checked apart.
REQUIRED_KEYS = (
    "git_sha", "started_at", "machine.cores", "machine.memory", "machine.cpu_model",
    "anchors.kafka_raw_eps", "anchors.questdb_raw_rows_per_s", "anchors.direct_bridge_eps",
    "anchors.direct_bridge_e2e_ms.p99",
    "pipeline.mqtt.sustained_eps", "pipeline.mqtt.e2e_ms.p50", "pipeline.mqtt.e2e_ms.p95",
    "pipeline.mqtt.e2e_ms.p99",
    "pipeline.rest.sustained_eps", "pipeline.rest.e2e_ms.p50", "pipeline.rest.e2e_ms.p95",
    "pipeline.rest.e2e_ms.p99",
    "pipeline.rest.e2e_ms_at_5k.p99", "pipeline.rest.e2e_ms_at_10k.p99",
    "pipeline.mqtt.e2e_ms_at_500.p50",
    "pipeline.drain.drain_eps", "pipeline.drain.cpu_us_per_event",
    "pipeline.drain_single.drain_eps",
    "pipeline.soak.rate", "pipeline.soak.seconds", "pipeline.soak.sent", "pipeline.soak.stored",
    "pipeline.soak.lost", "pipeline.soak.duplicated", "pipeline.soak.backlog_slope",
    "pipeline.soak.rss_growth",
    "cpu_us_per_event.stack_total", "cpu_us_per_event.generator",
    "pipeline.lost_events", "query.rows",
    "query.raw_1d_ms.p50", "query.raw_1d_ms.p99", "query.bucket_1d_ms.p50",
    "query.bucket_1d_ms.p99", "query.latest_ms.p50", "query.latest_ms.p99",
    "stream.e2e_ms.p50", "stream.e2e_ms.p99",
)


def percentiles(samples: Sequence[float], points: Sequence[float] = (50, 95, 99)
                ) -> dict[str, float | None]:
    """Nearest-rank percentiles ``{"p50": ..}`` of ``samples``; None for an empty sample."""
    ordered = sorted(samples)
    out: dict[str, float | None] = {}
    for p in points:
        key = f"p{p:g}"
        if not ordered:
            out[key] = None
            continue
        # nearest rank: the smallest value with at least p % of the samples <= it
        rank = max(1, -(-len(ordered) * p // 100))
        out[key] = round(float(ordered[int(min(rank, len(ordered))) - 1]), 2)
    return out


def backlog_slope(samples: Sequence[tuple[float, float]]) -> float:
    """Theil-Sen slope (events/s per s) of ``(t, backlog)`` samples; 0 with < 2 samples.

    The median of the slopes between every pair of samples, not least squares: the
    backlog is sampled as sent minus stored, and a sample taken just as a generator
    process has sent a batch (REST: 1,000 events at once) shows a one-off spike that
    is gone a second later. One such spike at the end of a step made least squares
    report growth while every other sample was 0; a backlog that really grows makes
    most pairwise slopes positive, so the median still catches it.
    """
    slopes = sorted((b2 - b1) / (t2 - t1)
                    for i, (t1, b1) in enumerate(samples)
                    for t2, b2 in samples[i + 1:] if t2 != t1)
    if not slopes:
        return 0.0
    mid = len(slopes) // 2
    return slopes[mid] if len(slopes) % 2 else (slopes[mid - 1] + slopes[mid]) / 2


def second_half_slope(backlog: Sequence[tuple[float, float]], seconds: float) -> float:
    """Theil-Sen slope of the ``(seconds since the generator started, backlog)`` samples of
    the second half of a ``seconds`` long step (the first half is ramp-up)."""
    return backlog_slope([s for s in backlog if seconds / 2 <= s[0] <= seconds + 1])


def judge_step(*, offered: float, seconds: float, sent: int, accepted: int, stored: int,
               duplicates: int, generator_short: bool,
               backlog: Sequence[tuple[float, float]], growth_tolerance: float = 0.05
               ) -> tuple[bool, list[str]]:
    """Did the pipeline hold ``offered`` events/s? Returns (held, reasons it did not).

    Held means: the generator delivered >= 95 % of the offered load and the edge
    accepted it, every accepted event is stored once, and the backlog (accepted
    minus stored) did not grow over the second half of the step by more than
    ``growth_tolerance`` x offered per second (``backlog``: (seconds since the
    generator started, sent - stored) samples).
    """
    reasons: list[str] = []
    if generator_short:
        reasons.append("generator sent < 95 % of the offered events (see generator CPU)")
    if accepted < 0.95 * offered * seconds:
        reasons.append(f"edge accepted {accepted} < 95 % of {offered * seconds:.0f} offered")
    if accepted < sent:
        reasons.append(f"{sent - accepted} sent events not acknowledged")
    if stored < accepted:
        reasons.append(f"{accepted - stored} accepted events not stored within the drain time")
    if duplicates:
        reasons.append(f"{duplicates} duplicate rows")
    slope = second_half_slope(backlog, seconds)
    if slope > growth_tolerance * offered:
        reasons.append(f"backlog grew {slope:.0f} events/s per s in the second half")
    return not reasons, reasons


def rate_steps(mode: str, path: str) -> list[int]:
    """Offered rates (events/s) tried in order for ``path`` in ``mode`` (quick/full).

    Every path (direct, mqtt, rest) climbs the same ladder, FULL_STEPS; quick mode
    stops the ladder at 20,000 (its steps are shorter, not coarser). The MQTT
    path's extra 500 events/s step is added by :func:`path_ladder`.
    """
    if mode not in ("quick", "full"):
        raise ValueError(f"mode must be quick or full, got {mode!r}")
    return list(QUICK_STEPS if mode == "quick" else FULL_STEPS)


def path_ladder(path: str, rates: Sequence[int]) -> list[int]:
    """The rates ``path`` runs in order: ``rates``, and for MQTT first one 500 events/s
    step (``pipeline.mqtt.e2e_ms_at_500``) unless the ladder already starts at or below it.
    That step is as long as the others and judged like them (it can be the sustained rate)."""
    ladder = sorted(set(rates))
    if path == "mqtt" and ladder and ladder[0] > MQTT_LATENCY_RATE:
        ladder.insert(0, MQTT_LATENCY_RATE)
    return ladder


def next_rate(ladder: Sequence[int], done: Sequence[tuple[int, bool]],
              forced_rate: int | None = None) -> int | None:
    """The next offered rate after the steps ``done`` ((rate, held) in run order), or None.

    Steps climb ``ladder`` and stop at the first step not held. If ``forced_rate``
    is given and on the ladder, a not-held step below it is followed once by a
    ``forced_rate`` step (so its latency is measured; it is labelled not held if it
    is not), then stepping stops.
    """
    if any(not held for _, held in done):
        first_failed = next(rate for rate, held in done if not held)
        if (forced_rate is not None and forced_rate in ladder and first_failed < forced_rate
                and done[-1] == (first_failed, False)):
            return forced_rate
        return None
    return ladder[len(done)] if len(done) < len(ladder) else None


def e2e_at(steps: Sequence[Mapping[str, Any]], rate: int, ladder: Sequence[int] | None = None
           ) -> dict[str, Any]:
    """Latency of the step offered at ``rate`` (its probes): p50/p95/p99, n, unseen, held;
    null percentiles and a ``reason`` when no such step ran."""
    step = next((s for s in steps if s["offered"] == rate), None)
    if step is not None:
        e2e = step.get("e2e_ms", {})
        return {**{k: e2e.get(k) for k in ("p50", "p95", "p99")}, "n": e2e.get("n"),
                "unseen": e2e.get("unseen"), "held": step["held"], "reason": None}
    failed = next((s["offered"] for s in steps if not s["held"]), None)
    if not steps:
        reason = "the path did not run"
    elif ladder is not None and rate not in ladder:
        reason = f"{rate:,} events/s is not among the offered rates {list(ladder)}"
    elif failed is not None:
        reason = f"not run: stepping stopped after {failed:,} events/s was not held"
    else:
        reason = "not run"
    return {"p50": None, "p95": None, "p99": None, "n": 0, "unseen": 0, "held": None,
            "reason": reason}


def sum_usage(by_phase: Mapping[str, Mapping[str, Mapping[str, float]]],
              phases: Sequence[str]) -> dict[str, float]:
    """CPU seconds per component summed over ``phases`` of a ResourceSampler.by_phase()."""
    out: dict[str, float] = {}
    for phase in phases:
        for comp, usage in by_phase.get(phase, {}).items():
            out[comp] = out.get(comp, 0.0) + float(usage.get("cpu_s", 0.0))
    return out


def cpu_us_per_event(cpu_s: Mapping[str, float], events: int) -> dict[str, float | None]:
    """CPU microseconds per event of every component (``{component: cpu seconds}`` over the
    same span that stored ``events``), ``stack_total`` (the stack's components only) and
    ``generator`` (the load generator: the benchmark process and its children). Values are
    None when no event was stored."""
    def per_event(seconds: float) -> float | None:
        return round(seconds / events * 1e6, 1) if events > 0 else None

    out: dict[str, float | None] = {c: per_event(v) for c, v in sorted(cpu_s.items())
                                    if c not in NOT_STACK}
    out["stack_total"] = per_event(sum(v for c, v in cpu_s.items() if c not in NOT_STACK))
    out["generator"] = per_event(cpu_s.get(GENERATOR, 0.0))
    return out


def rss_growth(series: Sequence[tuple[float, Mapping[str, float]]], window_s: float = 60.0
               ) -> dict[str, dict[str, float | None]]:
    """RSS of every component in the first vs the last ``window_s`` of ``series``
    ((time s, {component: RSS MB}) samples): the median of each window, the growth in MB
    and in % of the first. The windows overlap when the series is shorter than twice
    ``window_s``."""
    if not series:
        return {}
    t_first, t_last = series[0][0], series[-1][0]
    first = [sample for t, sample in series if t <= t_first + window_s]
    last = [sample for t, sample in series if t >= t_last - window_s]

    def median(values: list[float]) -> float | None:
        ordered = sorted(values)
        if not ordered:
            return None
        mid = len(ordered) // 2
        return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2

    out: dict[str, dict[str, float | None]] = {}
    for comp in sorted({c for _, sample in series for c in sample}):
        a = median([s[comp] for s in first if comp in s])
        b = median([s[comp] for s in last if comp in s])
        growth = None if a is None or b is None else b - a
        out[comp] = {"first_mb": None if a is None else round(a, 1),
                     "last_mb": None if b is None else round(b, 1),
                     "growth_mb": None if growth is None else round(growth, 1),
                     "growth_pct": round(growth / a * 100, 1) if growth is not None and a
                     else None}
    return out


def soak_summary(step: Mapping[str, Any], rss_series: Sequence[tuple[float, Mapping[str, float]]]
                 ) -> dict[str, Any]:
    """``pipeline.soak`` from the soak's step record (see bench/harness.py run_step) and the
    RSS samples taken during it: rate, seconds, sent, accepted, stored, lost, duplicated
    (by event id), the backlog's Theil-Sen slope over the second half (as the steps) and the
    RSS growth of every component, first vs last minute (a quarter of the soak when it is
    shorter than 4 minutes)."""
    seconds = float(step["seconds"])
    stored = step.get("stored_final", step["stored"])
    return {
        "rate": step["offered"], "seconds": seconds, "sent": step["sent"],
        "accepted": step["accepted"], "stored": stored,
        "lost": max(0, step["accepted"] - stored),
        "duplicated": step.get("duplicated_final", step["duplicated"]),
        "backlog_slope": round(second_half_slope(step.get("backlog", []), seconds), 2),
        "held": step["held"], "reasons": list(step.get("reasons", [])),
        "e2e_ms": {k: step.get("e2e_ms", {}).get(k) for k in ("p50", "p95", "p99")},
        "rss_window_s": min(60.0, seconds / 4),
        "rss_growth": rss_growth(rss_series, min(60.0, seconds / 4)),
        "skipped": None,
    }


def soak_skipped(reason: str) -> dict[str, Any]:
    """``pipeline.soak`` of a run without a soak: every figure null, ``skipped`` says why."""
    return {"rate": None, "seconds": None, "sent": None, "accepted": None, "stored": None,
            "lost": None, "duplicated": None, "backlog_slope": None, "held": None,
            "rss_growth": {}, "skipped": reason}


def _get(d: Mapping[str, Any], dotted: str) -> Any:
    cur: Any = d
    for part in dotted.split("."):
        if not isinstance(cur, Mapping) or part not in cur:
            raise KeyError(dotted)
        cur = cur[part]
    return cur


def missing_keys(result: Mapping[str, Any]) -> list[str]:
    """Required keys absent from ``result`` (values may be None when not measured)."""
    missing = []
    for key in REQUIRED_KEYS:
        try:
            _get(result, key)
        except KeyError:
            missing.append(key)
    resources = result.get("resources")
    if not isinstance(resources, Mapping) or not resources:
        missing.append("resources.<component>")
    else:
        for comp, usage in resources.items():
            for k in ("cpu_s", "rss_mb_peak"):
                if not isinstance(usage, Mapping) or k not in usage:
                    missing.append(f"resources.{comp}.{k}")
        per_event = result.get("cpu_us_per_event")
        if isinstance(per_event, Mapping) and per_event.get("stack_total") is not None:
            # measured: every stack component that used CPU in the run has its figure
            missing += [f"cpu_us_per_event.{comp}" for comp in sorted(resources)
                        if comp not in NOT_STACK and comp not in per_event]
    return missing


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 3)


def ratio_rows(result: Mapping[str, Any]) -> list[tuple[str, float | None, str, float | None,
                                                         float | None]]:
    """(figure, value, anchor name, anchor value, ratio) for every pipeline figure x anchor."""
    anchors = result["anchors"]
    throughput_anchors = [("kafka raw eps", anchors.get("kafka_raw_eps")),
                          ("questdb raw rows/s", anchors.get("questdb_raw_rows_per_s")),
                          ("direct bridge eps", anchors.get("direct_bridge_eps"))]
    rows: list[tuple[str, float | None, str, float | None, float | None]] = []
    for path in ("mqtt", "rest"):
        if path not in result["pipeline"]:
            continue
        eps = result["pipeline"][path].get("sustained_eps")
        for name, value in throughput_anchors:
            rows.append((f"{path} sustained eps", eps, name, value, _ratio(eps, value)))
        p99 = result["pipeline"][path]["e2e_ms"].get("p99")
        direct_p99 = anchors.get("direct_bridge_e2e_ms", {}).get("p99")
        rows.append((f"{path} e2e p99 ms", p99, "direct bridge e2e p99 ms", direct_p99,
                     _ratio(p99, direct_p99)))
    return rows


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.2f}" if abs(v) < 100 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _drain_shape(drain: Mapping[str, Any]) -> str:
    """How a drain's events were packed into Kafka records (older results do not say)."""
    n = drain.get("batch_events")
    if not n:
        return ""
    return ", one event per record" if n == 1 else f", TelemetryBatch records of {n:,} events"


def _fmt_cpu(per_event: Mapping[str, Any]) -> str:
    """``stack_total`` and the generator first, then the components, largest first."""
    head = [k for k in ("stack_total", "generator", "generator_workers") if k in per_event]
    rest = sorted((k for k in per_event
                   if k not in head and isinstance(per_event[k], int | float)),
                  key=lambda k: -per_event[k])
    return ", ".join(f"{k} {_fmt(per_event[k])}" for k in head + rest)


def stream_summary(stream: Mapping[str, Any]) -> str:
    """One line on the live stream phase (bench/stream.py): sent -> pushed, the goal, hops."""
    if not stream or stream.get("skipped"):
        return f"live stream: skipped - {stream.get('skipped') if stream else 'not measured'}"
    e, q = stream.get("e2e_ms") or {}, stream.get("queryable_ms") or {}
    hops = stream.get("hops_ms") or {}
    goal = stream.get("goal_p99_ms")
    verdict = "met" if stream.get("goal_met") else "NOT met"
    return (f"live stream at {_fmt(stream.get('rate'))}/s {stream.get('path')}: sent -> pushed "
            f"p50/p95/p99 {_fmt(e.get('p50'))}/{_fmt(e.get('p95'))}/{_fmt(e.get('p99'))} ms "
            f"(n {e.get('n')}, unseen {e.get('unseen')}; goal p99 < {_fmt(goal)}: {verdict}); "
            f"sent -> queryable p50/p99 {_fmt(q.get('p50'))}/{_fmt(q.get('p99'))} ms; p50 "
            f"sent -> validated {_fmt((hops.get('sent_to_validated') or {}).get('p50'))}, "
            f"validated -> pushed {_fmt((hops.get('validated_to_pushed') or {}).get('p50'))} ms")


def format_table(result: Mapping[str, Any]) -> str:
    """Human-readable summary: steps, headline figures, ratios, query, resources."""
    lines = [f"dCMMS telemetry benchmark ({result.get('mode')} mode) {result.get('started_at')} "
             f"git {str(result.get('git_sha'))[:10]} load avg before "
             f"{result['machine'].get('load_avg_before')}"]
    lines.append("")
    lines.append(f"{'path':8} {'offered':>8} {'accepted':>9} {'stored':>9} {'eps':>8} "
                 f"{'e2e p50':>8} {'p95':>7} {'p99':>7} {'gen cpu':>7} held")
    for step in result.get("steps", []):
        e2e = step.get("e2e_ms", {})
        lines.append(
            f"{step['path']:8} {step['offered']:>8,} {step['accepted']:>9,} {step['stored']:>9,} "
            f"{_fmt(step.get('achieved_eps')):>8} {_fmt(e2e.get('p50')):>8} "
            f"{_fmt(e2e.get('p95')):>7} {_fmt(e2e.get('p99')):>7} "
            f"{_fmt(step.get('generator_max_cpu_util')):>7} "
            f"{'yes' if step['held'] else 'no: ' + '; '.join(step['reasons'])[:80]}")
    lines.append("")
    a, p, q = result["anchors"], result["pipeline"], result["query"]
    lines.append(f"anchors: kafka raw {_fmt(a.get('kafka_raw_eps'))} eps | questdb raw "
                 f"{_fmt(a.get('questdb_raw_rows_per_s'))} rows/s | direct bridge "
                 f"{_fmt(a.get('direct_bridge_eps'))} eps, e2e p99 "
                 f"{_fmt(a.get('direct_bridge_e2e_ms', {}).get('p99'))} ms")
    for path in ("mqtt", "rest"):
        if path not in p:
            continue
        e = p[path]["e2e_ms"]
        at = p[path].get("e2e_ms_offered_eps")
        held = "held" if p[path].get("e2e_ms_step_held") else "NOT held"
        lines.append(f"pipeline {path}: sustained {_fmt(p[path].get('sustained_eps'))} eps, "
                     f"e2e p50/p95/p99 {_fmt(e.get('p50'))}/{_fmt(e.get('p95'))}/"
                     f"{_fmt(e.get('p99'))} ms at {_fmt(at)}/s ({held})")
        for label, rate in E2E_AT[path]:
            t = p[path].get(f"e2e_ms_at_{label}") or {}
            lines.append(f"  e2e at {rate:,}/s p50/p99 {_fmt(t.get('p50'))}/{_fmt(t.get('p99'))}"
                         f" ms (held: {t.get('held')})"
                         + (f" - {t['reason']}" if t.get("reason") else ""))
        if p[path].get("cpu_us_per_event"):
            lines.append(f"  cpu us/event: {_fmt_cpu(p[path]['cpu_us_per_event'])}")
    soak = p.get("soak") or {}
    if soak.get("skipped"):
        lines.append(f"soak: skipped - {soak['skipped']}")
    elif soak:
        grew = {c: g.get("growth_mb") for c, g in soak.get("rss_growth", {}).items()}
        lines.append(f"soak {soak.get('path', 'rest')} {_fmt(soak.get('rate'))}/s x "
                     f"{_fmt(soak.get('seconds'))} s: "
                     f"sent {_fmt(soak.get('sent'))}, stored {_fmt(soak.get('stored'))}, lost "
                     f"{_fmt(soak.get('lost'))}, duplicated {_fmt(soak.get('duplicated'))}, "
                     f"backlog slope {_fmt(soak.get('backlog_slope'))} events/s per s, held "
                     f"{soak.get('held')}, e2e p99 {_fmt(soak.get('e2e_ms', {}).get('p99'))} ms")
        lines.append(f"  RSS growth MB (first vs last {_fmt(soak.get('rss_window_s'))} s): "
                     + ", ".join(f"{c} {_fmt(v)}" for c, v in grew.items()))
        if soak.get("cpu_us_per_event"):
            lines.append(f"  cpu us/event: {_fmt_cpu(soak['cpu_us_per_event'])}")
    for key in ("drain", "drain_single"):
        d = p.get(key) or {}
        if d.get("skipped"):
            lines.append(f"pipeline {key}: skipped - {d['skipped']}")
        elif d:
            lines.append(f"pipeline {key} of {_fmt(d.get('events'))} events preloaded in Kafka"
                         f"{_drain_shape(d)}: {_fmt(d.get('drain_eps'))} eps (job capacity "
                         "without the edge)")
            if d.get("cpu_us_per_event"):
                lines.append(f"  cpu us/event: {_fmt_cpu(d['cpu_us_per_event'])}")
    if "stream" in result:
        lines.append(stream_summary(result["stream"]))
    if result.get("cpu_us_per_event"):
        lines.append(f"cpu us/event over the pipeline steps (stored events): "
                     f"{_fmt_cpu(result['cpu_us_per_event'])}")
    lines.append(f"zero loss: sent {p.get('sent')}, accepted {p.get('accepted')}, stored "
                 f"{p.get('stored')}, duplicated {p.get('duplicated')}, lost "
                 f"{p.get('lost_events')}, dead-lettered (all sources) {p.get('dead_lettered')}")
    lines.append(f"query on {_fmt(q.get('rows'))} rows: raw 1d p50/p99 "
                 f"{_fmt(q['raw_1d_ms'].get('p50'))}/{_fmt(q['raw_1d_ms'].get('p99'))} ms, "
                 f"bucket 1d {_fmt(q['bucket_1d_ms'].get('p50'))}/"
                 f"{_fmt(q['bucket_1d_ms'].get('p99'))} ms, latest "
                 f"{_fmt(q['latest_ms'].get('p50'))}/{_fmt(q['latest_ms'].get('p99'))} ms")
    lines.append("")
    lines.append(f"{'pipeline figure':22} {'value':>10}  {'anchor':26} {'value':>10} {'ratio':>7}")
    for fig, val, anchor, aval, ratio in ratio_rows(result):
        lines.append(f"{fig:22} {_fmt(val):>10}  {anchor:26} {_fmt(aval):>10} {_fmt(ratio):>7}")
    lines.append("")
    lines.append(f"{'component':18} {'cpu s':>8} {'peak RSS MB':>12}")
    for comp, usage in sorted(result.get("resources", {}).items()):
        lines.append(f"{comp:18} {usage['cpu_s']:>8.1f} {usage['rss_mb_peak']:>12.0f}")
    return "\n".join(lines)


def draw_chart(result: Mapping[str, Any], path: Path) -> bool:
    """Offered vs achieved rate and e2e percentiles per step; False if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        _LOGGER.warning("matplotlib missing (pip install -e '.[bench]'): no chart")
        return False
    steps = result.get("steps", [])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4), dpi=80)
    colors = {"mqtt": "tab:blue", "rest": "tab:orange", "direct": "tab:green"}
    for name, color in colors.items():
        mine = [s for s in steps if s["path"] == name]
        if not mine:
            continue
        xs = [s["offered"] for s in mine]
        ax1.plot(xs, [s["stored_eps"] for s in mine], "o-", color=color, label=f"{name} stored")
        for s in mine:
            if not s["held"]:
                ax1.plot(s["offered"], s["stored_eps"], "x", color="red", markersize=10)
        for pct, style in (("p50", ":"), ("p95", "--"), ("p99", "-")):
            ys = [s.get("e2e_ms", {}).get(pct) for s in mine]
            pts = [(x, y) for x, y in zip(xs, ys, strict=True) if y is not None]
            if pts:
                ax2.plot([x for x, _ in pts], [y for _, y in pts], style, marker=".",
                         color=color, label=f"{name} {pct}")
    top = max((s["offered"] for s in steps), default=1)
    ax1.plot([0, top], [0, top], color="grey", linewidth=0.8, label="offered = achieved")
    ax1.set_xlabel("offered events/s")
    ax1.set_ylabel("stored events/s (x = not held)")
    ax1.set_title("Offered vs achieved")
    ax1.legend(fontsize=7)
    ax2.set_xlabel("offered events/s")
    ax2.set_ylabel("sent -> queryable, ms")
    ax2.set_yscale("log")
    ax2.set_title("End-to-end latency")
    if ax2.get_legend_handles_labels()[0]:
        ax2.legend(fontsize=6, ncol=2)
    fig.suptitle(f"dCMMS bench {result.get('mode')} {result.get('started_at')}", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return True


def format_markdown(result: Mapping[str, Any]) -> str:
    """The headline figures and ratios as Markdown tables (docs/benchmarks.md)."""
    m, a, p, q = result["machine"], result["anchors"], result["pipeline"], result["query"]
    dirty = " (dirty tree)" if result.get("git_dirty") else ""
    out = [f"Run `{result.get('mode')}` mode, {result.get('started_at')}, git "
           f"`{str(result.get('git_sha'))[:10]}`{dirty}"
           f"; {m.get('cores')} cores, {m.get('memory', 0) / 2**30:.0f} GiB, {m.get('cpu_model')}; "
           f"load average before {m.get('load_avg_before')}, after {m.get('load_avg_after')}.",
           "", "| figure | value |", "|---|---|"]
    rows = [("raw Kafka, produce + consume (events/s)", a.get("kafka_raw_eps")),
            ("raw QuestDB, ILP/HTTP (rows/s)", a.get("questdb_raw_rows_per_s")),
            ("direct MQTT->QuestDB peer, sustained (events/s)", a.get("direct_bridge_eps")),
            ("direct peer e2e p99 (ms)", a.get("direct_bridge_e2e_ms", {}).get("p99"))]
    for path in ("mqtt", "rest"):
        if path not in p:
            continue
        e = p[path]["e2e_ms"]
        rows.append((f"pipeline {path}, sustained (events/s)", p[path].get("sustained_eps")))
        rows.append((f"pipeline {path} e2e p50 / p95 / p99 (ms) at "
                     f"{_fmt(p[path].get('e2e_ms_offered_eps'))}/s"
                     f"{'' if p[path].get('e2e_ms_step_held') else ' (not held)'}",
                     f"{_fmt(e.get('p50'))} / {_fmt(e.get('p95'))} / {_fmt(e.get('p99'))}"))
        for label, rate in E2E_AT[path]:
            t = p[path].get(f"e2e_ms_at_{label}") or {}
            rows.append((f"pipeline {path} e2e p50 / p99 (ms) at {rate:,}/s "
                         f"(held: {t.get('held')})",
                         f"{_fmt(t.get('p50'))} / {_fmt(t.get('p99'))}"
                         if t.get("p50") is not None else f"- ({t.get('reason') or 'not run'})"))
    soak = p.get("soak") or {}
    if soak.get("skipped"):
        rows.append(("soak", f"skipped: {soak['skipped']}"))
    elif soak:
        rows.append((f"soak: rest at {_fmt(soak.get('rate'))}/s for {_fmt(soak.get('seconds'))}"
                     " s, sent / stored / lost / duplicated",
                     f"{_fmt(soak.get('sent'))} / {_fmt(soak.get('stored'))} / "
                     f"{_fmt(soak.get('lost'))} / {_fmt(soak.get('duplicated'))}"))
        rows.append(("soak backlog slope, second half (events/s per s)",
                     soak.get("backlog_slope")))
        growth = soak.get("rss_growth", {})
        rows.append((f"soak RSS growth, first vs last {_fmt(soak.get('rss_window_s'))} s (MB)",
                     ", ".join(f"{c} {_fmt(g.get('growth_mb'))}" for c, g in growth.items())
                     or "-"))
    for key in ("drain", "drain_single"):
        d = p.get(key) or {}
        if d and not d.get("skipped"):
            rows.append((f"pipeline drain of {_fmt(d.get('events'))} preloaded events"
                         f"{_drain_shape(d)} (events/s)", d.get("drain_eps")))
    stream = result.get("stream") or {}
    if stream and not stream.get("skipped"):
        e = stream.get("e2e_ms") or {}
        rows.append((f"live stream sent -> pushed p50 / p99 (ms) at {_fmt(stream.get('rate'))}/s"
                     f" (goal p99 < {_fmt(stream.get('goal_p99_ms'))}: "
                     f"{'met' if stream.get('goal_met') else 'not met'})",
                     f"{_fmt(e.get('p50'))} / {_fmt(e.get('p99'))}"))
    cpu = result.get("cpu_us_per_event") or {}
    if cpu:
        rows.append(("CPU us per stored event over the pipeline steps: stack total / "
                     "generator", f"{_fmt(cpu.get('stack_total'))} / "
                     f"{_fmt(cpu.get('generator'))}"))
    rows.append(("sent / accepted / stored / duplicated / lost",
                 f"{_fmt(p.get('sent'))} / {_fmt(p.get('accepted'))} / {_fmt(p.get('stored'))}"
                 f" / {_fmt(p.get('duplicated'))} / {_fmt(p.get('lost_events'))}"))
    rows.append((f"query rows ({q.get('days')} days)", q.get("rows")))
    for kind, label in (("raw_1d_ms", "raw day"), ("bucket_1d_ms", "1-min buckets of a day"),
                        ("latest_ms", "latest of a site")):
        rows.append((f"query {label} p50 / p99 (ms)",
                     f"{_fmt(q[kind].get('p50'))} / {_fmt(q[kind].get('p99'))}"))
    out += [f"| {k} | {_fmt(v)} |" for k, v in rows]
    out += ["", "| pipeline figure | value | anchor | anchor value | ratio |",
            "|---|---|---|---|---|"]
    out += [f"| {f} | {_fmt(v)} | {an} | {_fmt(av)} | {_fmt(r)} |"
            for f, v, an, av, r in ratio_rows(result)]
    out += ["", "| path | offered/s | accepted | stored | e2e p50 / p99 ms | generator CPU "
            "| held |", "|---|---|---|---|---|---|---|"]
    for s in result.get("steps", []):
        e = s.get("e2e_ms", {})
        out.append(f"| {s['path']} | {s['offered']:,} | {s['accepted']:,} | {s['stored']:,} | "
                   f"{_fmt(e.get('p50'))} / {_fmt(e.get('p99'))} | "
                   f"{s.get('generator_max_cpu_util', 0):.0%} | "
                   f"{'yes' if s['held'] else 'no: ' + '; '.join(s['reasons'])} |")
    per_event = result.get("cpu_us_per_event") or {}
    drain_cpu = (p.get("drain") or {}).get("cpu_us_per_event") or {}
    out += ["", "| component | CPU s | peak RSS MB | CPU us/event, steps | CPU us/event, drain |",
            "|---|---|---|---|---|"]
    out += [f"| {c} | {u['cpu_s']:.1f} | {u['rss_mb_peak']:.0f} | "
            f"{_fmt(per_event.get('generator' if c == GENERATOR else c))} | "
            f"{_fmt(drain_cpu.get('generator' if c == GENERATOR else c))} |"
            for c, u in sorted(result.get("resources", {}).items())]
    out += [f"| stack total | | | {_fmt(per_event.get('stack_total'))} | "
            f"{_fmt(drain_cpu.get('stack_total'))} |"]
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bench.report [results.json] [--markdown]``: print a stored result."""
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m bench.report")
    parser.add_argument("path", nargs="?", type=Path,
                        default=Path(__file__).resolve().parent / "results" / "latest.json")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    result = json.loads(args.path.read_text())
    print(format_markdown(result) if args.markdown else format_table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
