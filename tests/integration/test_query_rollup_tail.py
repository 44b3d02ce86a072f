"""Rollups with a raw tail (decision 0006, "Fourth pass") against a real QuestDB.

The 1-minute rollup is refreshed by a timer; the API reads the buckets of rows newer than
the last refresh from the raw rows and the older ones from the rollups, in one query. Every
answer must equal the raw rows' own (``source=raw``): at every split point (mid-minute, on
a minute, on an hour, before the range, after it), for each aggregate, fill, order and
page size, as CSV too, and right after new writes the views have not seen yet.

Needs the rollup views ([questdb] rollups, on in the test profile). Each run writes its
own ids (a random prefix).
"""

from __future__ import annotations

import csv
import io
import math
import random
import time
import uuid
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from questdb import TimestampNanos

from api import create_app
from api.query import STORE_EXTENSION
from config.settings import load_settings
from io_connectors.questdb_schema import ROLLUP_1H, ROLLUP_1M, SENSOR_READINGS
from tests.integration.conftest import (
    API_AUTH,
    api_pages,
    questdb_pg,
    questdb_sender,
    same_buckets,
    wait_rollups,
    wait_rows,
)

pytestmark = pytest.mark.integration

SETTINGS = load_settings()
MIN_MS, HOUR_MS = 60_000, 3_600_000

RUN = f"qtail{uuid.uuid4().hex[:8]}"
SITE = f"{RUN}-site"
ASSETS = [f"{RUN}-asset-{a}" for a in range(2)]
TYPES = ("TEMPERATURE", "VOLTAGE")
# Two past hours (inside the 90-day TTL), written now: the rollups must be refreshed first.
PAST_MS = (int(time.time()) // 3600 - 30) * HOUR_MS
PAST_HOURS = 2


def _write(rows: list[dict[str, Any]]) -> None:
    with questdb_sender(SETTINGS) as sender:
        for r in rows:
            sender.row(SENSOR_READINGS, symbols={"site_id": r["site_id"],
                                                 "asset_id": r["asset_id"],
                                                 "sensor_id": r["sensor_id"],
                                                 "sensor_type": r["sensor_type"]},
                       columns={"event_id": r["event_id"],
                                **({"value": r["value"]} if r["value"] is not None else {})},
                       at=TimestampNanos(r["us"] * 1000))
        sender.flush()


def _sensors(prefix: str) -> tuple[str, tuple[str]]:
    """The WHERE clause (and its parameter) of the sensors whose id starts with ``prefix``."""
    return "sensor_id LIKE %s", (prefix + "%",)


def _rows(prefix: str, start_us: int, span_us: int, per_sensor: int,
          seed: int) -> list[dict[str, Any]]:
    """Uneven rows: a random number per minute, null values, shared timestamps, and rows
    on and just before minute and hour boundaries (where the parts split)."""
    rng = random.Random(seed)
    rows = []
    for a, asset in enumerate(ASSETS):
        for k, sensor_type in enumerate(TYPES):
            sensor = f"{prefix}-{a}-{k}"
            stamps = [start_us + rng.randrange(span_us) for _ in range(per_sensor)]
            stamps += [start_us + m * MIN_MS * 1000 + d for m in range(0, span_us // 60_000_000, 7)
                       for d in (0, -1000, -1)]
            for i, us in enumerate(stamps):
                if not start_us <= us < start_us + span_us:
                    continue
                if i % 5 == 0:
                    us -= us % 1_000_000  # whole seconds: some stamps shared
                value = None if i % 13 == 0 else rng.uniform(-50, 150) * (1 + a)
                rows.append({"us": us, "event_id": f"{sensor}-{i}", "site_id": SITE,
                             "asset_id": asset, "sensor_id": sensor,
                             "sensor_type": sensor_type, "value": value})
    return rows


@pytest.fixture(scope="module")
def app(query_tables: None) -> Flask:
    app = create_app(SETTINGS, {"TESTING": True})
    if not app.extensions[STORE_EXTENSION].rollups_enabled:
        pytest.fail("the rollups are off ([questdb] rollups = false): this test needs them")
    return app


@pytest.fixture(scope="module")
def past_rows(app: Flask) -> list[dict[str, Any]]:
    rows = _rows(f"{RUN}-past", PAST_MS * 1000, PAST_HOURS * HOUR_MS * 1000, 700, 16)
    _write(rows)
    conn = questdb_pg(SETTINGS)
    cur = conn.cursor()
    wait_rows(cur, SENSOR_READINGS, *_sensors(f"{RUN}-past"), len(rows))
    wait_rollups(cur, *_sensors(f"{RUN}-past"), len(rows))
    conn.close()
    return rows


# Split points (ms after PAST_MS) of the 1-minute rollup, and of the 1-hour one.
_SPLITS = [
    (37 * MIN_MS + 17_000, 37 * MIN_MS + 17_000),  # mid-minute: both floored
    (61 * MIN_MS, 60 * MIN_MS),                    # a minute after an hour; the hour edge
    (95 * MIN_MS, 30 * MIN_MS),                    # 1-hour view older: its hour 0 only
    (-HOUR_MS, -HOUR_MS),                          # before the range: all raw
    (5 * HOUR_MS, 5 * HOUR_MS),                    # after it: all rollup
]


@pytest.mark.parametrize("split_1m,split_1h", _SPLITS)
def test_rollup_and_raw_tail_equal_the_raw_rows_at_every_split(
        client: FlaskClient, app: Flask, past_rows: list[dict[str, Any]],
        monkeypatch: pytest.MonkeyPatch, split_1m: int, split_1h: int) -> None:
    store = app.extensions[STORE_EXTENSION]
    fresh = {ROLLUP_1M: (PAST_MS + split_1m) * 1000, ROLLUP_1H: (PAST_MS + split_1h) * 1000}
    monkeypatch.setattr(store, "_freshness", lambda: dict(fresh))
    end = PAST_MS + PAST_HOURS * HOUR_MS
    seen = set()
    cases = [("1m", "avg", "none", "asc", "53"), ("1m", "count", "null", "desc", "97"),
             ("5m", "min", "prev", "asc", "31"), ("15m", "max", "none", "desc", "10000"),
             ("1h", "avg", "none", "asc", "3"), ("1h", "count", "prev", "desc", "5"),
             ("1m", "max", "linear", "asc", "400")]
    for interval, agg, fill, order, limit in cases:
        for filters in ({"site_id": SITE}, {"asset_id": ASSETS[1]}):
            params = {"start_time": str(PAST_MS), "end_time": str(end), **filters,
                      "interval": interval, "agg": agg, "fill": fill, "order": order,
                      "limit": limit}
            auto, sources = api_pages(client, **params)
            raw, _ = api_pages(client, **params, source="raw")
            assert len(raw) >= 4, params  # 2 hours x 2 sensors at least
            same_buckets(auto, raw)
            seen |= sources
    if split_1m < 0:
        assert seen == {"raw"}
    elif split_1m > PAST_HOURS * HOUR_MS:
        assert seen == {"rollup_1m", "rollup_1h"}
    else:
        assert "rollup_1m+raw" in seen, seen
        # 1-hour buckets read the 1-hour view when it holds a whole hour of the range.
        assert any(s.startswith("rollup_1h+") for s in seen) == (split_1h >= HOUR_MS), seen
    # The CSV export reads the same parts in one query.
    params = {"start_time": str(PAST_MS), "end_time": str(end), "site_id": SITE,
              "interval": "5m", "agg": "avg", "format": "csv"}
    auto_csv = client.get("/api/v1/telemetry", query_string=params, headers=API_AUTH)
    a = list(csv.DictReader(io.StringIO(auto_csv.get_data(as_text=True))))
    raw_csv = client.get("/api/v1/telemetry", query_string={**params, "source": "raw"},
                         headers=API_AUTH)
    b = list(csv.DictReader(io.StringIO(raw_csv.get_data(as_text=True))))
    assert auto_csv.headers["X-Data-Source"] != "raw" or split_1m < 0
    assert len(a) == len(b) > 10
    for x, y in zip(a, b, strict=True):
        assert (x["timestamp"], x["sensor_id"]) == (y["timestamp"], y["sensor_id"])
        assert math.isclose(float(x["value"]), float(y["value"]), rel_tol=1e-9)


def test_buckets_right_after_new_writes_include_them(client: FlaskClient,
                                                      past_rows: list[dict[str, Any]]) -> None:
    """Rows stamped in the last 90 s, written now: the 1-minute rollup has not refreshed
    (its timer), yet the buckets count every one of them (the raw tail) and equal the raw
    rows' answer, for 1-minute buckets and for 1-hour ones (1-hour view, 1-minute view and
    raw rows in one query). After the views have refreshed, still the same answer."""
    now_us = int(time.time() * 1_000_000)
    rows = _rows(f"{RUN}-now", now_us - 90_000_000, 90_000_000, 200, 17)
    _write(rows)
    conn = questdb_pg(SETTINGS)
    cur = conn.cursor()
    wait_rows(cur, SENSOR_READINGS, *_sensors(f"{RUN}-now"), len(rows), timeout_s=30)
    minute = now_us // 60_000_000 * MIN_MS
    hour = now_us // 3_600_000_000 * HOUR_MS
    ranges = {"1m": (minute - 10 * MIN_MS, minute + 2 * MIN_MS),
              "1h": (hour - 3 * HOUR_MS, hour + HOUR_MS)}

    def check(expect_raw_tail: bool) -> None:
        for interval, (start, end) in ranges.items():
            for agg in ("count", "avg", "max"):
                params = {"start_time": str(start), "end_time": str(end), "site_id": SITE,
                          "interval": interval, "agg": agg, "limit": "7"}
                auto, sources = api_pages(client, **params)
                raw, _ = api_pages(client, **params, source="raw")
                same_buckets(auto, raw)
                if expect_raw_tail:
                    assert all(s.endswith("+raw") or s == "raw" for s in sources), sources
                if agg == "count":
                    mine = sum(r["value"] for r in auto if r["sensor_id"].startswith(
                        f"{RUN}-now"))
                    assert mine == len(rows), (interval, mine, len(rows))

    check(expect_raw_tail=True)
    wait_rollups(cur, *_sensors(f"{RUN}-now"), len(rows))
    conn.close()
    check(expect_raw_tail=False)


def test_freshness_follows_the_views_refresh(app: Flask, past_rows: list[dict[str, Any]]) -> None:
    """What the store believes the views hold: never later than the 1-minute view's last
    refresh start (or now, when it has seen every write) minus the margin, and the 1-hour
    view never fresher than the 1-minute one."""
    from api.questdb import ROLLUP_TAIL_MARGIN_S

    store = app.extensions[STORE_EXTENSION]
    store._rollups_checked = -math.inf  # ask QuestDB now
    fresh = store._freshness()
    after_us = int(time.time() * 1_000_000)
    assert set(fresh) == {ROLLUP_1M, ROLLUP_1H}
    assert fresh[ROLLUP_1M] <= after_us - ROLLUP_TAIL_MARGIN_S * 1_000_000
    assert fresh[ROLLUP_1H] <= fresh[ROLLUP_1M]
