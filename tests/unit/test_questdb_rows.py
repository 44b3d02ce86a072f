"""QuestDB sink: pure row mapping, error classification, and the writer's retry/isolation
logic against a fake sender (the real server is exercised in tests/integration/test_sinks.py).

Error classification runs the real questdb client against a stub HTTP server answering
what QuestDB 9.3 answers (status, content type and JSON body taken from its
``LineHttpProcessorState``): the client's rendering of those answers is what the sink reads,
so a client upgrade that changes it fails here."""

from __future__ import annotations

import http.server
import json
import math
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from questdb import QuestDBError, QuestDBErrorCode, Sender, TimestampMicros, TimestampNanos
from questdb._client import Buffer

from io_connectors.questdb_schema import (
    ALARM_COLUMNS,
    DDL_STATEMENTS,
    SENSOR_READING_COLUMNS,
    TABLE_COLUMNS,
    asset_index_statement,
)
from io_connectors.questdb_sink import (
    IlpRow,
    QuestDBConfigError,
    QuestDBUnavailableError,
    QuestDBWriter,
    RowMappingError,
    ServerError,
    WriteFailure,
    WriteToQuestDB,
    alarm_row,
    classify_error,
    questdb_conf,
    reading_row,
    server_error,
    symbol_columns,
)

TRANSIENT, REJECTED, FATAL = WriteFailure.TRANSIENT, WriteFailure.REJECTED, WriteFailure.FATAL

READING = {
    "timestamp": 1_790_000_000_123, "event_id": "e-1", "site_id": "site-001",
    "asset_id": "asset-001", "sensor_id": "temp-1", "sensor_type": "TEMPERATURE",
    "value": 21.5, "unit": "C", "quality_flag": "GOOD", "site_name": "North",
    "asset_type": "inverter", "location": None, "ingested_at": 1_790_000_000_200,
}
ALARM = {
    "timestamp": 1_790_000_000_123, "alarm_id": "asset-001:temp-1:1790000000123",
    "site_id": "site-001", "asset_id": "asset-001", "sensor_id": "temp-1",
    "sensor_type": "TEMPERATURE", "severity": "CRITICAL", "state": "RAISED", "value": 99,
    "threshold": 90.0, "reason": "above critical", "event_id": "e-1",
    "ingested_at": 1_790_000_000_200,
}


def test_symbols_come_from_the_column_spec() -> None:
    assert symbol_columns("sensor_readings") == {
        "site_id", "asset_id", "sensor_id", "sensor_type", "unit", "quality_flag", "asset_type"}
    assert symbol_columns("alarms") == {
        "site_id", "asset_id", "sensor_id", "sensor_type", "severity", "state"}
    with pytest.raises(KeyError, match="questdb_schema"):
        symbol_columns("nope")


def test_the_ddl_is_rendered_from_the_column_spec() -> None:
    # Every spec column appears in the rendered DDL, in order, with its type; the SYMBOLs
    # there are exactly the sink's symbol columns, and only asset_id of sensor_readings
    # carries an index (decision 0004: each index costs every out-of-order commit).
    for table, spec in TABLE_COLUMNS.items():
        head = f"CREATE TABLE IF NOT EXISTS {table} ("
        (ddl,) = [d for d in DDL_STATEMENTS if d.startswith(head)]
        body = [line.strip().rstrip(",") for line in ddl.splitlines()[1:len(spec) + 1]]
        assert [line.split()[:2] for line in body] == [[c.name, c.type] for c in spec]
        assert {line.split()[0] for line in body if " SYMBOL " in f"{line} "} == \
            symbol_columns(table)
    indexed = [c.name for spec in TABLE_COLUMNS.values() for c in spec if c.index]
    assert indexed == ["asset_id"]
    assert "asset_id SYMBOL CAPACITY 65536 CACHE INDEX" in DDL_STATEMENTS[0]


def test_asset_index_statement_follows_the_setting() -> None:
    assert asset_index_statement(True) == (
        "ALTER TABLE sensor_readings ALTER COLUMN asset_id ADD INDEX")
    assert asset_index_statement(False) == (
        "ALTER TABLE sensor_readings ALTER COLUMN asset_id DROP INDEX")
    assert asset_index_statement(False, "t2") == "ALTER TABLE t2 ALTER COLUMN asset_id DROP INDEX"


def test_reading_row_maps_every_column() -> None:
    row = reading_row(READING)
    assert row.table == "sensor_readings"
    assert row.at_ns == READING["timestamp"] * 1_000_000
    assert row.symbols == {"site_id": "site-001", "asset_id": "asset-001",
                           "sensor_id": "temp-1", "sensor_type": "TEMPERATURE", "unit": "C",
                           "quality_flag": "GOOD", "asset_type": "inverter"}
    assert set(row.columns) == {"event_id", "value", "site_name", "ingested_at"}
    assert isinstance(row.columns["ingested_at"], TimestampMicros)
    assert row.columns["ingested_at"].value == READING["ingested_at"] * 1000
    # Every table column is accounted for (location is None -> omitted -> NULL).
    assert set(row.symbols) | set(row.columns) | {"timestamp", "location"} == set(
        SENSOR_READING_COLUMNS)


def test_alarm_row_and_int_values_become_doubles() -> None:
    row = alarm_row(ALARM)
    assert row.table == "alarms"
    assert row.symbols["state"] == "RAISED" and row.symbols["severity"] == "CRITICAL"
    assert row.columns["value"] == 99.0 and isinstance(row.columns["value"], float)
    assert set(row.symbols) | set(row.columns) | {"timestamp"} == set(ALARM_COLUMNS)
    int_reading = dict(READING, value=7)
    assert isinstance(reading_row(int_reading).columns["value"], float)


@pytest.mark.parametrize(("change", "message"), [
    ({"event_id": None}, "event_id"),
    ({"timestamp": "yesterday"}, "timestamp"),
    ({"timestamp": -1}, "between 0 and"),
    ({"timestamp": math.nan}, "timestamp"),
    ({"value": "hot"}, "value"),
    ({"ingested_at": True}, "ingested_at"),
])
def test_bad_readings_raise_mapping_error(change: dict, message: str) -> None:
    with pytest.raises(RowMappingError, match=message):
        reading_row({**READING, **change})


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(SENSOR_READING_COLUMNS + ("junk",)),
                       st.one_of(st.none(), st.integers(), st.floats(), st.text(max_size=5),
                                 st.booleans(), st.lists(st.integers(), max_size=2))))
def test_mapping_never_raises_anything_but_mapping_error(record: dict) -> None:
    try:
        row = reading_row(record)
    except RowMappingError:
        return
    assert row.at_ns >= 0 and "junk" not in row.columns


def _err(code: QuestDBErrorCode, text: str) -> QuestDBError:
    return QuestDBError(code, text)


# -- error classification, through the real client ----------------------------------------

QDB_JSON = "application/json; charset=utf-8"     # QuestDB 9.3's HttpConstants.CONTENT_TYPE_JSON
CAST = ("failed to parse line protocol:errors encountered on line(s):\nerror in line 1: "
        "table: sensor_readings, column: location; cast error from protocol type: LONG to "
        "column type: VARCHAR")
WRITE_ERROR = ("failed to parse line protocol:errors encountered on line(s):\nerror in line 3: "
               "write error: sensor_readings, errno: 28, error: no space left")


def questdb_answer(code: str, message: str, line: int | None = None) -> str:
    """A body as QuestDB's LineHttpProcessorState.formatError writes it."""
    doc: dict[str, object] = {"code": code, "message": message}
    if line is not None:
        doc["line"] = line
    doc["errorId"] = "5e2b1f-7"
    return json.dumps(doc, separators=(",", ":"))


class StubQuestDB:
    """An HTTP server answering every ILP write with ``answer`` (status, content type, body)."""

    def __init__(self) -> None:
        self.answer: tuple[int, str, str] = (204, "", "")
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                status, content_type, body = stub.answer
                data = body.encode()
                self.send_response(status)
                if content_type:
                    self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *_: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def flush_error(self, answer: tuple[int, str, str]) -> QuestDBError:
        """What the real client raises when QuestDB answers a flush with ``answer``."""
        self.answer = answer
        sender = Sender.from_conf(questdb_conf("127.0.0.1", self.port, 5000))
        sender.establish()
        try:
            buf = sender.new_buffer()
            buf.row("sensor_readings", columns={"value": 1.0}, at=TimestampNanos(1))
            with pytest.raises(QuestDBError) as caught:
                sender.flush(buf)
            return caught.value
        finally:
            sender.close()


@pytest.fixture(scope="module")
def questdb_stub() -> Iterator[StubQuestDB]:
    stub = StubQuestDB()
    yield stub
    stub.server.shutdown()
    stub.server.server_close()


ONE_LINE_CAST = CAST.replace("\n", " ")


@pytest.mark.parametrize(("answer", "kind", "document"), [
    # 400 "invalid": a line is at fault (parse, cast, column add): dead-letter the rows.
    ((400, QDB_JSON, questdb_answer("invalid", CAST, 1)), REJECTED,
     ServerError("invalid", CAST, 1, "5e2b1f-7")),
    # The same answer under a plain application/json, which the client renders itself.
    ((400, "application/json", questdb_answer("invalid", CAST, 1)), REJECTED,
     ServerError("invalid", CAST, 1, "5e2b1f-7")),
    ((400, QDB_JSON, questdb_answer("invalid", "table name is invalid")), REJECTED,
     ServerError("invalid", "table name is invalid", None, "5e2b1f-7")),
    # A server-side failure QuestDB pins on a line (a write error, e.g. disk full) is not
    # the rows' fault: retry, never dead-letter good rows.
    ((500, QDB_JSON, questdb_answer("internal error", WRITE_ERROR, 3)),
     TRANSIENT, ServerError("internal error", WRITE_ERROR, 3, "5e2b1f-7")),
    # Anything else QuestDB answers is QuestDB's trouble: retry.
    ((500, QDB_JSON, questdb_answer("internal error", "commit error for table: t")),
     TRANSIENT, ServerError("internal error", "commit error for table: t", None, "5e2b1f-7")),
    ((413, QDB_JSON, questdb_answer("request too large", "server buffer is too small")),
     TRANSIENT, ServerError("request too large", "server buffer is too small", None,
                            "5e2b1f-7")),
    ((421, QDB_JSON, questdb_answer("not accepting writes", "replica")), TRANSIENT,
     ServerError("not accepting writes", "replica", None, "5e2b1f-7")),
    ((415, QDB_JSON, questdb_answer("not supported", "gzip decompression error")), TRANSIENT,
     ServerError("not supported", "gzip decompression error", None, "5e2b1f-7")),
    ((503, "application/json", questdb_answer("internal error", "busy")), TRANSIENT,
     ServerError("internal error", "busy", None, "5e2b1f-7")),
    # Not QuestDB's document (a proxy in the way, an empty answer): retry.
    ((502, "text/html", "<html>bad gateway: invalid upstream, line 1</html>"), TRANSIENT,
     None),
    ((400, "", ""), TRANSIENT, None),
    # Configuration at fault: fail, naming the conf.
    ((403, QDB_JSON, questdb_answer("unauthorised", "no access")), FATAL, None),
    ((401, "", ""), FATAL, None),
    ((404, QDB_JSON, questdb_answer("invalid", "not found")), FATAL, None),
], ids=["invalid-line", "invalid-line-client-rendered", "invalid-no-line",
        "internal-error-on-a-line", "internal-error", "too-large", "not-accepting-writes",
        "unsupported-encoding", "busy-client-rendered", "proxy-page",
        "empty-400", "forbidden", "unauthorized", "no-ilp-endpoint"])
def test_questdb_answers_are_classified_by_code_and_error_document(
        questdb_stub: StubQuestDB, answer: tuple[int, str, str], kind: WriteFailure,
        document: ServerError | None) -> None:
    exc = questdb_stub.flush_error(answer)
    assert (classify_error(exc), server_error(exc)) == (kind, document)


def test_unreachable_questdb_is_transient_and_other_exceptions_fatal() -> None:
    sender = Sender.from_conf(questdb_conf("127.0.0.1", _free_port(), 2000))
    sender.establish()
    buf = sender.new_buffer()
    buf.row("t", columns={"v": 1.0}, at=TimestampNanos(1))
    with pytest.raises(QuestDBError) as caught:
        sender.flush(buf)
    assert caught.value.code is QuestDBErrorCode.SocketError
    assert classify_error(caught.value) is TRANSIENT and server_error(caught.value) is None
    assert classify_error(ValueError("x")) is FATAL
    assert classify_error(_err(QuestDBErrorCode.InvalidName, "bad name")) is REJECTED


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stub_writer(stub: StubQuestDB, **kw: object) -> QuestDBWriter:
    return QuestDBWriter(questdb_conf("127.0.0.1", stub.port, 5000),
                         sleep=lambda s: time.sleep(min(s, 0.05)), **kw)  # type: ignore[arg-type]


def test_writer_dead_letters_the_row_questdb_calls_invalid_with_its_message(
        questdb_stub: StubQuestDB) -> None:
    questdb_stub.answer = (400, QDB_JSON, questdb_answer("invalid", CAST, 1))
    writer = stub_writer(questdb_stub)
    try:
        [row] = _rows(["bad-1"])
        assert writer.write([row]) == [(row, f"QuestDB rejected the row: {ONE_LINE_CAST}")]
    finally:
        writer.close()


def test_writer_fails_on_an_auth_error_naming_the_conf(questdb_stub: StubQuestDB) -> None:
    questdb_stub.answer = (403, QDB_JSON, questdb_answer("unauthorised", "no access"))
    writer = stub_writer(questdb_stub)
    try:
        with pytest.raises(QuestDBConfigError, match=f"127.0.0.1:{questdb_stub.port}"):
            writer.write(_rows(["ok-1"]))
    finally:
        writer.close()


def test_writer_retries_a_server_error_then_gives_up(questdb_stub: StubQuestDB) -> None:
    questdb_stub.answer = (500, QDB_JSON, questdb_answer("internal error", "commit error"))
    retries: list[str] = []
    writer = stub_writer(questdb_stub, retry_deadline_s=0.3, on_retry=retries.append)
    try:
        with pytest.raises(QuestDBUnavailableError, match="commit error"):
            writer.write(_rows(["ok-1", "ok-2"]))
    finally:
        writer.close()
    assert len(retries) >= 1 and all("commit error" in r for r in retries)


class FakeSender:
    """Refuses rows whose event_id starts with 'bad' (400), or is down for `down` flushes."""

    def __init__(self, down: int = 0) -> None:
        self.down = down
        self.flushed: list[bytes] = []
        self.calls = 0

    def new_buffer(self) -> Buffer:
        return Buffer(protocol_version=2)

    def flush(self, buf: Buffer) -> None:
        self.calls += 1
        data = bytes(buf)
        if self.down > 0:
            self.down -= 1
            raise _err(QuestDBErrorCode.SocketError, "io: Connection refused")
        if b'event_id="bad' in data:
            raise _err(QuestDBErrorCode.ServerFlushError,
                       'Could not flush buffer: {"code":"invalid","message":"cast error on '
                       'line 1","line":1}')
        self.flushed.append(data)
        buf.clear()

    def close(self) -> None:
        pass


class FakeWriter(QuestDBWriter):
    def __init__(self, sender: FakeSender, **kw: object) -> None:
        super().__init__("http::addr=x:1;", sleep=self._record_sleep, **kw)  # type: ignore[arg-type]
        self.fake = sender
        self.sleeps: list[float] = []

    def _record_sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)

    def _ensure_sender(self) -> FakeSender:
        self._sender = self.fake
        return self.fake


def _rows(ids: list[str]) -> list[IlpRow]:
    return [reading_row({**READING, "event_id": i}) for i in ids]


def test_writer_isolates_rejected_rows_by_halving() -> None:
    sender = FakeSender()
    writer = FakeWriter(sender)
    ids = [f"ok-{i}" for i in range(16)]
    ids[5] = "bad-5"
    ids[12] = "bad-12"
    rejected = writer.write(_rows(ids))
    assert sorted(row.columns["event_id"] for row, _ in rejected) == ["bad-12", "bad-5"]
    assert {reason for _, reason in rejected} == {"QuestDB rejected the row: cast error on line 1"}
    written = b"".join(sender.flushed)
    for i in ids:
        assert (f'event_id="{i}"'.encode() in written) == i.startswith("ok")
    assert sender.calls < 16  # bisection, not row by row


def test_writer_retries_transient_errors_with_backoff() -> None:
    sender = FakeSender(down=4)
    retries: list[str] = []
    writer = FakeWriter(sender, on_retry=retries.append, initial_backoff_s=0.1,
                        max_backoff_s=0.5)
    assert writer.write(_rows(["ok-1", "ok-2"])) == []
    assert len(retries) == 4
    assert writer.sleeps == [0.1, 0.2, 0.4, 0.5]
    assert len(sender.flushed) == 1 and b"ok-2" in sender.flushed[0]


def test_writer_raises_after_deadline_without_dropping() -> None:
    writer = FakeWriter(FakeSender(down=10**9), retry_deadline_s=0.05)
    writer._sleep = lambda s: __import__("time").sleep(min(s, 0.01))  # type: ignore[method-assign]
    with pytest.raises(QuestDBUnavailableError, match="unavailable"):
        writer.write(_rows(["ok-1"]))


def test_client_side_refusals_are_rejected_rows() -> None:
    writer = FakeWriter(FakeSender())
    bad = IlpRow("sensor_readings", {"site_id": "x\ud800"}, {"value": 1.0}, 1)
    rejected = writer.write([bad, *_rows(["ok-1"])])
    assert [r for r, _ in rejected] == [bad]
    assert "UTF-8" in rejected[0][1] or "codepoint" in rejected[0][1]


def test_transform_checks_config() -> None:
    with pytest.raises(ValueError, match="auto_flush=off"):
        WriteToQuestDB("sensor_readings", "http::addr=x:1;auto_flush=on;")
    with pytest.raises(ValueError, match="ILP/HTTP"):
        WriteToQuestDB("sensor_readings", "tcp::addr=x:1;")
    with pytest.raises(ValueError, match="no row mapping"):
        WriteToQuestDB("other", "http::addr=x:1;")
    with pytest.raises(ValueError, match="batch_rows"):
        WriteToQuestDB("alarms", "http::addr=x:1;", batch_rows=0)
