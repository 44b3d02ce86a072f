"""Unit tests of the API's fast row paths: text timestamps and the CSV export's chunks.

QuestDB is faked at the store boundary (as in test_api_views); the real PG-wire path
is covered by tests/integration/test_query_api.py (CSV equals JSON, pages, buckets).
"""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from hypothesis import given
from hypothesis import strategies as st

from api import create_app
from api.params import TelemetryQuery, format_timestamp, to_micros
from api.questdb import RowPage, json_rows, json_timestamp, timestamp_micros
from io_connectors.questdb_schema import SENSOR_READING_COLUMNS
from runners.settings import load_settings

AUTH = {"Authorization": "Bearer dev-api-key"}
RANGE = {"start_time": "2026-01-01T00:00:00Z", "end_time": "2026-01-02T00:00:00Z"}


def _questdb_text(value: datetime) -> str:
    """How QuestDB 9.3 sends a TIMESTAMP over PG wire in text format (six digits)."""
    return value.strftime("%Y-%m-%d %H:%M:%S.%f")


@given(st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2200, 1, 1)))
def test_text_timestamp_prints_and_keys_like_the_datetime(value: datetime) -> None:
    text = _questdb_text(value)
    assert json_timestamp(text) == format_timestamp(value)
    assert timestamp_micros(text) == to_micros(value)


def test_json_timestamp_keeps_datetimes_none_and_other_text_forms() -> None:
    assert json_timestamp(None) is None
    assert json_timestamp(datetime(2026, 1, 1, 0, 0, 0, 120000)) == "2026-01-01T00:00:00.120Z"
    assert json_timestamp("2026-01-01 00:00:00.000001") == "2026-01-01T00:00:00.000001Z"
    assert json_timestamp("2026-01-01 00:00:00") == "2026-01-01T00:00:00.000Z"


def test_json_rows_converts_timestamps_and_non_finite_values() -> None:
    row = ["2026-01-01 00:00:01.500000", "e1", "s", "a", "x", "POWER", float("nan"), "kW",
           "GOOD", None, None, None, None]
    assert json_rows(SENSOR_READING_COLUMNS, [tuple(row)]) == [
        ["2026-01-01T00:00:01.500Z", "e1", "s", "a", "x", "POWER", None, "kW", "GOOD", None,
         None, None, None]]


class RowStore:
    """A store with ``reading_rows`` (the real store's CSV path) over canned rows."""

    def __init__(self, n: int, fail_on_call: int | None = None) -> None:
        t0 = datetime(2026, 1, 1)
        self.rows = [[format_timestamp(t0 + timedelta(seconds=i)), f"e{i:06d}", "s1", "a1",
                      "a1-s0", "POWER", i * 0.5, "kW", "GOOD", None, None, None, None]
                     for i in range(n)]
        self.calls = 0
        self.fail_on_call = fail_on_call

    def reading_rows(self, q: TelemetryQuery, limit: int, after: Any) -> RowPage:
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise RuntimeError("QuestDB went away mid-stream")
        start = 0 if after is None else int(after[1][1:]) + 1
        page = self.rows[start:start + limit]
        more = start + limit < len(self.rows)
        key = (0, page[-1][1]) if more and page else None
        return RowPage(SENSOR_READING_COLUMNS, page, key)

    def ping(self) -> None:
        pass


def _app(store: Any, tmp_path: Path) -> Flask:
    assets = tmp_path / "assets.json"
    assets.write_text(json.dumps({"sites": {}, "assets": {}}))
    return create_app(load_settings(), {"TESTING": True, "TELEMETRY_STORE": store,
                                        "READY_CHECKS": {}, "ASSETS_FILE": str(assets)})


def test_csv_streams_every_row_of_several_chunks(tmp_path: Path) -> None:
    store = RowStore(25_001)  # three chunks of at most 10,000
    response = _app(store, tmp_path).test_client().get(
        "/api/v1/telemetry", query_string={**RANGE, "sensor_id": "a1-s0", "format": "csv"},
        headers=AUTH)
    assert response.status_code == 200
    rows = list(csv.reader(io.StringIO(response.get_data(as_text=True))))
    assert rows[0] == list(SENSOR_READING_COLUMNS)
    assert [r[1] for r in rows[1:]] == [r[1] for r in store.rows]
    assert rows[1][9] == "" and rows[2][6] == "0.5"  # None empty, floats as repr
    assert store.calls == 3


def test_csv_failing_mid_stream_breaks_the_transfer(tmp_path: Path) -> None:
    store = RowStore(25_001, fail_on_call=2)
    response = _app(store, tmp_path).test_client().get(
        "/api/v1/telemetry", query_string={**RANGE, "sensor_id": "a1-s0", "format": "csv"},
        headers=AUTH, buffered=False)
    assert response.status_code == 200  # the first chunk was read before the headers
    with pytest.raises(RuntimeError, match="mid-stream"):
        b"".join(response.response)
