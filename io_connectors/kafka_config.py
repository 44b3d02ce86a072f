"""librdkafka producer settings shared by every producer that must not lose a record.

The edge (raw_producer), the pipeline's Kafka sink and the schema registry's
store all write records someone was (or will be) told are safe, so they share
one base: idempotence (which implies acks=all and ordered retries) and an
explicit ``acks=all``. Each caller passes only its own tuning as overrides.
"""

from __future__ import annotations

from typing import Any

__all__ = ["reliable_producer_config"]


def reliable_producer_config(bootstrap_servers: str, **overrides: Any) -> dict[str, Any]:
    """Producer settings for at-least-once writes; ``overrides`` tune batching and timeouts."""
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap_servers,
        # Idempotence keeps librdkafka's internal retries from duplicating or reordering.
        "enable.idempotence": True,
        "acks": "all",
        "compression.type": "lz4",
    }
    config.update(overrides)
    return config
