"""Unit tests of api.params (parsing, whitelisting, cursors) and of the SQL builders."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from werkzeug.datastructures import MultiDict

from api import params as P
from api import questdb as Q
from api.errors import BadParameter

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


@pytest.mark.parametrize("value", ["0", "10001", "-1", "abc", "1.5", "", "99999999999"])
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
