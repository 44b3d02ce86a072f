"""Every producer that writes accepted records keeps idempotence and acks=all."""

from __future__ import annotations

import pytest

from io_connectors import kafka_sink, raw_producer
from io_connectors.kafka_config import reliable_producer_config


@pytest.mark.parametrize("config", [
    reliable_producer_config("k:9092"),
    kafka_sink.producer_config("k:9092"),
    raw_producer.producer_config("k:9092", "edge-1"),
], ids=["base", "pipeline-sink", "edge"])
def test_producers_are_idempotent_with_acks_all(config: dict) -> None:
    assert config["bootstrap.servers"] == "k:9092"
    assert config["enable.idempotence"] is True
    assert config["acks"] == "all"


def test_overrides_tune_but_callers_keep_their_own_batching() -> None:
    assert kafka_sink.producer_config("k:9092", **{"linger.ms": 1})["linger.ms"] == 1
    edge = raw_producer.producer_config("k:9092", "edge-1", {"linger.ms": 0})
    assert edge["linger.ms"] == 0 and edge["client.id"] == "edge-1"
