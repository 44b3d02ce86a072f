"""Unit tests of the benchmark's pure parts: percentiles, verdicts, ratios, JSON keys, steps."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from bench import report
from bench.loadgen import (
    FLEET_SENSORS,
    WorkerResult,
    due_count,
    fleet_item,
    mqtt_message,
    summarise_workers,
)


def _result() -> dict[str, Any]:
    pct = {"p50": 1.0, "p95": 2.0, "p99": 3.0}
    at = {**pct, "n": 10, "unseen": 0, "held": True, "reason": None}
    return {
        "git_sha": "abc", "started_at": "2026-01-01T00:00:00+00:00", "mode": "quick",
        "machine": {"cores": 2, "memory": 1, "cpu_model": "x", "load_avg_before": [0.1]},
        "anchors": {"kafka_raw_eps": 100_000, "questdb_raw_rows_per_s": 50_000,
                    "direct_bridge_eps": 20_000, "direct_bridge_e2e_ms": dict(pct)},
        "pipeline": {"mqtt": {"sustained_eps": 10_000, "e2e_ms": dict(pct),
                              "e2e_ms_at_500": dict(at)},
                     "rest": {"sustained_eps": 5_000, "e2e_ms": {**pct, "p99": 6.0},
                              "e2e_ms_at_5k": dict(at), "e2e_ms_at_10k": {**at, "p99": 2500.0}},
                     "drain": {"drain_eps": 7_000, "events": 100_000, "batch_events": 500,
                               "cpu_us_per_event": {"kafka": 5.0, "stack_total": 5.0,
                                                    "generator": 9.0}},
                     "drain_single": {"drain_eps": 4_000, "events": 100_000, "batch_events": 1,
                                      "cpu_us_per_event": {"kafka": 6.0, "stack_total": 6.0,
                                                           "generator": 9.0}},
                     "soak": {"rate": 5_000, "seconds": 600.0, "sent": 3_000_000,
                              "stored": 3_000_000, "lost": 0, "duplicated": 0,
                              "backlog_slope": 0.5, "held": True, "rss_window_s": 60.0,
                              "rss_growth": {"kafka": {"growth_mb": 12.5}}, "skipped": None},
                     "lost_events": 0},
        "cpu_us_per_event": {"kafka": 40.0, "stack_total": 40.0, "generator": 20.0},
        "query": {"rows": 10, "raw_1d_ms": {"p50": 1, "p99": 2},
                  "bucket_1d_ms": {"p50": 1, "p99": 2}, "latest_ms": {"p50": 1, "p99": 2}},
        "resources": {"kafka": {"cpu_s": 1.0, "rss_mb_peak": 2.0}},
        "steps": [],
        "stream": {"e2e_ms": dict(pct), "goal_p99_ms": 500.0, "goal_met": True,
                   "skipped": None},
    }


def test_percentiles_nearest_rank() -> None:
    samples = list(range(1, 101))  # 1..100
    assert report.percentiles(samples) == {"p50": 50.0, "p95": 95.0, "p99": 99.0}
    assert report.percentiles([7.0]) == {"p50": 7.0, "p95": 7.0, "p99": 7.0}
    assert report.percentiles([]) == {"p50": None, "p95": None, "p99": None}
    assert report.percentiles([3, 1, 2], (50,)) == {"p50": 2.0}


def test_backlog_slope() -> None:
    assert report.backlog_slope([(0, 0), (1, 100), (2, 200)]) == pytest.approx(100)
    assert report.backlog_slope([(0, 50), (1, 50), (2, 50)]) == 0
    assert report.backlog_slope([(0, 1), (1, 3)]) == pytest.approx(2)
    assert report.backlog_slope([(0, 1)]) == 0  # too few samples


def _judge(**kw: Any) -> tuple[bool, list[str]]:
    args = dict(offered=1000, seconds=10, sent=10_000, accepted=10_000, stored=10_000,
                duplicates=0, generator_short=False,
                backlog=[(t, 500.0) for t in range(0, 11)])
    args.update(kw)
    return report.judge_step(**args)


def test_judge_step_held() -> None:
    assert _judge() == (True, [])


@pytest.mark.parametrize("change, needle", [
    ({"stored": 9_990}, "not stored"),
    ({"duplicates": 3}, "duplicate"),
    ({"generator_short": True}, "generator"),
    ({"accepted": 9_000, "stored": 9_000}, "accepted"),
    ({"backlog": [(t, 200.0 * t) for t in range(0, 11)]}, "backlog grew"),
])
def test_judge_step_not_held(change: dict[str, Any], needle: str) -> None:
    held, reasons = _judge(**change)
    assert not held
    assert any(needle in r for r in reasons), reasons


def test_judge_step_catches_growth_with_two_late_samples() -> None:
    held, reasons = _judge(backlog=[(0.5, 0.0), (3, 100.0), (7.5, 9_000.0), (9.5, 17_000.0)])
    assert not held and "backlog grew" in reasons[0]


def test_backlog_slope_ignores_a_one_off_spike() -> None:
    """Seen in a REST step: every sample 0 except one taken as a batch had just been sent."""
    samples = [(7.6, 0), (8.6, -463), (9.6, 0), (10.6, 0), (11.6, 0), (12.6, 0), (13.6, 0),
               (14.6, 0), (15.6, 2534), (16.6, 0)]
    assert report.backlog_slope(samples) == 0
    assert _judge(offered=1000, seconds=15, sent=15_000, accepted=15_000, stored=15_000,
                  backlog=samples) == (True, [])


def test_backlog_slope_sees_steady_growth_through_noise() -> None:
    samples = [(t, 300.0 * t + (900 if t % 3 == 0 else 0)) for t in range(0, 11)]
    assert report.backlog_slope(samples) == pytest.approx(300, rel=0.2)


def test_judge_step_ignores_backlog_growth_in_first_half() -> None:
    # ramp-up in the first half, flat in the second: held
    backlog = [(t, min(t, 5) * 100.0) for t in range(0, 11)]
    assert _judge(backlog=backlog)[0]


def test_rate_steps() -> None:
    full = [2_000, 5_000, 7_500, 10_000, 15_000, 20_000, 30_000]  # issue 11
    for path in ("mqtt", "rest", "direct"):
        assert report.rate_steps("full", path) == full
        quick = report.rate_steps("quick", path)
        # quick mode: shorter, but the same ladder as far as it goes
        assert quick == full[:len(quick)] and 10_000 in quick and len(quick) < len(full)
    with pytest.raises(ValueError, match="quick or full"):
        report.rate_steps("slow", "mqtt")


def test_due_count() -> None:
    assert due_count(1000, 0.0, 500) == 0
    assert due_count(1000, 0.25, 500) == 250
    assert due_count(1000, 10, 500) == 500
    assert due_count(0, 5, 500) == 0


def test_ratio_rows() -> None:
    rows = {(fig, anchor): ratio for fig, _v, anchor, _a, ratio in report.ratio_rows(_result())}
    assert rows[("mqtt sustained eps", "kafka raw eps")] == 0.1
    assert rows[("rest sustained eps", "direct bridge eps")] == 0.25
    assert rows[("rest e2e p99 ms", "direct bridge e2e p99 ms")] == 2.0
    res = _result()
    res["anchors"]["kafka_raw_eps"] = None
    rows = {(f, a): r for f, _v, a, _a, r in report.ratio_rows(res)}
    assert rows[("mqtt sustained eps", "kafka raw eps")] is None


def test_missing_keys() -> None:
    assert report.missing_keys(_result()) == []
    for key in ("pipeline.rest.e2e_ms_at_5k.p99", "pipeline.rest.e2e_ms_at_10k.p99",
                "pipeline.mqtt.e2e_ms_at_500.p50", "pipeline.soak.backlog_slope",
                "pipeline.soak.rss_growth", "pipeline.drain_single.drain_eps",
                "cpu_us_per_event.stack_total", "cpu_us_per_event.generator"):
        assert key in report.REQUIRED_KEYS
        broken = copy.deepcopy(_result())
        *parents, leaf = key.split(".")
        node = broken
        for part in parents:
            node = node[part]
        del node[leaf]
        assert report.missing_keys(broken) == [key]
    broken = copy.deepcopy(_result())
    del broken["pipeline"]["rest"]["e2e_ms"]["p95"]
    del broken["machine"]["cpu_model"]
    broken["resources"]["api"] = {"cpu_s": 1.0}
    broken["cpu_us_per_event"]["api"] = 1.0
    assert set(report.missing_keys(broken)) == {"pipeline.rest.e2e_ms.p95", "machine.cpu_model",
                                                 "resources.api.rss_mb_peak"}
    assert "resources.<component>" in report.missing_keys({**_result(), "resources": {}})


def test_missing_keys_wants_cpu_per_event_of_every_stack_component() -> None:
    res = _result()
    res["resources"].update({"questdb": {"cpu_s": 3.0, "rss_mb_peak": 9.0},
                             "loadgen": {"cpu_s": 3.0, "rss_mb_peak": 9.0},
                             "direct-peer": {"cpu_s": 3.0, "rss_mb_peak": 9.0}})
    # the generator and the direct peer are not stack components
    assert report.missing_keys(res) == ["cpu_us_per_event.questdb"]
    res["cpu_us_per_event"]["questdb"] = 1.0
    assert report.missing_keys(res) == []
    # not measured (no step ran): the null figures with a reason are enough
    res["cpu_us_per_event"] = {"stack_total": None, "generator": None, "reason": "no step"}
    assert report.missing_keys(res) == []


def test_format_table_mentions_every_headline() -> None:
    text = report.format_table(_result())
    for needle in ("kafka raw 100,000", "sustained 10,000", "query on 10 rows", "kafka",
                   "e2e at 500/s", "e2e at 5,000/s", "p50/p99 1.00/2,500 ms",
                   "soak rest 5,000/s x 600 s", "lost 0", "backlog slope 0.50", "kafka 12.50",
                   "drain_single", "stack_total 40.00, generator 20.00"):
        assert needle in text, needle


def test_format_table_says_why_a_figure_is_missing() -> None:
    res = _result()
    res["pipeline"]["soak"] = report.soak_skipped("no REST step was held in this run")
    res["pipeline"]["rest"]["e2e_ms_at_10k"] = report.e2e_at(
        [{"offered": 5_000, "held": False, "e2e_ms": {}}], 10_000, [5_000, 10_000])
    text = report.format_table(res)
    assert "soak: skipped - no REST step was held" in text
    assert "stepping stopped after 5,000 events/s was not held" in text


def test_fleet_items_use_catalog_ids_and_valid_events() -> None:
    from schemas.assets import load_asset_catalog
    from schemas.edge import event_from_item, event_from_mqtt
    from schemas.validation import load_sensor_rules

    catalog = load_asset_catalog()
    rules = load_sensor_rules()
    ids = set()
    for n in range(0, FLEET_SENSORS, 97):
        item = fleet_item(f"e{n}", n, 1_767_225_600_000)
        info = catalog.get(item["asset_id"])
        assert info is not None and info.site_id == item["site_id"], item
        assert event_from_item(item, now_ms=item["timestamp"], rules=rules).ok
        topic, payload = mqtt_message(item)
        assert event_from_mqtt(payload, topic, now_ms=item["timestamp"], rules=rules).ok
        assert json.loads(payload)["event_id"] == f"e{n}"
        ids.add(item["sensor_id"])
    assert len(ids) == len(range(0, FLEET_SENSORS, 97))


def test_summarise_workers_flags() -> None:
    ok = [WorkerResult(0, 100, 100, 100, 0, 1.0, 10.0),
          WorkerResult(1, 100, 100, 100, 0, 2.0, 10.0)]
    load = summarise_workers(20, 10, ok)
    assert (load.sent, load.accepted, load.generator_saturated, load.generator_short) == \
        (200, 200, False, False)
    hot = [WorkerResult(0, 100, 90, 90, 0, 9.5, 10.0)]
    load = summarise_workers(10, 10, hot)
    assert load.generator_saturated and load.generator_short


def test_format_markdown_has_ratio_and_headline_rows() -> None:
    res = _result()
    res["pipeline"]["mqtt"].update({"e2e_ms_offered_eps": 10_000, "e2e_ms_step_held": True})
    text = report.format_markdown(res)
    assert "| mqtt sustained eps | 10,000 | kafka raw eps | 100,000 | 0.10 |" in text
    assert "| pipeline rest, sustained (events/s) | 5,000 |" in text
    assert "(not held)" in text  # rest has no held step recorded
    assert "| pipeline rest e2e p50 / p99 (ms) at 10,000/s (held: True) | 1.00 / 2,500 |" in text
    assert "| pipeline mqtt e2e p50 / p99 (ms) at 500/s (held: True) | 1.00 / 3.00 |" in text
    assert "| soak backlog slope, second half (events/s per s) | 0.50 |" in text
    assert "preloaded events, one event per record (events/s) | 4,000 |" in text
    assert "preloaded events, TelemetryBatch records of 500 events (events/s) | 7,000 |" in text
    assert "| kafka | 1.0 | 2 | 40.00 | 5.00 |" in text
