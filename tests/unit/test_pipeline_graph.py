"""The whole telemetry graph on the DirectRunner with Create inputs.

Good events, a duplicate, garbage bytes, an unknown schema id, NaN, an
out-of-range value, an unknown asset and a threshold episode go in; exactly
the expected reading rows, dead letters (with reasons) and alarm transitions
come out, in the shapes the sinks expect.
"""

from __future__ import annotations

import struct

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from io_connectors.questdb_schema import ALARM_COLUMNS, SENSOR_READING_COLUMNS
from pipelines.telemetry import TelemetrySinks, build_telemetry_pipeline
from schemas.assets import load_asset_catalog
from schemas.avro import TELEMETRY_EVENT, load_schema
from schemas.dead_letter import DEAD_LETTER_FIELDS, make_dead_letter
from schemas.validation import default_sensor_rules
from schemas.wire import InMemorySchemaLookup, encode
from transforms.enrich import StaticAssetCatalog

NOW = 1_800_000_000_000


def fixed_clock() -> int:
    return NOW


def event(event_id: str, value: float, *, ts: int, asset: str = "asset-001",
          sensor: str = "temp-001", quality: str = "GOOD") -> dict:
    return {"event_id": event_id, "timestamp": ts, "site_id": "site-001", "asset_id": asset,
            "sensor_id": sensor, "sensor_type": "TEMPERATURE", "value": value,
            "unit": "celsius", "quality_flag": quality, "source": "mqtt"}


def _project(rows, fields):
    return sorted(tuple(r[f] for f in fields) for r in rows)


class _CollectingSink(beam.PTransform):
    """A sink that passes its input through (so the test can check what sinks receive)."""

    def __init__(self, label: str) -> None:
        super().__init__(label)

    def expand(self, pcoll):
        return pcoll | "Count" >> beam.combiners.Count.Globally() | beam.Filter(lambda _: False)


class _RejectingSink(beam.PTransform):
    """A sink that rejects readings of value 70.0 permanently, as QuestDB might (validated
    sinks receive lists of rows)."""

    def expand(self, pcoll):
        rows = pcoll | "Rows" >> beam.FlatMap(lambda rows: rows)
        return rows | "Reject" >> beam.Filter(lambda r: r["value"] == 70.0) | beam.Map(
            lambda r: make_dead_letter("sink", ["questdb rejected: test"], b"row",
                                       source="pipeline", event_id=r["event_id"]))


def test_whole_graph_routes_every_record():
    schema = load_schema(TELEMETRY_EVENT)
    lookup = InMemorySchemaLookup()
    sid = lookup.register(schema)
    t0 = NOW - 60_000

    def enc(e):
        return encode(e, sid, schema)

    good = enc(event("ok-1", 72.5, ts=t0))
    episode = [
        ("ep-1", 70.0), ("ep-2", 85.0), ("ep-3", 97.0), ("ep-4", 90.0), ("ep-5", 79.0),
        ("ep-6", 77.0),
    ]
    inputs = [
        (b"asset-001", good),
        (b"asset-001", good),                                          # duplicate copy
        (None, b"garbage"),                                            # bad magic
        (None, b"\x00" + struct.pack(">I", 999) + good[5:]),           # unknown schema id
        (None, good[:-4]),                                             # truncated body
        (b"asset-001", enc(event("nan-1", float("nan"), ts=t0))),
        (b"asset-001", enc(event("big-1", 500.0, ts=t0))),
        (b"asset-999", enc(event("unk-1", 20.0, ts=t0, asset="asset-999"))),
    ] + [
        (b"asset-001", enc(event(eid, v, ts=t0 + 1000 * (i + 1), sensor="temp-002")))
        for i, (eid, v) in enumerate(episode)
    ]
    catalog = load_asset_catalog()
    with TestPipeline() as p:
        out = build_telemetry_pipeline(
            p,
            source=beam.Create(inputs, reshuffle=False),
            schema_lookup=lookup,
            asset_catalog=StaticAssetCatalog(catalog),
            rules=default_sensor_rules(),
            sinks=TelemetrySinks(validated=[_CollectingSink("Readings"),
                                            _RejectingSink("QuestDB")],
                                 alarms=[_CollectingSink("Alarms")],
                                 dead_letters=[_CollectingSink("Dlq")]),
            clock=fixed_clock,
        )
        expected_rows = [("ok-1", 72.5)] + episode
        validated_rows = out.validated | "Rows" >> beam.FlatMap(lambda rows: rows)
        assert_that(validated_rows
                    | "RowIdValue" >> beam.Map(lambda r: (r["event_id"], r["value"])),
                    equal_to(expected_rows), label="CheckValidatedRows")
        assert_that(validated_rows | "RowKeys" >> beam.Map(lambda r: tuple(r)),
                    equal_to([SENSOR_READING_COLUMNS] * len(expected_rows)),
                    label="CheckRowShape")
        assert_that(
            validated_rows | "EnrichedOk" >> beam.Filter(lambda r: r["event_id"] == "ok-1")
            | beam.Map(lambda r: (r["site_name"], r["asset_type"], r["ingested_at"])),
            equal_to([("Solar Farm Alpha", "inverter", NOW)]), label="CheckEnrichment")

        start = f"asset-001:temp-002:{t0 + 2000}"
        assert_that(
            out.alarms | "AlarmTuple" >> beam.Map(
                lambda a: (a["alarm_id"], a["state"], a["severity"], a["event_id"],
                           a["threshold"])),
            equal_to([(start, "RAISED", "WARNING", "ep-2", 80.0),
                      (start, "RAISED", "CRITICAL", "ep-3", 95.0),
                      (start, "CLEARED", "CRITICAL", "ep-6", 78.0)]),
            label="CheckAlarmTransitions")
        assert_that(out.alarms | "AlarmKeys" >> beam.Map(lambda a: tuple(a)),
                    equal_to([ALARM_COLUMNS] * 3), label="CheckAlarmShape")

        def summary(d):
            assert tuple(d) == DEAD_LETTER_FIELDS
            return d["stage"], d["event_id"], d["reasons"][0].split(":")[0] if d["stage"] != \
                "decode" else d["reasons"][0].split(" (")[0], isinstance(d["original"], bytes)

        assert_that(
            out.dead_letters | "DeadSummary" >> beam.Map(summary),
            equal_to([
                ("decode", None, "magic byte is 103, expected 0", True),
                ("decode", None, "unknown schema id 999", True),
                ("decode", None, "schema id 1: Avro body truncated", True),
                ("validate", "nan-1", "value", True),
                ("validate", "big-1", "value", True),
                ("enrich", "unk-1", "asset_id", True),
                ("sink", "ep-1", "questdb rejected", True),
            ]),
            label="CheckDeadLetters")


def test_pass_unenriched_policy_keeps_unknown_assets():
    schema = load_schema(TELEMETRY_EVENT)
    lookup = InMemorySchemaLookup()
    sid = lookup.register(schema)
    data = encode(event("unk-1", 20.0, ts=NOW, asset="asset-999"), sid, schema)
    with TestPipeline() as p:
        out = build_telemetry_pipeline(
            p, source=beam.Create([data]), schema_lookup=lookup,
            asset_catalog=StaticAssetCatalog(load_asset_catalog()),
            rules=default_sensor_rules(), unknown_asset_policy="pass_unenriched",
            clock=fixed_clock)
        validated_rows = out.validated | "Rows" >> beam.FlatMap(lambda rows: rows)
        assert_that(validated_rows | beam.Map(lambda r: (r["event_id"], r["site_name"])),
                    equal_to([("unk-1", None)]), label="CheckUnenriched")
        assert_that(out.dead_letters, equal_to([]), label="CheckNoDeadLetters")


def test_unknown_policy_is_refused_at_construction():
    with pytest.raises(ValueError, match="unknown_asset_policy"):
        with TestPipeline() as p:
            build_telemetry_pipeline(
                p, source=beam.Create([b""]), schema_lookup=InMemorySchemaLookup(),
                asset_catalog=StaticAssetCatalog(load_asset_catalog()),
                rules=default_sensor_rules(), unknown_asset_policy="ignore")


def test_streaming_graph_builds_with_readable_unique_labels(tmp_path):
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
    from apache_beam.pipeline import PipelineVisitor

    from transforms.enrich import RefreshingAssetCatalog

    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True
    p = beam.Pipeline(options=options)
    build_telemetry_pipeline(
        p, source=beam.Create([b""]), schema_lookup=InMemorySchemaLookup(),
        asset_catalog=RefreshingAssetCatalog("config/assets.json", refresh_seconds=60),
        rules=default_sensor_rules(),
        sinks=TelemetrySinks(validated=[_CollectingSink("ToKafka"), _CollectingSink("ToQuestDB")],
                             dead_letters=[_CollectingSink("ToDlq")]))

    labels: list[str] = []

    class Collect(PipelineVisitor):
        def enter_composite_transform(self, node):
            labels.append(node.full_label)

        def visit_transform(self, node):
            labels.append(node.full_label)

    p.visit(Collect())
    top = {label.split("/")[0] for label in labels if label}
    assert {"ReadRawTelemetry", "LoadAssetCatalog", "DecodeAvro", "ValidateReadings",
            "EnrichWithAssets", "DedupAndDetectAlarms", "FlattenDeadLetters",
            "WriteValidated1_ToKafka", "WriteValidated2_ToQuestDB",
            "WriteDeadLetters_ToDlq"} <= top
    assert "LoadAssetCatalog/Tick" in labels and "LoadAssetCatalog/Load" in labels
