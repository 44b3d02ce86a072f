"""Unit tests of the CSV export: the SQL sent to QuestDB's /exp (no bind parameters, so
every value is inlined by one quoting function), the HTTP client's error mapping against
a local HTTP server standing in for QuestDB, and the view's streaming response.

The real export (QuestDB's text equals the JSON values) is tested in
tests/integration/test_query_api.py.
"""

from __future__ import annotations

import csv
import http.server
import io
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask
from hypothesis import given
from hypothesis import strategies as st
from werkzeug.datastructures import MultiDict

from api import create_app
from api.errors import ServiceUnavailable
from api.params import encode_cursor, parse_telemetry_query
from api.questdb import (
    CsvExport,
    QuestDBExporter,
    build_export_sql,
    build_raw_sql,
    inline_sql,
    sql_literal,
    unescape_exp_csv,
)
from config.settings import load_settings
from io_connectors.questdb_schema import ROLLUP_1M, SENSOR_READING_COLUMNS

AUTH = {"Authorization": "Bearer dev-api-key"}
RANGE = {"start_time": "2026-01-01T00:00:00Z", "end_time": "2026-01-02T00:00:00Z"}
INJECTIONS = ["'; drop table x; --", "a'b", "''", "'", "\\", "a\\'b", "\\'; drop table x; --",
              "é€😀'ö", "x' OR '1'='1", "%s", "%", "--", "/* */", "a\"b,c\nd"]


def _read_literal(sql: str, pos: int) -> tuple[str, int]:
    """A standard SQL string literal starting at ``pos`` (QuestDB's syntax: ``''`` is a
    quote, a backslash is an ordinary character): its value and the position after it."""
    assert sql[pos] == "'"
    out, i = [], pos + 1
    while True:
        if sql[i] == "'":
            if i + 1 < len(sql) and sql[i + 1] == "'":
                out.append("'")
                i += 2
                continue
            return "".join(out), i + 1
        out.append(sql[i])
        i += 1


@pytest.mark.parametrize("value", INJECTIONS)
def test_sql_literal_is_one_literal_holding_exactly_the_value(value: str) -> None:
    literal = sql_literal(value)
    assert _read_literal(literal, 0) == (value, len(literal))


@given(st.text(alphabet=st.characters(blacklist_characters="\x00"), max_size=60))
def test_sql_literal_reads_back_any_text(value: str) -> None:
    literal = sql_literal(value)
    assert _read_literal(literal, 0) == (value, len(literal))


def test_sql_literal_refuses_nul_and_other_types() -> None:
    assert sql_literal(1_767_225_600_000_000) == "1767225600000000"
    assert sql_literal(-3) == "-3"
    with pytest.raises(ValueError, match="NUL"):
        sql_literal("a\x00b")
    for bad in (True, None, 1.5, b"x", ["a"]):
        with pytest.raises(TypeError):
            sql_literal(bad)  # type: ignore[arg-type]


def test_inline_sql_fills_each_placeholder_and_checks_the_count() -> None:
    sql = inline_sql("SELECT a FROM t WHERE b = %s AND c = %s LIMIT %s", ["x'; --", "\\", 5])
    assert sql == "SELECT a FROM t WHERE b = 'x''; --' AND c = '\\' LIMIT 5"
    # A value holding %s is inlined as text, never taken for a placeholder.
    assert inline_sql("WHERE b = %s AND c = %s", ["%s", "y"]) == "WHERE b = '%s' AND c = 'y'"
    with pytest.raises(ValueError):
        inline_sql("WHERE b = %s", [])
    with pytest.raises(ValueError):
        inline_sql("WHERE b = %s", ["a", "b"])
    with pytest.raises(ValueError):
        inline_sql("WHERE b LIKE '%x' AND c = %s", ["a"])


def _query(**params: str) -> Any:
    return parse_telemetry_query(MultiDict({**RANGE, "format": "csv", **params}))


@pytest.mark.parametrize("value", INJECTIONS[:-1])  # ids with control characters are a 400
def test_export_sql_inlines_every_request_value_as_one_literal(value: str) -> None:
    q = _query(sensor_id=value, asset_id=value)
    columns, sql = build_export_sql(q, None)
    assert columns == SENSOR_READING_COLUMNS
    # Same statement as the paged reads, with the values inlined.
    inner, params = build_raw_sql(q, None, None)
    assert sql.endswith(f"FROM ({inline_sql(inner, params)})")
    for marker in ("asset_id", "sensor_id"):
        column = f"{marker}::varchar" if "'" in value else marker
        pos = sql.index(f"{column} = ") + len(f"{column} = ")
        assert _read_literal(sql, pos)[0] == value
    assert "drop table" not in sql.replace(sql_literal(value), "")


def test_export_sql_columns_order_limit_and_cursor() -> None:
    q = _query(sensor_id="s1", order="desc", limit="7")
    _, sql = build_export_sql(q, (1_767_225_600_000_000, "ev-'9"))
    assert sql.startswith("SELECT CASE WHEN timestamp % 1000 = 0 THEN to_str(timestamp, "
                          "'yyyy-MM-ddTHH:mm:ss.SSSZ') ELSE to_str(timestamp, "
                          "'yyyy-MM-ddTHH:mm:ss.SSSUUUZ') END timestamp, event_id, ")
    assert "END ingested_at FROM (" in sql
    assert "ORDER BY timestamp DESC, event_id DESC LIMIT 7)" in sql
    assert "event_id < 'ev-''9'" in sql
    no_limit = build_export_sql(_query(sensor_id="s1"), None)[1]
    assert "LIMIT" not in no_limit and "ORDER BY timestamp ASC, event_id ASC)" in no_limit
    columns, buckets = build_export_sql(
        _query(site_id="x", interval="1h", agg="max", fill="null"), None, ROLLUP_1M)
    assert columns == ("timestamp", "asset_id", "sensor_id", "sensor_type", "value")
    assert f"FROM {ROLLUP_1M} WHERE" in buckets and "SAMPLE BY 1h FILL(NULL)" in buckets
    assert "LIMIT" not in buckets and "%" not in buckets.replace("timestamp % 1000", "")


# What QuestDB 9.3.1's /exp sent for these strings (captured from it, in quoted fields):
# JSON-style escapes for the backslash and control characters, quotes doubled.
EXP_SAMPLES = {
    "a\tb": b"a\\tb", "a\nb": b"a\\nb", "a\rb": b"a\\rb", "a\\b": b"a\\\\b",
    "a\\tb": b"a\\\\tb", "a\x01b": b"a\\u0001b", "a\x08\x0cb": b"a\\b\\fb",
    "a\x7fb": b"a\x7fb", 'x"y': b'x""y', "é😀": "é😀".encode(),
}


def _exp_escape(text: str) -> bytes:
    """QuestDB's escaping, as observed (EXP_SAMPLES), for the property test."""
    names = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r", "\b": "\\b",
             "\f": "\\f", '"': '""'}
    return "".join(names.get(ch, f"\\u{ord(ch):04x}" if ord(ch) < 32 else ch)
                   for ch in text).encode()


def test_exp_escape_model_matches_the_samples() -> None:
    assert {k: _exp_escape(k) for k in EXP_SAMPLES} == EXP_SAMPLES


def _split_everywhere(body: bytes) -> Iterator[list[bytes]]:
    for size in (1, 2, 3, 5, 6, 7, len(body) or 1):
        yield [body[i:i + size] for i in range(0, len(body), size)]
    for cut in range(len(body) + 1):
        yield [body[:cut], body[cut:]]


def test_unescape_gives_every_sample_back_wherever_the_chunks_split() -> None:
    body = b'"h"\r\n' + b",".join(b'"' + v + b'"' for v in EXP_SAMPLES.values()) + b"\r\n"
    for chunks in _split_everywhere(body):
        text = b"".join(unescape_exp_csv(iter(chunks))).decode()
        rows = list(csv.reader(io.StringIO(text, newline="")))
        assert rows == [["h"], list(EXP_SAMPLES)], chunks


# No lone surrogates (category Cs): stored text is valid UTF-8, and the encoder cannot write them.
_STORED_TEXT = st.text(alphabet=st.characters(blacklist_characters="\x00",
                                              blacklist_categories=("Cs",)), max_size=12)


@given(st.lists(_STORED_TEXT,
                min_size=1, max_size=4), st.integers(min_value=1, max_value=9))
def test_unescape_reads_back_any_text(values: list[str], size: int) -> None:
    body = b",".join(b'"' + _exp_escape(v) + b'"' for v in values) + b"\r\n"
    chunks = [body[i:i + size] for i in range(0, len(body), size)]
    text = b"".join(unescape_exp_csv(iter(chunks))).decode()
    assert list(csv.reader(io.StringIO(text, newline=""))) == [values]


def test_unescape_passes_chunks_without_a_backslash_unchanged() -> None:
    chunks = [b'"a","b"\r\n', b"1.0E-5,2\r\n"]
    out = list(unescape_exp_csv(iter(chunks)))
    assert out == chunks and out[0] is chunks[0]


# --- the HTTP client, against a local server standing in for QuestDB's /exp -------------

BODY = b'"timestamp","value"\r\n' + b'"2026-01-01T00:00:00.000Z",1.0E-5\r\n' * 50_000


class _FakeQuestDB(http.server.BaseHTTPRequestHandler):
    mode = "ok"
    seen: list[str] = []

    def log_message(self, *_args: Any) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        _FakeQuestDB.seen.append(self.path)
        if self.mode in ("error", "busy"):
            body = json.dumps({"error": "table does not exist [table=x]"}).encode()
            self.send_response(400 if self.mode == "error" else 429)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/csv")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        step = 64 * 1024
        for i in range(0, len(BODY), step):
            part = BODY[i:i + step]
            self.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
            if self.mode == "drop" and i >= 4 * step:
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)  # gone mid-stream, no last chunk
                return
        self.wfile.write(b"0\r\n\r\n")


@pytest.fixture
def questdb() -> Iterator[tuple[int, type[_FakeQuestDB]]]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeQuestDB)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _FakeQuestDB.mode, _FakeQuestDB.seen = "ok", []
    yield server.server_address[1], _FakeQuestDB
    server.shutdown()
    server.server_close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_exporter_streams_the_body_in_bounded_chunks(questdb: tuple[int, Any]) -> None:
    port, handler = questdb
    chunks = list(QuestDBExporter("127.0.0.1", port, chunk_bytes=100_000).stream("SELECT 'a'"))
    assert b"".join(chunks) == BODY and len(chunks) > 10
    assert max(len(c) for c in chunks) <= 100_000
    assert handler.seen == ["/exp?query=SELECT+%27a%27"]


def test_exporter_errors_before_the_first_byte_are_503_naming_the_setting(
        questdb: tuple[int, Any]) -> None:
    port, handler = questdb
    handler.mode = "error"
    with pytest.raises(ServiceUnavailable, match=r"refused the CSV export \(HTTP 400") as exc:
        QuestDBExporter("127.0.0.1", port).stream("SELECT 1")
    assert "table does not exist" in exc.value.details["error"]
    assert "[questdb] host, http_port" in exc.value.message
    handler.mode = "busy"  # QuestDB's limit of concurrent exports
    with pytest.raises(ServiceUnavailable, match="export_connection_limit") as exc:
        QuestDBExporter("127.0.0.1", port).stream("SELECT 1")
    assert exc.value.headers["Retry-After"] == "1"
    with pytest.raises(ServiceUnavailable, match="unreachable.*http_port"):
        QuestDBExporter("127.0.0.1", _free_port()).stream("SELECT 1")


def test_exporter_failing_mid_stream_raises_from_the_body(questdb: tuple[int, Any]) -> None:
    port, handler = questdb
    handler.mode = "drop"
    chunks = QuestDBExporter("127.0.0.1", port).stream("SELECT 1")  # first chunk is fine
    with pytest.raises(requests.RequestException):
        for _ in chunks:
            pass


# --- the view ---------------------------------------------------------------------------

class ExportStore:
    """The store's export as the view sees it: a started body, or an error before it."""

    def __init__(self, chunks: list[bytes], fail_after: int | None = None,
                 error: Exception | None = None) -> None:
        self.chunks, self.fail_after, self.error = chunks, fail_after, error
        self.calls: list[tuple[Any, Any]] = []

    def _body(self) -> Iterator[bytes]:
        for i, chunk in enumerate(self.chunks):
            if i == self.fail_after:
                raise requests.ConnectionError("QuestDB went away mid-stream")
            yield chunk

    def export(self, q: Any, after: Any) -> CsvExport:
        self.calls.append((q, after))
        if self.error is not None:
            raise self.error
        return CsvExport(SENSOR_READING_COLUMNS, "rollup_1m", self._body())

    def ping(self) -> None:
        pass


def _app(store: Any, tmp_path: Path) -> Flask:
    assets = tmp_path / "assets.json"
    assets.write_text(json.dumps({"sites": {}, "assets": {}}))
    return create_app(load_settings(), {"TESTING": True, "TELEMETRY_STORE": store,
                                        "READY_CHECKS": {}, "ASSETS_FILE": str(assets)})


def test_csv_view_passes_the_export_through_with_its_headers(tmp_path: Path) -> None:
    store = ExportStore([b'"timestamp"\r\n', b'"2026-01-01T00:00:00.000Z"\r\n'])
    q = parse_telemetry_query(MultiDict({**RANGE, "sensor_id": "s"}))
    cursor = encode_cursor((q.start_us + 5, "ev-1"), q.start_us, q.end_us, q.fingerprint)
    response = _app(store, tmp_path).test_client().get(
        "/api/v1/telemetry", headers=AUTH,
        query_string={**RANGE, "sensor_id": "s", "format": "csv", "cursor": cursor})
    assert response.status_code == 200 and response.mimetype == "text/csv"
    assert response.headers["Content-Disposition"] == "attachment; filename=telemetry.csv"
    assert response.headers["X-Data-Source"] == "rollup_1m"
    assert response.get_data() == b'"timestamp"\r\n"2026-01-01T00:00:00.000Z"\r\n'
    assert store.calls[0][1] == (q.start_us + 5, "ev-1")


def test_csv_view_503_before_the_first_byte(tmp_path: Path) -> None:
    store = ExportStore([], error=ServiceUnavailable("QuestDB at h:1 is unreachable",
                                                     dependency="questdb"))
    response = _app(store, tmp_path).test_client().get(
        "/api/v1/telemetry", query_string={**RANGE, "format": "csv"}, headers=AUTH)
    assert response.status_code == 503 and response.json["code"] == "service_unavailable"
    assert response.headers["Retry-After"]


def test_csv_view_failing_mid_stream_breaks_the_transfer(tmp_path: Path) -> None:
    store = ExportStore([b"a\r\n", b"b\r\n", b"c\r\n"], fail_after=2)
    response = _app(store, tmp_path).test_client().get(
        "/api/v1/telemetry", query_string={**RANGE, "format": "csv"}, headers=AUTH,
        buffered=False)
    assert response.status_code == 200
    with pytest.raises(requests.ConnectionError, match="mid-stream"):
        b"".join(response.response)
