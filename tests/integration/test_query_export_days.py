"""The raw CSV export of a range over several UTC days, against a real QuestDB: one ``/exp``
query per day (QuestDB sorts a day's rows, never the whole range at once), streamed in
order with the header once (decision 0006, "Fifth pass").

A 3-day export must equal its days' exports concatenated (header once) and the JSON pages'
rows, in both orders, with rows on and next to midnight, rows sharing a timestamp, odd
strings (quotes, commas, line ends, backslashes, unicode) and nulls; ``limit`` and a cursor
must cut and continue it across days. Every run writes its own ids (a random prefix).
"""

from __future__ import annotations

import csv
import io
import time
import uuid
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from questdb import TimestampNanos

from api import create_app
from api.query import STORE_EXTENSION
from api.questdb import QuestDBExporter
from config.settings import load_settings
from io_connectors.questdb_schema import SENSOR_READING_COLUMNS, SENSOR_READINGS
from tests.integration.conftest import API_AUTH as AUTH
from tests.integration.conftest import api_pages, questdb_pg, questdb_sender, wait_rows

pytestmark = pytest.mark.integration

SETTINGS = load_settings()
RUN = f"qxd{uuid.uuid4().hex[:8]}"
SITE = f"{RUN}-site"
DAY_US = 86_400_000_000
# Midnight five days ago: three whole days inside the 90-day TTL, none of them today.
DAY0_US = (int(time.time()) // 86_400 - 5) * DAY_US
TEXTS = [None, 'comma, "quote"', "line\nend", "back\\slash", "Zürich – 東京 😀", ""]


def _rows() -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for day in range(3):
        midnight = DAY0_US + day * DAY_US
        stamps = [midnight, midnight + 1, midnight + 999_000, midnight + 3_600_000_123,
                  midnight + DAY_US // 2, midnight + DAY_US - 1]
        for i, us in enumerate(stamps):
            for k in range(3 if i == 2 else 1):  # three rows share one timestamp
                n = len(rows)
                rows.append({"us": us, "event_id": f"{RUN}-{day}-{i}-{k}",
                             "sensor_id": f"{RUN}-sen-{n % 2}",
                             "value": None if n % 7 == 3 else n * 1.25 - 3e-05,
                             "site_name": TEXTS[n % len(TEXTS)],
                             "location": TEXTS[(n + 2) % len(TEXTS)]})
    return rows


ROWS = _rows()


@pytest.fixture(scope="module")
def app(query_tables: None) -> Flask:
    with questdb_sender(SETTINGS) as sender:
        for r in ROWS:
            columns: dict[str, Any] = {"event_id": r["event_id"]}
            for name in ("value", "site_name", "location"):
                if r[name] is not None:
                    columns[name] = r[name]
            sender.row(SENSOR_READINGS, symbols={
                "site_id": SITE, "asset_id": f"{RUN}-asset", "sensor_id": r["sensor_id"],
                "sensor_type": "POWER", "unit": "kW", "quality_flag": "GOOD"},
                columns=columns, at=TimestampNanos(r["us"] * 1000))
        sender.flush()
    conn = questdb_pg(SETTINGS)
    wait_rows(conn.cursor(), SENSOR_READINGS, "site_id = %s", (SITE,), len(ROWS), timeout_s=60)
    conn.close()
    return create_app(SETTINGS, {"TESTING": True})


class _SpyExporter(QuestDBExporter):
    """The real exporter, recording the SQL of every /exp it sends."""

    def __init__(self, host: str, http_port: int) -> None:
        super().__init__(host, http_port)
        self.sqls: list[str] = []

    def _open(self, sql: str) -> Any:
        self.sqls.append(sql)
        return super()._open(sql)


@pytest.fixture
def spy(app: Flask) -> Any:
    store = app.extensions[STORE_EXTENSION]
    original = store.exporter
    store.exporter = _SpyExporter(SETTINGS.questdb.host, SETTINGS.questdb.http_port)
    yield store.exporter
    store.exporter = original


def _csv(client: FlaskClient, **params: str) -> bytes:
    response = client.get("/api/v1/telemetry", headers=AUTH,
                          query_string={"site_id": SITE, **params, "format": "csv"})
    assert response.status_code == 200 and response.mimetype == "text/csv"
    assert response.headers["X-Data-Source"] == "raw"
    return response.get_data()


def _assert_csv_is_json(data: bytes, json_rows: list[dict[str, Any]]) -> None:
    """Header = the JSON keys; every field parses to the JSON value, row by row."""
    rows = list(csv.reader(io.StringIO(data.decode(), newline="")))
    assert rows[0] == list(SENSOR_READING_COLUMNS)
    assert len(rows) - 1 == len(json_rows)
    for fields, row in zip(rows[1:], json_rows, strict=True):
        for field, (name, value) in zip(fields, row.items(), strict=True):
            if value is None or value == "":
                assert field == "", (name, field, value)
            elif isinstance(value, float):
                assert float(field) == value, (name, field, value)
            else:
                assert field == value, (name, field, value)


def _range(start_us: int, end_us: int) -> dict[str, str]:
    return {"start_time": str(start_us // 1000), "end_time": str(end_us // 1000)}


@pytest.mark.parametrize("order", ["asc", "desc"])
@pytest.mark.parametrize("span", [(0, 3 * DAY_US), (DAY_US // 2 + 1000, 2 * DAY_US + 7_200_000)])
def test_multi_day_export_is_its_days_concatenated_and_the_json_rows(
        client: FlaskClient, spy: _SpyExporter, order: str, span: tuple[int, int]) -> None:
    start, end = DAY0_US + span[0], DAY0_US + span[1]
    whole = _csv(client, **_range(start, end), order=order)
    # One /exp per UTC day, each reading only its day.
    assert len(spy.sqls) == 3
    days = [(max(start, DAY0_US + d * DAY_US), min(end, DAY0_US + (d + 1) * DAY_US))
            for d in range(3)]
    if order == "desc":
        days.reverse()
    for sql, (lo, hi) in zip(spy.sqls, days, strict=True):
        assert f"timestamp >= {lo} AND timestamp < {hi}" in sql
    # The days' own exports (one query each), concatenated with the header once.
    header = whole[:whole.index(b"\n") + 1]
    parts = [_csv(client, **_range(lo, hi), order=order) for lo, hi in days]
    assert all(part.startswith(header) for part in parts)
    assert whole == header + b"".join(part[len(header):] for part in parts)
    # The JSON pages' rows, in their order (pages of 4 cross every midnight).
    json_rows, sources = api_pages(client, site_id=SITE, **_range(start, end), order=order,
                                   limit="4")
    expected = sorted((r for r in ROWS if start <= r["us"] < end),
                      key=lambda r: (r["us"], r["event_id"]), reverse=order == "desc")
    assert [r["event_id"] for r in json_rows] == [r["event_id"] for r in expected]
    assert sources == {"raw"} and len(expected) > 12
    _assert_csv_is_json(whole, json_rows)
    assert b"\\" in whole and "東京".encode() in whole and b'""quote""' in whole


@pytest.mark.parametrize("order", ["asc", "desc"])
def test_limit_and_cursor_cut_and_continue_across_days(client: FlaskClient, spy: _SpyExporter,
                                                       order: str) -> None:
    span = _range(DAY0_US, DAY0_US + 3 * DAY_US)
    pages, _ = api_pages(client, site_id=SITE, **span, order=order, limit="50")
    per_day = len(pages) // 3
    limit = per_day + 3  # ends inside the second day
    limited = _csv(client, **span, order=order, limit=str(limit))
    _assert_csv_is_json(limited, pages[:limit])
    assert len(spy.sqls) == 2  # the third day is never asked for
    first = client.get("/api/v1/telemetry", headers=AUTH, query_string={
        "site_id": SITE, **span, "order": order, "limit": str(per_day - 1)}).json
    rest = _csv(client, **span, order=order, cursor=first["next_cursor"])
    _assert_csv_is_json(rest, pages[per_day - 1:])
