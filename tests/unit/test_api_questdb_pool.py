"""QuestDBClient's pool when QuestDB closed its idle connections (unit: psycopg2 faked)."""

from __future__ import annotations

from typing import Any

import psycopg2
import pytest

from api import questdb as Q
from api.errors import ServiceUnavailable


class FakeCursor:
    def __init__(self, conn: FakeConn) -> None:
        self.conn = conn

    def __enter__(self) -> FakeCursor:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def execute(self, sql: str, params: Any = None) -> None:
        if self.conn.stale:
            raise psycopg2.OperationalError("server closed the connection unexpectedly")
        self.conn.queries += 1

    def fetchall(self) -> list[tuple[int]]:
        return [(1,)]


class FakeConn:
    def __init__(self) -> None:
        self.stale = False
        self.closed = False
        self.queries = 0
        self.autocommit = False

    def cursor(self) -> FakeCursor:
        return FakeCursor(self)

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def connections(monkeypatch: pytest.MonkeyPatch) -> list[FakeConn]:
    made: list[FakeConn] = []

    def connect(**_kwargs: Any) -> FakeConn:
        made.append(FakeConn())
        return made[-1]

    monkeypatch.setattr(Q.psycopg2, "connect", connect)
    return made


def test_all_idle_connections_stale_is_one_retry_on_a_fresh_one(
        connections: list[FakeConn]) -> None:
    """QuestDB closes PG connections idle for a while: every pooled one is then dead. The
    query must succeed on a fresh connection, not fail on the second stale one (503)."""
    client = Q.QuestDBClient("h", 1, "u", "p", max_connections=3)
    client.query("SELECT 1")
    client._idle.extend(Q.psycopg2.connect() for _ in range(2))  # three pooled connections
    assert len(connections) == 3 and len(client._idle) == 3
    for c in connections:
        c.stale = True
    assert client.query("SELECT 1") == [(1,)]
    assert len(connections) == 4 and connections[-1].queries == 1
    assert all(c.closed for c in connections[:3])  # the stale ones were dropped
    assert client.query("SELECT 1") == [(1,)] and len(connections) == 4  # pooled again


def test_a_fresh_connection_failing_is_503(connections: list[FakeConn],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    client = Q.QuestDBClient("h", 1, "u", "p")
    original = FakeConn.cursor

    def broken(self: FakeConn) -> FakeCursor:
        self.stale = True
        return original(self)

    monkeypatch.setattr(FakeConn, "cursor", broken)
    with pytest.raises(ServiceUnavailable):
        client.query("SELECT 1")


def test_rollups_off_by_configuration_never_ask_questdb_and_refuse_source_rollup() -> None:
    """[questdb] rollups = false: no materialized_views() query (the client would fail),
    buckets from raw rows for source=auto, and source=rollup is a 400 naming the setting."""
    from types import SimpleNamespace

    from api.errors import BadParameter
    from api.questdb import TelemetryStore

    class NoClient:
        def query(self, *_args, **_kwargs):
            raise AssertionError("QuestDB asked about rollups although they are off")

    store = TelemetryStore(NoClient(), rollups_enabled=False)  # type: ignore[arg-type]
    assert store.valid_rollups() == frozenset()
    assert store._bucket_source(SimpleNamespace(rollup="sensor_readings_1m",  # type: ignore[arg-type]
                                                source="auto")) is None
    with pytest.raises(BadParameter) as err:
        store._bucket_source(SimpleNamespace(rollup="sensor_readings_1m",  # type: ignore[arg-type]
                                             source="rollup"))
    assert "[questdb] rollups" in str(err.value) and err.value.status == 400
