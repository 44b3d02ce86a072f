"""Unit tests of the live stream's pure parts (api/sse.py) and its input checks (api/stream.py).

Kafka is never reached here: every request tested is refused before the stream
opens (the integration test tests/integration/test_stream.py reads a real stream).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from flask import Flask
from hypothesis import given
from hypothesis import strategies as st

from api import create_app
from api.auth import EXTENSION as AUTH_EXTENSION
from api.errors import BadParameter
from api.sse import (
    BoundedEventQueue,
    Dropped,
    StreamCursor,
    StreamSlots,
    format_comment,
    format_event,
    format_position,
    parse_position,
)
from api.stream import STREAM_EXTENSION, init_stream
from config.settings import REPO_ROOT, Settings, load_settings

R = {"Authorization": "Bearer rk"}
W = {"Authorization": "Bearer wk"}
URL = "/api/v1/telemetry/stream"


def parse_sse(text: str) -> list[dict[str, str]]:
    """SSE text to a list of {field: value} (comments as field '')."""
    events = []
    for block in text.split("\n\n"):
        if not block:
            continue
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            name, _, value = line.partition(":")
            fields[name] = fields.get(name, "") + value.removeprefix(" ")
        events.append(fields)
    return events


def test_format_event_is_one_parsable_event() -> None:
    text = format_event({"v": 1.5, "s": "a\nb"}, "reading", "0:5,1:7")
    assert text.endswith("\n\n") and text.count("\n\n") == 1
    (ev,) = parse_sse(text)
    assert ev["event"] == "reading" and ev["id"] == "0:5,1:7"
    assert json.loads(ev["data"]) == {"v": 1.5, "s": "a\nb"}


def test_format_comment_is_ignored_by_sse_parsers() -> None:
    assert format_comment("heartbeat") == ": heartbeat\n\n"
    assert format_comment("a\nb") == ": a\n: b\n\n"


POSITIONS = st.dictionaries(st.tuples(st.sampled_from(["r", "a"]), st.integers(0, 999)),
                            st.integers(0, 2**62), min_size=1, max_size=64)


@given(POSITIONS)
def test_position_round_trips(position: dict[tuple[str, int], int]) -> None:
    assert parse_position(format_position(position)) == position


def test_position_id_lists_readings_then_alarms() -> None:
    assert format_position({("a", 1): 3, ("r", 1): 9, ("a", 0): 7, ("r", 0): 12}) == \
        "r0:12,r1:9,a0:7,a1:3"


def test_reading_only_ids_still_resume_the_readings() -> None:
    # ids of the reading-only stream were bare '<partition>:<offset>' pairs
    assert parse_position("0:5,1:7") == {("r", 0): 5, ("r", 1): 7}
    assert parse_position("0:5,a0:2") == {("r", 0): 5, ("a", 0): 2}


@pytest.mark.parametrize("bad", ["", "x", "0", "0:", ":5", "0:-1", "-1:3", "0:1,0:2",
                                 "0:1;1:2", "0:1,", "0:1" + ",1:1" * 2000, "1.5:2",
                                 "0:1,r0:2", "a0:1,a0:2", "x0:1", "R0:1", "ra0:1", "a:1", "a-1:2"])
def test_bad_position_is_a_bad_parameter(bad: str) -> None:
    with pytest.raises(BadParameter) as err:
        parse_position(bad)
    assert err.value.parameter == "Last-Event-ID" and err.value.status == 400


# A record read by a stream's reader: (topic tag, partition, offset, asset_id or None
# when it did not decode).
RECORDS = st.lists(st.tuples(st.sampled_from(["r", "a"]), st.integers(0, 2),
                             st.sampled_from(["asset-1", "asset-2", None])), max_size=40)


def _read(records: list[tuple[str, int, str | None]], start: dict[tuple[str, int], int],
          seed: int) -> list[tuple[tuple[str, int], int, str]]:
    """Records offset per partition, then read from ``start`` as a consumer would: each
    partition in order, partitions and topics interleaved (by ``seed``); the events sent
    as ((tag, partition), offset, event id)."""
    import random

    logs: dict[tuple[str, int], list[str | None]] = {}
    for tag, p, asset in records:
        logs.setdefault((tag, p), []).append(asset)
    cursor = StreamCursor(start, "asset-1")
    heads = {k: start.get(k, 0) for k in logs}
    rng = random.Random(seed)
    out = []
    while live := [k for k in sorted(logs) if heads[k] < len(logs[k])]:
        k = rng.choice(live)
        offset = heads[k]
        heads[k] += 1
        asset = logs[k][offset]
        event_id = cursor.advance(k[0], k[1], offset, None if asset is None
                                  else {"asset_id": asset})
        if event_id is not None:
            out.append((k, offset, event_id))
    return out


def _asset1(records: list[tuple[str, int, str | None]]) -> set[tuple[tuple[str, int], int]]:
    """(partition, offset) of every asset-1 record (offsets counted per partition)."""
    counts: dict[tuple[str, int], int] = {}
    out = set()
    for tag, p, asset in records:
        offset = counts[(tag, p)] = counts.get((tag, p), -1) + 1
        if asset == "asset-1":
            out.add(((tag, p), offset))
    return out


@given(RECORDS, st.integers(0, 2**32), st.integers(0, 2**32), st.data())
def test_resuming_from_any_event_id_sends_exactly_the_events_after_it(
        records: list[tuple[str, int, str | None]], seed1: int, seed2: int,
        data: st.DataObject) -> None:
    first = _read(records, {}, seed1)
    every = [(k, off) for k, off, _ in first]
    assert sorted(every) == sorted(_asset1(records))  # each of the asset's records once
    if not first:
        return
    n = data.draw(st.integers(0, len(first) - 1))
    resumed = _read(records, parse_position(first[n][2]), seed2)
    # exactly the events after the n-th, none twice, whatever either interleaving
    assert sorted((k, off) for k, off, _ in resumed) == sorted(every[n + 1:])


def test_cursor_sends_only_the_assets_records_with_the_position_after_them() -> None:
    cursor = StreamCursor({("r", 0): 10, ("a", 0): 4}, "asset-1")
    assert cursor.advance("r", 0, 10, {"asset_id": "asset-2"}) is None
    assert cursor.advance("a", 0, 4, None) is None  # undecodable: skipped, position moves
    assert cursor.advance("a", 0, 5, {"asset_id": "asset-1"}) == "r0:11,a0:6"
    assert cursor.position == {("r", 0): 11, ("a", 0): 6}


def test_queue_drops_when_full_then_sends_one_marker() -> None:
    q = BoundedEventQueue(3)
    assert all(q.put(i, f"0:{i + 1}") for i in range(3))
    assert not q.put(3, "0:4") and not q.put(4, "0:5")
    assert len(q) == 3
    assert [q.get(0), q.get(0)] == [0, 1]
    # Room again: the marker goes first, then the new item; the drops are not delivered.
    assert q.put(5, "0:6")
    assert q.get(0) == 2
    marker = q.get(0)
    assert marker == Dropped(2, "0:5")
    assert q.get(0) == 5 and q.get(0) is None
    assert q.dropped_total == 2


def test_queue_memory_is_bounded_under_any_load() -> None:
    q = BoundedEventQueue(10)
    for i in range(100_000):
        q.put(i, str(i))
        if i % 1000 == 0:
            q.get(0)
        assert len(q) <= 10
    assert q.dropped_total > 99_000


def test_queue_get_times_out_empty() -> None:
    assert BoundedEventQueue(2).get(0.01) is None


def test_slots_bound_per_key() -> None:
    s = StreamSlots(2)
    assert s.acquire("a") and s.acquire("a") and not s.acquire("a")
    assert s.acquire("b")
    s.release("a")
    assert s.acquire("a") and s.count("a") == 2


@pytest.fixture()
def app() -> Flask:
    base = load_settings()
    values = {name: base.section(name) for name in ("stack", "kafka", "schema_registry",
                                                    "questdb", "mqtt", "api", "pipeline")}
    values["api"]["api_keys"] = "rk:read,wk:write"
    values["api"]["stream_max_per_key"] = 1
    values["kafka"]["bootstrap_servers"] = "127.0.0.1:1"  # never a real stack's Kafka
    settings = Settings(values, Path("stream-unit-test"), {})
    app = create_app(settings, {"TESTING": True, "TELEMETRY_STORE": object(),
                                "READY_CHECKS": {},
                                "ASSETS_FILE": str(REPO_ROOT / "config" / "assets.json")})
    app.extensions[STREAM_EXTENSION] = init_stream(settings, schema_lookup=lambda i: None)
    return app


@pytest.mark.parametrize("query,headers,status,code", [
    ("", R, 400, "bad_parameter"),
    ("?asset_id=", R, 400, "bad_parameter"),
    ("?asset_id=asset-001&foo=1", R, 400, "bad_parameter"),
    ("?asset_id=no-such-asset", R, 404, "not_found"),
    ("?asset_id=asset-001", W, 403, "forbidden"),
    ("?asset_id=asset-001", {}, 401, "unauthorized"),
    ("?asset_id=asset-001", {**R, "Last-Event-ID": "yesterday"}, 400, "bad_parameter"),
])
def test_bad_input_is_a_clear_4xx(app: Flask, query: str, headers: dict[str, str],
                                  status: int, code: str) -> None:
    r = app.test_client().get(URL + query, headers=headers)
    assert r.status_code == status, r.get_data(as_text=True)
    assert r.get_json()["code"] == code


def test_over_the_stream_bound_is_429(app: Flask) -> None:
    slots = app.extensions[STREAM_EXTENSION].slots
    key_id = app.extensions[AUTH_EXTENSION].keys.lookup("rk").key_id
    assert slots.acquire(key_id)  # the key's one stream is open
    r = app.test_client().get(URL + "?asset_id=asset-001", headers=R)
    assert r.status_code == 429
    body = r.get_json()
    assert body["code"] == "too_many_streams" and body["details"]["limit"] == 1
    assert r.headers["Retry-After"]
    assert slots.count(key_id) == 1  # the refused request took no slot


def test_openapi_documents_the_stream(app: Flask) -> None:
    doc = app.test_client().get("/api/v1/openapi.json").get_json()
    op = doc["paths"]["/api/v1/telemetry/stream"]["get"]
    assert {p["name"] for p in op["parameters"]} == {"asset_id", "Last-Event-ID"}
    assert {"400", "404", "429"} <= set(op["responses"])


def test_stream_reads_the_validated_and_the_alarms_topics(app: Flask) -> None:
    topics = app.extensions[STREAM_EXTENSION].config.topics
    kafka = load_settings().section("kafka")
    assert [(t.tag, t.event, t.name, t.setting) for t in topics] == [
        ("r", "reading", kafka["topic_validated"], "[kafka] topic_validated"),
        ("a", "alarm", kafka["topic_alarms"], "[kafka] topic_alarms")]
