"""Unit tests of the JSON pages printed without a dict per row (api/rows_json.py).

The property: for any rows, :func:`api.rows_json.rows_json` is byte for byte what the API
printed before, ``orjson.dumps`` (with the response provider's fallback) of the dicts of
:func:`api.questdb._records`: nulls, NaN and infinities, any unicode, quotes, backslashes
and control characters, extreme doubles and 64-bit integers, QuestDB's timestamp text and
datetimes, and every mix of them within a column (which moves a column off its fast path).
"""

from __future__ import annotations

import gc
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from flask.json.provider import DefaultJSONProvider
from hypothesis import given, settings
from hypothesis import strategies as st

from api import create_app
from api.questdb import _BUCKET_COLUMNS, RowPage, _records
from api.rows_json import rows_json
from config.settings import load_settings
from io_connectors.questdb_schema import ALARM_COLUMNS, SENSOR_READING_COLUMNS

AUTH = {"Authorization": "Bearer dev-api-key"}


def _old(columns: tuple[str, ...], rows: list[tuple[Any, ...]]) -> bytes:
    """What the API printed before: the dicts, through orjson as OrjsonProvider calls it."""
    return orjson.dumps(_records(columns, rows), default=DefaultJSONProvider.default)


_DATETIMES = st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2200, 1, 1))
# QuestDB's TIMESTAMP text over PG wire: six fraction digits; whole milliseconds often.
_QUESTDB_TEXT = st.one_of(
    _DATETIMES.map(lambda d: d.strftime("%Y-%m-%d %H:%M:%S.%f")),
    _DATETIMES.map(lambda d: d.replace(microsecond=d.microsecond // 1000 * 1000)
                   .strftime("%Y-%m-%d %H:%M:%S.%f")))
_TIMESTAMPS = st.one_of(_QUESTDB_TEXT, st.none(), _DATETIMES,
                        _DATETIMES.map(lambda d: d.strftime("%Y-%m-%d %H:%M:%S")))
# Text as psycopg2 decodes it (never a lone surrogate: see the test below).
_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)
_PLAIN = st.text(alphabet="abcXYZ-_.:019 é東😀", max_size=12)
_SYMBOLS = st.sampled_from(["site-1", "a'b", 'q"uote', "back\\slash", "new\nline", "",
                            "Zürich – “Nord”", "tab\tx", "\x7f\u2028", "😀"])
_NUMBERS = st.one_of(st.floats(), st.none(), st.integers(-(2**63), 2**64 - 1),
                     st.sampled_from([1e-05, 1e300, 5e-324, -0.0, 1.7976931348623157e308,
                                      0.1 + 0.2, 1e22, 1e16, 123456789.0]))


def _column_values(column: str) -> st.SearchStrategy[Any]:
    if column in ("timestamp", "ingested_at"):
        return _TIMESTAMPS
    if column in ("value", "threshold"):
        return _NUMBERS
    if column in ("event_id", "alarm_id", "reason"):
        return st.one_of(_TEXT, st.none())
    # Numbers that are equal but print differently (1, 1.0, True; 0.0, -0.0).
    return st.one_of(_SYMBOLS, _TEXT, st.none(),
                     st.sampled_from([1, 1.0, True, 0, 0.0, -0.0, False, float("nan")]))


def _fast_values(column: str) -> st.SearchStrategy[Any]:
    """Values of a column's fast path (every value of the column like these)."""
    if column in ("timestamp", "ingested_at"):
        return _QUESTDB_TEXT
    if column in ("value", "threshold"):
        return st.one_of(st.floats(), st.none(), st.integers(-(2**63), 2**63 - 1))
    if column in ("event_id", "alarm_id", "reason"):
        return _PLAIN
    return st.sampled_from(["s-1", "s-2", "é東😀", ""])


@st.composite
def _pages(draw: Any, columns: tuple[str, ...]) -> list[tuple[Any, ...]]:
    n = draw(st.integers(0, 40))
    by_column = []
    for column in columns:
        # Mostly a column of the fast path, sometimes any mix (the value-by-value path).
        values = _fast_values(column) if draw(st.booleans()) else _column_values(column)
        by_column.append(draw(st.lists(values, min_size=n, max_size=n)))
    return list(zip(*by_column, strict=True)) if n else []


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_rows_json_prints_what_the_dicts_printed(data: Any) -> None:
    columns = data.draw(st.sampled_from([SENSOR_READING_COLUMNS, _BUCKET_COLUMNS,
                                         ALARM_COLUMNS]))
    rows = data.draw(_pages(columns))
    assert rows_json(columns, rows) == _old(columns, rows)


def test_rows_json_of_a_dense_page_and_its_special_values() -> None:
    rows = [(f"2026-11-24 00:00:{i // 10:02d}.{i % 10 * 5:03d}{'000' if i % 3 else '123'}",
             f"ev-{i}", "site-1", "asset-1", f"asset-1-s{i % 10}", "POWER",
             [1.5, float("nan"), None, 1e-05, float("-inf"), 7][i % 6], "kW", "GOOD",
             'Site "One"' if i == 4 else "Site One", "INVERTER", None,
             "2026-11-24 00:00:01.000000") for i in range(1000)]
    text = rows_json(SENSOR_READING_COLUMNS, rows)
    assert text == _old(SENSOR_READING_COLUMNS, rows)
    first = json.loads(text)[0]
    assert list(first) == list(SENSOR_READING_COLUMNS)
    assert first["timestamp"] == "2026-11-24T00:00:00.000123Z"
    assert json.loads(text)[1]["timestamp"] == "2026-11-24T00:00:00.005Z"
    assert [r["value"] for r in json.loads(text)[:6]] == [1.5, None, None, 1e-05, None, 7]
    assert rows_json(SENSOR_READING_COLUMNS, []) == b"[]"


def test_rows_json_refuses_what_orjson_refused() -> None:
    lone = [("2026-11-24 00:00:00.000000", "ev\ud800", "s", "a", "x", "T", 1.0, "u", "G",
             None, None, None, None)]
    with pytest.raises(orjson.JSONEncodeError):
        _old(SENSOR_READING_COLUMNS, lone)
    with pytest.raises(orjson.JSONEncodeError):
        rows_json(SENSOR_READING_COLUMNS, lone)
    with pytest.raises(ValueError, match="columns"):
        rows_json(_BUCKET_COLUMNS, [("2026-11-24 00:00:00.000000", "a", "s")])


@pytest.mark.parametrize("enabled", [True, False])
def test_rows_json_leaves_the_collector_as_it_found_it(enabled: bool) -> None:
    rows = [("2026-11-24 00:00:00.000000", "a", "s", "T", 1.0)] * 50
    was = gc.isenabled()
    try:
        gc.enable() if enabled else gc.disable()
        rows_json(_BUCKET_COLUMNS, rows)
        assert gc.isenabled() is enabled
        with pytest.raises(ValueError):
            rows_json(SENSOR_READING_COLUMNS, rows)
        assert gc.isenabled() is enabled
    finally:
        gc.enable() if was else gc.disable()


class _RowStore:
    """The store's answer to a JSON page as the view sees it: QuestDB's tuples."""

    def __init__(self, page: RowPage) -> None:
        self.page = page

    def readings(self, q: Any, limit: int, after: Any) -> RowPage:
        return self.page

    def ping(self) -> None:
        pass


@pytest.mark.parametrize("next_key", [None, (1_795_000_000_000_000, "ev-'\"1")])
def test_view_body_is_what_jsonify_printed_for_the_dicts(tmp_path: Path,
                                                         next_key: Any) -> None:
    rows = [("2026-11-24 00:00:00.005000", "asset-1", "s-é", "POWER", float(i) / 3)
            for i in range(30)] + [("2026-11-24 00:01:00.000000", None, "s", "T", None)]
    page = RowPage(_BUCKET_COLUMNS, rows, next_key, "rollup_1m+raw")
    assets = tmp_path / "assets.json"
    assets.write_text(json.dumps({"sites": {}, "assets": {}}))
    app = create_app(load_settings(), {"TESTING": True, "TELEMETRY_STORE": _RowStore(page),
                                       "READY_CHECKS": {}, "ASSETS_FILE": str(assets)})
    response = app.test_client().get("/api/v1/telemetry", headers=AUTH, query_string={
        "site_id": "x", "start_time": "2026-11-24T00:00:00Z", "end_time": "2026-11-25T00:00:00Z",
        "interval": "1m", "agg": "avg"})
    assert response.status_code == 200 and response.mimetype == "application/json"
    assert response.headers["X-Data-Source"] == "rollup_1m+raw"
    body = response.get_data()
    cursor = response.json["next_cursor"]
    assert (cursor is None) == (next_key is None)
    with app.app_context():
        expected = app.json.response({"data": page.rows, "next_cursor": cursor,
                                      "source": "rollup_1m+raw"}).get_data()
    assert body == expected
    assert page.rows == _records(_BUCKET_COLUMNS, rows)
