"""Contract tests of the query API against a real QuestDB loaded with known data.

QuestDB's address comes from load_settings() ([questdb] host, http_port,
pg_port; env overrides such as DCMMS_QUESTDB_PG_PORT); the tests fail with a
clear message when it is unreachable. Tables are created from DDL_STATEMENTS
when missing. Every run writes its own site/asset ids (a random prefix), so
runs never see each other's rows or anybody else's. Expected answers are
computed in Python from the rows the test wrote.
"""

from __future__ import annotations

import csv
import io
import math
import time
import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from questdb import TimestampNanos

from api import create_app
from api.params import (
    AGGREGATES,
    ALARM_SEVERITIES,
    ALARM_STATES,
    ASSET_DEFAULT_LIMIT,
    FILLS,
    FORMATS,
    INTERVALS,
    ORDERS,
    QUERYABLE_SENSOR_TYPES,
)
from config.settings import load_settings
from io_connectors.questdb_schema import ALARMS, SENSOR_READING_COLUMNS, SENSOR_READINGS
from schemas.assets import load_asset_catalog
from tests.integration.conftest import API_AUTH as AUTH
from tests.integration.conftest import (
    api_pages,
    questdb_pg,
    questdb_sender,
    same_buckets,
    wait_rollups,
    wait_rows,
)

pytestmark = pytest.mark.integration

SETTINGS = load_settings()

RUN = f"qit{uuid.uuid4().hex[:8]}"
SITES = [f"{RUN}-site-{s}" for s in range(2)]
ASSETS = {f"{RUN}-asset-{s}{a}": SITES[s] for s in range(2) for a in range(2)}
ODD_ASSET = f"{RUN}-a'b\\c\"%_é"  # quoting: must match itself and nothing else
TYPES = ("TEMPERATURE", "VOLTAGE", "POWER")
STEP_S = 10
SPAN_S = 3600
GAP = (600, 900)  # sensor 2 of every asset is silent here: empty buckets for fill tests
# An hour that starts two days ago: inside the 90-day TTL of any live table.
BASE_MS = (int(time.time()) // 3600 - 48) * 3600 * 1000


def _iso(ms: int) -> str:
    return (datetime(1970, 1, 1) + timedelta(milliseconds=ms)).isoformat(
        timespec="milliseconds") + "Z"


def _make_rows() -> list[dict[str, Any]]:
    rows = []
    for asset, site in ASSETS.items():
        for k, sensor_type in enumerate(TYPES):
            sensor = f"{asset}-sen-{k}"
            for t in range(0, SPAN_S, STEP_S):
                if k == 2 and GAP[0] <= t < GAP[1]:
                    continue
                rows.append({"ms": BASE_MS + t * 1000, "event_id": f"{sensor}-{t:05d}",
                             "site_id": site, "asset_id": asset, "sensor_id": sensor,
                             "sensor_type": sensor_type, "value": (t % 97) * 1.5 + k,
                             "unit": "u", "quality_flag": "GOOD"})
    for i in range(5):
        rows.append({"ms": BASE_MS + i * 1000, "event_id": f"{RUN}-odd-{i}",
                     "site_id": SITES[0], "asset_id": ODD_ASSET, "sensor_id": f"{RUN}-odd",
                     "sensor_type": "POWER", "value": float(i), "unit": "u",
                     "quality_flag": "GOOD"})
    return rows


ROWS = _make_rows()
A0, A1 = sorted(ASSETS)[:2]
# (ms offset, alarm_id, asset index, sensor k, severity, state)
ALARM_SPEC = [
    (100, "alm-1", 0, 0, "WARNING", "RAISED"),
    (200, "alm-1", 0, 0, "WARNING", "CLEARED"),
    (300, "alm-2", 1, 1, "CRITICAL", "RAISED"),
    (400, "alm-3", 0, 2, "WARNING", "RAISED"),
    (500, "alm-3", 0, 2, "CRITICAL", "RAISED"),
]


def _alarm_rows() -> list[dict[str, Any]]:
    out = []
    for offset_s, alarm, a, k, severity, state in ALARM_SPEC:
        asset = sorted(ASSETS)[a]
        out.append({"ms": BASE_MS + offset_s * 1000, "alarm_id": f"{RUN}-{alarm}",
                    "site_id": ASSETS[asset], "asset_id": asset, "sensor_id": f"{asset}-sen-{k}",
                    "sensor_type": TYPES[k], "severity": severity, "state": state,
                    "value": 1.0, "threshold": 0.5, "reason": "test", "event_id": f"{alarm}-ev"})
    return out


ALARM_ROWS = _alarm_rows()


def _sites(sites: list[str]) -> tuple[str, tuple[str, ...]]:
    """The WHERE clause (and its parameters) of the rows of ``sites``."""
    return f"site_id IN ({', '.join(['%s'] * len(sites))})", tuple(sites)


@pytest.fixture(scope="module")
def app(query_tables: None) -> Flask:
    with questdb_sender(SETTINGS) as sender:
        for r in ROWS:
            sender.row(SENSOR_READINGS, symbols={k: r[k] for k in (
                "site_id", "asset_id", "sensor_id", "sensor_type", "unit", "quality_flag")},
                columns={"event_id": r["event_id"], "value": r["value"]},
                at=TimestampNanos(r["ms"] * 1_000_000))
        for r in ALARM_ROWS:
            sender.row(ALARMS, symbols={k: r[k] for k in (
                "site_id", "asset_id", "sensor_id", "sensor_type", "severity", "state")},
                columns={k: r[k] for k in ("alarm_id", "value", "threshold", "reason",
                                           "event_id")},
                at=TimestampNanos(r["ms"] * 1_000_000))
        sender.flush()
    conn = questdb_pg(SETTINGS)
    cur = conn.cursor()
    # WAL tables apply writes asynchronously: wait until every row is visible.
    wait_rows(cur, SENSOR_READINGS, *_sites(SITES), len(ROWS), timeout_s=60)
    wait_rows(cur, ALARMS, *_sites(SITES), len(ALARM_ROWS), timeout_s=60)
    # Bucketed reads over whole minutes come from the rollups (source=auto): the rows are
    # hours old, older than the API's raw tail, so the rollups must hold them.
    wait_rollups(cur, *_sites(SITES), len(ROWS))
    conn.close()
    return create_app(SETTINGS, {"TESTING": True})


RANGE = {"start_time": str(BASE_MS), "end_time": str(BASE_MS + SPAN_S * 1000)}


def _all_pages(client: FlaskClient, **params: str) -> list[dict[str, Any]]:
    out, cursor, pages = [], None, 0
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        response = client.get("/api/v1/telemetry", query_string=query, headers=AUTH)
        assert response.status_code == 200, response.json
        out += response.json["data"]
        cursor = response.json["next_cursor"]
        pages += 1
        assert pages < 10_000
        if cursor is None:
            return out


def _expected(pred: Any, start_ms: int = BASE_MS, end_ms: int = BASE_MS + SPAN_S * 1000
              ) -> list[str]:
    return sorted((r for r in ROWS if start_ms <= r["ms"] < end_ms and pred(r)),
                  key=lambda r: (r["ms"], r["event_id"]))


@pytest.mark.parametrize("name,value", [
    ("asset_id", A0), ("site_id", SITES[1]), ("sensor_id", f"{A1}-sen-1"),
    ("sensor_type", "VOLTAGE"), ("asset_id", ODD_ASSET)])
def test_each_filter(client: FlaskClient, name: str, value: str) -> None:
    params = {name: value} if name != "sensor_type" else {name: value, "site_id": SITES[0]}
    rows = _all_pages(client, **RANGE, **params, limit="10000")
    expected = _expected(lambda r: all(r[k] == v for k, v in params.items()))
    assert [r["event_id"] for r in rows] == [r["event_id"] for r in expected]
    assert expected  # the filter matched something
    assert rows[0]["timestamp"] == _iso(expected[0]["ms"]) and rows[0]["timestamp"].endswith("Z")
    assert rows[0]["value"] == expected[0]["value"]


def test_time_range_is_start_inclusive_end_exclusive(client: FlaskClient) -> None:
    start, end = BASE_MS + 100_000, BASE_MS + 200_000  # both exactly on reading timestamps
    for s, e in ((str(start), str(end)), (_iso(start), _iso(end))):
        rows = _all_pages(client, asset_id=A0, start_time=s, end_time=e)
        stamps = {r["timestamp"] for r in rows}
        assert _iso(start) in stamps and _iso(end) not in stamps
        assert len(rows) == len(_expected(lambda r: r["asset_id"] == A0, start, end))


@pytest.mark.parametrize("order", ["asc", "desc"])
def test_pagination_visits_every_row_exactly_once(client: FlaskClient, order: str) -> None:
    rows = _all_pages(client, **RANGE, site_id=SITES[0], limit="7", order=order)
    ids = [r["event_id"] for r in rows]
    expected = [r["event_id"] for r in _expected(lambda r: r["site_id"] == SITES[0])]
    assert len(ids) == len(set(ids))
    assert ids == (expected if order == "asc" else expected[::-1])


def _python_buckets(asset: str, interval_s: int, agg: str) -> dict[tuple[int, str], Any]:
    groups: dict[tuple[int, str], list[dict[str, Any]]] = defaultdict(list)
    for r in ROWS:
        if r["asset_id"] == asset:
            groups[(r["ms"] - r["ms"] % (interval_s * 1000), r["sensor_id"])].append(r)
    out = {}
    for key, rs in groups.items():
        rs.sort(key=lambda r: r["ms"])
        values = [r["value"] for r in rs]
        out[key] = {"avg": sum(values) / len(values), "min": min(values), "max": max(values),
                    "count": len(values), "first": values[0], "last": values[-1]}[agg]
    return out


@pytest.mark.parametrize("agg", ["avg", "min", "max", "count", "first", "last"])
@pytest.mark.parametrize("interval,seconds", [("1m", 60), ("15m", 900)])
def test_buckets_equal_python(client: FlaskClient, agg: str, interval: str, seconds: int) -> None:
    rows = _all_pages(client, **RANGE, asset_id=A0, interval=interval, agg=agg, limit="13")
    got = {(int(datetime.fromisoformat(r["timestamp"]).timestamp() * 1000), r["sensor_id"]):
           r["value"] for r in rows}
    expected = _python_buckets(A0, seconds, agg)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert math.isclose(got[key], value, rel_tol=1e-9), key
    keys = [(r["timestamp"], r["asset_id"], r["sensor_id"]) for r in rows]
    assert keys == sorted(keys) and len(keys) == len(set(keys))


@pytest.mark.parametrize("fill", ["null", "prev", "linear"])
def test_fill_covers_the_gap(client: FlaskClient, fill: str) -> None:
    sensor = f"{A0}-sen-2"
    rows = _all_pages(client, **RANGE, sensor_id=sensor, interval="1m", agg="max", fill=fill,
                      limit="11")
    by_minute = {r["timestamp"]: r["value"] for r in rows}
    assert len(by_minute) == SPAN_S // 60  # gap buckets are present
    gap_minute = _iso(BASE_MS + 660_000)
    before = by_minute[_iso(BASE_MS + 540_000)]
    after = by_minute[_iso(BASE_MS + 900_000)]
    if fill == "null":
        assert by_minute[gap_minute] is None
    elif fill == "prev":
        assert by_minute[gap_minute] == before
    else:
        assert math.isclose(by_minute[gap_minute], before + (after - before) * 2 / 6)


@pytest.mark.parametrize("extra", [{}, {"interval": "5m", "agg": "avg"}])
def test_csv_equals_json(client: FlaskClient, extra: dict[str, str]) -> None:
    params = {**RANGE, "site_id": SITES[1], **extra}
    json_rows = _all_pages(client, **params, limit="500")
    response = client.get("/api/v1/telemetry", query_string={**params, "format": "csv"},
                          headers=AUTH)
    assert response.status_code == 200 and response.mimetype == "text/csv"
    assert len(json_rows) > 0
    _assert_csv_equals_json(response.get_data(as_text=True), json_rows)


def _csv_value(text: str, like: Any) -> Any:
    """A CSV field parsed to the type of the JSON value it must equal (empty: None, or
    an empty string; CSV has one text for both)."""
    if text == "":
        return like if like == "" else None
    if isinstance(like, bool) or like is None or isinstance(like, str):
        return text
    if isinstance(like, int):
        return int(text)
    return float(text)


def _assert_csv_equals_json(text: str, json_rows: list[dict[str, Any]]) -> None:
    """The CSV's header is the JSON rows' keys in order, and every field parses (csv
    module, then int/float; timestamps compared as text and as instants) to the JSON
    value, row by row in the same order."""
    rows = list(csv.reader(io.StringIO(text, newline="")))
    header, body = rows[0], rows[1:]
    assert len(body) == len(json_rows)
    for c, j in zip(body, json_rows, strict=True):
        assert header == list(j)
        for name, field, value in zip(header, c, j.values(), strict=True):
            got = _csv_value(field, value)
            assert got == value and type(got) is type(value), (name, field, value)
            if name in ("timestamp", "ingested_at") and value is not None:
                assert datetime.fromisoformat(got) == datetime.fromisoformat(value)


def test_latest_of_site_and_asset(client: FlaskClient) -> None:
    last: dict[str, dict[str, Any]] = {}
    for r in sorted(ROWS, key=lambda r: r["ms"]):
        if r["site_id"] == SITES[0]:
            last[r["sensor_id"]] = r
    # The test rows are ~2 days old: the default max_age (24h) leaves them out.
    stale = client.get("/api/v1/telemetry/latest", query_string={"site_id": SITES[0]},
                       headers=AUTH)
    assert stale.status_code == 200 and stale.json["data"] == []
    response = client.get("/api/v1/telemetry/latest",
                          query_string={"site_id": SITES[0], "max_age": "7d"}, headers=AUTH)
    assert response.status_code == 200
    got = {r["sensor_id"]: (r["event_id"], r["value"]) for r in response.json["data"]}
    assert got == {s: (r["event_id"], r["value"]) for s, r in last.items()}
    one = client.get("/api/v1/telemetry/latest",
                     query_string={"asset_id": A0, "sensor_type": "POWER", "max_age": "3d"},
                     headers=AUTH)
    assert [r["sensor_id"] for r in one.json["data"]] == [f"{A0}-sen-2"]


def test_alarms_range_filters_and_active(client: FlaskClient) -> None:
    def get(**params: str) -> list[dict[str, Any]]:
        response = client.get("/api/v1/alarms", query_string=params, headers=AUTH)
        assert response.status_code == 200, response.json
        return response.json["data"]

    first = get(**RANGE, site_id=SITES[0], limit="2")
    rows, cursor = [], None  # walk the cursor, two transitions per page
    while True:
        q = {**RANGE, "site_id": SITES[0], "limit": "2", **({"cursor": cursor} if cursor else {})}
        body = client.get("/api/v1/alarms", query_string=q, headers=AUTH).json
        rows += body["data"]
        cursor = body["next_cursor"]
        if not cursor:
            break
    assert first == rows[:2]
    assert [(r["alarm_id"], r["state"], r["severity"]) for r in rows] == [
        (f"{RUN}-alm-1", "RAISED", "WARNING"), (f"{RUN}-alm-1", "CLEARED", "WARNING"),
        (f"{RUN}-alm-2", "RAISED", "CRITICAL"), (f"{RUN}-alm-3", "RAISED", "WARNING"),
        (f"{RUN}-alm-3", "RAISED", "CRITICAL")]
    assert rows[0]["timestamp"] == _iso(BASE_MS + 100_000)
    assert [r["alarm_id"] for r in get(**RANGE, asset_id=A1)] == [f"{RUN}-alm-2"]
    assert [r["alarm_id"] for r in get(**RANGE, site_id=SITES[0], severity="CRITICAL")] == [
        f"{RUN}-alm-2", f"{RUN}-alm-3"]
    assert len(get(**RANGE, site_id=SITES[0], state="CLEARED")) == 1
    assert get(**RANGE, site_id=SITES[1]) == []
    # Active: latest transition per alarm is a raise; newest first; alm-1 was cleared.
    active = get(active="true", site_id=SITES[0])
    assert [(r["alarm_id"], r["severity"]) for r in active] == [
        (f"{RUN}-alm-3", "CRITICAL"), (f"{RUN}-alm-2", "CRITICAL")]
    assert get(active="true", site_id=SITES[0], severity="WARNING") == []
    assert [r["alarm_id"] for r in get(active="true", asset_id=A0)] == [f"{RUN}-alm-3"]


def _asset_pages(client: FlaskClient, **params: str) -> list[list[dict[str, Any]]]:
    pages: list[list[dict[str, Any]]] = []
    cursor = None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        response = client.get("/api/v1/assets", query_string=query, headers=AUTH)
        assert response.status_code == 200, response.json
        pages.append(response.json["data"])
        cursor = response.json["next_cursor"]
        assert len(pages) <= 100_000
        if cursor is None:
            return pages


@pytest.mark.parametrize("limit", [None, "7", "1000"])
def test_asset_pages_visit_every_asset_exactly_once(client: FlaskClient,
                                                    limit: str | None) -> None:
    expected = sorted(load_asset_catalog(SETTINGS.pipeline.assets_file).assets)
    assert len(expected) > ASSET_DEFAULT_LIMIT  # the stack's catalog needs more than one page
    pages = _asset_pages(client, **({"limit": limit} if limit else {}))
    ids = [a["asset_id"] for page in pages for a in page]
    assert ids == expected  # each asset once, in asset_id order
    size = int(limit or ASSET_DEFAULT_LIMIT)
    assert all(len(page) == size for page in pages[:-1]) and 0 < len(pages[-1]) <= size
    # A listed asset is the same document as the single-asset endpoint's.
    one = client.get(f"/api/v1/assets/{ids[-1]}", headers=AUTH).json
    assert pages[-1][-1] == one


def test_asset_list_limit_outside_its_range_is_400_naming_it(client: FlaskClient) -> None:
    for value in ("0", "1001"):
        response = client.get("/api/v1/assets", query_string={"limit": value}, headers=AUTH)
        assert response.status_code == 400
        assert response.json["details"] == {"parameter": "limit", "minimum": 1, "maximum": 1000}


# (path, parameter, a value in another case or not a value at all, the canonical value, allowed)
_ENUM_CASES = [
    ("/api/v1/alarms", "severity", "critical", "CRITICAL", ALARM_SEVERITIES),
    ("/api/v1/alarms", "state", "ACTIVE", "RAISED", ALARM_STATES),
    ("/api/v1/alarms", "state", "cleared", "CLEARED", ALARM_STATES),
    ("/api/v1/alarms", "order", "DESC", "desc", ORDERS),
    ("/api/v1/telemetry", "sensor_type", "voltage", "VOLTAGE", QUERYABLE_SENSOR_TYPES),
    ("/api/v1/telemetry", "order", "Desc", "desc", ORDERS),
    ("/api/v1/telemetry", "format", "CSV", "csv", FORMATS),
    ("/api/v1/telemetry", "interval", "1M", "1m", tuple(INTERVALS)),
    ("/api/v1/telemetry", "agg", "MAX", "max", AGGREGATES),
    ("/api/v1/telemetry", "fill", "PREV", "prev", FILLS),
    ("/api/v1/telemetry/latest", "sensor_type", "power", "POWER", QUERYABLE_SENSOR_TYPES),
]
_ENUM_BASE = {"/api/v1/alarms": {**RANGE, "site_id": SITES[0]},
              "/api/v1/telemetry": {**RANGE, "site_id": SITES[0]},
              "/api/v1/telemetry/latest": {"site_id": SITES[0], "max_age": "7d"}}


@pytest.mark.parametrize("path,name,wrong,canonical,allowed", _ENUM_CASES,
                         ids=[f"{c[0].rsplit('/', 1)[1]}-{c[1]}-{c[2]}" for c in _ENUM_CASES])
def test_enum_value_outside_the_canonical_set_is_400_naming_the_allowed_values(
        client: FlaskClient, path: str, name: str, wrong: str, canonical: str,
        allowed: tuple[str, ...]) -> None:
    base = {**_ENUM_BASE[path], **({"interval": "1m"} if name in ("agg", "fill") else {})}
    refused = client.get(path, query_string={**base, name: wrong}, headers=AUTH)
    assert refused.status_code == 400, refused.get_data(as_text=True)[:300]
    assert refused.json["code"] == "bad_parameter"
    assert refused.json["details"] == {"parameter": name, "allowed": list(allowed)}
    assert all(value in refused.json["message"] for value in allowed)
    # The canonical value finds this run's rows: the refusal is not hiding a match.
    found = client.get(path, query_string={**base, name: canonical}, headers=AUTH)
    assert found.status_code == 200, found.get_data(as_text=True)[:300]
    if name == "format":
        assert len(found.get_data(as_text=True).splitlines()) > 1
        return
    rows = found.json["data"]
    assert rows
    column = {"order": None, "interval": None, "agg": None, "fill": None}.get(name, name)
    if column is not None:
        assert {r[column] for r in rows} == {canonical}


def test_state_active_is_400_pointing_at_active_true(client: FlaskClient) -> None:
    response = client.get("/api/v1/alarms", query_string={"state": "ACTIVE"}, headers=AUTH)
    assert response.status_code == 400 and "active=true" in response.json["message"]
    contradiction = client.get("/api/v1/alarms", headers=AUTH,
                               query_string={"active": "true", "state": "CLEARED"})
    assert contradiction.status_code == 400
    assert contradiction.json["details"]["parameter"] == "state"


def test_auth_failures(client: FlaskClient) -> None:
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Token dev-api-key"}):
        response = client.get("/api/v1/telemetry", query_string=RANGE, headers=headers)
        assert response.status_code == 401 and response.json["code"] == "unauthorized"


def test_readyz_reports_questdb(client: FlaskClient) -> None:
    body = client.get("/readyz").json
    assert body["checks"]["questdb"]["ok"] is True


_INJECTIONS = ["' OR '1'='1", "x' UNION SELECT * FROM alarms --", "'; DROP TABLE sensor_readings;",
               "\\", "\\'", "''", "%s", "%(x)s", "$1", "é€𝄞", A0 + "' OR asset_id LIKE '%"]
_FILTER_VALUES = st.one_of(st.sampled_from([*ASSETS, *SITES, ODD_ASSET, *_INJECTIONS]),
                           st.text(min_size=1, max_size=20))


@settings(max_examples=120, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_parameters_never_5xx_nor_rows_outside_filters(client: FlaskClient,
                                                              data: st.DataObject) -> None:
    params: dict[str, str] = {"site_id": data.draw(st.sampled_from(SITES))}
    for name in ("asset_id", "sensor_id", "sensor_type"):
        if data.draw(st.booleans()):
            # sensor_type is an enum: give it real values too, not only refused ones.
            extra = st.sampled_from(TYPES) if name == "sensor_type" else _FILTER_VALUES
            params[name] = data.draw(st.one_of(extra, _FILTER_VALUES))
    for name, strategy in (
            ("start_time", st.sampled_from([RANGE["start_time"], _iso(BASE_MS + 123_000),
                                            "' OR 1=1", "1e9", "2026-02-30"])),
            ("limit", st.sampled_from(["1", "50", "0", "10001", "1;--"])),
            ("order", st.sampled_from(["asc", "desc", "ASC; DROP"])),
            ("interval", st.sampled_from(["1m", "1h", "1m) FROM alarms --", "7s"])),
            ("agg", st.sampled_from(["avg", "count", "sum(value)", "last"])),
            ("fill", st.sampled_from(["null", "prev", "NONE) --"]))):
        if data.draw(st.booleans()):
            params[name] = data.draw(strategy)
    if "interval" not in params:
        params.pop("agg", None)
        params.pop("fill", None)
    params.setdefault("end_time", RANGE["end_time"])
    params.setdefault("start_time", RANGE["start_time"])
    response = client.get("/api/v1/telemetry", query_string=params, headers=AUTH)
    assert response.status_code in (200, 400), (params, response.get_data(as_text=True)[:300])
    if response.status_code != 200:
        assert response.json["details"]["parameter"] in params
        return
    start = datetime.fromtimestamp(BASE_MS / 1000, UTC)
    for row in response.json["data"]:
        for name in ("asset_id", "sensor_id", "sensor_type", "site_id"):
            if name in params and name in row:
                assert row[name] == params[name]
        if "site_id" not in row:  # buckets: their asset must belong to the site
            assert ASSETS.get(row["asset_id"], SITES[0] if row["asset_id"] == ODD_ASSET
                              else None) == params["site_id"]
        assert datetime.fromisoformat(row["timestamp"]) >= start - timedelta(hours=1)


# --- Rollups (issue 16): buckets from the materialized views equal raw aggregation -------

ROLLUP_SITE = f"{RUN}-site-rollup"
ROLLUP_ASSETS = [f"{RUN}-rollup-asset-{a}" for a in range(2)]
ROLLUP_HOURS = 3
ROLLUP_BASE_MS = BASE_MS - ROLLUP_HOURS * 3_600_000  # before the other tests' hour


def _rollup_rows() -> list[dict[str, Any]]:
    """Uneven rows: a different number per minute and sensor (so an average of
    averages differs from the average), null values, shared timestamps, and silent
    stretches (fill)."""
    import random

    rng = random.Random(16)
    rows = []
    for a, asset in enumerate(ROLLUP_ASSETS):
        for k in range(2):
            sensor = f"{asset}-sen-{k}"
            for i in range(900):
                offset_ms = rng.randrange(ROLLUP_HOURS * 3_600_000)
                if (k == 1 and 3_600_000 <= offset_ms < 5_400_000
                        or 1_800_000 <= offset_ms % 3_600_000 < 1_800_000 + 60_000 * k):
                    continue  # sensor 1 silent for half an hour; a gap minute for sensor 1
                if i % 7 == 0:
                    offset_ms -= offset_ms % 1000  # whole seconds: some stamps shared
                value = None if i % 11 == 0 else rng.uniform(-50, 150) * (1 + a)
                rows.append({"ms": ROLLUP_BASE_MS + offset_ms, "event_id": f"{sensor}-{i}",
                             "site_id": ROLLUP_SITE, "asset_id": asset, "sensor_id": sensor,
                             "sensor_type": TYPES[k], "value": value})
    # A sensor silent for the last 2.5 hours (latest values: looked up in its own minute).
    for i in range(40):
        rows.append({"ms": ROLLUP_BASE_MS + i * 7_500, "event_id": f"stale-{i}",
                     "site_id": ROLLUP_SITE, "asset_id": ROLLUP_ASSETS[0],
                     "sensor_id": f"{ROLLUP_ASSETS[0]}-stale", "sensor_type": "POWER",
                     "value": float(i)})
    return rows


@pytest.fixture(scope="module")
def rollup_rows(app: Flask) -> list[dict[str, Any]]:
    rows = _rollup_rows()
    with questdb_sender(SETTINGS) as sender:
        for r in rows:
            sender.row(SENSOR_READINGS, symbols={k: r[k] for k in (
                "site_id", "asset_id", "sensor_id", "sensor_type")},
                columns={"event_id": r["event_id"],
                         **({"value": r["value"]} if r["value"] is not None else {})},
                at=TimestampNanos(r["ms"] * 1_000_000))
        sender.flush()
    conn = questdb_pg(SETTINGS)
    wait_rollups(conn.cursor(), *_sites([ROLLUP_SITE]), len(rows))
    conn.close()
    return rows


_ROLLUP_RANGE = {"start_time": str(ROLLUP_BASE_MS),
                 "end_time": str(ROLLUP_BASE_MS + ROLLUP_HOURS * 3_600_000)}


@pytest.mark.parametrize("interval,view", [("1m", "rollup_1m"), ("5m", "rollup_1m"),
                                           ("15m", "rollup_1m"), ("1h", "rollup_1h")])
@pytest.mark.parametrize("agg", ["avg", "min", "max", "count"])
def test_rollup_buckets_equal_raw_aggregation(client: FlaskClient,
                                              rollup_rows: list[dict[str, Any]],
                                              interval: str, view: str, agg: str) -> None:
    for filters in ({"site_id": ROLLUP_SITE}, {"asset_id": ROLLUP_ASSETS[1]}):
        params = {**_ROLLUP_RANGE, **filters, "interval": interval, "agg": agg,
                  "limit": "97"}
        auto, auto_sources = api_pages(client, **params)
        raw, raw_sources = api_pages(client, **params, source="raw")
        assert auto_sources == {view} and raw_sources == {"raw"}
        assert len(auto) >= 6  # 3 hours x 2 sensors at least
        same_buckets(auto, raw)
    if agg == "avg" and interval == "1h":
        # The raw side really is the average of the rows (not of per-minute averages).
        values = [r["value"] for r in rollup_rows
                  if r["asset_id"] == ROLLUP_ASSETS[1] and r["sensor_id"].endswith("-0")
                  and r["ms"] < ROLLUP_BASE_MS + 3_600_000 and r["value"] is not None]
        first = next(r for r in auto if r["sensor_id"].endswith("-0")
                     and r["asset_id"] == ROLLUP_ASSETS[1])
        assert math.isclose(first["value"], sum(values) / len(values), rel_tol=1e-9)


MOVED_ASSET = f"{RUN}-rollup-moved"
MOVED_SITES = [f"{RUN}-site-move-a", f"{RUN}-site-move-b"]


@pytest.fixture(scope="module")
def moved_rows(app: Flask) -> list[dict[str, Any]]:
    """A sensor whose site changes within minutes: the views (grouped by site_id too) hold
    two rows for such a minute, the API's buckets (by asset and sensor) one."""
    rows = []
    for minute in range(4):
        for i in range(6):
            site = MOVED_SITES[0] if minute % 2 or i < 2 else MOVED_SITES[1]
            rows.append({"ms": ROLLUP_BASE_MS + minute * 60_000 + i * 7_000,
                         "event_id": f"moved-{minute}-{i}", "site_id": site,
                         "value": float(minute * 10 + i)})
    with questdb_sender(SETTINGS) as sender:
        for r in rows:
            sender.row(SENSOR_READINGS, symbols={"site_id": r["site_id"], "asset_id": MOVED_ASSET,
                                                 "sensor_id": f"{MOVED_ASSET}-s0",
                                                 "sensor_type": "POWER"},
                       columns={"event_id": r["event_id"], "value": r["value"]},
                       at=TimestampNanos(r["ms"] * 1_000_000))
        sender.flush()
    conn = questdb_pg(SETTINGS)
    wait_rollups(conn.cursor(), *_sites(MOVED_SITES), len(rows))
    conn.close()
    return rows


@pytest.mark.parametrize("order", ["asc", "desc"])
@pytest.mark.parametrize("limit", ["1", "2", "97"])
@pytest.mark.parametrize("agg", ["avg", "count", "max"])
def test_rollup_rows_of_one_bucket_from_two_sites_are_merged(
        client: FlaskClient, moved_rows: list[dict[str, Any]], agg: str, limit: str,
        order: str) -> None:
    params = {**_ROLLUP_RANGE, "asset_id": MOVED_ASSET, "interval": "1m", "agg": agg,
              "limit": limit, "order": order}
    auto, sources = api_pages(client, **params)
    raw, _ = api_pages(client, **params, source="raw")
    assert sources == {"rollup_1m"}
    assert len(auto) == 4  # one bucket a minute, though minutes 0 and 2 span two sites
    same_buckets(auto, raw)
    if agg == "count":
        assert [r["value"] for r in auto] == [6, 6, 6, 6]


@pytest.mark.parametrize("fill", ["null", "prev", "linear"])
@pytest.mark.parametrize("order", ["asc", "desc"])
def test_rollup_fill_and_order_equal_raw(client: FlaskClient, rollup_rows: list[dict[str, Any]],
                                         fill: str, order: str) -> None:
    for interval, agg in (("1m", "avg"), ("1m", "count"), ("5m", "min"), ("1h", "max")):
        params = {**_ROLLUP_RANGE, "site_id": ROLLUP_SITE, "interval": interval, "agg": agg,
                  "fill": fill, "order": order, "limit": "301"}
        auto, sources = api_pages(client, **params)
        raw, _ = api_pages(client, **params, source="raw")
        # avg with linear fill: QuestDB interpolates the rollup's sum/count differently.
        expected = "raw" if (agg, fill) == ("avg", "linear") else \
            f"rollup_{'1h' if interval == '1h' else '1m'}"
        assert sources == {expected}
        same_buckets(auto, raw)


def test_rollup_csv_says_its_source_and_equals_raw(client: FlaskClient,
                                                   rollup_rows: list[dict[str, Any]]) -> None:
    params = {**_ROLLUP_RANGE, "site_id": ROLLUP_SITE, "interval": "5m", "agg": "avg",
              "format": "csv"}
    auto = client.get("/api/v1/telemetry", query_string=params, headers=AUTH)
    a = list(csv.DictReader(io.StringIO(auto.get_data(as_text=True))))  # before the next
    raw = client.get("/api/v1/telemetry", query_string={**params, "source": "raw"},
                     headers=AUTH)
    b = list(csv.DictReader(io.StringIO(raw.get_data(as_text=True))))
    assert (auto.headers["X-Data-Source"], raw.headers["X-Data-Source"]) == ("rollup_1m", "raw")
    assert len(a) == len(b) > 10
    for x, y in zip(a, b, strict=True):
        assert x["timestamp"] == y["timestamp"] and x["sensor_id"] == y["sensor_id"]
        assert math.isclose(float(x["value"]), float(y["value"]), rel_tol=1e-9)


def test_raw_rows_when_the_rollup_cannot_answer_exactly(
        client: FlaskClient, rollup_rows: list[dict[str, Any]]) -> None:
    base = {"site_id": ROLLUP_SITE, "interval": "5m", "agg": "avg"}
    unaligned = {"start_time": str(ROLLUP_BASE_MS + 30_000),
                 "end_time": _ROLLUP_RANGE["end_time"]}
    cases = [({**base, **_ROLLUP_RANGE, "agg": "first"}, "agg"),
             ({**base, **_ROLLUP_RANGE, "agg": "last"}, "agg"),
             ({**base, **unaligned}, "minutes"),
             ({**base, **_ROLLUP_RANGE, "interval": "10s"}, "minutes")]
    for params, reason in cases:
        auto, sources = api_pages(client, **params)
        assert sources == {"raw"}, params
        assert auto
        refused = client.get("/api/v1/telemetry", query_string={**params, "source": "rollup"},
                             headers=AUTH)
        assert refused.status_code == 400, params
        assert refused.json["details"]["parameter"] == "source" and reason in \
            refused.json["message"]
    # 1h over a range on whole minutes but not whole hours: the 1-minute rollup.
    params = {**base, "interval": "1h", "start_time": str(ROLLUP_BASE_MS + 60_000),
              "end_time": _ROLLUP_RANGE["end_time"]}
    auto, sources = api_pages(client, **params)
    raw, _ = api_pages(client, **params, source="raw")
    assert sources == {"rollup_1m"}
    same_buckets(auto, raw)
    for bad in ({"source": "ROLLUP"}, {"source": "rollup"}):  # rollup without interval
        response = client.get("/api/v1/telemetry", headers=AUTH,
                              query_string={**_ROLLUP_RANGE, "site_id": ROLLUP_SITE, **bad})
        assert response.status_code == 400 and response.json["details"]["parameter"] == "source"


def test_latest_values_through_the_rollups_equal_the_raw_rows(
        client: FlaskClient, rollup_rows: list[dict[str, Any]]) -> None:
    """The store narrows latest values with the rollups (recent minutes, and its own
    last minute for a sensor silent for hours); the answer is each sensor's newest row."""
    newest: dict[str, int] = {}
    for r in rollup_rows:
        newest[r["sensor_id"]] = max(newest.get(r["sensor_id"], 0), r["ms"])
    assert newest[f"{ROLLUP_ASSETS[0]}-stale"] < ROLLUP_BASE_MS + 600_000
    for params, sensors in (({"site_id": ROLLUP_SITE}, set(newest)),
                            ({"asset_id": ROLLUP_ASSETS[1], "sensor_type": TYPES[1]},
                             {f"{ROLLUP_ASSETS[1]}-sen-1"})):
        response = client.get("/api/v1/telemetry/latest", headers=AUTH,
                              query_string={**params, "max_age": "7d"})
        assert response.status_code == 200, response.json
        got = {r["sensor_id"]: r for r in response.json["data"]}
        assert set(got) == sensors
        for sensor, row in got.items():
            assert row["timestamp"] == _iso(newest[sensor]), sensor
            # Rows sharing the newest stamp: any of them is the sensor's latest.
            assert row["event_id"] in {r["event_id"] for r in rollup_rows
                                       if r["sensor_id"] == sensor and r["ms"] == newest[sensor]}


@pytest.mark.parametrize("order", ["asc", "desc"])
def test_csv_equals_the_pages_with_shared_timestamps_limit_and_cursor(
        client: FlaskClient, rollup_rows: list[dict[str, Any]], order: str) -> None:
    """The CSV export (one /exp query) holds the pages' rows in their (timestamp,
    event_id) order, also where many rows share a timestamp; ``limit`` cuts it, a
    cursor continues it."""
    params = {**_ROLLUP_RANGE, "site_id": ROLLUP_SITE, "order": order}
    stamps = [r["ms"] for r in rollup_rows]
    assert len(stamps) - len(set(stamps)) > 10  # shared timestamps exist
    pages = _all_pages(client, **params, limit="10000")
    assert len(pages) == len(rollup_rows)
    whole = client.get("/api/v1/telemetry", query_string={**params, "format": "csv"},
                       headers=AUTH)
    assert whole.status_code == 200
    _assert_csv_equals_json(whole.get_data(as_text=True), pages)
    first = client.get("/api/v1/telemetry", query_string={**params, "limit": "7"},
                       headers=AUTH).json
    limited = client.get("/api/v1/telemetry", headers=AUTH,
                         query_string={**params, "format": "csv", "limit": "7"})
    _assert_csv_equals_json(limited.get_data(as_text=True), first["data"])
    rest = client.get("/api/v1/telemetry", headers=AUTH, query_string={
        **params, "format": "csv", "cursor": first["next_cursor"]})
    _assert_csv_equals_json(rest.get_data(as_text=True), pages[7:])


# --- CSV export through QuestDB's /exp: its dialect parses to the JSON values -------------

CSV_SITE = f"{RUN}-site-csv"
CSV_ASSET = f"{RUN}-csv-asset"
CSV_BASE_MS = BASE_MS - 6 * 3_600_000  # an hour of its own, before the rollup hours
# Doubles whose text differs between Java and Python (1.0E-5 / 1e-05) or that need all 17
# digits; the random ones check the round trip of QuestDB's number text.
CSV_VALUES = [1e-05, 1e300, -1e-300, 5e-324, 1.7976931348623157e308, 0.1 + 0.2, -0.0, 1e22,
              123456789.0, 1 / 3, 2.5, 100.0, None]


def _csv_rows() -> list[dict[str, Any]]:
    import random
    import struct

    rng = random.Random(12)
    values = CSV_VALUES + [v for v in (struct.unpack("<d", rng.randbytes(8))[0]
                                       for _ in range(300)) if math.isfinite(v)]
    texts = [None, 'comma, "quote" and \'apostrophe\'', "Zürich – “Nord” 東京 😀", "",
             "plain", "semi;colon\ttab", "back\\slash"]
    rows = []
    for i, value in enumerate(values):
        # Every third stamp has microseconds (printed with six digits), the rest whole ms.
        us = CSV_BASE_MS * 1000 + i * 1_000_000 + (123 if i % 3 == 0 else 0) + (i % 5) * 1000
        rows.append({"us": us, "event_id": f"{RUN}-csv,\"{i}\"-é",
                     "site_id": CSV_SITE, "asset_id": CSV_ASSET,
                     "sensor_id": f"{CSV_ASSET}-sen-{i % 2}", "sensor_type": TYPES[i % 2],
                     "value": value, "unit": "u", "quality_flag": "GOOD",
                     "site_name": texts[i % len(texts)], "location": texts[(i + 3) % len(texts)],
                     "ingested_at": None if i % 4 == 0 else us + 1_500_001 + (i % 2) * 999})
    return rows


@pytest.fixture(scope="module")
def csv_rows(app: Flask) -> list[dict[str, Any]]:
    from questdb import TimestampMicros

    rows = _csv_rows()
    with questdb_sender(SETTINGS) as sender:
        for r in rows:
            columns: dict[str, Any] = {"event_id": r["event_id"]}
            for name in ("value", "site_name", "location"):
                if r[name] is not None:
                    columns[name] = r[name]
            if r["ingested_at"] is not None:
                columns["ingested_at"] = TimestampMicros(r["ingested_at"])
            sender.row(SENSOR_READINGS, symbols={k: r[k] for k in (
                "site_id", "asset_id", "sensor_id", "sensor_type", "unit", "quality_flag")},
                columns=columns, at=TimestampNanos(r["us"] * 1000))
        sender.flush()
    conn = questdb_pg(SETTINGS)
    cur = conn.cursor()
    wait_rows(cur, SENSOR_READINGS, *_sites([CSV_SITE]), len(rows), timeout_s=60)
    wait_rollups(cur, *_sites([CSV_SITE]), len(rows))
    conn.close()
    return rows


_CSV_RANGE = {"start_time": str(CSV_BASE_MS), "end_time": str(CSV_BASE_MS + 3_600_000)}


@pytest.mark.parametrize("extra", [
    {}, {"order": "desc"}, {"sensor_id": f"{CSV_ASSET}-sen-1"},
    {"interval": "1m", "agg": "count", "fill": "null", "source": "raw"},
    {"interval": "1m", "agg": "max", "fill": "null"},
    {"interval": "10s", "agg": "avg"}])
def test_csv_export_parses_to_the_json_values(client: FlaskClient,
                                              csv_rows: list[dict[str, Any]],
                                              extra: dict[str, str]) -> None:
    """QuestDB's CSV dialect (quoted strings, CRLF, Java number text such as 1.0E-5, empty
    for null) read by Python's csv module gives exactly the JSON values: strings with
    commas, quotes and non-ASCII text, nulls, tiny and huge doubles, microsecond stamps,
    integer counts and null buckets."""
    params = {**_CSV_RANGE, "site_id": CSV_SITE, **extra}
    json_rows = _all_pages(client, **params, limit="10000")
    assert len(json_rows) > 10
    if "interval" not in extra:
        # The test rows are all there, with their special values (JSON = what was written).
        assert len(json_rows) == len([r for r in csv_rows if extra.get("sensor_id") in
                                      (None, r["sensor_id"])])
        got = {r["event_id"]: r for r in json_rows}
        for r in csv_rows:
            if r["event_id"] in got and r["value"] in CSV_VALUES:
                assert got[r["event_id"]]["value"] == r["value"], r
        names = {r["site_name"] for r in json_rows}
        assert {'comma, "quote" and \'apostrophe\'', "Zürich – “Nord” 東京 😀"} <= names
    response = client.get("/api/v1/telemetry", query_string={**params, "format": "csv"},
                          headers=AUTH)
    assert response.status_code == 200 and response.mimetype == "text/csv"
    assert response.headers["Content-Disposition"] == "attachment; filename=telemetry.csv"
    assert response.headers["X-Data-Source"] == ("raw" if extra.get("source") == "raw"
                                                 or extra.get("interval") in (None, "10s")
                                                 else "rollup_1m")
    text = response.get_data(as_text=True)
    assert "\r\n" in text  # QuestDB's line ends (RFC 4180)
    _assert_csv_equals_json(text, json_rows)
    if not extra:
        assert "1.0E-5" in text or "1.0E-5" not in str([r["value"] for r in json_rows])
        assert any(r["value"] == 1e-05 for r in json_rows)
        assert any(r["value"] is None for r in json_rows)
        assert any(r["ingested_at"] is None for r in json_rows)
        assert any(len(r["timestamp"]) == len("2026-01-01T00:00:00.000123Z") for r in json_rows)


@pytest.mark.parametrize("params", [
    {"site_id": f"{RUN}-nothing-here"},
    {"sensor_id": "'; drop table x; --"},
    {"asset_id": "a\\'b\\", "interval": "1m"},
    {"site_id": "é'\"😀,"}])
def test_csv_export_of_nothing_is_the_header_only(client: FlaskClient,
                                                  csv_rows: list[dict[str, Any]],
                                                  params: dict[str, str]) -> None:
    response = client.get("/api/v1/telemetry", headers=AUTH,
                          query_string={**_CSV_RANGE, **params, "format": "csv"})
    assert response.status_code == 200
    rows = list(csv.reader(io.StringIO(response.get_data(as_text=True), newline="")))
    assert rows == [["timestamp", "asset_id", "sensor_id", "sensor_type", "value"]
                    if "interval" in params else list(SENSOR_READING_COLUMNS)]
    # The injection attempt was a value like any other: the table is still there.
    still = client.get("/api/v1/telemetry", headers=AUTH,
                       query_string={**_CSV_RANGE, "site_id": CSV_SITE, "limit": "1"})
    assert still.status_code == 200 and len(still.json["data"]) == 1


def test_csv_export_with_questdb_http_unreachable_is_503_naming_the_setting(
        app: Flask) -> None:
    import socket

    from api.query import STORE_EXTENSION
    from api.questdb import QuestDBExporter

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = app.extensions[STORE_EXTENSION]
    exporter = store.exporter
    store.exporter = QuestDBExporter("127.0.0.1", port)
    try:
        response = app.test_client().get("/api/v1/telemetry", headers=AUTH,
                                         query_string={**RANGE, "format": "csv"})
    finally:
        store.exporter = exporter
    assert response.status_code == 503 and response.headers["Retry-After"]
    assert f"127.0.0.1:{port}" in response.json["message"]
    assert "http_port" in response.json["message"]
