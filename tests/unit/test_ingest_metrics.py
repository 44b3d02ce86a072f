"""Unit tests of the REST ingest metrics on /metrics (fake producer, Flask's test client).

Counters are read back from the app's registry and from the /metrics text, so
both the counting and the exposition are checked.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request

import api.ingest as ingest_module
from api.health import INGEST_REFUSALS, METRICS_EXTENSION
from api.ingest import EXTENSION, IngestState
from io_connectors.raw_producer import RECORD_KINDS, RawProducer
from tests.unit.test_edge_ingest import URL, FakeProducer, W, app_settings, event, make_client
from tests.unit.test_edge_producer import FakeKafka, make

ACCEPTED = "dcmms_ingest_events_accepted_total"
REJECTED = "dcmms_ingest_events_rejected_total"
REFUSED = "dcmms_ingest_requests_refused_total"
DELIVERY = "dcmms_edge_kafka_delivery_seconds"
DELIVERY_FAILURES = "dcmms_edge_kafka_delivery_failures_total"


def scrape(client: FlaskClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of GET /metrics, keyed by (name, sorted labels)."""
    response = client.get("/metrics")
    assert response.status_code == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.get_data(as_text=True))
            for s in family.samples}


def value(client: FlaskClient, name: str, **labels: str) -> float:
    return scrape(client).get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def producer() -> FakeProducer:
    return FakeProducer()


def test_valid_and_invalid_items_move_accepted_and_rejected_by_reason(
        producer: FakeProducer) -> None:
    client = make_client(producer)
    assert value(client, ACCEPTED) == 0.0
    body = [event(), event(sensor_id="s2"), event(value="hot"), event(unit="parsec"), 7]
    assert client.post(URL, json=body, headers=W).status_code == 202
    assert value(client, ACCEPTED) == 2.0
    assert value(client, REJECTED, reason="value.type") == 1.0
    assert value(client, REJECTED, reason="unit.not_allowed") == 1.0
    assert value(client, REJECTED, reason="event.type") == 1.0  # 7 is not an object

    # Nothing valid: a 400, the rejects are counted, accepted does not move.
    assert client.post(URL, json=[event(value="x")], headers=W).status_code == 400
    assert value(client, ACCEPTED) == 2.0
    assert value(client, REJECTED, reason="value.type") == 2.0


def test_an_event_with_several_faults_counts_once_under_its_first_code(
        producer: FakeProducer) -> None:
    client = make_client(producer)
    r = client.post(URL, json=[event(site_id=None, value="x")], headers=W)
    assert r.status_code == 400 and len(r.get_json()["rejected"][0]["errors"]) == 2
    rejected = {labels: v for (name, labels), v in scrape(client).items()
                if name == REJECTED and v}
    assert rejected == {(("reason", "site_id.missing"),): 1.0}


def test_unacknowledged_events_count_as_kafka_unavailable_not_accepted(
        producer: FakeProducer) -> None:
    producer.unacked = True
    client = make_client(producer)
    r = client.post(URL, json=[event(), event(sensor_id="s2"), event(value="x")], headers=W)
    assert r.status_code == 503
    assert value(client, ACCEPTED) == 0.0
    assert value(client, REJECTED, reason="kafka_unavailable") == 2.0
    assert value(client, REJECTED, reason="value.type") == 1.0
    assert value(client, REFUSED, reason="service_unavailable") == 1.0


@pytest.mark.parametrize(("kwargs", "reason"), [
    ({"data": "[]", "content_type": "application/json"}, "empty_batch"),
    ({"data": "{", "content_type": "application/json"}, "invalid_json"),
    ({"data": "[]", "content_type": "text/plain"}, "unsupported_media_type"),
    ({"data": "[" + ",".join(["1"] * 11) + "]", "content_type": "application/json"},
     "too_many_items"),
    ({"data": "x" * 2048, "content_type": "application/json"}, "payload_too_large"),
])
def test_refused_requests_are_counted_by_error_code(producer: FakeProducer,
                                                    kwargs: dict[str, Any], reason: str) -> None:
    client = make_client(producer, ingest_max_items=10, ingest_max_body_bytes=1024)
    r = client.post(URL, headers=W, **kwargs)
    assert 400 <= r.status_code < 500 and r.get_json()["code"] == reason
    assert value(client, REFUSED, reason=reason) == 1.0
    assert value(client, ACCEPTED) == 0.0


@pytest.mark.parametrize("size", [1024, 1025, 4003])
def test_chunked_body_over_the_limit_is_a_413_and_counted(producer: FakeProducer,
                                                          size: int) -> None:
    client = make_client(producer, ingest_max_body_bytes=1024)
    body = b"[1]" + b" " * (size - 3)  # still valid JSON if cut at the limit
    builder = EnvironBuilder(path=URL, method="POST", headers=W, content_type="application/json",
                             data=body)
    environ = builder.get_environ()
    # As a chunked request arrives: no Content-Length, the server marks the input as terminated.
    del environ["CONTENT_LENGTH"]
    environ["wsgi.input_terminated"] = True
    r = client.open(Request(environ))  # a dict would be rebuilt with a Content-Length
    if size <= 1024:
        assert r.status_code == 400 and r.get_json()["rejected"][0]["index"] == 0
        return
    assert r.status_code == 413 and r.get_json()["code"] == "payload_too_large"
    assert value(client, REFUSED, reason="payload_too_large") == 1.0


@pytest.mark.parametrize(("headers", "reason"), [
    ({}, "unauthorized"), ({"Authorization": "Bearer wrong"}, "unauthorized"),
    ({"Authorization": "Bearer r-key"}, "forbidden")])
def test_auth_refusals_are_counted(producer: FakeProducer, headers: dict[str, str],
                                   reason: str) -> None:
    client = make_client(producer)
    assert client.post(URL, json=[event()], headers=headers).status_code in (401, 403)
    assert value(client, REFUSED, reason=reason) == 1.0


def test_every_refusal_reason_and_record_kind_is_exposed_from_the_start(
        producer: FakeProducer) -> None:
    samples = scrape(make_client(producer))
    for reason in INGEST_REFUSALS:
        assert samples[(REFUSED, (("reason", reason),))] == 0.0
    for kind in RECORD_KINDS:
        assert samples[(f"{DELIVERY}_count", (("record", kind),))] == 0.0
        assert samples[(DELIVERY_FAILURES, (("record", kind),))] == 0.0


def test_the_producer_of_the_app_reports_delivery_latency(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The app wires its histogram into the producer it builds (Kafka faked)."""
    kafka = FakeKafka()
    built: list[dict[str, Any]] = []

    def fake_build(target: Any, **kwargs: Any) -> RawProducer:
        built.append(kwargs)
        return make(kafka, delivery_observer=kwargs["delivery_observer"])

    monkeypatch.setattr(ingest_module, "build_raw_producer", fake_build)
    from api import create_app

    app = create_app(app_settings(), {"TELEMETRY_STORE": object(), "READY_CHECKS": {}})
    client = app.test_client()
    try:
        assert client.post(URL, json=[event(), event(value="x")], headers=W).status_code == 202
        assert len(built) == 1 and built[0]["delivery_observer"] is not None
        samples = scrape(client)
        assert samples[(f"{DELIVERY}_count", (("record", "batch"),))] == 1.0
        assert samples[(f"{DELIVERY}_bucket", (("le", "+Inf"), ("record", "batch")))] == 1.0
        # The invalid item's dead letter is a record of its own.
        kafka.poll(0)
        assert value(client, f"{DELIVERY}_count", record="dead_letter") == 1.0

        kafka.fail = True
        assert client.post(URL, json=[event(sensor_id="s9")], headers=W).status_code == 503
        assert value(client, DELIVERY_FAILURES, record="batch") == 1.0
        assert value(client, f"{DELIVERY}_count", record="batch") == 1.0
    finally:
        state: IngestState = app.extensions[EXTENSION]
        state.close(0.0)


def test_metrics_are_per_app_not_global(producer: FakeProducer) -> None:
    first, second = make_client(producer), make_client(FakeProducer())
    first.post(URL, json=[event()], headers=W)
    assert value(first, ACCEPTED) == 1.0 and value(second, ACCEPTED) == 0.0
    registry = first.application.extensions[METRICS_EXTENSION].registry
    assert registry.get_sample_value(ACCEPTED) == 1.0


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=10), c, max_size=6),
    max_leaves=20)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(items=st.lists(json_values | st.builds(event), min_size=1, max_size=6))
def test_every_item_is_counted_exactly_once(items: list[Any]) -> None:
    client = make_client(FakeProducer())
    r = client.post(URL, data=json.dumps(items), headers=W, content_type="application/json")
    assert r.status_code in (202, 400)
    samples = scrape(client)
    rejected = sum(v for (name, labels), v in samples.items() if name == REJECTED)
    assert samples[(ACCEPTED, ())] == r.get_json()["accepted"]
    assert rejected == len(r.get_json()["rejected"])
    assert samples[(ACCEPTED, ())] + rejected == len(items)
    # Label values stay in the validator's closed set of codes ("<field>.<fault>").
    reasons = {dict(labels)["reason"] for (name, labels), v in samples.items()
               if name == REJECTED and v}
    assert all(reason.count(".") == 1 and len(reason) < 40 for reason in reasons), reasons
