"""Unit tests of the benchmark's issue-11 figures: step ladder and stop rule, latency at
named rates, CPU per event, soak summary with RSS growth, phase selection."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import pytest

from bench import report

FULL = report.rate_steps("full", "rest")


def _run(ladder: list[int], capacity: float, forced: int | None) -> list[int]:
    """The rates the harness runs against a pipeline that holds every rate <= capacity."""
    done: list[tuple[int, bool]] = []
    while (rate := report.next_rate(ladder, done, forced)) is not None:
        done.append((rate, rate <= capacity))
        assert len(done) <= len(ladder) + 1, "the stop rule must end"
    return [rate for rate, _ in done]


@pytest.mark.parametrize("capacity, forced, expected", [
    # climbs until the first step not held, then stops
    (6_000, None, [2_000, 5_000, 7_500]),
    # full mode: a step not held below 10k is followed once by a 10k step
    (6_000, 10_000, [2_000, 5_000, 7_500, 10_000]),
    (1_000, 10_000, [2_000, 10_000]),
    # the step not held is 10k itself or above it: nothing more
    (8_000, 10_000, [2_000, 5_000, 7_500, 10_000]),
    (12_000, 10_000, [2_000, 5_000, 7_500, 10_000, 15_000]),
    # everything held: the whole ladder, once
    (1e9, 10_000, FULL),
])
def test_next_rate_ladder_and_stop_rule(capacity: float, forced: int | None,
                                        expected: list[int]) -> None:
    assert _run(list(FULL), capacity, forced) == expected


def test_next_rate_forces_10k_only_when_it_is_on_the_ladder() -> None:
    assert _run([2_000, 5_000], 1_000, 10_000) == [2_000]  # --steps 2000,5000
    assert _run(report.path_ladder("mqtt", [2_000, 5_000, 10_000]), 300, 10_000) == [500, 10_000]


def test_next_rate_forced_step_is_run_once_even_if_held() -> None:
    assert report.next_rate(FULL, [(2_000, True), (5_000, False), (10_000, True)], 10_000) is None
    assert report.next_rate(FULL, [(2_000, True), (5_000, False)], 10_000) == 10_000


def test_path_ladder_adds_the_mqtt_500_step() -> None:
    assert report.path_ladder("mqtt", FULL) == [500, *FULL]
    assert report.path_ladder("rest", FULL) == FULL
    assert report.path_ladder("direct", FULL) == FULL
    assert report.path_ladder("mqtt", [5_000, 2_000]) == [500, 2_000, 5_000]
    assert report.path_ladder("mqtt", [500, 1_000]) == [500, 1_000]
    assert report.path_ladder("mqtt", [200]) == [200]


def _step(offered: int, held: bool, p50: float = 100.0) -> dict[str, Any]:
    return {"offered": offered, "held": held, "achieved_eps": offered,
            "e2e_ms": {"p50": p50, "p95": p50 * 2, "p99": p50 * 3, "n": 150, "unseen": 0}}


def test_e2e_at_reads_the_step_of_that_rate() -> None:
    steps = [_step(2_000, True, 80), _step(5_000, True, 200), _step(7_500, False, 900),
             _step(10_000, False, 5_000)]
    at5k = report.e2e_at(steps, 5_000, FULL)
    assert (at5k["p50"], at5k["p99"], at5k["held"], at5k["reason"]) == (200, 600, True, None)
    at10k = report.e2e_at(steps, 10_000, FULL)
    assert (at10k["p99"], at10k["held"]) == (15_000, False)


@pytest.mark.parametrize("steps, ladder, needle", [
    ([_step(2_000, False)], FULL, "stopped after 2,000 events/s was not held"),
    ([_step(2_000, True)], [2_000, 3_000], "not among the offered rates"),
    ([], FULL, "did not run"),
])
def test_e2e_at_null_with_a_reason(steps: list[dict[str, Any]], ladder: list[int],
                                   needle: str) -> None:
    at = report.e2e_at(steps, 5_000, ladder)
    assert (at["p50"], at["p95"], at["p99"], at["held"]) == (None, None, None, None)
    assert needle in at["reason"]


def test_summarise_path_has_the_issue_11_latency_keys() -> None:
    from bench.harness import summarise_path

    ladder = report.path_ladder("mqtt", FULL)
    mqtt = summarise_path("mqtt", [_step(500, True, 50), _step(2_000, True, 80),
                                   _step(5_000, False, 900)], ladder)
    assert mqtt["sustained_eps"] == 2_000 and mqtt["e2e_ms"]["p50"] == 80
    assert mqtt["e2e_ms_at_500"]["p50"] == 50
    assert mqtt["e2e_ms_at_5k"]["held"] is False
    assert mqtt["e2e_ms_at_10k"]["p99"] is None and mqtt["e2e_ms_at_10k"]["reason"]
    rest = summarise_path("rest", [], FULL)
    assert set(rest) >= {"e2e_ms_at_5k", "e2e_ms_at_10k"} and "e2e_ms_at_500" not in rest


# -- CPU per event -----------------------------------------------------------------

BY_PHASE = {
    "mqtt_steps": {"kafka": {"cpu_s": 2.0}, "questdb": {"cpu_s": 6.0},
                   "loadgen": {"cpu_s": 3.0}},
    "rest_steps": {"kafka": {"cpu_s": 1.0}, "api": {"cpu_s": 1.0}, "loadgen": {"cpu_s": 1.0}},
    "anchor_direct": {"direct-peer": {"cpu_s": 50.0}, "kafka": {"cpu_s": 100.0}},
}


def test_sum_usage_adds_only_the_named_phases() -> None:
    assert report.sum_usage(BY_PHASE, ["mqtt_steps", "rest_steps"]) == {
        "kafka": 3.0, "questdb": 6.0, "api": 1.0, "loadgen": 4.0}
    assert report.sum_usage(BY_PHASE, ["missing"]) == {}


def test_cpu_us_per_event_excludes_the_generator_from_the_stack() -> None:
    cpu = report.sum_usage(BY_PHASE, ["mqtt_steps", "rest_steps"])
    per = report.cpu_us_per_event(cpu, 100_000)
    assert per == {"api": 10.0, "kafka": 30.0, "questdb": 60.0, "stack_total": 100.0,
                   "generator": 40.0}
    per = report.cpu_us_per_event(report.sum_usage(BY_PHASE, ["anchor_direct"]), 1_000_000)
    assert "direct-peer" not in per and per["stack_total"] == 100.0
    assert per["generator"] == 0.0
    none = report.cpu_us_per_event(cpu, 0)
    assert none["stack_total"] is None and none["kafka"] is None


def test_drain_uses_the_shared_cpu_helper() -> None:
    """One helper for the steps and the drain (no second copy of the arithmetic)."""
    import inspect

    from bench import drain

    source = inspect.getsource(drain.drain)
    assert "report.cpu_us_per_event(" in source and "1e6" not in source


# -- soak ----------------------------------------------------------------------------

def _series(seconds: int, growth: Callable[[float], float]) -> list[tuple[float, dict[str, float]]]:
    return [(1000.0 + t, {"questdb": 500.0 + growth(t), "kafka": 300.0}) for t in range(seconds)]


def test_rss_growth_first_vs_last_minute() -> None:
    grown = report.rss_growth(_series(600, lambda t: t / 10), 60)  # +0.1 MB/s
    q = grown["questdb"]
    assert q["first_mb"] == pytest.approx(503.0, abs=0.1)
    assert q["last_mb"] == pytest.approx(556.9, abs=0.1)
    assert q["growth_mb"] == pytest.approx(54.0, abs=0.2)
    assert q["growth_pct"] == pytest.approx(10.7, abs=0.1)
    assert grown["kafka"]["growth_mb"] == 0


def test_rss_growth_ignores_a_one_off_spike_and_handles_late_components() -> None:
    series = _series(600, lambda t: 400.0 if t == 590 else 0.0)
    series[-1][1]["bridge"] = 80.0  # seen only at the end
    grown = report.rss_growth(series, 60)
    assert grown["questdb"]["growth_mb"] == 0  # median of the minute, not its max
    assert grown["bridge"]["first_mb"] is None and grown["bridge"]["growth_mb"] is None
    assert report.rss_growth([], 60) == {}


def _soak_step(**kw: Any) -> dict[str, Any]:
    step = {"path": "rest", "offered": 5_000, "seconds": 600, "sent": 3_000_000,
            "accepted": 3_000_000, "stored": 2_999_000, "duplicated": 0, "held": False,
            "reasons": ["1000 accepted events not stored"],
            "backlog": [(t, 1000.0 + 2.0 * t) for t in range(0, 600, 5)],
            "e2e_ms": {"p50": 900.0, "p95": 1500.0, "p99": 1800.0, "n": 6000, "unseen": 0}}
    step.update(kw)
    return step


def test_soak_summary() -> None:
    soak = report.soak_summary(_soak_step(), _series(600, lambda t: t / 10))
    assert (soak["rate"], soak["seconds"], soak["sent"], soak["stored"], soak["lost"],
            soak["duplicated"]) == (5_000, 600, 3_000_000, 2_999_000, 1_000, 0)
    assert soak["backlog_slope"] == pytest.approx(2.0)
    assert soak["rss_window_s"] == 60
    assert soak["rss_growth"]["questdb"]["growth_mb"] == pytest.approx(54.0, abs=0.2)
    assert soak["e2e_ms"]["p99"] == 1800.0 and soak["held"] is False and soak["skipped"] is None


def test_soak_summary_prefers_the_final_recount_and_flat_backlog_is_zero() -> None:
    step = _soak_step(stored_final=3_000_000, duplicated_final=7,
                      backlog=[(t, 0.0 if t % 2 else 900.0) for t in range(60)], seconds=60)
    soak = report.soak_summary(step, _series(60, lambda t: 0.0))
    assert (soak["stored"], soak["lost"], soak["duplicated"]) == (3_000_000, 0, 7)
    assert soak["rss_window_s"] == 15  # a quick 60 s soak compares its quarters
    assert abs(soak["backlog_slope"]) < 50


def test_soak_skipped_has_every_required_soak_key() -> None:
    skipped = report.soak_skipped("no REST step was held in this run")
    for key in report.REQUIRED_KEYS:
        if key.startswith("pipeline.soak."):
            assert key.split(".")[-1] in skipped
    assert skipped["skipped"] and skipped["rate"] is None


# -- phases --------------------------------------------------------------------------

def _phases(argv: list[str]) -> set[str]:
    from bench.harness import PHASES
    from bench.harness import _phases as phases

    parser = argparse.ArgumentParser()
    parser.add_argument("--phases", default=",".join(PHASES))
    parser.add_argument("--paths", default=None)
    for flag in ("--skip-anchors", "--skip-query", "--skip-drain"):
        parser.add_argument(flag, action="store_true")
    return phases(parser.parse_args(argv), parser)


def test_phases_selection() -> None:
    from bench.harness import PHASES

    assert _phases([]) == set(PHASES)
    assert _phases(["--phases", "mqtt,rest,soak"]) == {"mqtt", "rest", "soak"}
    assert _phases(["--paths", "mqtt", "--skip-query", "--skip-anchors"]) == {
        "mqtt", "soak", "stream", "drain"}
    with pytest.raises(SystemExit):
        _phases(["--phases", "mqtt,warp"])
