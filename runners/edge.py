"""The edge's Kafka target (topics, brokers, registry) read from the settings."""

from __future__ import annotations

from io_connectors.raw_producer import DEFAULT_BATCH_MAX_EVENTS, EdgeTarget
from runners.settings import Settings

__all__ = ["edge_target"]


def edge_target(settings: Settings) -> EdgeTarget:
    """Where the MQTT bridge and REST ingest write (``[kafka]``, ``[schema_registry]``),
    and how many events go in one TelemetryBatch record (``[kafka] edge_batch_max_events``)."""
    return EdgeTarget(
        bootstrap_servers=settings.get("kafka", "bootstrap_servers"),
        raw_topic=settings.get("kafka", "topic_raw"),
        dlq_topic=settings.get("kafka", "topic_dlq"),
        registry_url=settings.get("schema_registry", "url"),
        batch_max_events=settings.get("kafka", "edge_batch_max_events", int,
                                      DEFAULT_BATCH_MAX_EVENTS),
    )
