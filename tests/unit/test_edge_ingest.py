"""Unit tests of POST /api/v1/telemetry through Flask's test client (fake producer)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api import create_app
from api.ingest import EXTENSION, IngestLimits, IngestState
from config.settings import Settings, load_settings
from io_connectors.kafka_partition import partition_for
from io_connectors.raw_producer import BatchOutcome
from tests.unit.test_edge_producer import (
    BATCH_ID,
    PARTITIONS,
    FakeKafka,
    assets_in_distinct_partitions,
    make,
)

URL = "/api/v1/telemetry"


class FakeProducer:
    def __init__(self) -> None:
        self.batches: list[list[dict[str, Any]]] = []
        self.dead_letters: list[dict[str, Any]] = []
        self.unacked = False

    def send_batch(self, events: list[dict[str, Any]], *, timeout_s: float,
                   dead_letters: Any = ()) -> BatchOutcome:
        self.dead_letters.extend(dead_letters)
        if self.unacked and events:
            return BatchOutcome(len(events), {i: "not acknowledged" for i in range(len(events))})
        self.batches.append(list(events))
        return BatchOutcome(len(events))


def app_settings(**api: Any) -> Settings:
    base = load_settings()
    values = {s: base.section(s) for s in ("stack", "kafka", "schema_registry", "questdb",
                                           "mqtt", "api", "pipeline")}
    values["api"].update({"api_keys": "w-key:read+write,r-key:read"}, **api)
    return Settings(values, Path("unit-test"), {})


def make_client(producer: FakeProducer, limits: IngestLimits | None = None, **api: Any) -> Any:
    s = app_settings(**api)
    app = create_app(s, {"TELEMETRY_STORE": object(), "READY_CHECKS": {}})
    app.extensions[EXTENSION] = IngestState(s, producer=producer,  # type: ignore[arg-type]
                                            limits=limits)
    return app.test_client()


def event(**fields: Any) -> dict[str, Any]:
    e = {"site_id": "site-1", "asset_id": "asset-001", "sensor_id": "s1",
         "sensor_type": "TEMPERATURE", "timestamp": int(time.time() * 1000) - 1000,
         "value": 20.0, "unit": "celsius"}
    e.update(fields)
    return e


W = {"Authorization": "Bearer w-key"}


@pytest.fixture
def producer() -> FakeProducer:
    return FakeProducer()


def test_mixed_batch_is_202_with_rejected_indexes(producer: FakeProducer) -> None:
    client = make_client(producer)
    r = client.post(URL, json=[event(), event(value="hot"), event(sensor_id="s2")], headers=W)
    assert r.status_code == 202
    assert r.get_json()["accepted"] == 2
    assert [x["index"] for x in r.get_json()["rejected"]] == [1]
    assert r.get_json()["rejected"][0]["errors"][0].startswith("value:")
    assert len(producer.batches[0]) == 2 and all(e["event_id"] for e in producer.batches[0])
    assert producer.dead_letters[0]["stage"] == "ingest"


def test_single_object_and_derived_id_is_stable(producer: FakeProducer) -> None:
    client = make_client(producer)
    e = event()
    assert client.post(URL, json=e, headers=W).status_code == 202
    assert client.post(URL, json=e, headers=W).status_code == 202
    assert producer.batches[0][0]["event_id"] == producer.batches[1][0]["event_id"]


def test_none_valid_is_400_with_same_body(producer: FakeProducer) -> None:
    r = make_client(producer).post(URL, json=[{"x": 1}], headers=W)
    assert r.status_code == 400
    assert r.get_json()["accepted"] == 0 and r.get_json()["rejected"][0]["index"] == 0
    assert all(batch == [] for batch in producer.batches), "no event may be produced"
    assert len(producer.dead_letters) == 1


@pytest.mark.parametrize("headers,status", [({}, 401), ({"Authorization": "Bearer nope"}, 401),
                                            ({"Authorization": "Bearer r-key"}, 403)])
def test_auth(producer: FakeProducer, headers: dict[str, str], status: int) -> None:
    r = make_client(producer).post(URL, json=[event()], headers=headers)
    assert r.status_code == status and r.get_json()["code"]
    assert producer.batches == []


def test_415_when_not_json(producer: FakeProducer) -> None:
    r = make_client(producer).post(URL, data="a=1", headers={**W, "Content-Type": "text/plain"})
    assert r.status_code == 415


def test_413_body_and_item_limits(producer: FakeProducer) -> None:
    client = make_client(producer, IngestLimits(max_body_bytes=1000, max_items=3))
    r = client.post(URL, data=json.dumps([event()] * 10), headers=W,
                    content_type="application/json")
    assert r.status_code == 413 and r.get_json()["code"] == "payload_too_large"
    r = client.post(URL, data="[1,2,3,4]", headers=W, content_type="application/json")
    assert r.status_code == 413 and r.get_json()["code"] == "too_many_items"


def test_429_over_the_key_rate(producer: FakeProducer) -> None:
    client = make_client(producer, rate_limit_per_second=0.001, rate_limit_burst=2)
    codes = [client.post(URL, json=event(), headers=W).status_code for _ in range(3)]
    assert codes == [202, 202, 429]


def test_503_when_kafka_does_not_acknowledge(producer: FakeProducer) -> None:
    producer.unacked = True
    r = make_client(producer).post(URL, json=[event()], headers=W)
    assert r.status_code == 503 and r.headers["Retry-After"]
    assert "accepted" not in r.get_json()


def test_real_producer_sends_one_record_per_partition_chunk_then_202() -> None:
    kafka = FakeKafka()
    client = make_client(make(kafka, batch_max_events=2))  # type: ignore[arg-type]
    a, b = assets_in_distinct_partitions(2)
    body = [event(asset_id=a, sensor_id=f"s{i}") for i in range(3)] + [event(asset_id=b)]
    r = client.post(URL, json=body, headers=W)
    assert r.status_code == 202 and r.get_json()["accepted"] == 4
    records = kafka.raw_records()
    assert [(p, len(rec["events"])) for _, p, _, rec in records] == [
        (partition_for(a.encode(), PARTITIONS), 2), (partition_for(a.encode(), PARTITIONS), 1),
        (partition_for(b.encode(), PARTITIONS), 1)]
    assert all(key is None and sid == BATCH_ID for key, _, sid, _ in records)


def test_503_when_one_chunk_of_the_request_fails() -> None:
    a, b = assets_in_distinct_partitions(2)
    kafka = FakeKafka(fail_partitions={partition_for(b.encode(), PARTITIONS)})
    client = make_client(make(kafka))  # type: ignore[arg-type]
    body = [event(asset_id=a, sensor_id="s1"), event(asset_id=b), event(asset_id=a)]
    r = client.post(URL, json=body, headers=W)
    assert r.status_code == 503 and r.headers["Retry-After"]
    assert r.get_json()["details"]["unacknowledged"] == 1
    assert "accepted" not in r.get_json()


@pytest.mark.parametrize("body", [b"{", b"\xff\xfe", b"[" * 50000, b"", b"[]", b"NaN"])
def test_malformed_bodies_are_4xx(producer: FakeProducer, body: bytes) -> None:
    r = make_client(producer).post(URL, data=body, headers=W, content_type="application/json")
    assert 400 <= r.status_code < 500


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-10**30, max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=12), c, max_size=8),
    max_leaves=25)
fields = st.fixed_dictionaries({}, optional={
    k: json_values | st.just(v)
    for k, v in {**event(), "event_id": "e-1", "quality_flag": "GOOD", "source": "x"}.items()})


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=json_values | st.lists(fields, max_size=5) | fields)
def test_generated_bodies_never_5xx(body: Any) -> None:
    client = make_client(FakeProducer())
    r = client.post(URL, data=json.dumps(body), headers=W, content_type="application/json")
    assert r.status_code in (202, 400), r.get_data()
