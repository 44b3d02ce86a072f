"""The real telemetry job on the stack's Flink job server: every kind of input, exact outputs.

Each test submits runners.run_pipeline.run with its own raw/validated/alarms/dlq
topics, consumer group, job name, checkpoint dir and assets file (unique
site/asset ids), writing to the real QuestDB tables ``sensor_readings`` and
``alarms`` (the unique ids make the rows the test's own). Events go into the raw
topic in the Confluent wire format under registered schemas; the test then
polls until exactly the expected rows, dead letters and alarm transitions are
out, and always cancels its jobs (conftest.flink_job).

* test_pipeline_routes_every_kind_of_input: valid readings; exact duplicates on
  other partitions and seconds later; NaN, out of range, an unknown sensor type
  written with a newer schema, a bad unit, a timestamp too far in the future, a
  huge string; garbage bytes, truncated Avro, an unknown schema id; an unknown
  asset; a threshold episode (normal -> warning -> critical -> repeated
  criticals -> inside the band but within the hysteresis -> clear). Also: the
  asset side input refreshes while the job runs (the unknown asset is added to
  the file and its dead-lettered reading, replayed, passes) and the Beam
  counters are readable through Flink REST.
* test_pipeline_resumes_from_its_checkpoint: run, checkpoint, cancel, produce
  duplicates of processed events and the rest of an alarm episode, resubmit
  from that job's newest checkpoint: no event lost or doubled, no second RAISED
  for the ongoing episode, the CLEARED still comes.
"""

from __future__ import annotations

import copy
import json
import math
import struct
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from config.settings import load_settings
from io_connectors.schema_registry import RegistrySchemas, subject_for_record
from schemas.avro import (
    DEAD_LETTER,
    SENSOR_READING,
    TELEMETRY_BATCH,
    TELEMETRY_BATCH_FULLNAME,
    TELEMETRY_EVENT,
    load_schema,
    schema_text,
)
from schemas.wire import decode, encode
from tests.integration.conftest import (
    FlinkJob,
    create_topics,
    delete_topics,
    flink_metric_names,
    flink_metrics,
    qdb_exec,
    wait_for,
    wait_for_quietly,
)

pytestmark = [pytest.mark.integration, pytest.mark.flink]

SETTINGS = load_settings()
BOOTSTRAP = SETTINGS.kafka.bootstrap_servers
REGISTRY = SETTINGS.schema_registry.url
RAW_PARTITIONS = 4
# Generous: a first submission on a busy 2-core machine takes ~20-40 s to process anything.
OUTPUT_WAIT_S = 150.0
TEMP_BANDS = {"warning_high": 80, "critical_high": 95, "warning_low": -20,
              "critical_low": -30, "hysteresis": 2}


class Scenario:
    """One test's isolated world: ids, topics, assets file, schemas and a producer."""

    def __init__(self, tmp_path: Path) -> None:
        self.run = uuid.uuid4().hex[:10]
        self.site = f"it-site-{self.run}"
        self.asset = f"it-asset-{self.run}"
        self.late_asset = f"it-late-{self.run}"      # added to the assets file during the run
        self.raw = f"it_raw_{self.run}"
        self.validated = f"it_validated_{self.run}"
        self.alarms = f"it_alarms_{self.run}"
        self.dlq = f"it_dlq_{self.run}"
        self.assets_file = tmp_path / "assets.json"
        self.write_assets(with_late_asset=False)
        create_topics(SETTINGS, {self.raw: RAW_PARTITIONS, self.validated: 2, self.alarms: 1,
                                 self.dlq: 1})
        registry = RegistrySchemas(REGISTRY)
        self.schema = load_schema(TELEMETRY_EVENT)
        self.schema_id = registry.register_for_topic(self.raw, schema_text(TELEMETRY_EVENT))
        # A newer writer schema with a sensor type this reader does not know yet.
        newer = json.loads(schema_text(TELEMETRY_EVENT))
        sensor_type = next(f for f in newer["fields"] if f["name"] == "sensor_type")
        sensor_type["type"]["symbols"].insert(-1, "SOIL_MOISTURE")
        self.newer_schema_text = json.dumps(newer)
        self.newer_schema_id = registry.register_for_topic(self.raw, self.newer_schema_text)
        self.registry = registry
        self.producer = Producer({"bootstrap.servers": BOOTSTRAP, "acks": "all",
                                  "linger.ms": 5})
        self._errors: list[str] = []
        self.t0 = int(time.time() * 1000) - 120_000   # measurement times: 2 min ago onwards

    def write_assets(self, *, with_late_asset: bool) -> None:
        assets = {self.asset: {"site_id": self.site, "asset_type": "inverter",
                               "thresholds": {"TEMPERATURE": TEMP_BANDS}}}
        if with_late_asset:
            assets[self.late_asset] = {"site_id": self.site, "asset_type": "meter"}
        body = {"sites": {self.site: {"name": f"IT Site {self.run}", "location": "test rig"}},
                "assets": assets}
        tmp = self.assets_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(body))
        tmp.replace(self.assets_file)   # atomic: the job never reads a half-written file

    def job_args(self, **extra: Any) -> list[str]:
        args = {"raw_topic": self.raw, "validated_topic": self.validated,
                "alarms_topic": self.alarms, "dlq_topic": self.dlq,
                "consumer_group": f"it-{self.run}", "assets_file": str(self.assets_file),
                "asset_refresh_seconds": 2, "checkpointing_interval": 5000}
        args.update(extra)
        return [f"--{k}={v}" for k, v in args.items()]

    def event(self, event_id: str, value: float, *, dt_ms: int = 0, sensor: str = "temp-1",
              asset: str | None = None, sensor_type: str = "TEMPERATURE",
              unit: str = "celsius", quality: str = "GOOD") -> dict[str, Any]:
        return {"event_id": f"{self.run}-{event_id}", "timestamp": self.t0 + dt_ms,
                "site_id": self.site, "asset_id": asset or self.asset, "sensor_id": sensor,
                "sensor_type": sensor_type, "value": value, "unit": unit,
                "quality_flag": quality, "source": "mqtt"}

    def encode(self, event: dict[str, Any]) -> bytes:
        return encode(event, self.schema_id, self.schema)

    def encode_batch(self, events: list[dict[str, Any]]) -> bytes:
        """A TelemetryBatch record, as the edge writes it."""
        batch_id = self.registry.register(subject_for_record(self.raw, TELEMETRY_BATCH_FULLNAME),
                                          schema_text(TELEMETRY_BATCH))
        return encode({"events": events}, batch_id, load_schema(TELEMETRY_BATCH))

    def send(self, value: bytes, *, key: str | None = None, partition: int | None = None
             ) -> None:
        kwargs: dict[str, Any] = {"key": (key or self.asset).encode(), "value": value,
                                  "on_delivery": self._delivered}
        if partition is not None:
            kwargs["partition"] = partition
        self.producer.produce(self.raw, **kwargs)

    def _delivered(self, err: Any, _msg: Any) -> None:
        if err is not None:
            self._errors.append(str(err))

    def flush(self) -> None:
        assert self.producer.flush(30) == 0 and not self._errors, \
            f"Kafka did not acknowledge: {self._errors}"

    def eid(self, short: str) -> str:
        return f"{self.run}-{short}"

    # --- outputs -------------------------------------------------------------------------

    def reading_counts(self) -> Counter[str]:
        rows = qdb_exec(SETTINGS, "SELECT event_id FROM sensor_readings "
                                  f"WHERE site_id = '{self.site}'")["dataset"]
        return Counter(r[0] for r in rows)

    def reading_rows(self) -> dict[str, dict[str, Any]]:
        body = qdb_exec(SETTINGS, f"SELECT * FROM sensor_readings WHERE site_id = '{self.site}'")
        names = [c["name"] for c in body["columns"]]
        return {r[names.index("event_id")]: dict(zip(names, r, strict=True))
                for r in body["dataset"]}

    def alarm_rows(self) -> list[tuple[str, str, str, str, float]]:
        rows = qdb_exec(SETTINGS, "SELECT alarm_id, state, severity, event_id, value "
                                  f"FROM alarms WHERE site_id = '{self.site}' "
                                  "ORDER BY timestamp, state DESC")["dataset"]
        return [tuple(r) for r in rows]

    def topic_records(self, topic: str) -> list[tuple[bytes | None, bytes]]:
        """Every record of ``topic`` from the beginning (key, value)."""
        consumer = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": f"it-read-{uuid.uuid4()}",
                             "enable.auto.commit": False})
        try:
            meta = consumer.list_topics(topic, timeout=10).topics[topic]
            out: list[tuple[bytes | None, bytes]] = []
            for p in meta.partitions:
                tp = TopicPartition(topic, p)
                low, high = consumer.get_watermark_offsets(tp, timeout=10)
                if high <= low:
                    continue
                consumer.assign([TopicPartition(topic, p, low)])
                got = 0
                while got < high - low:
                    msgs = consumer.consume(num_messages=1000, timeout=5)
                    if not msgs:
                        break
                    for m in msgs:
                        if m.error() is None:
                            out.append((m.key(), m.value()))
                            got += 1
            return out
        finally:
            consumer.close()

    def decoded(self, topic: str, reader: str) -> list[dict[str, Any]]:
        reader_schema = load_schema(reader)
        return [decode(value, self.registry, reader_schema)[1]
                for _key, value in self.topic_records(topic)]

    def close(self) -> None:
        self.producer.flush(10)
        delete_topics(SETTINGS, [self.raw, self.validated, self.alarms, self.dlq])


@pytest.fixture()
def scenario(tmp_path: Path) -> Iterator[Scenario]:
    s = Scenario(tmp_path)
    try:
        yield s
    finally:
        s.close()


def _dlq_summary(letters: list[dict[str, Any]]) -> Counter[tuple[str, str | None, str]]:
    """(stage, event_id, first reason's field/prefix) of each dead letter."""
    out: Counter[tuple[str, str | None, str]] = Counter()
    for d in letters:
        first = d["reasons"][0]
        out[(d["stage"], d["event_id"], first.split(":")[0] if d["stage"] != "decode"
             else first.split(" (")[0])] += 1
    return out


def _wait_for_dropped(job: FlinkJob, expected: int, context: str = "") -> None:
    """Wait until the job's dedup stage has dropped exactly ``expected`` copies.

    Beam counters reach Flink REST when bundles finish, so this polls. Every copy the
    test sent is then accounted for as dropped: none can still be on its way to an
    output, which is what lets the callers assert exact outputs without sleeping.
    """
    def dropped() -> float | None:
        return flink_metrics(job, ["duplicates_dropped"]).get("duplicates_dropped")

    if wait_for_quietly(lambda: dropped() == float(expected), 60, 1.0) is not True:
        pytest.fail(f"dedup dropped {dropped()} copies, expected {expected} {context}".strip())


def _validated_ids(s: Scenario, expected: set[str]) -> Counter[str]:
    """Event ids on the job's validated topic, once every one of ``expected`` is there.

    The topic and QuestDB are written by parallel branches: QuestDB having a row does
    not mean the topic has its record yet. Extra copies are not waited for (see
    :func:`_wait_for_dropped`); the caller compares the returned counts exactly.
    """
    def ids() -> Counter[str] | None:
        got = Counter(r["event_id"] for r in s.decoded(s.validated, SENSOR_READING))
        return got if set(got) >= expected else None

    return wait_for(f"{len(expected)} event ids on {s.validated}", ids, 60, 1.0)


def test_pipeline_routes_every_kind_of_input(scenario: Scenario,
                                             flink_job: Callable[..., FlinkJob]) -> None:
    s = scenario
    ok = [s.event(f"ok-{i}", 20.0 + i, dt_ms=i * 1000, sensor=f"temp-ok-{i % 2}")
          for i in range(6)]
    # The threshold episode of one sensor (TEMPERATURE: warn 80, crit 95, hysteresis 2).
    episode_values = [("ep-1", 70.0), ("ep-2", 85.0), ("ep-3", 97.0), ("ep-4", 99.0),
                      ("ep-5", 96.0), ("ep-6", 79.0), ("ep-7", 77.0), ("ep-8", 75.0)]
    episode = [s.event(eid, v, dt_ms=10_000 + i * 1000, sensor="temp-ep")
               for i, (eid, v) in enumerate(episode_values)]
    good_frame = s.encode(ok[0])
    newer = copy.deepcopy(s.event("new-type", 30.0, sensor_type="SOIL_MOISTURE", unit="%"))
    from schemas.avro import parse_schema

    newer_frame = encode(newer, s.newer_schema_id, parse_schema(s.newer_schema_text))
    invalid = {
        "nan": s.encode(s.event("nan", math.nan)),
        "range": s.encode(s.event("range", 500.0)),
        "unit": s.encode(s.event("unit", 20.0, unit="volt")),
        "future": s.encode(s.event("future", 20.0, dt_ms=120_000 + 3_600_000)),
        "huge": s.encode(s.event("huge", 20.0, sensor="x" * 200_000)),
        "new-type": newer_frame,
    }
    garbage = b"\x13\x37 not avro at all \xff"
    truncated = good_frame[:-6]
    unknown_id = b"\x00" + struct.pack(">I", 2_000_000_000) + good_frame[5:]
    unknown_asset = s.encode(s.event("late-1", 21.0, asset=s.late_asset, sensor="m-1"))

    for e in ok:
        s.send(s.encode(e), partition=0)
    # Exact duplicates on other partitions (a retry may land on any partition).
    s.send(good_frame, partition=1)
    s.send(good_frame, partition=3)
    s.send(s.encode(ok[1]), partition=2)
    for frame in invalid.values():
        s.send(frame)
    for frame in (garbage, truncated, unknown_id):
        s.send(frame, key="junk")
    s.send(unknown_asset, key=s.late_asset)
    for e in episode:
        s.send(s.encode(e))
    s.flush()

    job = flink_job(s.job_args())
    valid_ids = {e["event_id"] for e in ok + episode}

    def readings_done() -> Counter[str] | None:
        counts = s.reading_counts()
        return counts if set(counts) >= valid_ids else None

    wait_for("valid readings in QuestDB", readings_done, OUTPUT_WAIT_S)
    # Copies seconds later, within the dedup window (and one on a third partition).
    s.send(good_frame, partition=2)
    s.send(s.encode(episode[2]), partition=1)
    s.flush()

    expected_alarm_id = f"{s.asset}:temp-ep:{episode[1]['timestamp']}"
    expected_alarms = [
        (expected_alarm_id, "RAISED", "WARNING", s.eid("ep-2"), 85.0),
        (expected_alarm_id, "RAISED", "CRITICAL", s.eid("ep-3"), 97.0),
        (expected_alarm_id, "CLEARED", "CRITICAL", s.eid("ep-7"), 77.0),
    ]
    wait_for("3 alarm transitions in QuestDB", lambda: len(s.alarm_rows()) >= 3, 60)

    # The late asset is registered while the job runs; its dead-lettered reading is replayed.
    late_id = s.eid("late-1")

    def late_letters() -> int:
        return sum(d["event_id"] == late_id for d in s.decoded(s.dlq, DEAD_LETTER))

    wait_for("the unknown asset's reading dead-lettered", lambda: late_letters() == 1, 60)
    s.write_assets(with_late_asset=True)
    # Each SDK worker process re-reads the file when it enriches a reading more than
    # asset_refresh_seconds (2 s) after its last look; until then a replay meets the old
    # catalog and is dead-lettered again. Replay until one is stored, waiting for each
    # replay's outcome (QuestDB row or one more dead letter): no fixed sleep, and the
    # dead letters stay exactly counted.
    replays = 0

    def replay_outcome() -> str | None:
        if late_id in s.reading_counts():
            return "stored"
        return "dead-lettered" if late_letters() == 1 + replays else None

    while True:
        s.send(unknown_asset, key=s.late_asset)
        s.flush()
        replays += 1
        outcome = wait_for(f"replay {replays} of the new asset's reading stored or "
                           "dead-lettered", replay_outcome, 60)
        if outcome == "stored":
            break
        assert replays < 10, "the workers never picked up the changed asset file"

    # Exactly once each in QuestDB, enriched; nothing else of this site. No waiting for
    # absence: the dedup stage has dropped all 5 copies (its counter), so none is on its way.
    _wait_for_dropped(job, 5)
    counts = s.reading_counts()
    assert counts == Counter(valid_ids | {late_id}), counts
    rows = s.reading_rows()
    assert rows[s.eid("ok-0")]["site_name"] == f"IT Site {s.run}"
    assert rows[s.eid("ok-0")]["asset_type"] == "inverter"
    assert rows[late_id]["asset_type"] == "meter"

    assert s.alarm_rows() == expected_alarms

    # The pipeline's own dedup, where QuestDB's DEDUP keys cannot hide a copy: the topic.
    validated = _validated_ids(s, valid_ids | {late_id})
    assert validated == Counter(valid_ids | {late_id})
    alarm_records = s.decoded(s.alarms, "alarm")
    assert sorted((a["alarm_id"], a["state"], a["severity"], a["event_id"], a["value"])
                  for a in alarm_records) == sorted(expected_alarms)

    letters = s.decoded(s.dlq, DEAD_LETTER)
    assert _dlq_summary(letters) == Counter({
        ("validate", s.eid("nan"), "value"): 1,
        ("validate", s.eid("range"), "value"): 1,
        ("validate", s.eid("unit"), "unit"): 1,
        ("validate", s.eid("future"), "timestamp"): 1,
        ("validate", s.eid("huge"), "sensor_id"): 1,
        ("validate", s.eid("new-type"), "sensor_type"): 1,
        ("decode", None, "magic byte is 19, expected 0"): 1,
        ("decode", None, f"schema id {s.schema_id}: Avro body truncated"): 1,
        ("decode", None, "unknown schema id 2000000000"): 1,
        # The first send and every replay that met a worker's previous catalog.
        ("enrich", late_id, "asset_id"): replays,
    }), letters
    by_id = {d["event_id"]: d for d in letters if d["event_id"]}
    assert by_id[s.eid("nan")]["original"] == invalid["nan"]
    assert by_id[s.eid("new-type")]["original"] == newer_frame
    assert all(d["topic"] == s.raw and d["offset"] is not None for d in letters)
    assert {d["original"] for d in letters if d["stage"] == "decode"} == \
        {garbage, truncated, unknown_id}

    # Beam counters reach Flink's metric system when bundles finish: poll for them.
    wanted = {"duplicates_dropped": 5, "alarms_raised": 1, "alarms_escalated": 1,
              "alarms_cleared": 1, "decode_failed_bad_magic": 1}

    def counters_match() -> bool:
        got = flink_metrics(job, list(wanted))
        return got == {k: float(v) for k, v in wanted.items()}

    if not wait_for_quietly(counters_match, 30):
        names = flink_metric_names(job)
        pytest.fail(f"Beam counters via Flink REST: want {wanted}, got "
                    f"{flink_metrics(job, list(wanted))}; metrics seen: {names}")
    assert job.state() == "RUNNING"


def _newest_checkpoint_after(conf_name: str, since: float) -> Path | None:
    from runners.stack.flink import job_checkpoint_dir, latest_checkpoint
    from runners.stack.supervisor import paths_from_settings

    chk = latest_checkpoint(job_checkpoint_dir(paths_from_settings(SETTINGS), conf_name))
    return chk if chk is not None and (chk / "_metadata").stat().st_mtime > since else None


def test_pipeline_resumes_from_its_checkpoint(scenario: Scenario,
                                              flink_job: Callable[..., FlinkJob]) -> None:
    s = scenario
    name = f"it-restart-{s.run}"
    args = s.job_args()
    # A warm-up reading proves the first job processes before the real events go in, so
    # they all fall inside one dedup window (Kafka time) across the restart.
    warm = s.event("warm", 20.0, sensor="temp-warm")
    s.send(s.encode(warm))
    s.flush()
    first = flink_job(args, name=name)
    wait_for("the first job to process the warm-up reading",
             lambda: warm["event_id"] in s.reading_counts(), OUTPUT_WAIT_S)

    before = [s.event(f"a-{i}", 30.0 + i, dt_ms=i * 1000, sensor="temp-a") for i in range(5)]
    episode = [s.event(eid, v, dt_ms=20_000 + i * 1000, sensor="temp-ep")
               for i, (eid, v) in enumerate([("ep-1", 70.0), ("ep-2", 85.0), ("ep-3", 97.0),
                                             ("ep-4", 99.0), ("ep-5", 79.0), ("ep-6", 77.0)])]
    for e in before + episode[:3]:
        s.send(s.encode(e))
    s.flush()
    phase1 = {e["event_id"] for e in [warm] + before + episode[:3]}
    wait_for("phase-1 readings in QuestDB", lambda: set(s.reading_counts()) >= phase1, 60)
    wait_for("2 alarm transitions in QuestDB", lambda: len(s.alarm_rows()) >= 2, 60)
    seen_at = time.time()
    checkpoint = wait_for("a checkpoint of the first job taken after phase 1",
                          lambda: _newest_checkpoint_after(name, seen_at), 30, 0.5)
    assert first.cancel() == 1

    # While the job is down: duplicates of processed events (inside the dedup window), as
    # single records and as an edge batch record, new readings, and the rest of the episode.
    after = [s.event(f"b-{i}", 40.0 + i, dt_ms=10_000 + i * 1000, sensor="temp-b")
             for i in range(5)]
    for e in before[:3] + [episode[2]]:
        s.send(s.encode(e), partition=3)
    s.send(s.encode_batch(before[3:]), partition=2)
    for e in after + episode[3:]:
        s.send(s.encode(e))
    s.flush()

    second = flink_job(args, name=name, restore=True)
    all_ids = phase1 | {e["event_id"] for e in after + episode[3:]}
    wait_for("every reading in QuestDB after the restore",
             lambda: set(s.reading_counts()) >= all_ids, OUTPUT_WAIT_S)
    wait_for("the CLEARED transition", lambda: len(s.alarm_rows()) >= 3, 60)
    # The restored dedup state dropped all 6 copies sent while the job was down (its
    # counter): none of them is still on its way to an output.
    _wait_for_dropped(second, 6, f"restored from {checkpoint}")

    assert s.reading_counts() == Counter(all_ids)
    alarm_id = f"{s.asset}:temp-ep:{episode[1]['timestamp']}"
    assert s.alarm_rows() == [
        (alarm_id, "RAISED", "WARNING", s.eid("ep-2"), 85.0),
        (alarm_id, "RAISED", "CRITICAL", s.eid("ep-3"), 97.0),
        (alarm_id, "CLEARED", "CRITICAL", s.eid("ep-6"), 77.0),
    ], f"restored from {checkpoint}"
    # The topic proves dedup state survived: a duplicate passed by a fresh state would
    # be written again there (QuestDB's DEDUP keys would hide it in the table).
    assert _validated_ids(s, all_ids) == Counter(all_ids), f"restored from {checkpoint}"
    # The dedup timers (restored with the state) fire once the watermark passes the
    # window: state stays bounded. Phase-1 keys expire about 60 s after they were produced.
    assert wait_for_quietly(lambda: flink_metrics(second, ["dedup_state_expired"]).get(
        "dedup_state_expired", 0) >= len(phase1), 90), \
        f"dedup state never expired: {flink_metrics(second, ['dedup_state_expired'])}"


def test_batch_records_and_single_records_share_the_topic(
        scenario: Scenario, flink_job: Callable[..., FlinkJob]) -> None:
    """What the edge writes (TelemetryBatch records, many events each) next to single-event
    records: every event stored once, a copy sent in the other shape, in the same shape, in
    the same batch or in a re-sent batch dropped by the job's dedup, a sensor's
    readings evaluated in batch order by the alarm stage, an invalid event of a batch
    dead-lettered alone (its JSON, the batch record's offset) while its batch mates pass."""
    s = scenario
    episode = [s.event(f"b-ep-{i}", v, dt_ms=i * 1000, sensor="temp-batch")
               for i, v in enumerate((70.0, 85.0, 97.0, 99.0, 79.0, 77.0))]
    bad = s.event("b-nan", math.nan, dt_ms=500, sensor="temp-batch-2")
    plain = [s.event(f"b-ok-{i}", 20.0 + i, dt_ms=i * 1000, sensor="temp-batch-2")
             for i in range(4)]
    s.send(s.encode_batch(episode[:3] + [bad] + plain[:2]), partition=1)
    s.send(s.encode_batch(episode[3:]), partition=1)
    s.send(s.encode(plain[2]), partition=1)         # a single record between batches
    s.send(s.encode_batch([plain[3], plain[0]]), partition=1)   # plain[0] again: a copy
    s.send(s.encode(episode[1]), partition=2)       # a single-record copy on another partition
    s.send(s.encode_batch([]), partition=0)         # an empty batch: nothing, no dead letter
    # Copies QuestDB's DEDUP keys would hide (counted on the topic below): the same batch
    # record again (an edge retry after a lost ack, 3 events), the same single record
    # again on the same partition, and one batch holding one event twice.
    s.send(s.encode_batch(episode[3:]), partition=1)
    s.send(s.encode(plain[2]), partition=1)
    s.send(s.encode_batch([plain[1], plain[1]]), partition=1)
    s.flush()

    job = flink_job(s.job_args())
    valid_ids = {e["event_id"] for e in episode + plain}
    alarm_id = f"{s.asset}:temp-batch:{episode[1]['timestamp']}"
    expected_alarms = [
        (alarm_id, "RAISED", "WARNING", s.eid("b-ep-1"), 85.0),
        (alarm_id, "RAISED", "CRITICAL", s.eid("b-ep-2"), 97.0),
        (alarm_id, "CLEARED", "CRITICAL", s.eid("b-ep-5"), 77.0),
    ]
    wait_for("the batch readings in QuestDB",
             lambda: set(s.reading_counts()) >= valid_ids, OUTPUT_WAIT_S)
    wait_for("3 alarm transitions in QuestDB", lambda: len(s.alarm_rows()) >= 3, 60)
    _wait_for_dropped(job, 8)   # every copy dropped by dedup: none still on its way
    assert s.reading_counts() == Counter(valid_ids)
    assert s.alarm_rows() == expected_alarms
    assert _validated_ids(s, valid_ids) == Counter(valid_ids)
    letters = s.decoded(s.dlq, DEAD_LETTER)
    assert [(d["stage"], d["event_id"], d["original_format"], d["partition"], d["offset"])
            for d in letters] == [("validate", s.eid("b-nan"), "json", 1, 0)], letters
    assert json.loads(letters[0]["original"])["event_id"] == s.eid("b-nan")
