"""The edge's Kafka target (topics, brokers, registry) read from the settings."""

from __future__ import annotations

from config.settings import Settings
from io_connectors.raw_producer import EdgeTarget

__all__ = ["edge_target"]


def edge_target(settings: Settings) -> EdgeTarget:
    """:meth:`EdgeTarget.from_settings` (kept for older imports; api/ uses that directly)."""
    return EdgeTarget.from_settings(settings)
