"""Unit tests of the live stream benchmark's pure parts (bench/stream.py, report.stream_summary)."""

from __future__ import annotations

from bench import report
from bench.stream import GOAL_P99_MS, hop_split, latency_window, mode_seconds, skipped


def test_latency_window_counts_only_the_window_and_unseen_as_lower_bound() -> None:
    sent = {"a": 1000.0, "b": 2000.0, "c": 3000.0, "early": 10.0, "late": 9000.0}
    seen = {"a": 1100.0, "b": 2300.0, "early": 20.0, "late": 9001.0}
    out = latency_window(sent, seen, 500, 5000, 4000)
    assert out["n"] == 3 and out["unseen"] == 1 and out["lower_bound"] is True
    assert (out["p50"], out["p99"]) == (300.0, 1000.0)  # c unseen: 4000 - 3000
    all_seen = latency_window(sent, {**seen, "c": 3050.0}, 500, 5000, 4000)
    assert all_seen["lower_bound"] is False and all_seen["p99"] == 300.0


def test_hop_split_uses_probes_seen_at_both_ends() -> None:
    sent = {"a": 1000.0, "b": 2000.0, "c": 3000.0}
    validated = {"a": 1400.0, "b": 2500.0}
    pushed = {"a": 1450.0, "c": 3900.0}
    hops = hop_split(sent, validated, pushed, 0, 10_000)
    assert hops["sent_to_validated"]["n"] == 2 and hops["sent_to_validated"]["p99"] == 500.0
    assert hops["validated_to_pushed"] == {**report.percentiles([50.0]), "n": 1}


def test_skipped_section_has_the_required_keys_and_says_why() -> None:
    section = skipped("phase not run (--phases)")
    for key in report.REQUIRED_KEYS:
        if key.startswith("stream."):
            assert key.split(".")[-1] in section["e2e_ms"]
    assert section["goal_p99_ms"] == GOAL_P99_MS
    assert "phase not run" in report.stream_summary(section)


def test_stream_summary_says_whether_the_goal_was_met() -> None:
    section = {"rate": 5000.0, "path": "rest", "goal_p99_ms": 500.0, "goal_met": False,
               "e2e_ms": {"p50": 900.0, "p95": 1500.0, "p99": 2100.0, "n": 600, "unseen": 0},
               "queryable_ms": {"p50": 1000.0, "p99": 2500.0},
               "hops_ms": {"sent_to_validated": {"p50": 850.0},
                           "validated_to_pushed": {"p50": 40.0}}, "skipped": None}
    line = report.stream_summary(section)
    assert "900/1,500/2,100" in line and "NOT met" in line and "validated -> pushed 40" in line
    assert ": met)" in report.stream_summary({**section, "goal_met": True})


def test_mode_seconds_warmup_inside_the_load() -> None:
    for mode in ("quick", "full"):
        seconds, warmup = mode_seconds(mode)
        assert 0 < warmup < seconds
