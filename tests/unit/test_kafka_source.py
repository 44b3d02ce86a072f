"""ReadRawTelemetry's consumer settings: what reaches KafkaIO (Flink) and the Python reader."""

from __future__ import annotations

from typing import Any

import pytest
from apache_beam.coders import RowCoder
from apache_beam.portability.api import external_transforms_pb2

from io_connectors.kafka_source import ReadRawTelemetry

USER_CONFIG = {
    "security.protocol": "SASL_SSL",
    "sasl.mechanism": "SCRAM-SHA-512",
    "sasl.jaas.config": "org.apache.kafka.common.security.scram.ScramLoginModule required;",
    "ssl.truststore.location": "/etc/kafka/truststore.jks",
    "fetch.max.bytes": 52428800,
    "check.crcs": False,
}


def _kafkaio_payload(source: ReadRawTelemetry) -> Any:
    """The configuration row the expansion service receives, decoded as KafkaIO reads it."""
    read = source._kafkaio_read()
    payload = external_transforms_pb2.ExternalConfigurationPayload.FromString(read._payload)
    return RowCoder(payload.schema).decode(payload.payload)


def _flink_source(**kwargs: Any) -> ReadRawTelemetry:
    return ReadRawTelemetry("k1:9092,k2:9092", "raw", "grp", expansion_service="localhost:8097",
                            **kwargs)


def test_every_consumer_config_entry_reaches_kafkaio() -> None:
    row = _kafkaio_payload(_flink_source(consumer_config=USER_CONFIG, start_from="latest"))
    config = dict(row.consumer_config)
    assert config == {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.jaas.config": USER_CONFIG["sasl.jaas.config"],
        "ssl.truststore.location": "/etc/kafka/truststore.jks",
        "fetch.max.bytes": "52428800",
        "check.crcs": "false",  # Java parses "false"; Python's str(False) would be "False"
        "bootstrap.servers": "k1:9092,k2:9092",
        "group.id": "grp",
        "auto.offset.reset": "latest",
        "enable.auto.commit": "false",
    }
    assert row.commit_offset_in_finalize is True
    assert list(row.topics) == ["raw"]


def test_kafkaio_gets_no_librdkafka_only_settings() -> None:
    # The Python reader's tuning (queued.min.messages...) means nothing to the Java consumer.
    config = dict(_kafkaio_payload(_flink_source()).consumer_config)
    assert config == {"bootstrap.servers": "k1:9092,k2:9092", "group.id": "grp",
                      "auto.offset.reset": "earliest", "enable.auto.commit": "false"}


def test_python_reader_gets_consumer_config_over_its_tuning_defaults() -> None:
    source = ReadRawTelemetry("k:9092", "raw", "grp",
                              consumer_config={"queued.min.messages": 500,
                                               "security.protocol": "SSL"})
    assert source._config["queued.min.messages"] == 500
    assert source._config["security.protocol"] == "SSL"
    assert source._config["enable.auto.commit"] is False
    assert source._config["bootstrap.servers"] == "k:9092"


@pytest.mark.parametrize("key", ["bootstrap.servers", "group.id", "auto.offset.reset",
                                 "enable.auto.commit", "enable.auto.offset.store",
                                 "key.deserializer", "value.deserializer"])
@pytest.mark.parametrize("expansion_service", [None, "localhost:8097"], ids=["python", "kafkaio"])
def test_settings_the_transform_owns_are_refused(key: str, expansion_service: str | None) -> None:
    with pytest.raises(ValueError, match=key):
        ReadRawTelemetry("k:9092", "raw", "grp", consumer_config={key: "x"},
                         expansion_service=expansion_service)


def test_value_kafkaio_cannot_carry_is_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="oauth_cb"):
        _flink_source(consumer_config={"oauth_cb": lambda _config: ("token", 0)})
