"""QuestDB sink: pure row mapping, error classification, and the writer's retry/isolation
logic against a fake sender (the real server is exercised in tests/integration/test_sinks.py)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from questdb import QuestDBError, QuestDBErrorCode, TimestampMicros
from questdb._client import Buffer

from io_connectors.questdb_schema import ALARM_COLUMNS, SENSOR_READING_COLUMNS
from io_connectors.questdb_sink import (
    FATAL,
    REJECTED,
    TRANSIENT,
    IlpRow,
    QuestDBUnavailableError,
    QuestDBWriter,
    RowMappingError,
    WriteToQuestDB,
    alarm_row,
    classify_error,
    reading_row,
    symbol_columns,
)

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


def test_symbols_come_from_the_ddl() -> None:
    assert symbol_columns("sensor_readings") == {
        "site_id", "asset_id", "sensor_id", "sensor_type", "unit", "quality_flag", "asset_type"}
    assert symbol_columns("alarms") == {
        "site_id", "asset_id", "sensor_id", "sensor_type", "severity", "state"}
    with pytest.raises(KeyError, match="questdb_schema"):
        symbol_columns("nope")


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


def test_classify_error() -> None:
    assert classify_error(_err(QuestDBErrorCode.SocketError, "Connection refused")) == TRANSIENT
    assert classify_error(_err(
        QuestDBErrorCode.ServerFlushError,
        'Could not flush buffer: {"code":"invalid","message":"failed to parse line protocol",'
        '"line":1}')) == REJECTED
    assert classify_error(_err(QuestDBErrorCode.ServerFlushError,
                               "Could not flush buffer: HTTP status 503")) == TRANSIENT
    assert classify_error(_err(QuestDBErrorCode.ServerFlushError,
                               "HTTP status 401 unauthorized")) == FATAL
    assert classify_error(_err(QuestDBErrorCode.AuthError, "no")) == FATAL
    assert classify_error(ValueError("x")) == FATAL


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
    assert all("cast error" in reason for _, reason in rejected)
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
