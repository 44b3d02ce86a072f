"""REST ingest: ``POST /api/v1/telemetry`` (blueprint :data:`bp`).

Contract (docs/ingestion.md, DESIGN.md "REST API"):

* body: a JSON array of events or one event object, ``Content-Type:
  application/json`` (else 415), at most :attr:`IngestLimits.max_body_bytes`
  bytes (else 413, decided from ``Content-Length`` before the body is read) and
  :attr:`IngestLimits.max_items` items (else 413);
* each item is validated on its own by :func:`schemas.validation.validate_event`
  (through :func:`schemas.edge.event_from_item`); a missing ``event_id`` is
  derived deterministically, so a retried batch creates no duplicate rows;
* 202 ``{"accepted": n, "rejected": [{"index": i, "errors": [...]}]}`` once
  Kafka acknowledged *every* accepted event; 400 with the same body when no
  item is valid; 503 + ``Retry-After`` when Kafka did not acknowledge in time
  (nothing is claimed accepted; the client retries the whole batch);
* 401/403/429 come from :func:`api.auth.require_scope` ("write" scope).

Metrics (:class:`api.health.IngestMetrics`, docs/metrics.md): every validated
item is counted once, accepted or rejected by reason; a request refused as a
whole is counted by its error code; the producer reports each record's Kafka
delivery latency.

Rejected items are also sent, best effort, to ``telemetry_dlq`` (stage
``ingest``) so operators see them next to the bridge's and pipeline's rejects;
the client already got the reasons, so a lost dead letter loses no data.

The Kafka producer is created lazily in each worker process (after gunicorn
forks), from the app's settings.
"""

from __future__ import annotations

import atexit
import collections
import functools
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify, request

from api.auth import require_scope
from api.errors import ApiError, ServiceUnavailable
from api.health import INGEST_REFUSALS, KAFKA_UNAVAILABLE, METRICS_EXTENSION, IngestMetrics
from config.settings import ApiSettings, Settings, load_settings
from io_connectors.raw_producer import (
    DeliveryObserver,
    EdgeTarget,
    RawProducer,
    build_raw_producer,
)
from schemas.edge import dead_letter, event_from_item
from schemas.validation import SensorRules, default_sensor_rules

__all__ = ["EXTENSION", "IngestLimits", "IngestState", "bp", "init_ingest"]

_LOGGER = logging.getLogger(__name__)

EXTENSION = "dcmms_ingest"
INGEST_PATH = "/api/v1/telemetry"

bp = Blueprint("ingest", __name__)


@dataclass(frozen=True)
class IngestLimits:
    """Request limits (settings ``[api] ingest_*``; the defaults are those of
    :class:`config.settings.ApiSettings`)."""

    max_body_bytes: int = ApiSettings.ingest_max_body_bytes
    max_items: int = ApiSettings.ingest_max_items
    # How long a request waits for Kafka's acknowledgements before answering 503.
    ack_timeout_s: float = ApiSettings.ingest_ack_timeout_s
    retry_after_s: int = ApiSettings.ingest_retry_after_s

    @classmethod
    def from_settings(cls, settings: Settings) -> IngestLimits:
        return cls(
            max_body_bytes=settings.api.ingest_max_body_bytes,
            max_items=settings.api.ingest_max_items,
            ack_timeout_s=settings.api.ingest_ack_timeout_s,
            retry_after_s=settings.api.ingest_retry_after_s,
        )


class IngestState:
    """Per-process ingest resources: the producer (created on first use) and the rules."""

    def __init__(self, settings: Settings | None, *, limits: IngestLimits | None = None,
                 rules: SensorRules | None = None,
                 producer: RawProducer | None = None,
                 delivery_observer: DeliveryObserver | None = None) -> None:
        self.settings = settings
        self.limits = limits or (IngestLimits.from_settings(settings) if settings
                                 else IngestLimits())
        self.rules = rules or default_sensor_rules()
        self._producer = producer
        self._delivery_observer = delivery_observer
        self._pid = os.getpid() if producer is not None else None
        self._lock = threading.Lock()

    def producer(self) -> RawProducer:
        # A producer must not cross fork(): librdkafka's threads do not survive it.
        if self._producer is not None and self._pid == os.getpid():
            return self._producer
        with self._lock:
            if self._producer is None or self._pid != os.getpid():
                if self.settings is None:
                    raise RuntimeError("ingest has neither settings nor a producer")
                try:
                    self._producer = build_raw_producer(
                        EdgeTarget.from_settings(self.settings),
                        client_id=f"dcmms-rest-{os.getpid()}",
                        # Undelivered messages expire instead of piling up while
                        # Kafka is down; the client was answered 503 long before.
                        config_overrides={"message.timeout.ms": 60000},
                        delivery_observer=self._delivery_observer)
                except Exception as exc:  # registry or config problem: a 503, logged
                    _LOGGER.error("cannot create the Kafka producer for ingest: %s", exc)
                    raise ServiceUnavailable(
                        "ingest is not ready (Kafka producer or schema registry unavailable)",
                        self.limits.retry_after_s) from exc
                self._pid = os.getpid()
                # Dead letters are not awaited per request: flush them at worker exit.
                atexit.register(self.close, 5.0)
            return self._producer

    def close(self, timeout_s: float = 5.0) -> None:
        """Flush and drop this process's producer (worker exit, tests)."""
        atexit.unregister(self.close)
        producer, self._producer = self._producer, None
        if producer is not None and self._pid == os.getpid():
            producer.close(timeout_s)


def init_ingest(app: Flask, settings: Settings | None = None, **kwargs: Any) -> None:
    """Register the blueprint and its state on ``app`` (settings default: load_settings())."""
    metrics = app.extensions.get(METRICS_EXTENSION)
    if metrics is not None:
        kwargs.setdefault("delivery_observer", metrics.ingest.observe_delivery)
    app.extensions[EXTENSION] = IngestState(settings or load_settings(), **kwargs)
    app.register_blueprint(bp)


def _state() -> IngestState:
    state = current_app.extensions.get(EXTENSION)
    if state is None:
        # Blueprint registered without init_ingest: settings from the app or the environment.
        settings = current_app.config.get("DCMMS_SETTINGS") or load_settings()
        state = current_app.extensions.setdefault(
            EXTENSION, IngestState(settings, delivery_observer=_metrics().observe_delivery))
    return state


def _metrics() -> IngestMetrics:
    return current_app.extensions[METRICS_EXTENSION].ingest


def _count_refusals(view: Callable[[], Any]) -> Callable[[], Any]:
    """Count a request refused as a whole (an error raised by ``view``) by its error code."""

    @functools.wraps(view)
    def wrapper() -> Any:
        try:
            return view()
        except ApiError as exc:
            _metrics().refused.labels(_refusal_reason(exc.code)).inc()
            raise

    return wrapper


def _refusal_reason(code: str) -> str:
    # Label values come from a closed set, whatever a future error code may be.
    return code if code in INGEST_REFUSALS else "other"


@dataclass
class _Checked:
    """The items of one request after validation."""

    events: list[dict[str, Any]]
    rejected: list[dict[str, Any]]
    dead_letters: list[dict[str, Any]]
    reasons: collections.Counter[str]


@bp.post(INGEST_PATH)
@_count_refusals
@require_scope("write")
def post_telemetry() -> tuple[Response, int] | Response:
    state = _state()
    checked = _check_items(_read_items(state.limits), state.rules)
    metrics = _metrics()
    for reason, count in checked.reasons.items():
        metrics.rejected.labels(reason).inc(count)
    if not checked.events:
        _dead_letter_best_effort(state, checked.dead_letters)
        return jsonify({"accepted": 0, "rejected": checked.rejected}), 400
    _send(state, checked)
    metrics.accepted.inc(len(checked.events))
    return jsonify({"accepted": len(checked.events), "rejected": checked.rejected}), 202


def _read_items(limits: IngestLimits) -> list[Any]:
    """The request body as a list of items, or an ApiError (413, 415, 400)."""
    length = request.content_length
    if length is not None and length > limits.max_body_bytes:
        raise _payload_too_large(limits, f"request body of {length} bytes")
    if request.mimetype != "application/json":
        raise ApiError(415, "unsupported_media_type",
                       "Content-Type must be application/json",
                       {"content_type": request.content_type or ""})
    # A chunked body has no Content-Length. Werkzeug stops reading it at
    # max_content_length but returns what it read (no 413): read one byte more
    # than allowed so that a longer body is seen, and refused, here.
    request.max_content_length = limits.max_body_bytes + 1
    body = request.get_data(cache=False)
    if len(body) > limits.max_body_bytes:
        raise _payload_too_large(limits, "request body")
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, "invalid_json", "request body is not valid UTF-8 JSON",
                       {"error": str(exc)[:200]}) from None

    items = parsed if isinstance(parsed, list) else [parsed]
    if not items:
        raise ApiError(400, "empty_batch", "the array holds no events", {})
    if len(items) > limits.max_items:
        raise ApiError(413, "too_many_items",
                       f"{len(items)} items exceed the limit of {limits.max_items} per request",
                       {"max_items": limits.max_items, "max_body_bytes": limits.max_body_bytes})
    return items


def _payload_too_large(limits: IngestLimits, what: str) -> ApiError:
    return ApiError(413, "payload_too_large", f"{what} exceeds {limits.max_body_bytes} bytes",
                    {"max_body_bytes": limits.max_body_bytes, "max_items": limits.max_items})


def _check_items(items: list[Any], rules: SensorRules) -> _Checked:
    now_ms = int(time.time() * 1000)
    checked = _Checked([], [], [], collections.Counter())
    for index, item in enumerate(items):
        result = event_from_item(item, now_ms=now_ms, rules=rules)
        if result.event is not None:
            checked.events.append(result.event)
            continue
        errors = list(result.errors)
        checked.rejected.append({"index": index, "errors": errors})
        # One count per event (its first code), so the reasons add up to the events.
        checked.reasons[result.codes[0] if result.codes else "event.invalid"] += 1
        checked.dead_letters.append(dead_letter(
            stage="ingest", reasons=errors, original=_item_bytes(item), source="http",
            topic=INGEST_PATH, failed_at_ms=now_ms))
    return checked


def _send(state: IngestState, checked: _Checked) -> None:
    """Hand the valid events to Kafka and wait for it; a 503 unless all are acknowledged."""
    try:
        producer = state.producer()
    except ServiceUnavailable:
        _metrics().rejected.labels(KAFKA_UNAVAILABLE).inc(len(checked.events))
        raise
    limits = state.limits
    outcome = producer.send_batch(checked.events, timeout_s=limits.ack_timeout_s,
                                  dead_letters=checked.dead_letters)
    if outcome.ok:
        return
    # Nothing of the request counts as accepted: the client retries all of it.
    _metrics().rejected.labels(KAFKA_UNAVAILABLE).inc(len(checked.events))
    first = next(iter(outcome.failures.values()))
    _LOGGER.warning("ingest: %d of %d event(s) not acknowledged by Kafka (%s); "
                    "answering 503", len(outcome.failures), len(checked.events), first)
    raise ServiceUnavailable(
        "Kafka did not acknowledge the events in time; nothing was accepted, "
        "retry the whole request (event ids make retries idempotent)",
        limits.retry_after_s, unacknowledged=len(outcome.failures), reason=first)


def _dead_letter_best_effort(state: IngestState, records: list[dict[str, Any]]) -> None:
    try:
        producer = state.producer()
    except ServiceUnavailable:
        _LOGGER.warning("ingest: %d rejected item(s) not dead-lettered (Kafka unavailable)",
                        len(records))
        return
    producer.send_batch([], timeout_s=0.0, dead_letters=records)

def _item_bytes(item: Any) -> bytes:
    try:
        return json.dumps(item, ensure_ascii=False, allow_nan=True).encode("utf-8",
                                                                           "surrogatepass")
    except (TypeError, ValueError, RecursionError):
        return repr(item).encode("utf-8", "replace")
