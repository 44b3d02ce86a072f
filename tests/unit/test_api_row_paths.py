"""Unit tests of the API's fast row path: timestamps as QuestDB's text.

The CSV export (QuestDB's /exp) has its own tests: tests/unit/test_api_export.py, and
tests/integration/test_query_api.py (CSV equals JSON against a real QuestDB).
"""

from __future__ import annotations

from datetime import datetime

from hypothesis import given
from hypothesis import strategies as st

from api.params import format_timestamp, to_micros
from api.questdb import json_timestamp, timestamp_micros


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
