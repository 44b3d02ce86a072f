"""Unit tests of the MQTT bridge's Prometheus metrics (io_connectors.edge_metrics).

The bridge runs over the fake producer and MQTT client of test_edge_bridge; its counters
are read the way a scrape reads them (BridgeCollector in a registry, rendered as text and
parsed back), so a renamed family or a wrong mapping fails here.
"""

from __future__ import annotations

from typing import Any

import paho.mqtt.client as mqtt
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from io_connectors.edge_metrics import BridgeCollector, DeliveryMetrics
from io_connectors.mqtt_bridge import (
    AVRO_ENCODING_FAILED,
    BridgeSnapshot,
    BridgeStats,
)
from io_connectors.raw_producer import DeliveryFailure, FailureKind
from tests.unit.test_edge_bridge import bridge, deliver

__all__ = ["bridge"]   # the fixture (fake producer and MQTT client) of test_edge_bridge


def scrape(*collectors: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry()
    for collector in collectors:
        registry.register(collector)
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_snapshot_maps_to_the_documented_families() -> None:
    stats = BridgeStats(received=10, accepted=7, rejected={"payload.not_json": 2,
                                                           "value.out_of_range": 1},
                        produced=6, dead_lettered=3, acked=9, delivery_failures=4,
                        stale_acks_dropped=1, connects=3, disconnects=2)
    snap = BridgeSnapshot(stats=stats, connected=True, subscribed=False, inbox=5, in_flight=8,
                          retrying=2, kafka_queue=11, oldest_unconfirmed_s=1.25)
    samples = scrape(BridgeCollector(lambda: snap))
    expected = {
        "dcmms_bridge_messages_received_total": 10,
        "dcmms_bridge_messages_accepted_total": 7,
        "dcmms_bridge_events_produced_total": 6,
        "dcmms_bridge_dead_letters_produced_total": 3,
        "dcmms_bridge_messages_acked_total": 9,
        "dcmms_bridge_delivery_failures_total": 4,
        "dcmms_bridge_stale_acks_dropped_total": 1,
        "dcmms_bridge_mqtt_disconnects_total": 2,
        "dcmms_bridge_mqtt_reconnects_total": 2,     # connections after the first
        "dcmms_bridge_mqtt_connected": 1,
        "dcmms_bridge_mqtt_subscribed": 0,
        "dcmms_bridge_inbox_messages": 5,
        "dcmms_bridge_in_flight_messages": 8,
        "dcmms_bridge_retry_messages": 2,
        "dcmms_bridge_kafka_queue_records": 11,
        "dcmms_bridge_oldest_unconfirmed_seconds": 1.25,
    }
    assert {name: samples[(name, ())] for name in expected} == expected
    assert samples[("dcmms_bridge_messages_rejected_total", (("reason", "payload.not_json"),))] == 2
    assert samples[("dcmms_bridge_messages_rejected_total",
                    (("reason", "value.out_of_range"),))] == 1


def test_a_fresh_bridge_exports_zeros_and_no_reconnect() -> None:
    snap = BridgeSnapshot(stats=BridgeStats(), connected=False, subscribed=False, inbox=0,
                          in_flight=0, retrying=0, kafka_queue=0, oldest_unconfirmed_s=0.0)
    samples = scrape(BridgeCollector(lambda: snap))
    assert samples[("dcmms_bridge_mqtt_reconnects_total", ())] == 0
    assert samples[("dcmms_bridge_messages_received_total", ())] == 0
    assert not any(name == "dcmms_bridge_messages_rejected_total" for name, _ in samples)


def test_bridge_counts_a_take_of_good_and_bad_messages(bridge: Any) -> None:
    b, producer, client = bridge
    producer.queued = 7
    deliver(b, 1)
    deliver(b, 2, b"{not json")
    deliver(b, 3)
    deliver(b, 4, b"[1]")
    deliver(b, 5, b"{also not json")
    b._step()
    snap = b.snapshot()
    assert (snap.stats.received, snap.stats.accepted) == (5, 2)
    assert snap.stats.rejected == {"payload.not_json": 2, "payload.type": 1}
    assert (snap.inbox, snap.in_flight, snap.kafka_queue) == (0, 5, 7)
    assert snap.stats.produced == 0, "nothing confirmed by Kafka yet"
    for kind, _record, cb in producer.sent:
        if kind == "batch":
            cb([0, 1], None)
        else:
            cb(None)
    b._step()
    samples = scrape(BridgeCollector(b.snapshot))
    assert samples[("dcmms_bridge_events_produced_total", ())] == 2
    assert samples[("dcmms_bridge_dead_letters_produced_total", ())] == 3
    assert samples[("dcmms_bridge_messages_acked_total", ())] == 5
    assert samples[("dcmms_bridge_in_flight_messages", ())] == 0
    assert client.acks == [1, 2, 3, 4, 5]


def test_unencodable_event_counts_as_rejected_and_its_failure(bridge: Any) -> None:
    b, producer, _client = bridge
    deliver(b, 1)
    b._step()
    producer.sent[0][2]([0], DeliveryFailure(FailureKind.ENCODING_REFUSED,
                                             "Avro encoding failed: no"))
    snap = b.snapshot()
    assert snap.stats.rejected == {AVRO_ENCODING_FAILED: 1}
    assert snap.stats.delivery_failures == 1 and snap.retrying == 1
    assert snap.oldest_unconfirmed_s >= 0.0


def test_connection_state_and_reconnects(bridge: Any) -> None:
    b = bridge[0]

    class Recorder:
        def subscribe(self, *_: Any, **__: Any) -> None:
            pass

        def unsubscribe(self, *_: Any) -> None:
            pass

    ok = mqtt.ReasonCode(mqtt.PacketTypes.CONNACK, "Success")
    refused = mqtt.ReasonCode(mqtt.PacketTypes.CONNACK, "Not authorized")
    lost = mqtt.ReasonCode(mqtt.PacketTypes.DISCONNECT, "Unspecified error")
    b._on_connect(Recorder(), None, None, refused, None)
    b._on_disconnect(None, None, None, lost, None)
    assert not b.snapshot().connected and b.stats.disconnects == 0, \
        "a refused attempt is not a lost connection"
    b._on_connect(Recorder(), None, None, ok, None)
    assert b.snapshot().connected
    b._on_disconnect(None, None, None, lost, None)
    b._on_connect(Recorder(), None, None, ok, None)
    samples = scrape(BridgeCollector(b.snapshot))
    assert samples[("dcmms_bridge_mqtt_connected", ())] == 1
    assert samples[("dcmms_bridge_mqtt_disconnects_total", ())] == 1
    assert samples[("dcmms_bridge_mqtt_reconnects_total", ())] == 1


def test_delivery_metrics_count_records_by_kind() -> None:
    registry = CollectorRegistry()
    metrics = DeliveryMetrics.create(registry)
    metrics.observe("batch", 0.004, None)
    metrics.observe("batch", 0.2, None)
    metrics.observe("dead_letter", 0.01, "Kafka delivery failed: timed out")
    get = registry.get_sample_value
    assert get("dcmms_edge_kafka_delivery_seconds_count", {"record": "batch"}) == 2
    assert get("dcmms_edge_kafka_delivery_seconds_bucket", {"record": "batch", "le": "0.005"}) == 1
    assert get("dcmms_edge_kafka_delivery_failures_total", {"record": "dead_letter"}) == 1
    assert get("dcmms_edge_kafka_delivery_seconds_count", {"record": "event"}) == 0, \
        "every record kind is exported from the start"


def test_metrics_port_setting_default_override_and_range() -> None:
    from config.settings import SettingsError
    from runners.mqtt_bridge import DEFAULT_METRICS_PORT, metrics_port, metrics_url
    from tests.unit.test_edge_bridge import _mqtt_settings

    assert metrics_port(_mqtt_settings()) == DEFAULT_METRICS_PORT
    assert metrics_port(_mqtt_settings(metrics_port=0)) == 0
    assert metrics_port(_mqtt_settings(metrics_port=9999), override=1234) == 1234
    with pytest.raises(SettingsError, match="metrics_port"):
        metrics_port(_mqtt_settings(metrics_port=70000))
    settings = _mqtt_settings(metrics_port=0)
    assert metrics_url(settings) is None


def test_profiles_give_each_stack_its_own_bridge_metrics_port() -> None:
    from runners.profiles import PROFILES

    ports = {name: env["DCMMS_MQTT_METRICS_PORT"] for name, env in PROFILES.items()}
    assert ports["test"] == "29883" and ports["dev5"] == "59883"
    assert len(set(ports.values())) == len(ports)
