"""Prometheus metrics of the ingestion edge: the Kafka producer's deliveries and the MQTT bridge.

* :class:`DeliveryMetrics`: ``dcmms_edge_kafka_delivery_seconds`` and
  ``dcmms_edge_kafka_delivery_failures_total`` by record kind, fed by a
  :data:`io_connectors.raw_producer.DeliveryObserver` (once per Kafka record, a batch
  record once). REST ingest (:class:`api.health.IngestMetrics`) and the bridge both use it,
  each in its own process and registry, so the two report the same families.
* :class:`BridgeCollector`: the bridge's counters and queue depths, read from
  :meth:`io_connectors.mqtt_bridge.MqttBridge.snapshot` when ``/metrics`` is scraped. The
  bridge itself only adds to plain integers once per take or per delivered batch record
  (it handles thousands of messages a second at ~40 us each); nothing here runs per message.

docs/metrics.md lists every name. ``prometheus_client`` is imported by this module only,
not by the producer or the bridge.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from io_connectors.raw_producer import RECORD_KINDS

if TYPE_CHECKING:   # the API uses DeliveryMetrics without importing the bridge (paho)
    from io_connectors.mqtt_bridge import BridgeSnapshot

__all__ = ["BridgeCollector", "DELIVERY_BUCKETS", "DeliveryMetrics"]

# Kafka acknowledgements: a few ms locally (linger 5 ms), up to the producer's
# message timeout (60 s for REST) when the cluster is struggling.
DELIVERY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0, 30.0, 60.0)


@dataclass
class DeliveryMetrics:
    """Delivery latency and failures of an edge producer's Kafka records, by record kind."""

    delivery: Histogram
    failures: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry) -> DeliveryMetrics:
        metrics = cls(
            Histogram("dcmms_edge_kafka_delivery_seconds",
                      "Time from producing a record to Kafka's acknowledgement, per record "
                      "(a batch record once)", ("record",), buckets=DELIVERY_BUCKETS,
                      registry=registry),
            Counter("dcmms_edge_kafka_delivery_failures_total",
                    "Records the edge producer could not deliver (delivery error, timeout, "
                    "queue full)", ("record",), registry=registry),
        )
        for kind in RECORD_KINDS:       # every kind exported at 0 from the start
            metrics.delivery.labels(kind)
            metrics.failures.labels(kind)
        return metrics

    def observe(self, kind: str, seconds: float, error: str | None) -> None:
        """A :data:`io_connectors.raw_producer.DeliveryObserver`."""
        if error is None:
            self.delivery.labels(kind).observe(seconds)
        else:
            self.failures.labels(kind).inc()


# (name without _total, help, BridgeStats attribute) of the bridge's plain counters.
_BRIDGE_COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("dcmms_bridge_messages_received", "MQTT messages the bridge took from its inbox",
     "received"),
    ("dcmms_bridge_messages_accepted", "MQTT messages that passed validation (events)",
     "accepted"),
    ("dcmms_bridge_events_produced", "Events of MQTT messages Kafka acknowledged in the raw "
     "topic", "produced"),
    ("dcmms_bridge_dead_letters_produced", "Dead letters of MQTT messages Kafka acknowledged "
     "in the dead-letter topic", "dead_lettered"),
    ("dcmms_bridge_messages_acked", "MQTT messages acknowledged to the broker (PUBACK) after "
     "Kafka confirmed them", "acked"),
    ("dcmms_bridge_delivery_failures", "Failed Kafka deliveries of a message (each is retried "
     "with backoff, or dead-lettered when its event cannot be encoded)", "delivery_failures"),
    ("dcmms_bridge_stale_acks_dropped", "Acknowledgements owed to a closed MQTT connection, "
     "not sent (the broker resends those messages)", "stale_acks_dropped"),
    ("dcmms_bridge_mqtt_disconnects", "Lost or closed MQTT connections", "disconnects"),
)


class BridgeCollector:
    """A prometheus_client collector of one bridge: ``snapshot()`` is called per scrape."""

    def __init__(self, snapshot: Callable[[], BridgeSnapshot]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Any]:
        snap = self._snapshot()
        stats = snap.stats
        for name, doc, attribute in _BRIDGE_COUNTERS:
            yield CounterMetricFamily(name, doc, value=getattr(stats, attribute))
        rejected = CounterMetricFamily(
            "dcmms_bridge_messages_rejected", "MQTT messages dead-lettered by the bridge, by "
            "the first reason code of each", labels=["reason"])
        for reason, count in sorted(stats.rejected.items()):
            rejected.add_metric([reason], count)
        yield rejected
        yield CounterMetricFamily("dcmms_bridge_mqtt_reconnects",
                                  "Successful MQTT connections after the first",
                                  value=max(stats.connects - 1, 0))
        for name, doc, value in (
                ("dcmms_bridge_mqtt_connected", "1 while connected to the MQTT broker",
                 int(snap.connected)),
                ("dcmms_bridge_mqtt_subscribed", "1 while the telemetry subscription is granted",
                 int(snap.subscribed)),
                ("dcmms_bridge_inbox_messages", "Messages received from MQTT, not yet taken",
                 snap.inbox),
                ("dcmms_bridge_in_flight_messages", "Messages taken, not yet acknowledged to "
                 "the broker (waiting for Kafka or for an earlier message)", snap.in_flight),
                ("dcmms_bridge_retry_messages", "Messages waiting for a delivery retry",
                 snap.retrying),
                ("dcmms_bridge_kafka_queue_records", "Records in the Kafka producer's queue, "
                 "not yet acknowledged", snap.kafka_queue),
                ("dcmms_bridge_oldest_unconfirmed_seconds", "Age of the oldest message not yet "
                 "confirmed by Kafka (0 when none)", round(snap.oldest_unconfirmed_s, 3))):
            yield GaugeMetricFamily(name, doc, value=value)
