"""No-data alarms on the real job (Flink job server, Kafka, QuestDB): issue 16, part 1.

Each test submits runners.run_pipeline.run with its own topics, consumer group and
assets file (tests.integration.test_pipeline_flink.Scenario: unique ids, so the
``alarms`` rows are the test's own), with the no-data scan every second.

* test_silent_sensor_raises_no_data_and_its_next_reading_clears_it: a sensor whose
  type has ``max_silence_s`` reports once and falls silent: one NO_DATA RAISED (on the
  alarms topic and in QuestDB) about ``max_silence_s`` after its reading arrived; its
  next reading CLEARS it (same alarm_id); silent again, a new episode. A sensor type
  without ``max_silence_s`` never raises one.
* test_no_alarm_storm_after_the_job_was_down: the job checkpoints a sensor's last
  arrival, is cancelled and stays down longer than the sensor's ``max_silence_s``; the
  job restored from that checkpoint (its timers restored with it) defers the sensor
  (counter ``no_data_deferred_after_gap``) instead of raising, the sensor's next
  reading then raises and clears nothing, and once it is silent for ``max_silence_s``
  after that reading the restored job raises NO_DATA.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from schemas.avro import ALARM
from tests.integration.conftest import (
    FlinkJob,
    flink_metrics,
    qdb_exec,
    wait_for,
    wait_for_quietly,
)
from tests.integration.test_pipeline_flink import (
    OUTPUT_WAIT_S,
    SETTINGS,
    TEMP_BANDS,
    Scenario,
    _newest_checkpoint_after,
)

pytestmark = [pytest.mark.integration, pytest.mark.flink]

FAST_S = 4.0     # TEMPERATURE on the test's asset type
SLOW_S = 25.0    # VOLTAGE
CHECK = ["--no_data_check_seconds=1"]


class NoDataScenario(Scenario):
    """Scenario whose asset type sets max_silence_s for TEMPERATURE and VOLTAGE (not POWER)."""

    def write_assets(self, *, with_late_asset: bool) -> None:
        body = {"sites": {self.site: {"name": f"IT Site {self.run}", "location": "test rig"}},
                "assets": {self.asset: {"site_id": self.site, "asset_type": "it_logger",
                                        "thresholds": {"TEMPERATURE": TEMP_BANDS}}},
                "asset_types": {"it_logger": {"max_silence_s": {"TEMPERATURE": FAST_S,
                                                                "VOLTAGE": SLOW_S}}}}
        tmp = self.assets_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(body))
        tmp.replace(self.assets_file)

    def no_data_rows(self) -> list[dict[str, Any]]:
        body = qdb_exec(SETTINGS, "SELECT * FROM alarms WHERE site_id = "
                                  f"'{self.site}' AND severity = 'NO_DATA' "
                                  "ORDER BY timestamp, state DESC")
        names = [c["name"] for c in body["columns"]]
        return [dict(zip(names, r, strict=True)) for r in body["dataset"]]

    def volt(self, event_id: str, value: float, dt_ms: int = 0) -> dict[str, Any]:
        return self.event(event_id, value, dt_ms=dt_ms, sensor="volt-slow",
                          sensor_type="VOLTAGE", unit="v")


@pytest.fixture()
def scenario(tmp_path: Path) -> Iterator[NoDataScenario]:
    s = NoDataScenario(tmp_path)
    try:
        yield s
    finally:
        s.close()


def _ms(iso: str) -> int:
    from datetime import datetime
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)


def test_silent_sensor_raises_no_data_and_its_next_reading_clears_it(
        scenario: NoDataScenario, flink_job: Callable[..., FlinkJob]) -> None:
    s = scenario
    first = s.event("fast-1", 20.0, sensor="temp-fast")
    unlimited = s.event("power-1", 100.0, sensor="power-none", sensor_type="POWER", unit="kw")
    for e in (first, unlimited):
        s.send(s.encode(e))
    s.flush()
    job = flink_job(s.job_args() + CHECK)

    raised = wait_for("a NO_DATA RAISED for the silent sensor",
                      lambda: s.no_data_rows() or None, OUTPUT_WAIT_S)
    assert len(raised) == 1, raised
    r = raised[0]
    seen_ms = int(r["alarm_id"].rsplit(":", 1)[1])
    assert (r["alarm_id"], r["state"], r["sensor_id"], r["sensor_type"], r["threshold"],
            r["event_id"] or "") == (f"{s.asset}:temp-fast:{seen_ms}", "RAISED", "temp-fast",
                                     "TEMPERATURE", FAST_S, "")   # QuestDB: "" may be null
    # Stamped when the silence went over the limit, measured from the reading's arrival
    # (later only if the busy test machine stalled the scans for > 3 periods: then counted
    # from their return), the silence then as the value.
    assert _ms(r["timestamp"]) >= seen_ms + int(FAST_S * 1000)
    assert r["value"] == (_ms(r["timestamp"]) - seen_ms) / 1000
    # It arrived after it was produced and before the raise was written.
    assert first["timestamp"] <= seen_ms <= _ms(r["ingested_at"])

    second = s.event("fast-2", 21.0, dt_ms=1000, sensor="temp-fast")
    s.send(s.encode(second))
    s.flush()
    rows = wait_for("the CLEARED and, silent again, a second episode",
                    lambda: (lambda got: got if len(got) >= 3 else None)(s.no_data_rows()),
                    OUTPUT_WAIT_S)
    assert [(x["alarm_id"] == r["alarm_id"], x["state"], x["event_id"] or "") for x in rows] == [
        (True, "RAISED", ""), (True, "CLEARED", second["event_id"]), (False, "RAISED", "")]
    assert rows[1]["value"] == 21.0 and _ms(rows[1]["timestamp"]) > _ms(r["timestamp"])
    assert all(x["sensor_id"] == "temp-fast" for x in rows)   # POWER has no max_silence_s

    # The same transitions on the alarms topic, in the registered Avro schema.
    topic = [a for a in s.decoded(s.alarms, ALARM) if a["severity"] == "NO_DATA"]
    assert [(a["alarm_id"], a["state"], a["event_id"]) for a in topic[:3]] == [
        (x["alarm_id"], x["state"], x["event_id"] or "") for x in rows[:3]]
    # Beam counters reach Flink REST some time after their bundle finished: poll.
    names = ["alarms_no_data_raised", "alarms_no_data_cleared", "alarms_raised"]
    got = wait_for_quietly(lambda: (lambda m: m if m.get("alarms_no_data_cleared") == 1.0
                                    and m.get("alarms_no_data_raised", 0) >= 2.0 else None)(
        flink_metrics(job, names)), 60)
    assert got, f"no-data counters via Flink REST: {flink_metrics(job, names)}"
    assert got["alarms_raised"] == 0.0   # the readings were inside the bands


def test_no_alarm_storm_after_the_job_was_down(
        scenario: NoDataScenario, flink_job: Callable[..., FlinkJob]) -> None:
    s = scenario
    name = f"it-nodata-{s.run}"
    v1 = s.volt("volt-1", 230.0)
    s.send(s.encode(v1))
    s.flush()
    first = flink_job(s.job_args() + CHECK, name=name)
    wait_for("the first reading in QuestDB", lambda: v1["event_id"] in s.reading_counts(),
             OUTPUT_WAIT_S)
    stored_at = time.time()   # the reading arrived at the job before this
    wait_for("a checkpoint taken after the reading arrived",
             lambda: _newest_checkpoint_after(name, stored_at), 30, 0.5)
    assert first.cancel() == 1
    assert s.no_data_rows() == []   # cancelled before the sensor's limit was reached
    # Down longer than max_silence_s: a job counting the outage would raise at once.
    time.sleep(max(0.0, stored_at + SLOW_S + 1 - time.time()))

    second = flink_job(s.job_args() + CHECK, name=name, restore=True)
    wait_for("the restored job to defer the silent sensor (its state and timer restored)",
             lambda: flink_metrics(second, ["no_data_deferred_after_gap"]).get(
                 "no_data_deferred_after_gap") == 1.0 or None, OUTPUT_WAIT_S)
    v2 = s.volt("volt-2", 231.0, dt_ms=1000)
    s.send(s.encode(v2))
    s.flush()
    wait_for("the second reading in QuestDB", lambda: v2["event_id"] in s.reading_counts(),
             60)
    # Deferred means a fresh SLOW_S from the job's return, and v2 came well within it:
    # nothing raised, so nothing to clear.
    assert flink_metrics(second, ["alarms_no_data_raised", "alarms_no_data_cleared"]) == {
        "alarms_no_data_raised": 0.0, "alarms_no_data_cleared": 0.0}
    # Silent after v2: the restored job still watches it.
    rows = wait_for("NO_DATA SLOW_S after the second reading",
                    lambda: s.no_data_rows() or None, SLOW_S + 60)
    assert [(x["state"], x["sensor_id"], x["threshold"]) for x in rows] == [
        ("RAISED", "volt-slow", SLOW_S)], rows
    assert _ms(rows[0]["timestamp"]) - int(rows[0]["alarm_id"].rsplit(":", 1)[1]) >= \
        int(SLOW_S * 1000)
