"""Unit tests of the operator console's pure parts and HTTP layer (no services).

Counter names, rates, dead-letter grouping and replay planning are pure; the console
app, the dead-letter and acknowledgement endpoints run against fakes of their stores.
The same paths against real services: tests/integration/test_console.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from hypothesis import given
from hypothesis import strategies as st

from api import create_app
from api.alarm_acks import ACKNOWLEDGED
from api.console import create_console_app
from api.console.backend import _counter_families
from api.console.rates import increase, per_minute_history, rates_per_minute
from api.dead_letters import EXTENSION as DEAD_LETTERS
from config.settings import load_settings
from io_connectors.dead_letter_store import ReplayResult
from io_connectors.flink_rest import readable_counter, sum_counters
from runners.profiles import PROFILES
from schemas.avro import TELEMETRY_EVENT, load_schema
from schemas.dead_letter_query import (
    DeadLetterFilter,
    parse_record_id,
    reason_class,
    summarize,
)
from schemas.replay import plan_replay
from schemas.validation import default_sensor_rules
from schemas.wire import InMemorySchemaLookup, decode, encode

KEY = {"Authorization": "Bearer dev-api-key"}
NOW = 1_800_000_000_000


# -- counters and rates ---------------------------------------------------------------------

def test_flink_metric_names_become_readable_counters() -> None:
    stage = "[8]{ReadRawTelemetry__DecodeAvro__FlattenDeadLetters__ValidateReadings__WriteDea"
    assert readable_counter(f"{stage}.dcmms_telemetry_read") == "read"
    assert readable_counter(f"{stage}.dcmms_telemetry_invalid_value_range") == \
        "invalid_value_range"
    assert readable_counter(f"{stage}.dcmms_kafka_sink_telemetry_dlq_produced") == \
        "kafka_sink_telemetry_dlq_produced"
    assert readable_counter(f"{stage}.dcmms_questdb_sink_alarms_retries") == \
        "questdb_sink_alarms_retries"
    assert readable_counter("0.numRecordsIn") is None
    assert readable_counter(f"{stage}.dcmms_telemetry_") is None
    assert sum_counters([{"id": "a.dcmms_telemetry_read", "sum": "3"},
                         {"id": "b.dcmms_telemetry_read", "sum": 4.0},
                         {"id": "c.numRecordsOut", "sum": 9},
                         {"id": "d.dcmms_telemetry_valid", "sum": "x"}]) == {"read": 7.0}


def test_rates_per_minute_and_restarts() -> None:
    assert increase(10, 25) == 15 and increase(25, 4) == 4  # a resubmitted job starts at 0
    older = (1000.0, {"read": 100.0, "valid": 90.0, "invalid_value_range": 1.0})
    newer = (1030.0, {"read": 160.0, "valid": 140.0, "invalid_value_range": 3.0,
                      "enrich_failed_unknown_asset": 2.0})
    rates = rates_per_minute(older, newer)
    assert rates["read"] == pytest.approx(120.0) and rates["valid"] == pytest.approx(100.0)
    assert rates["invalid_value_range"] == pytest.approx(4.0)
    assert rates["enrich_failed_unknown_asset"] == pytest.approx(4.0)
    assert rates["alarms_raised"] == 0.0
    assert rates_per_minute(older, (1000.5, newer[1])) == {}


def test_per_minute_history_buckets_every_minute_between_samples() -> None:
    samples = [(600.0, {"read": 0.0}), (630.0, {"read": 30.0}), (660.0, {"read": 90.0}),
               (780.0, {"read": 100.0})]
    history = per_minute_history(samples)
    # Each increase lands in the minute of the newer sample; a minute with none shows 0.
    assert [h["at"] for h in history] == [600.0, 660.0, 720.0, 780.0]
    assert [h["read"] for h in history] == [30.0, 60.0, 0.0, 10.0]
    assert per_minute_history(samples[:1]) == []


@given(st.lists(st.floats(min_value=0, max_value=1e9), min_size=2, max_size=30))
def test_history_never_negative(values: list[float]) -> None:
    samples = [(60.0 * i, {"read": v}) for i, v in enumerate(values)]
    assert all(h["read"] >= 0 for h in per_minute_history(samples))


def test_reason_families_become_labels() -> None:
    families = {f.name: f for f in _counter_families(
        {"read": 5.0, "invalid": 3.0, "invalid_value_range": 2.0, "invalid_unit_mismatch": 1.0,
         "decode_failed_bad_magic": 4.0})}
    assert families["dcmms_pipeline_read"].samples[0].value == 5.0
    assert families["dcmms_pipeline_invalid"].samples[0].value == 3.0
    by_reason = {s.labels["reason"]: s.value
                 for s in families["dcmms_pipeline_invalid_by_reason"].samples}
    assert by_reason == {"value_range": 2.0, "unit_mismatch": 1.0}
    assert families["dcmms_pipeline_decode_failed"].samples[0].labels == {"reason": "bad_magic"}


def test_console_port_moves_with_the_profile() -> None:
    assert PROFILES["dev4"]["DCMMS_CONSOLE_PORT"] == "48080"
    assert PROFILES["test"]["DCMMS_CONSOLE_PORT"] == "28080"


# -- dead letters: grouping, ids, replay plans ------------------------------------------------

def test_reason_class_blanks_values() -> None:
    assert reason_class("asset_id: unknown asset 'asset-999' (not in the asset catalog)") == \
        "asset_id: unknown asset '…' (not in the asset catalog)"
    assert reason_class("value 950.5 above max 200") == "value N above max N"
    assert reason_class("schema id 12: body truncated") == "schema id N: body truncated"


@given(st.text(max_size=300))
def test_reason_class_never_raises_and_is_bounded(text: str) -> None:
    assert len(reason_class(text)) <= 160


@pytest.mark.parametrize("text", ["", "3", "a:1", "1:b", "1:2:3", ":1", "-1:2", 5, None])
def test_bad_record_ids_are_value_errors(text: Any) -> None:
    with pytest.raises(ValueError):
        parse_record_id(text)


def test_record_id_round_trip() -> None:
    assert parse_record_id("3:1045") == (3, 1045)


def _dead(stage: str, reason: str, at: int, **extra: Any) -> dict[str, Any]:
    return {"stage": stage, "reasons": [reason], "failed_at": at, "source": "kafka", **extra}


def test_filter_and_summary() -> None:
    items = [_dead("enrich", "unknown asset 'a-1'", 60_000),
             _dead("enrich", "unknown asset 'a-2'", 61_000),
             _dead("validate", "value 5 above max 3", 130_000, event_id="e-1")]
    summary = summarize(items)
    assert summary["by_stage"] == {"enrich": 2, "validate": 1}
    assert summary["by_reason"][0] == {"stage": "enrich", "reason": "unknown asset '…'",
                                       "count": 2}
    assert summary["per_minute"] == [{"at": 60_000, "count": 2}, {"at": 120_000, "count": 1}]
    assert DeadLetterFilter(reason="unknown asset '…'").matches(items[0])
    assert DeadLetterFilter(reason="'a-2'").matches(items[1])
    assert not DeadLetterFilter(reason="'a-2'").matches(items[0])
    assert not DeadLetterFilter(stage="validate").matches(items[0])
    assert DeadLetterFilter(event_id="e-1", since_ms=130_000).matches(items[2])
    assert not DeadLetterFilter(until_ms=130_000).matches(items[2])
    with pytest.raises(ValueError):
        DeadLetterFilter(stage="nope")


def _event(**extra: Any) -> dict[str, Any]:
    return {"event_id": "evt-1", "timestamp": NOW - 60_000, "site_id": "site-1",
            "asset_id": "asset-9", "sensor_id": "t-1", "sensor_type": "TEMPERATURE",
            "value": 21.5, "unit": "celsius", "quality_flag": "GOOD", **extra}


def test_replay_plans_for_each_kind_of_original() -> None:
    rules = default_sensor_rules()
    item = json.dumps(_event(source="mqtt")).encode()
    plan = plan_replay({"stage": "enrich", "original_format": "json", "original": item,
                        "source": "kafka"}, now_ms=NOW, rules=rules)
    assert plan.ok and plan.events[0]["event_id"] == "evt-1"
    assert plan.events[0]["asset_id"] == "asset-9"

    mqtt = json.dumps({k: v for k, v in _event().items()
                       if k not in ("site_id", "asset_id", "sensor_type", "event_id")}).encode()
    plan = plan_replay({"stage": "bridge", "original_format": "json", "original": mqtt,
                        "source": "mqtt", "topic": "telemetry/site-1/asset-9/TEMPERATURE"},
                       now_ms=NOW, rules=rules)
    assert plan.ok and plan.events[0]["asset_id"] == "asset-9"
    again = plan_replay({"stage": "bridge", "original_format": "json", "original": mqtt,
                         "source": "mqtt", "topic": "telemetry/site-1/asset-9/TEMPERATURE"},
                        now_ms=NOW + 5_000, rules=rules)
    assert again.events[0]["event_id"] == plan.events[0]["event_id"], "derived ids are stable"

    lookup = InMemorySchemaLookup()
    schema = load_schema(TELEMETRY_EVENT)
    sid = lookup.register(schema)
    frame = encode({**_event(), "source": "http"}, sid, schema)
    plan = plan_replay({"stage": "validate", "original_format": "avro-confluent",
                        "original": frame, "source": "kafka"}, now_ms=NOW, rules=rules,
                       decode_avro=lambda b: decode(b, lookup)[1])
    assert plan.ok and plan.events[0]["value"] == 21.5


@pytest.mark.parametrize("dead, code", [
    ({"stage": "decode", "original_format": "avro-confluent", "original": b"\x01junk"},
     "stage.decode"),
    ({"stage": "enrich", "original_format": "json", "original": b""}, "original.missing"),
    ({"stage": "enrich", "original_format": "json", "original": b"{not json"},
     "payload.not_json"),
    ({"stage": "enrich", "original_format": "json", "original": b"[1, 2]"}, "event.type"),
    ({"stage": "validate", "original_format": "avro-confluent", "original": b"\x00\x00\x00"},
     "avro.undecodable"),
    ({"stage": "sink", "original_format": "weird", "original": b"x"}, "format.unknown"),
])
def test_unreplayable_dead_letters_say_why(dead: dict[str, Any], code: str) -> None:
    lookup = InMemorySchemaLookup()
    plan = plan_replay(dead, now_ms=NOW, rules=default_sensor_rules(),
                       decode_avro=lambda b: decode(b, lookup)[1])
    assert not plan.ok and plan.skipped and code in plan.codes


def test_still_invalid_events_are_not_replayed() -> None:
    bad = json.dumps(_event(value="hot")).encode()
    plan = plan_replay({"stage": "validate", "original_format": "json", "original": bad,
                        "source": "http"}, now_ms=NOW, rules=default_sensor_rules())
    assert not plan.ok and plan.skipped.startswith("still invalid")


@given(st.binary(max_size=200), st.sampled_from(["json", "avro-confluent", "unknown"]),
       st.sampled_from(["kafka", "mqtt", "http", None]))
def test_plan_replay_never_raises(original: bytes, fmt: str, source: str | None) -> None:
    lookup = InMemorySchemaLookup()
    plan_replay({"stage": "enrich", "original_format": fmt, "original": original,
                 "source": source, "topic": "telemetry/a/b/TEMPERATURE"},
                now_ms=NOW, rules=default_sensor_rules(),
                decode_avro=lambda b: decode(b, lookup)[1])


# -- HTTP: dead letters, replay, acknowledgement, console -------------------------------------

class FakeDeadLetters:
    def __init__(self) -> None:
        self.items = [
            {"id": "0:5", "stage": "enrich", "reasons": ["unknown asset 'a-9'"],
             "reason": "unknown asset '…'", "source": "kafka", "failed_at": NOW,
             "original_bytes": b"{}", "payload": {"text": "<script>x</script>"}},
            {"id": "1:2", "stage": "decode", "reasons": ["magic byte is 1, expected 0"],
             "reason": "magic byte is N, expected N", "source": "kafka", "failed_at": NOW - 1},
        ]
        self.replayed: list[list[str]] = []

    def recent(self, scan: int, with_original: bool = False) -> list[dict[str, Any]]:
        return [dict(i) for i in self.items]

    def by_ids(self, ids: list[tuple[int, int]]) -> list[dict[str, Any]]:
        wanted = {f"{p}:{o}" for p, o in ids}
        return [dict(i) for i in self.items if i["id"] in wanted]

    def replay(self, items: list[dict[str, Any]], requested: int | None = None) -> ReplayResult:
        self.replayed.append([i["id"] for i in items])
        return ReplayResult(requested=requested or len(items),
                            replayed=[i["id"] for i in items if i["stage"] != "decode"])


class FakeAcks:
    def __init__(self) -> None:
        self.acks: dict[str, dict[str, Any]] = {}

    def alarm_exists(self, alarm_id: str) -> bool:
        return alarm_id.startswith("a1:")

    def acknowledgements(self, ids: Any) -> dict[str, dict[str, Any]]:
        return {i: self.acks[i] for i in ids if i in self.acks}

    def acknowledge(self, alarm_id: str, by: str, note: str | None, key_id: str) -> str:
        self.acks[alarm_id] = {"alarm_id": alarm_id, "acknowledged_by": by,
                               "acknowledged_at": "2026-01-01T00:00:00.000Z", "note": note}
        return "2026-01-01T00:00:00.000Z"


class AlarmStore:
    def alarms(self, q: Any, after: Any) -> Any:
        from api.questdb import Page

        return Page([{"alarm_id": "a1:s:1", "state": "RAISED"},
                     {"alarm_id": "a1:s:2", "state": "RAISED"}], None)

    def ping(self) -> None:
        pass


@pytest.fixture()
def api_app(tmp_path: Path) -> tuple[Flask, FakeDeadLetters, FakeAcks]:
    dead, acks = FakeDeadLetters(), FakeAcks()
    app = create_app(load_settings(), {"TESTING": True, "TELEMETRY_STORE": AlarmStore(),
                                       "READY_CHECKS": {}, "ALARM_ACKS": acks})
    app.extensions[DEAD_LETTERS] = dead
    return app, dead, acks


def test_dead_letter_list_filters_and_never_sends_raw_bytes(api_app: Any) -> None:
    app, _dead, _acks = api_app
    client = app.test_client()
    body = client.get("/api/v1/dead-letters?stage=enrich", headers=KEY).get_json()
    assert [i["id"] for i in body["data"]] == ["0:5"] and body["matched"] == 1
    assert "original_bytes" not in body["data"][0]
    assert body["summary"]["by_stage"] == {"enrich": 1}
    assert client.get("/api/v1/dead-letters").status_code == 401


@pytest.mark.parametrize("query", ["stage=nope", "source=x", "limit=0", "limit=abc",
                                   "scan=99999", "since=yesterday", "until=", "reason=",
                                   "other=1", "stage=enrich&stage=decode"])
def test_dead_letter_list_bad_parameters_are_400(api_app: Any, query: str) -> None:
    app, _dead, _acks = api_app
    assert app.test_client().get(f"/api/v1/dead-letters?{query}", headers=KEY).status_code == 400


def test_replay_by_ids_and_by_reason(api_app: Any) -> None:
    app, dead, _acks = api_app
    client = app.test_client()
    r = client.post("/api/v1/dead-letters/replay", json={"ids": ["0:5", "7:7", "0:5"]},
                    headers=KEY)
    assert r.status_code == 200
    assert r.get_json()["not_found"] == ["7:7"] and dead.replayed[-1] == ["0:5"]
    r = client.post("/api/v1/dead-letters/replay",
                    json={"all": True, "reason": "unknown asset '…'"}, headers=KEY)
    assert r.status_code == 200 and dead.replayed[-1] == ["0:5"]


@pytest.mark.parametrize("body", [
    {}, {"ids": []}, {"ids": "0:5"}, {"ids": [5]}, {"ids": ["x:1"]}, {"ids": ["0:5"] * 1001},
    {"ids": ["0:5"], "all": True}, {"all": "yes"}, {"all": False}, {"all": True, "stage": "x"},
    {"all": True, "scan": 0}, {"all": True, "scan": True}, {"all": True, "since": []},
    {"ids": ["0:5"], "stage": "enrich"}, {"bogus": 1}, [1], "text", None,
])
def test_bad_replay_bodies_are_4xx(api_app: Any, body: Any) -> None:
    app, dead, _acks = api_app
    r = app.test_client().post("/api/v1/dead-letters/replay", json=body, headers=KEY)
    assert 400 <= r.status_code < 500, (body, r.status_code)
    assert dead.replayed == []


def test_replay_needs_write_scope_and_json() -> None:
    app = create_app(load_settings(environ={"DCMMS_API_API_KEYS": "ro:read"}),
                     {"TESTING": True, "TELEMETRY_STORE": AlarmStore(), "READY_CHECKS": {},
                      "ALARM_ACKS": FakeAcks()})
    app.extensions[DEAD_LETTERS] = FakeDeadLetters()
    client = app.test_client()
    ro = {"Authorization": "Bearer ro"}
    assert client.post("/api/v1/dead-letters/replay", json={"ids": ["0:5"]},
                       headers=ro).status_code == 403
    assert client.post("/api/v1/alarms/a1:s:1/acknowledge", headers=ro).status_code == 403


def test_acknowledge_then_served_as_acknowledged(api_app: Any) -> None:
    app, _dead, acks = api_app
    client = app.test_client()
    r = client.post("/api/v1/alarms/a1:s:1/acknowledge", json={"by": "alice"}, headers=KEY)
    assert r.status_code == 201 and r.get_json()["acknowledged_by"] == "alice"
    again = client.post("/api/v1/alarms/a1:s:1/acknowledge", json={"by": "bob"}, headers=KEY)
    assert again.status_code == 200 and again.get_json()["acknowledged_by"] == "alice"
    rows = client.get("/api/v1/alarms?active=true", headers=KEY).get_json()["data"]
    assert [(r["alarm_id"], r["state"], r["acknowledged_by"]) for r in rows] == [
        ("a1:s:1", ACKNOWLEDGED, "alice"), ("a1:s:2", "RAISED", None)]
    history = client.get("/api/v1/alarms", headers=KEY).get_json()["data"]
    assert history[0]["state"] == "RAISED" and history[0]["acknowledged_by"] == "alice"
    anon = client.post("/api/v1/alarms/a1:s:2/acknowledge", headers=KEY).get_json()
    assert anon["acknowledged_by"].startswith("api key ")


@pytest.mark.parametrize("path, kwargs, status", [
    ("/api/v1/alarms/zz:s:1/acknowledge", {}, 404),
    ("/api/v1/alarms/a1:s:1/acknowledge", {"json": {"by": 3}}, 400),
    ("/api/v1/alarms/a1:s:1/acknowledge", {"json": {"by": "x" * 300}}, 400),
    ("/api/v1/alarms/a1:s:1/acknowledge", {"json": {"note": "a\x00b"}}, 400),
    ("/api/v1/alarms/a1:s:1/acknowledge", {"json": {"who": "x"}}, 400),
    ("/api/v1/alarms/a1:s:1/acknowledge", {"json": [1]}, 400),
    ("/api/v1/alarms/a1:s:1/acknowledge", {"data": "x", "content_type": "text/plain"}, 415),
    ("/api/v1/alarms/" + "a" * 600 + "/acknowledge", {}, 400),
])
def test_bad_acknowledgements_are_4xx(api_app: Any, path: str, kwargs: dict[str, Any],
                                      status: int) -> None:
    app, _dead, acks = api_app
    assert app.test_client().post(path, headers=KEY, **kwargs).status_code == status
    assert acks.acks == {}


def test_new_endpoints_are_in_the_openapi_document(api_app: Any) -> None:
    app, _dead, _acks = api_app
    paths = app.test_client().get("/api/v1/openapi.json").get_json()["paths"]
    assert "post" in paths["/api/v1/dead-letters/replay"]
    assert "get" in paths["/api/v1/dead-letters"]
    assert "404" in paths["/api/v1/alarms/{alarm_id}/acknowledge"]["post"]["responses"]


class FakeBackend:
    topics = {"topic_raw": "raw_telemetry", "topic_dlq": "telemetry_dlq"}

    def __init__(self) -> None:
        self.asked: list[Any] = []

    def overview(self) -> dict[str, Any]:
        return {"services": [{"name": "kafka", "up": True}], "job": None, "counters": {}}

    def topics_overview(self) -> list[dict[str, Any]]:
        return [{"topic": "raw_telemetry", "partitions": []}]

    def newest_messages(self, topic: str, limit: int, partition: int | None) -> list[Any]:
        self.asked.append((topic, limit, partition))
        return []

    def job(self) -> None:
        return None


@pytest.fixture()
def console() -> tuple[Flask, FakeBackend]:
    backend = FakeBackend()
    app = create_console_app(load_settings(), {"TESTING": True,
                                               "TELEMETRY_STORE": AlarmStore(),
                                               "READY_CHECKS": {}, "ALARM_ACKS": FakeAcks()},
                             backend=backend)
    return app, backend


@pytest.mark.parametrize("path", ["/", "/topics", "/dead-letters", "/alarms", "/assets",
                                  "/assets/asset-001", "/login"])
def test_console_pages_are_html_without_data(console: Any, path: str) -> None:
    app, _backend = console
    r = app.test_client().get(path)
    assert r.status_code == 200 and r.mimetype == "text/html"
    assert "console.js" in r.get_data(as_text=True)


def test_console_escapes_the_asset_id_in_its_page(console: Any) -> None:
    app, _backend = console
    text = app.test_client().get("/assets/%3Cscript%3Ealert(1)%3C%2Fscript%3E").get_data(
        as_text=True)
    assert "<script>alert" not in text and "&lt;script&gt;" in text


def test_console_json_needs_a_key(console: Any) -> None:
    app, backend = console
    client = app.test_client()
    for path in ("/console/api/whoami", "/console/api/overview", "/console/api/topics",
                 "/console/api/topics/raw_telemetry/messages"):
        assert client.get(path).status_code == 401, path
    assert client.get("/console/api/whoami", headers=KEY).get_json()["scopes"] == \
        ["read", "write"]
    assert client.get("/console/api/overview", headers=KEY).get_json()["services"][0]["up"]
    assert client.get("/console/api/topics/raw_telemetry/messages?limit=3&partition=2",
                      headers=KEY).status_code == 200
    assert backend.asked == [("raw_telemetry", 3, 2)]


@pytest.mark.parametrize("query, status", [("limit=0", 400), ("limit=201", 400),
                                           ("partition=-1", 400), ("limit=x", 400),
                                           ("foo=1", 400)])
def test_console_message_parameters(console: Any, query: str, status: int) -> None:
    app, backend = console
    client = app.test_client()
    assert client.get(f"/console/api/topics/raw_telemetry/messages?{query}",
                      headers=KEY).status_code == status
    assert client.get("/console/api/topics/other/messages", headers=KEY).status_code == 404
    assert backend.asked == []


def test_console_metrics_include_the_pipeline(console: Any) -> None:
    app, _backend = console
    text = app.test_client().get("/metrics").get_data(as_text=True)
    assert "dcmms_pipeline_job_running 0.0" in text
