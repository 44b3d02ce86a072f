"""Pipeline options of the telemetry job, with defaults taken from config/local.toml.

Every option can be given on the command line; what is not given comes from
the settings file (and its DCMMS_* environment overrides), so the local stack
and a production deployment differ only in configuration.
"""

from __future__ import annotations

from apache_beam.options.pipeline_options import PipelineOptions

from config.settings import Settings

__all__ = ["TelemetryOptions", "telemetry_defaults"]


def telemetry_defaults(settings: Settings) -> dict[str, object]:
    """Defaults for :class:`TelemetryOptions` drawn from the settings file."""
    return {
        "bootstrap_servers": settings.kafka.bootstrap_servers,
        "raw_topic": settings.kafka.topic_raw,
        "validated_topic": settings.kafka.topic_validated,
        "alarms_topic": settings.kafka.topic_alarms,
        "dlq_topic": settings.kafka.topic_dlq,
        "consumer_group": settings.pipeline.consumer_group,
        "registry_url": settings.schema_registry.url,
        "questdb_host": settings.questdb.host,
        "questdb_http_port": settings.questdb.http_port,
        "assets_file": str(settings.pipeline.assets_file),
        "asset_refresh_seconds": settings.pipeline.asset_refresh_seconds,
        "unknown_asset_policy": settings.pipeline.unknown_asset_policy,
        "sensor_rules_file": str(settings.pipeline.sensor_rules_file),
        "dedup_window_seconds": settings.pipeline.dedup_window_seconds,
        "sink_batch_rows": settings.pipeline.sink_batch_rows,
        "state_buckets": settings.pipeline.state_buckets,
        "no_data_check_seconds": settings.pipeline.no_data_check_seconds,
        "early_flush_ms": settings.pipeline.early_flush_ms,
        "early_flush_max_items": settings.pipeline.early_flush_max_items,
    }


class TelemetryOptions(PipelineOptions):
    """Where the job reads and writes, and how it processes."""

    @classmethod
    def _add_argparse_args(cls, parser) -> None:  # noqa: ANN001 - Beam's signature
        add = parser.add_argument
        add("--bootstrap_servers", help="Kafka bootstrap servers")
        add("--raw_topic", help="topic the job reads (Confluent Avro telemetry events)")
        add("--validated_topic", help="topic for validated, enriched readings")
        add("--alarms_topic", help="topic for alarm transitions")
        add("--dlq_topic", help="topic for dead letters")
        add("--consumer_group", help="Kafka consumer group of the job")
        add("--registry_url", help="schema registry URL")
        add("--questdb_host", help="QuestDB host (ILP over HTTP)")
        add("--questdb_http_port", type=int, help="QuestDB HTTP port")
        add("--assets_file", help="asset metadata JSON used for enrichment")
        add("--asset_refresh_seconds", type=float, help="how often the asset file is re-read")
        add("--unknown_asset_policy", choices=("dead_letter", "pass_unenriched"),
            help="what happens to readings of assets not in the asset file")
        add("--sensor_rules_file", help="per-sensor-type ranges and units (JSON)")
        add("--dedup_window_seconds", type=float, help="event-time dedup window by event_id")
        add("--sink_batch_rows", type=int, help="rows per QuestDB flush")
        add("--state_buckets", type=int,
            help="keyed-state buckets of dedup and alarms (see transforms/buckets.py)")
        add("--no_data_check_seconds", type=float,
            help="period of the no-data alarm scan per state bucket; 0 = no NO_DATA alarms "
                 "(see transforms/sensor_state.py)")
        add("--early_flush_ms", type=int,
            help="let a small batch leave before its bundle ends after this many ms; 0 = off "
                 "(see transforms/flush.py)")
        add("--early_flush_max_items", type=int,
            help="largest pending batch an early flush may send (see transforms/flush.py)")
        add("--kafka_expansion_service",
            help="host:port of the KafkaIO expansion service: Kafka is then read by Beam's "
                 "Java KafkaIO as a native Flink source (the Flink default); without it, by "
                 "the Python reader (DirectRunner only, see docs/decisions/0001)")
