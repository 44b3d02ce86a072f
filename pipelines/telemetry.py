"""The telemetry pipeline graph; sources and sinks are passed in.

::

    source -> DecodeTelemetry -> ValidateReadings -> EnrichWithAssets(asset catalog)
           -> DedupAndDetectAlarms -> readings -> validated sinks
                                   -> alarms   -> alarm sinks
    dead letters of every stage (+ those returned by sinks) -> Flatten -> dead-letter sinks

``build_telemetry_pipeline`` only wires steps: the runners hand in the Kafka
source, the Kafka/QuestDB sinks and a FileAssetCatalog (worker-side, refreshed;
no side input, see transforms.enrich for why); tests hand in
``beam.Create`` / ``TestStream`` and read the returned PCollections.

Between stages the job carries *lists*: one list of events per Kafka record
(an edge TelemetryBatch record holds many events, a single-event record one),
so Beam's per-element cost is paid per record, not per event (decision 0004).

Row shapes given to sinks:

* validated sinks: *lists* of dicts (one per dedup batch, see
  transforms.dedup), each dict with exactly ``transforms.enrich.READING_FIELDS``
  (= questdb_schema.SENSOR_READING_COLUMNS, schemas/sensor-reading.avsc);
* alarm sinks: dicts with exactly ``transforms.alarms.ALARM_FIELDS``
  (= questdb_schema.ALARM_COLUMNS, schemas/alarm.avsc);
* dead-letter sinks: dicts with exactly ``schemas.dead_letter.DEAD_LETTER_FIELDS``
  (schemas/dead-letter.avsc).

Dedup and alarm detection share one stage keyed by the sensor's bucket
(transforms/sensor_state.py): one shuffle per batch instead of two, and a
sensor's readings reach the alarm state machine in order (they come from one
Kafka partition through one chain of operators into one keyed exchange).

A validated or alarm sink may return a PCollection of dead letters (e.g.
rows QuestDB rejected permanently); those are flattened into the dead-letter
sinks too. Whatever dead-letter sinks return is ignored.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import apache_beam as beam

from schemas.validation import SensorRules
from schemas.wire import SchemaLookup
from transforms.common import DEAD_LETTER_TAG
from transforms.decode import DecodeTelemetry
from transforms.enrich import DEAD_LETTER_POLICY, EnrichWithAssets, FileAssetCatalog
from transforms.flush import NEVER, EarlyFlush
from transforms.sensor_state import ALARMS_TAG, DedupAndDetectAlarms
from transforms.validate import ValidateReadings, wall_clock_ms

__all__ = ["TelemetrySinks", "TelemetryOutputs", "build_telemetry_pipeline"]

_LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class TelemetrySinks:
    """PTransforms applied to each output (any number each, labels must be unique)."""

    validated: Sequence[beam.PTransform] = field(default_factory=tuple)
    alarms: Sequence[beam.PTransform] = field(default_factory=tuple)
    dead_letters: Sequence[beam.PTransform] = field(default_factory=tuple)


@dataclass(frozen=True)
class TelemetryOutputs:
    """The graph's PCollections, for tests and for extra sinks."""

    validated: beam.PCollection
    alarms: beam.PCollection
    dead_letters: beam.PCollection


def _apply_sinks(pcoll: beam.PCollection, sinks: Sequence[beam.PTransform], prefix: str
                 ) -> list[beam.PCollection]:
    returned = []
    for i, sink in enumerate(sinks):
        label = f"{prefix}{i + 1}_{sink.label}" if len(sinks) > 1 else f"{prefix}_{sink.label}"
        out = pcoll | label >> sink
        if isinstance(out, beam.PCollection):
            returned.append(out)
    return returned


def build_telemetry_pipeline(
    root: beam.Pipeline | beam.pvalue.PBegin,
    *,
    source: beam.PTransform,
    schema_lookup: SchemaLookup,
    asset_catalog: beam.PTransform | FileAssetCatalog,
    rules: SensorRules,
    sinks: TelemetrySinks = TelemetrySinks(),
    unknown_asset_policy: str = DEAD_LETTER_POLICY,
    dedup_window_seconds: float = 60.0,
    state_buckets: int = 64,
    no_data_check_seconds: float = 15.0,
    early_flush: EarlyFlush = NEVER,
    clock: Callable[[], int] = wall_clock_ms,
) -> TelemetryOutputs:
    """Wire the pipeline onto ``root`` and return its outputs.

    ``source``: PTransform producing Kafka-like elements (see transforms.decode).
    ``schema_lookup``: picklable schema_id -> writer schema (schemas.wire.SchemaLookup).
    ``asset_catalog``: a transforms.enrich.FileAssetCatalog, or a PTransform
    producing AssetCatalog elements used as a side input (StaticAssetCatalog,
    RefreshingAssetCatalog).
    ``state_buckets``: state keys of the dedup and alarm stage (transforms/buckets.py).
    ``no_data_check_seconds``: period of the no-data alarm scan (transforms/sensor_state.py;
    0 turns NO_DATA alarms off).
    ``early_flush``: when a batch for the keyed stage may leave before its bundle ends
    (transforms/flush.py); the sinks get their own.
    ``clock``: epoch-ms clock for validation and ``ingested_at`` (tests pin it).
    """
    pbegin = root if isinstance(root, beam.pvalue.PBegin) else beam.pvalue.PBegin(root)
    raw = pbegin | "ReadRawTelemetry" >> source
    catalogs = (asset_catalog if isinstance(asset_catalog, FileAssetCatalog)
                else pbegin | "LoadAssetCatalog" >> asset_catalog)

    decoded = raw | "DecodeAvro" >> DecodeTelemetry(schema_lookup)
    validated = decoded.events | "ValidateReadings" >> ValidateReadings(rules, clock=clock)
    enriched = validated.valid | "EnrichWithAssets" >> EnrichWithAssets(
        catalogs, unknown_asset_policy=unknown_asset_policy, clock=clock)
    sensor_state = enriched.readings | "DedupAndDetectAlarms" >> DedupAndDetectAlarms(
        catalogs, dedup_window_seconds, state_buckets, no_data_check_seconds, early_flush)
    readings, alarms = sensor_state.readings, sensor_state[ALARMS_TAG]

    sink_dead = _apply_sinks(readings, sinks.validated, "WriteValidated")
    sink_dead += _apply_sinks(alarms, sinks.alarms, "WriteAlarms")
    dead_letters = (
        (decoded[DEAD_LETTER_TAG], validated[DEAD_LETTER_TAG], enriched[DEAD_LETTER_TAG],
         *sink_dead)
        | "FlattenDeadLetters" >> beam.Flatten()
    )
    _apply_sinks(dead_letters, sinks.dead_letters, "WriteDeadLetters")
    return TelemetryOutputs(readings, alarms, dead_letters)
