"""Unit tests of the raw CSV export split per UTC day: the days a range is cut into, the
SQL of one day, and the exporter that sends one ``/exp`` per day as one CSV (header once,
``limit`` counted across days, a later day failing breaks the transfer), against a local
HTTP server standing in for QuestDB.

Against a real QuestDB: tests/integration/test_query_export_days.py.
"""

from __future__ import annotations

import functools
import http.server
import threading
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from hypothesis import given
from hypothesis import strategies as st
from werkzeug.datastructures import MultiDict

from api.errors import ServiceUnavailable
from api.params import parse_telemetry_query
from api.questdb import (
    QuestDBExporter,
    TelemetryStore,
    build_export_sql,
    build_raw_export_sql,
    export_days,
)

DAY_US = 86_400_000_000
T0_US = 1_795_000_000 * 1_000_000  # 2026-11-18T10:13:20Z


def _query(start_us: int, end_us: int, **params: str) -> Any:
    return parse_telemetry_query(MultiDict({"start_time": str(start_us // 1000),
                                            "end_time": str(end_us // 1000), "format": "csv",
                                            "site_id": "s", **params}))


@given(st.integers(0, 5 * DAY_US), st.integers(1, 30 * DAY_US), st.sampled_from(["asc", "desc"]),
       st.one_of(st.none(), st.integers(-2 * DAY_US, 36 * DAY_US)))  # raw ranges: <= 31 days
def test_export_days_tile_the_range_one_utc_day_each(offset_us: int, span_us: int, order: str,
                                                     cursor_at: int | None) -> None:
    start = (T0_US + offset_us) // 1000 * 1000
    end = (start + span_us) // 1000 * 1000 + 1000
    q = _query(start, end, order=order)
    after = None if cursor_at is None else (T0_US + cursor_at, "ev")
    days = export_days(q, after)
    lo, hi = q.start_us, q.end_us
    if after is not None:  # the cursor narrows the range as the paged reads do
        lo, hi = (max(lo, after[0]), hi) if order == "asc" else (lo, min(hi, after[0] + 1))
    ordered = sorted(days)
    assert days == (ordered if order == "asc" else ordered[::-1])
    if hi <= lo:
        assert len(days) == 1
        return
    assert ordered[0][0] == lo and ordered[-1][1] == hi
    for (_, b), (c, _) in zip(ordered, ordered[1:], strict=False):
        assert b == c and b % DAY_US == 0  # contiguous, cut at midnight
    for a, b in days:
        assert a < b and a // DAY_US == (b - 1) // DAY_US  # within one UTC day


def test_one_day_statement_is_the_whole_export_statement_narrowed() -> None:
    q = _query(T0_US, T0_US + 3 * DAY_US, limit="10")
    day = (T0_US - T0_US % DAY_US + DAY_US, T0_US - T0_US % DAY_US + 2 * DAY_US)
    sql = build_raw_export_sql(q, None, *day, 4)
    whole = build_export_sql(q, None)[1]
    assert sql == whole.replace(f"timestamp >= {T0_US} AND timestamp < {T0_US + 3 * DAY_US}",
                                f"timestamp >= {day[0]} AND timestamp < {day[1]}"
                                ).replace("LIMIT 10", "LIMIT 4")
    assert "LIMIT" not in build_raw_export_sql(q, None, *day, None)


# --- the exporter, against a local server standing in for QuestDB's /exp ----------------

HEADER = b'"timestamp","event_id"\r\n'


def _rows(part: int, n: int) -> bytes:
    """``n`` rows as QuestDB sends them: a line end inside a string is escaped (``\\n``),
    not a row end."""
    return b"".join(f'"2026-01-0{part}T00:00:{i:02d}.000Z","p{part}-{i}\\n"\r\n'.encode()
                    for i in range(n))


def _sent(raw: bytes) -> bytes:
    """What the exporter passes on: QuestDB's escapes undone."""
    return raw.replace(b"\\n", b"\n")


class _FakeQuestDB(http.server.BaseHTTPRequestHandler):
    """``/exp?query=part <k> <rows> [limit]``: the header, then min(rows, limit) rows in
    one chunk of a few bytes at a time; ``fail``: HTTP 400."""

    seen: list[str] = []

    def log_message(self, *_args: Any) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        sql = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)["query"][0]
        _FakeQuestDB.seen.append(sql)
        if sql == "fail":
            self.send_response(400)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"no")
            return
        _, part, rows, limit = (sql.split() + ["none"])[:4]
        n = int(rows) if limit == "none" else min(int(rows), int(limit))
        body = HEADER + _rows(int(part), n)
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for i in range(0, len(body), 7):  # small chunks: the header spans several
            self.wfile.write(f"{len(body[i:i + 7]):x}\r\n".encode() + body[i:i + 7] + b"\r\n")
        self.wfile.write(b"0\r\n\r\n")


@pytest.fixture
def exporter() -> Iterator[QuestDBExporter]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeQuestDB)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _FakeQuestDB.seen = []
    yield QuestDBExporter("127.0.0.1", server.server_address[1], chunk_bytes=5)
    server.shutdown()
    server.server_close()


def _part(k: int, rows: int, remaining: int | None) -> str:
    return f"part {k} {rows}" + ("" if remaining is None else f" {remaining}")


def test_parts_are_one_csv_with_the_header_once(exporter: QuestDBExporter) -> None:
    parts = [functools.partial(_part, k, n) for k, n in ((1, 3), (2, 0), (3, 4))]
    body = b"".join(exporter.stream_parts(parts))
    assert body == HEADER + _sent(_rows(1, 3) + _rows(3, 4))
    assert body.count(b'"p1-0\n"') == 1  # the escaped line end is in the value
    assert _FakeQuestDB.seen == ["part 1 3", "part 2 0", "part 3 4"]


@pytest.mark.parametrize("limit,asked", [(2, ["part 1 3 2"]), (3, ["part 1 3 3"]),
                                         (5, ["part 1 3 5", "part 2 0 2", "part 3 4 2"]),
                                         (100, ["part 1 3 100", "part 2 0 97", "part 3 4 97"])])
def test_limit_counts_rows_across_parts(exporter: QuestDBExporter, limit: int,
                                        asked: list[str]) -> None:
    parts = [functools.partial(_part, k, n) for k, n in ((1, 3), (2, 0), (3, 4))]
    body = b"".join(exporter.stream_parts(parts, limit))
    lines = [line + b"\r\n" for line in (_rows(1, 3) + _rows(3, 4)).split(b"\r\n")[:-1]]
    assert body == HEADER + _sent(b"".join(lines[:limit]))
    assert _FakeQuestDB.seen == asked


def test_first_part_failing_is_a_503_before_the_body(exporter: QuestDBExporter) -> None:
    with pytest.raises(ServiceUnavailable, match=r"refused the CSV export \(HTTP 400"):
        exporter.stream_parts([lambda _remaining: "fail", functools.partial(_part, 2, 1)])
    assert _FakeQuestDB.seen == ["fail"]


def test_later_part_failing_breaks_the_transfer(exporter: QuestDBExporter) -> None:
    chunks = exporter.stream_parts([functools.partial(_part, 1, 2),
                                    lambda _remaining: "fail"])
    got = []
    with pytest.raises(ServiceUnavailable, match="HTTP 400"):
        for chunk in chunks:
            got.append(chunk)
    assert b"".join(got) == HEADER + _sent(_rows(1, 2))  # then no clean end


class _Exporter:
    """Records what the store asks of the exporter."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def stream(self, sql: str) -> Iterator[bytes]:
        self.calls.append(("stream", sql))
        return iter([b"x"])

    def stream_parts(self, parts: Any, limit: int | None = None) -> Iterator[bytes]:
        self.calls.append(("parts", ([p(None) for p in parts], limit)))
        return iter([b"x"])


@pytest.mark.parametrize("days,params,parts", [
    (0.5, {}, 0), (1.0, {}, 0), (2.5, {}, 3), (3.0, {"order": "desc", "limit": "9"}, 3),
    (3.0, {"interval": "1h", "agg": "avg", "source": "raw"}, 0)])
def test_store_splits_raw_exports_of_several_days(days: float, params: dict[str, str],
                                                  parts: int) -> None:
    start = T0_US - T0_US % DAY_US  # midnight
    q = _query(start, start + int(days * DAY_US), **params)
    exporter = _Exporter()
    store = TelemetryStore(None, rollups_enabled=False, exporter=exporter)  # type: ignore[arg-type]
    export = store.export(q, None)
    assert export.source == "raw"
    kind, detail = exporter.calls[0]
    if parts == 0:
        assert kind == "stream" and detail == build_export_sql(q, None)[1]
        return
    sqls, limit = detail
    assert kind == "parts" and len(sqls) == parts
    assert limit == (9 if "limit" in params else None)
    expected = [build_raw_export_sql(q, None, lo, hi, None) for lo, hi in export_days(q, None)]
    assert sqls == expected
    if params.get("order") == "desc":
        assert f"timestamp >= {start + 2 * DAY_US}" in sqls[0]


def test_requests_error_mid_part_is_not_swallowed(exporter: QuestDBExporter) -> None:
    # A read error inside a later day's body propagates as requests raises it.
    class Boom(QuestDBExporter):
        def _chunks(self, resp: requests.Response) -> Iterator[bytes]:
            if "part 2" in urllib.parse.unquote_plus(resp.url):
                resp.close()
                raise requests.ConnectionError("gone")
            yield from super()._chunks(resp)

    boom = Boom("127.0.0.1", int(exporter.address.split(":")[1]))
    chunks = boom.stream_parts([functools.partial(_part, 1, 1), functools.partial(_part, 2, 1)])
    with pytest.raises(requests.ConnectionError):
        b"".join(chunks)
