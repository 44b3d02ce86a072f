"""Entry point of the telemetry job: ``python -m runners.run_pipeline [--runner ...]``.

``--runner=FlinkRunner`` (the default of the local stack) submits a streaming
job to the Flink job server started by ``dcmms-telemetry up``; every Beam flag
can be passed through. ``--runner=DirectRunner`` runs in-process for quick
local checks. Options that are not given come from config/local.toml
(see runners.pipeline_options).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.runners.runner import PipelineResult

from config.settings import Settings, SettingsError, load_settings
from io_connectors.kafka_sink import WriteToKafkaTopic
from io_connectors.kafka_source import ReadRawTelemetry
from io_connectors.questdb_schema import ALARMS, SENSOR_READINGS
from io_connectors.questdb_sink import WriteToQuestDB, questdb_conf
from io_connectors.schema_registry import RegistrySchemas
from pipelines.telemetry import TelemetrySinks, build_telemetry_pipeline
from runners.pipeline_options import TelemetryOptions, telemetry_defaults
from runners.stack import cluster
from runners.stack.flink import expansion_address
from schemas.avro import ALARM, DEAD_LETTER, SENSOR_READING
from schemas.validation import load_sensor_rules
from transforms.enrich import FileAssetCatalog
from transforms.flush import EarlyFlush

__all__ = ["build_sinks", "flink_defaults", "make_options", "run", "main"]

_LOGGER = logging.getLogger(__name__)


def flink_defaults(settings: Settings) -> list[str]:
    """Beam flags for the local Flink job server (no Docker, no downloads)."""
    parallelism = settings.flink.parallelism
    sdk_workers = settings.flink.sdk_worker_parallelism
    if cluster.enabled(settings):
        # One SDK worker per slot of each TaskManager.
        parallelism = cluster.total_slots(settings)
        sdk_workers = cluster.slots_per_taskmanager(settings)
    return [
        "--runner=FlinkRunner",
        f"--job_endpoint=localhost:{settings.flink.job_port}",
        "--environment_type=EXTERNAL",
        f"--environment_config=localhost:{settings.flink.worker_pool_port}",
        "--streaming",
        # On the cluster topology: every slot of every TaskManager (runners/stack/cluster.py).
        f"--parallelism={parallelism}",
        f"--checkpointing_interval={settings.flink.checkpointing_interval_ms}",
        f"--max_bundle_size={settings.flink.max_bundle_size}",
        f"--max_bundle_time_mills={settings.flink.max_bundle_time_ms}",
        # Finish the bundle before a checkpoint instead of buffering its remaining output in
        # the checkpoint: restored from such a buffer (chaos drill: job server SIGKILL under
        # load), outputs of the fused first stage reached the wrong downstream stage (dedup
        # batches into the alarm state machine) and the job restarted in a loop.
        "--finish_bundle_before_checkpointing",
        # Python SDK processes per task manager: one is one core at most (the GIL).
        f"--sdk_worker_parallelism={sdk_workers}",
        # [pipeline] job_name: the name the launcher, `status`, the console and the drills
        # look the job up by in Flink (one setting, no constant of its own here).
        f"--job_name={settings.pipeline.job_name}",
        *_data_flush_flags(settings),
    ]


def _data_flush_flags(settings: Settings) -> list[str]:
    """Beam's time-based flush of the runner -> SDK worker data channel, when configured."""
    flush_ms = settings.flink.data_flush_ms  # >= 0, checked by config.settings
    return [f"--experiments=data_buffer_time_limit_ms={flush_ms}"] if flush_ms else []


def make_options(argv: Sequence[str], settings: Settings) -> PipelineOptions:
    """Pipeline options: explicit argv wins over settings-derived defaults."""
    argv = list(argv)
    if not any(a.startswith("--runner") for a in argv) or "--runner=FlinkRunner" in argv:
        argv = flink_defaults(settings) + [a for a in argv if a != "--runner=FlinkRunner"]
    options = PipelineOptions(argv)
    telemetry = options.view_as(TelemetryOptions)
    for name, value in telemetry_defaults(settings).items():
        if getattr(telemetry, name, None) is None:
            setattr(telemetry, name, value)
    if (options.view_as(StandardOptions).runner == "FlinkRunner"
            and telemetry.kafka_expansion_service is None):
        # The Python reader's watermark does not advance on the portable Flink runner,
        # so event-time timers (dedup expiry) would never fire there.
        telemetry.kafka_expansion_service = expansion_address(settings)
    return options


def build_sinks(opts: TelemetryOptions) -> TelemetrySinks:
    """Kafka and QuestDB sinks of the job, from its options."""
    conf = questdb_conf(opts.questdb_host, opts.questdb_http_port)
    early = early_flush(opts)
    kafka = opts.bootstrap_servers
    registry = opts.registry_url
    return TelemetrySinks(
        validated=(
            WriteToKafkaTopic(opts.validated_topic, kafka, schema_name=SENSOR_READING,
                              registry_url=registry, label="ToKafkaValidated"),
            WriteToQuestDB(SENSOR_READINGS, conf, batch_rows=opts.sink_batch_rows, early=early,
                           label="ToQuestDBReadings"),
        ),
        alarms=(
            WriteToKafkaTopic(opts.alarms_topic, kafka, schema_name=ALARM,
                              registry_url=registry, label="ToKafkaAlarms"),
            WriteToQuestDB(ALARMS, conf, batch_rows=opts.sink_batch_rows, early=early,
                           label="ToQuestDBAlarms"),
        ),
        dead_letters=(
            WriteToKafkaTopic(opts.dlq_topic, kafka, schema_name=DEAD_LETTER,
                              registry_url=registry, key_fn=_dead_letter_key,
                              label="ToKafkaDeadLetters"),
        ),
    )


def early_flush(opts: TelemetryOptions) -> EarlyFlush:
    """The job's early-flush policy (transforms/flush.py) from its options."""
    return EarlyFlush(opts.early_flush_ms or 0, opts.early_flush_max_items or 0)


def _dead_letter_key(record: dict) -> bytes | None:
    key = record.get("key")
    return key if isinstance(key, bytes) else None


def run(argv: Sequence[str] = (), settings: Settings | None = None) -> PipelineResult:
    """Build and run the job; returns the PipelineResult (non-blocking on Flink)."""
    settings = settings or load_settings()
    settings.check_production()
    options = make_options(argv, settings)
    opts = options.view_as(TelemetryOptions)
    streaming = options.view_as(StandardOptions).streaming
    pipeline = beam.Pipeline(options=options)
    build_telemetry_pipeline(
        pipeline,
        source=ReadRawTelemetry(opts.bootstrap_servers, opts.raw_topic, opts.consumer_group,
                                expansion_service=opts.kafka_expansion_service),
        schema_lookup=RegistrySchemas(opts.registry_url),
        asset_catalog=FileAssetCatalog(opts.assets_file, opts.asset_refresh_seconds),
        rules=load_sensor_rules(opts.sensor_rules_file),
        sinks=build_sinks(opts),
        unknown_asset_policy=opts.unknown_asset_policy,
        dedup_window_seconds=opts.dedup_window_seconds,
        state_buckets=opts.state_buckets,
        no_data_check_seconds=opts.no_data_check_seconds,
        early_flush=early_flush(opts),
    )
    _LOGGER.info("submitting telemetry job (streaming=%s, runner=%s)", streaming,
                 options.view_as(StandardOptions).runner)
    return pipeline.run()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], add_help=False)
    parser.add_argument("--wait", action="store_true",
                        help="block until the job ends (default: return once submitted)")
    known, beam_args = parser.parse_known_args(argv if argv is not None else sys.argv[1:])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        result = run(beam_args)
    except SettingsError as exc:
        print(f"run_pipeline: {exc}", file=sys.stderr)
        return 2
    if known.wait:
        result.wait_until_finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
