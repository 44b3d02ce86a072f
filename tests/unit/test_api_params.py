"""Unit tests of api.params (parsing, whitelisting, cursors) and of the SQL builders."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from werkzeug.datastructures import MultiDict

from api import params as P
from api import questdb as Q
from api.errors import BadParameter
from schemas.events import SENSOR_TYPES

NOW_US = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z


def parse(**kwargs: str) -> P.TelemetryQuery:
    return P.parse_telemetry_query(MultiDict(kwargs), now_us=NOW_US)


def bad(parameter: str, **kwargs: str) -> BadParameter:
    with pytest.raises(BadParameter) as info:
        parse(**kwargs)
    assert info.value.parameter == parameter, info.value.message
    assert info.value.status == 400
    return info.value


@pytest.mark.parametrize("text,expected", [
    ("2026-01-01T00:00:00Z", NOW_US),
    ("2026-01-01T01:00:00+01:00", NOW_US),
    ("2026-01-01T00:00:00", NOW_US),  # no offset: UTC
    ("2026-01-01T00:00:00.123456Z", NOW_US + 123_456),
    ("1767225600000", NOW_US),  # epoch milliseconds
    ("0", 0),
])
def test_parse_time_accepts_iso_and_epoch_ms(text: str, expected: int) -> None:
    assert P.parse_time(text, "start_time") == expected


@pytest.mark.parametrize("text", ["yesterday", "", "1e12", "-5", "2026-13-01", "9999999999999999",
                                  "2200-01-01T00:00:00Z", "1969-12-31T23:59:59Z", "12:00"])
def test_parse_time_refuses_garbage_naming_the_parameter(text: str) -> None:
    with pytest.raises(BadParameter) as info:
        P.parse_time(text, "end_time")
    assert info.value.parameter == "end_time"


def test_defaults_are_last_24_hours_and_json_page_of_1000() -> None:
    q = parse()
    assert (q.start_us, q.end_us) == (NOW_US - 24 * 3600 * 10**6, NOW_US)
    assert (q.limit, q.limit_given, q.order) == (1000, False, "asc")
    assert (q.fmt, q.interval) == ("json", None)


def test_range_must_be_non_empty_and_raw_at_most_31_days() -> None:
    bad("start_time", start_time="2026-01-02T00:00:00Z", end_time="2026-01-01T00:00:00Z")
    bad("start_time", start_time="2026-01-01T00:00:00Z", end_time="2026-01-01T00:00:00Z")
    bad("start_time", start_time="2025-11-01T00:00:00Z", end_time="2026-01-01T00:00:00Z")
    assert parse(start_time="2025-12-01T00:00:00Z", end_time="2026-01-01T00:00:00Z").limit == 1000


def test_buckets_may_span_longer_but_not_too_many_buckets() -> None:
    q = parse(start_time="2025-10-01T00:00:00Z", end_time="2026-01-01T00:00:00Z", interval="1h")
    assert q.bucketed and q.agg == "avg" and q.fill == "none"
    bad("interval", start_time="2025-10-01T00:00:00Z", end_time="2026-01-01T00:00:00Z",
        interval="1s")


@pytest.mark.parametrize("value", ["0", "10001", "-1", "abc", "1.5", "", "99999999999", "¹",
                                   "٣", "1²"])
def test_limit_bounds(value: str) -> None:
    bad("limit", limit=value)


def test_limit_max_is_accepted() -> None:
    assert parse(limit="10000").limit == 10_000


@pytest.mark.parametrize("name,value", [
    ("interval", "2m"), ("interval", "1m; DROP TABLE x"), ("agg", "sum"), ("order", "ASC"),
    ("fill", "zero"), ("format", "xml")])
def test_whitelists(name: str, value: str) -> None:
    extra = {"interval": "1m"} if name in ("agg", "fill") else {}
    bad(name, **{name: value}, **extra)


def test_agg_and_fill_need_an_interval() -> None:
    bad("agg", agg="max")
    bad("fill", fill="prev")


def test_unknown_repeated_empty_and_control_characters_are_refused() -> None:
    bad("assetid", assetid="a")
    with pytest.raises(BadParameter) as info:
        P.parse_telemetry_query(MultiDict([("asset_id", "a"), ("asset_id", "b")]))
    assert info.value.parameter == "asset_id"
    bad("site_id", site_id="")
    bad("sensor_id", sensor_id="a\x00b")
    bad("asset_id", asset_id="x" * 257)


def test_cursor_round_trip_keeps_the_first_pages_range() -> None:
    q = parse(asset_id="a1")
    text = P.encode_cursor((NOW_US - 5, "ev-9"), q.start_us, q.end_us, q.fingerprint)
    later = P.parse_telemetry_query(MultiDict({"asset_id": "a1", "cursor": text}),
                                    now_us=NOW_US + 10**9)
    assert later.cursor == P.Cursor((NOW_US - 5, "ev-9"), q.start_us, q.end_us)
    assert (later.start_us, later.end_us) == (q.start_us, q.end_us)


def test_cursor_of_another_query_or_tampered_is_refused() -> None:
    q = parse(asset_id="a1")
    text = P.encode_cursor((NOW_US - 5, "ev-9"), q.start_us, q.end_us, q.fingerprint)
    bad("cursor", asset_id="a2", cursor=text)
    bad("cursor", asset_id="a1", cursor=text[:-3] + "AAA")
    bad("cursor", asset_id="a1", cursor="not-a-cursor!")
    # A raw cursor is not a bucket cursor (different key shape).
    bad("cursor", asset_id="a1", interval="1m", cursor=text)


# --- enum parameters: exactly a canonical value, else 400 listing the allowed values --------

def _alarms(**kwargs: str) -> P.AlarmQuery:
    return P.parse_alarm_query(MultiDict(kwargs), now_us=NOW_US)


def _latest(**kwargs: str) -> P.LatestQuery:
    return P.parse_latest_query(MultiDict({"site_id": "s", **kwargs}), now_us=NOW_US)


def _buckets(**kwargs: str) -> P.TelemetryQuery:
    return parse(interval="1h", **kwargs)


# (parser, parameter, its allowed values): every enum parameter of the API.
ENUM_PARAMS: list[tuple[Callable[..., Any], str, tuple[str, ...]]] = [
    (parse, "order", P.ORDERS), (parse, "format", P.FORMATS),
    (parse, "interval", tuple(P.INTERVALS)), (_buckets, "agg", P.AGGREGATES),
    (_buckets, "fill", P.FILLS), (parse, "sensor_type", P.QUERYABLE_SENSOR_TYPES),
    (_latest, "sensor_type", P.QUERYABLE_SENSOR_TYPES), (_alarms, "order", P.ORDERS),
    (_alarms, "severity", P.ALARM_SEVERITIES), (_alarms, "state", P.ALARM_STATES),
]
_ENUM_IDS = [f"{f.__name__}-{name}" for f, name, _ in ENUM_PARAMS]


def _refused(parser: Callable[..., Any], name: str, value: str) -> BadParameter:
    with pytest.raises(BadParameter) as info:
        parser(**{name: value})
    return info.value


@pytest.mark.parametrize("parser,name,allowed", ENUM_PARAMS, ids=_ENUM_IDS)
def test_every_canonical_enum_value_is_accepted(parser: Callable[..., Any], name: str,
                                                allowed: tuple[str, ...]) -> None:
    field = {"format": "fmt"}.get(name, name)
    for value in allowed:
        assert getattr(parser(**{name: value}), field) == value


@pytest.mark.parametrize("parser,name,allowed", ENUM_PARAMS, ids=_ENUM_IDS)
def test_other_case_is_refused_naming_every_allowed_value(parser: Callable[..., Any], name: str,
                                                         allowed: tuple[str, ...]) -> None:
    for value in allowed:
        other_case = value.swapcase()
        assert other_case != value  # every canonical value has a letter
        exc = _refused(parser, name, other_case)
        assert (exc.parameter, exc.status, exc.details["allowed"]) == (name, 400, list(allowed))
        assert all(v in exc.message for v in allowed) and "case-sensitive" in exc.message


@pytest.mark.parametrize("value,name", [("critical", "severity"), ("Critical", "severity"),
                                        ("ACTIVE", "state"), ("active", "state"),
                                        ("raised", "state"), ("", "severity")])
def test_alarm_filters_of_the_issue_are_400_not_an_empty_list(value: str, name: str) -> None:
    exc = _refused(_alarms, name, value)
    assert exc.parameter == name and exc.details["allowed"] == list(
        P.ALARM_SEVERITIES if name == "severity" else P.ALARM_STATES)


def test_state_active_points_at_the_active_parameter() -> None:
    assert "active=true" in _refused(_alarms, "state", "ACTIVE").message


def test_active_alarms_with_state_cleared_could_never_match() -> None:
    with pytest.raises(BadParameter) as info:
        _alarms(active="true", state="CLEARED")
    assert info.value.parameter == "state"
    assert _alarms(active="true", state="RAISED").state == "RAISED"


def test_sensor_types_are_the_schema_symbols_a_reading_can_have() -> None:
    assert "UNKNOWN" not in P.QUERYABLE_SENSOR_TYPES  # validation rejects it
    assert {*P.QUERYABLE_SENSOR_TYPES, "UNKNOWN"} == set(SENSOR_TYPES)


def test_alarm_enums_are_the_symbols_of_the_alarm_schema() -> None:
    schema = json.loads((Path(__file__).resolve().parents[2] / "schemas" / "alarm.avsc")
                        .read_text())
    symbols = {f["name"]: f["type"]["symbols"] for f in schema["fields"]
               if isinstance(f["type"], dict) and f["type"].get("type") == "enum"}
    assert symbols == {"severity": list(P.ALARM_SEVERITIES), "state": list(P.ALARM_STATES)}


@settings(max_examples=300, deadline=None)
@given(index=st.integers(0, len(ENUM_PARAMS) - 1), value=st.text(max_size=20))
def test_an_enum_parameter_yields_a_canonical_value_or_a_400(index: int, value: str) -> None:
    parser, name, allowed = ENUM_PARAMS[index]
    try:
        q = parser(**{name: value})
    except BadParameter as exc:
        assert value not in allowed and exc.parameter == name
        assert exc.details["allowed"] == list(allowed)
    else:
        assert getattr(q, {"format": "fmt"}.get(name, name)) == value and value in allowed


# --- the asset list: the same limit and cursor, smaller pages, no time range -----------------

def _assets(**kwargs: str) -> P.AssetListQuery:
    return P.parse_asset_list_query(MultiDict(kwargs))


def test_asset_list_defaults_to_a_page_of_100() -> None:
    q = _assets()
    assert (q.limit, q.after) == (100, None) == (P.ASSET_DEFAULT_LIMIT, None)
    assert _assets(limit="1000").limit == P.ASSET_MAX_LIMIT == 1000
    assert _assets(limit="1").limit == 1


@pytest.mark.parametrize("value", ["0", "1001", "10000", "-1", "abc", "", "99999999999"])
def test_asset_list_limit_bounds_name_the_range(value: str) -> None:
    with pytest.raises(BadParameter) as info:
        _assets(limit=value)
    exc = info.value
    assert exc.parameter == "limit" and "from 1 to 1000" in exc.message
    assert (exc.details["minimum"], exc.details["maximum"]) == (1, 1000)


def test_telemetry_limit_400_names_its_range_too() -> None:
    exc = bad("limit", limit="10001")
    assert "from 1 to 10000" in exc.message and exc.details["maximum"] == 10_000


def test_asset_list_refuses_unknown_parameters() -> None:
    with pytest.raises(BadParameter) as info:
        _assets(site_id="s")
    assert info.value.parameter == "site_id"
    assert info.value.details["allowed"] == ["cursor", "limit"]


def test_asset_cursor_round_trip_and_foreign_cursors_refused() -> None:
    q = _assets()
    text = P.encode_key_cursor(("bench-asset-01-007",), q.fingerprint)
    assert _assets(cursor=text, limit="5") == P.AssetListQuery(5, "bench-asset-01-007",
                                                               q.fingerprint)
    telemetry = parse()
    ranged = P.encode_cursor((NOW_US, "ev"), telemetry.start_us, telemetry.end_us,
                             telemetry.fingerprint)
    for foreign in (ranged, P.encode_key_cursor((5,), q.fingerprint), "not-a-cursor!",
                    text[:-3] + "AAA"):
        with pytest.raises(BadParameter) as info:
            _assets(cursor=foreign)
        assert info.value.parameter == "cursor"
    bad("cursor", cursor=text)  # and an asset cursor is not a telemetry cursor


def test_latest_needs_asset_or_site() -> None:
    with pytest.raises(BadParameter):
        P.parse_latest_query(MultiDict({"sensor_type": "POWER"}))
    assert P.parse_latest_query(MultiDict({"site_id": "s"})).site_id == "s"


@pytest.mark.parametrize("value,ok", [("30m", True), ("24h", True), ("90d", True),
                                      ("91d", False), ("0h", False), ("1w", False),
                                      ("1h; --", False)])
def test_latest_max_age(value: str, ok: bool) -> None:
    args = MultiDict({"site_id": "s", "max_age": value})
    if ok:
        q = P.parse_latest_query(args, now_us=NOW_US)
        assert NOW_US - 90 * 86_400 * 10**6 <= q.since_us < NOW_US
    else:
        with pytest.raises(BadParameter) as info:
            P.parse_latest_query(args, now_us=NOW_US)
        assert info.value.parameter == "max_age"


def test_active_alarms_take_no_range() -> None:
    assert P.parse_alarm_query(MultiDict({"active": "true"})).active
    with pytest.raises(BadParameter) as info:
        P.parse_alarm_query(MultiDict({"active": "true", "start_time": "0"}))
    assert info.value.parameter == "active"
    with pytest.raises(BadParameter):
        P.parse_alarm_query(MultiDict({"active": "maybe"}))


def test_format_timestamp_is_iso_utc_with_z() -> None:
    assert P.format_timestamp(datetime(2026, 1, 1, 0, 0, 1)) == "2026-01-01T00:00:01.000Z"
    assert P.format_timestamp(datetime(2026, 1, 1, 0, 0, 1, 5)) == "2026-01-01T00:00:01.000005Z"
    assert P.to_micros(datetime(2026, 1, 1, tzinfo=UTC)) == NOW_US


_PARAM_NAMES = st.sampled_from([*P.TELEMETRY_PARAMS, "x", "asset", "; DROP TABLE t"])
_VALUES = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["1m", "avg", "csv", "desc", "prev", "0", "10000", "' OR 1=1 --",
                     "2026-01-01T00:00:00Z", "1767225600000", "eyJ2IjoxfQ"]),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(_PARAM_NAMES, _VALUES), max_size=6))
def test_parser_raises_only_bad_parameter(pairs: list[tuple[str, str]]) -> None:
    try:
        q = P.parse_telemetry_query(MultiDict(pairs), now_us=NOW_US)
    except BadParameter as exc:
        assert exc.parameter
    else:
        assert q.start_us < q.end_us and 1 <= q.limit <= P.MAX_LIMIT


# --- SQL builders: the SQL text depends only on the *shape* of the query ---------------

_TEXT = st.text(min_size=1, max_size=30)


@settings(max_examples=200, deadline=None)
@given(asset=_TEXT, site=_TEXT, event=_TEXT, order=st.sampled_from(["asc", "desc"]),
       interval=st.sampled_from([None, *P.INTERVALS]), agg=st.sampled_from(P.AGGREGATES),
       fill=st.sampled_from(P.FILLS))
def test_request_values_never_reach_the_sql_text(asset: str, site: str, event: str, order: str,
                                                 interval: str | None, agg: str,
                                                 fill: str) -> None:
    base = parse()
    q = dataclasses.replace(base, asset_id=asset, site_id=site, order=order, interval=interval,
                            agg=agg, fill=fill)
    # Only whether a value holds a quote may change the text (see api.questdb._filters).
    def shape(value: str, name: str) -> str:
        return name + "'" if "'" in value else name

    placeholder = dataclasses.replace(q, asset_id=shape(asset, "A"), site_id=shape(site, "S"))
    after = (NOW_US - 1, event) if interval is None else (NOW_US - 60_000_000, event, event)
    after_placeholder = tuple("E" if isinstance(v, str) else v for v in after)
    build = Q.build_bucket_sql if interval else Q.build_raw_sql
    sql, params = build(q, 10, after)
    sql_placeholder, _ = build(placeholder, 10, after_placeholder)
    assert sql == sql_placeholder
    assert asset in params and site in params and event in params
    assert sql.count("%s") == len(params)
    if interval is None:
        probe, probe_params = Q.build_raw_probe_sql(q, 10, after)
        assert probe == Q.build_raw_probe_sql(placeholder, 10, after_placeholder)[0]
        assert probe.count("%s") == len(probe_params) and event in probe_params


def test_text_parameters_are_quoted_the_standard_way() -> None:
    assert Q._Text("a'b\\c").getquoted() == b"'a''b\\c'"
    assert Q._Text("é'").getquoted() == "'é'''".encode()


def test_raw_sql_shape_with_cursor() -> None:
    sql, params = Q.build_raw_sql(parse(asset_id="a1", order="desc"), 11, (NOW_US - 7, "e"))
    assert "timestamp >= %s AND timestamp < %s AND asset_id = %s" in sql
    assert "((timestamp < %s) OR (timestamp = %s AND event_id < %s))" in sql
    assert sql.endswith("ORDER BY timestamp DESC, event_id DESC LIMIT %s")
    # desc: the upper bound is narrowed to the cursor's timestamp (inclusive).
    assert params[:3] == [NOW_US - 24 * 3600 * 10**6, NOW_US - 6, "a1"]
    assert params[-1] == 11


# --- Rollups (issue 16): which source a bucketed read may use ---------------------------

_DAY = {"start_time": "2025-12-31T00:00:00Z", "end_time": "2026-01-01T00:00:00Z"}


@pytest.mark.parametrize("params,expected", [
    ({**_DAY, "interval": "1m"}, "sensor_readings_1m"),
    ({**_DAY, "interval": "15m", "agg": "count"}, "sensor_readings_1m"),
    ({**_DAY, "interval": "1h", "agg": "max"}, "sensor_readings_1h"),
    ({**_DAY, "interval": "1d", "agg": "min"}, "sensor_readings_1h"),
    # whole minutes but not whole hours: the 1-minute rollup even for 1h buckets
    ({"start_time": "2025-12-31T00:01:00Z", "end_time": "2026-01-01T00:00:00Z",
      "interval": "1h"}, "sensor_readings_1m"),
    ({**_DAY, "interval": "10s"}, None),                                  # finer than 1m
    ({**_DAY, "interval": "1h", "agg": "first"}, None),                   # needs row order
    ({**_DAY, "interval": "1h", "agg": "last"}, None),
    ({"start_time": "2025-12-31T00:00:30Z", "end_time": "2026-01-01T00:00:00Z",
      "interval": "1m"}, None),                                           # mid-minute start
    ({"start_time": "2025-12-31T00:00:00Z", "end_time": "2025-12-31T23:59:59.5Z",
      "interval": "1h"}, None),                                           # mid-second end
    ({**_DAY, "interval": "1h", "source": "raw"}, None),
    ({**_DAY, "interval": "1h", "fill": "linear"}, None),                # avg: see rollup_for
    ({**_DAY, "interval": "1h", "agg": "max", "fill": "linear"}, "sensor_readings_1h"),
    ({**_DAY}, None),                                                     # raw rows
])
def test_rollup_chosen_only_when_it_answers_exactly(params: dict[str, str],
                                                    expected: str | None) -> None:
    assert parse(**params).rollup == expected


def test_source_rollup_that_cannot_be_answered_is_400_saying_why() -> None:
    assert parse(**_DAY, interval="5m", source="rollup").rollup == "sensor_readings_1m"
    assert "interval" in bad("source", **_DAY, source="rollup").message
    assert "first" in bad("source", **_DAY, interval="1h", agg="first", source="rollup").message
    assert "whole minutes" in bad("source", start_time="2025-12-31T00:00:30Z",
                                  end_time="2026-01-01T00:00:00Z", interval="1m",
                                  source="rollup").message
    assert bad("source", **_DAY, source="Raw").details["allowed"] == ["auto", "raw", "rollup"]


@pytest.mark.parametrize("agg,expression", [
    ("avg", "sum(value_sum) / sum(value_count)"), ("min", "min(value_min)"),
    ("max", "max(value_max)"), ("count", "sum(row_count)")])
def test_rollup_bucket_sql_recombines_the_aggregate(agg: str, expression: str) -> None:
    q = parse(**_DAY, interval="1h", agg=agg, asset_id="a1")
    sql, params = Q.build_bucket_sql(q, 11, None, q.rollup)
    raw_sql, raw_params = Q.build_bucket_sql(q, 11, None)
    assert f"{expression} value FROM sensor_readings_1h WHERE" in sql
    assert "FROM sensor_readings WHERE" in raw_sql and params == raw_params
    assert sql.replace(f"{expression} value FROM sensor_readings_1h",
                       "X FROM T") == raw_sql.replace(
        f"{Q._AGG_SQL[agg]} value FROM sensor_readings", "X FROM T")
    with pytest.raises(ValueError):
        Q.build_bucket_sql(q, 11, None, "alarms")
