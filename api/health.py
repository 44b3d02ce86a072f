"""Liveness, readiness and Prometheus metrics of the API process.

* ``GET /healthz`` — 200 while the process serves requests (no dependency checked).
* ``GET /readyz`` — 200 when every dependency check passes (QuestDB answers a
  query, the Kafka cluster returns metadata), else 503; the body has per-check detail.
* ``GET /metrics`` — Prometheus text: ``dcmms_api_requests_total`` and
  ``dcmms_api_request_duration_seconds`` labelled by route template, method and
  status, and the REST ingest metrics of :class:`IngestMetrics` (docs/metrics.md
  lists every name).

Metrics under gunicorn: each worker is its own process. When the environment
variable ``PROMETHEUS_MULTIPROC_DIR`` names a directory (``runners/wsgi.py``
points it at a directory per gunicorn master), workers write their samples there and
``/metrics`` sums every worker's, whichever worker answers the scrape. Without
it the numbers are those of the worker that answered. The duration of a
streamed CSV response covers the time to its first chunk.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from flask import Blueprint, Flask, Response, current_app, g, jsonify, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)

from io_connectors.edge_metrics import DeliveryMetrics

__all__ = ["bp", "ApiMetrics", "IngestMetrics", "KafkaCheck", "METRICS_EXTENSION",
           "READY_CHECKS_EXTENSION", "init_metrics"]

_LOGGER = logging.getLogger(__name__)

READY_CHECKS_EXTENSION = "dcmms_ready_checks"
METRICS_EXTENSION = "dcmms_metrics"
_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Reasons a whole ingest request is refused: the error codes of api.ingest and
# api.auth. Listed so their series exist (at 0) before the first refusal.
INGEST_REFUSALS = ("unauthorized", "forbidden", "rate_limited", "payload_too_large",
                   "too_many_items", "unsupported_media_type", "invalid_json", "empty_batch",
                   "service_unavailable")
# Reason of the valid events of a request Kafka did not acknowledge in time (503).
KAFKA_UNAVAILABLE = "kafka_unavailable"

bp = Blueprint("health", __name__)


@dataclass
class IngestMetrics:
    """What REST ingest counts, and the delivery latency of its Kafka producer.

    Labels take values from closed sets only (validation codes, the refusal
    codes above, record kinds), never from request data.
    """

    accepted: Counter
    rejected: Counter
    refused: Counter
    # The producer's deliveries (the same families as the MQTT bridge's).
    kafka: DeliveryMetrics

    @classmethod
    def create(cls, registry: CollectorRegistry) -> IngestMetrics:
        metrics = cls(
            Counter("dcmms_ingest_events_accepted_total",
                    "Events of POST /api/v1/telemetry acknowledged by Kafka and answered 202",
                    registry=registry),
            Counter("dcmms_ingest_events_rejected_total",
                    "Events of POST /api/v1/telemetry not accepted, by reason (the first "
                    "validation code of the event, or kafka_unavailable)",
                    ("reason",), registry=registry),
            Counter("dcmms_ingest_requests_refused_total",
                    "POST /api/v1/telemetry requests refused as a whole, by error code",
                    ("reason",), registry=registry),
            DeliveryMetrics.create(registry),
        )
        for reason in INGEST_REFUSALS:
            metrics.refused.labels(reason)
        metrics.rejected.labels(KAFKA_UNAVAILABLE)
        return metrics

    def observe_delivery(self, kind: str, seconds: float, error: str | None) -> None:
        """A :data:`io_connectors.raw_producer.DeliveryObserver`."""
        self.kafka.observe(kind, seconds, error)


@dataclass
class ApiMetrics:
    """The Prometheus metrics of one app, in its own registry."""

    registry: CollectorRegistry
    requests: Counter
    duration: Histogram
    ingest: IngestMetrics


def init_metrics(app: Flask) -> None:
    """Count and time every request of ``app`` (hooks on the app, not global state)."""
    registry = CollectorRegistry()
    labels = ("route", "method", "status")
    metrics = ApiMetrics(
        registry,
        Counter("dcmms_api_requests_total", "HTTP requests served", labels, registry=registry),
        Histogram("dcmms_api_request_duration_seconds", "Time to produce the response",
                  labels, buckets=_BUCKETS, registry=registry),
        IngestMetrics.create(registry),
    )
    app.extensions[METRICS_EXTENSION] = metrics

    @app.before_request
    def _start_timer() -> None:
        g.request_started = time.perf_counter()

    @app.after_request
    def _observe(response: Response) -> Response:
        started = g.get("request_started")
        if started is not None:
            # The route template, not the path, keeps label cardinality bounded.
            route = request.url_rule.rule if request.url_rule else "unmatched"
            values = (route, request.method, str(response.status_code))
            metrics.requests.labels(*values).inc()
            metrics.duration.labels(*values).observe(time.perf_counter() - started)
        return response


class KafkaCheck:
    """Readiness check: the Kafka cluster at ``bootstrap_servers`` returns metadata.

    A client is made per check and dropped after it: a long-lived one would keep
    reconnecting (and logging) in the background while Kafka is down.
    """

    def __init__(self, bootstrap_servers: str, timeout: float = 2.0) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.timeout = timeout

    def __call__(self) -> None:
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": self.bootstrap_servers,
                             "socket.timeout.ms": int(self.timeout * 1000),
                             "reconnect.backoff.ms": 500, "logger": _LOGGER})
        try:
            metadata = admin.list_topics(timeout=self.timeout)
        except KafkaException as exc:
            raise ConnectionError(
                f"Kafka at {self.bootstrap_servers} unreachable: {exc}") from None
        if not metadata.brokers:
            raise ConnectionError(f"Kafka at {self.bootstrap_servers} reports no broker")


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz() -> Response:
    checks: dict[str, Callable[[], None]] = current_app.extensions[READY_CHECKS_EXTENSION]
    results: dict[str, dict[str, object]] = {}
    for name, check in checks.items():
        started = time.perf_counter()
        try:
            check()
        except Exception as exc:  # any failure of a dependency check means "not ready"
            results[name] = {"ok": False, "error": str(exc)[:300]}
        else:
            results[name] = {"ok": True}
        results[name]["seconds"] = round(time.perf_counter() - started, 4)
    ready = all(r["ok"] for r in results.values())
    response = jsonify({"status": "ready" if ready else "not_ready", "checks": results})
    response.status_code = 200 if ready else 503
    return response


@bp.get("/metrics")
def metrics() -> Response:
    own: ApiMetrics = current_app.extensions[METRICS_EXTENSION]
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = own.registry
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)
