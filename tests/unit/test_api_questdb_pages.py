"""QuestDBPageReader: the rows of the API's page reads through QuestDB's HTTP /exec (unit: a
loopback server answers as QuestDB does; the same reads against a real QuestDB are in
tests/integration/test_query_api.py)."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from api.errors import ServiceUnavailable
from api.questdb_pages import QuestDBPageReader
from io_connectors.questdb_http import QuestDBError
from tests.unit.json_server import JsonServer

_ROWS = [["2026-11-27T00:00:00.300000Z", "a-1", 1.5, None],
         ["2026-11-27T00:00:00.300100Z", "a-'2", 1.0e-5, 3.0]]


def _answer(path: str) -> Any:
    return {"query": "...", "columns": [], "dataset": _ROWS, "count": 2} \
        if path == "/exec" else None


def test_rows_come_back_as_questdb_sent_them_and_parameters_are_inlined() -> None:
    with JsonServer(_answer) as server:
        reader = QuestDBPageReader("127.0.0.1", server.port)
        rows = reader.query("SELECT * FROM t WHERE a = %s AND ts >= %s LIMIT %s",
                            ["it's", 1_795_000_000_000_000, 10])
        assert rows == _ROWS
        # Each value a standard SQL literal (quote doubled), the integers as digits.
        assert server.queries[-1]["query"] == [
            "SELECT * FROM t WHERE a = 'it''s' AND ts >= 1795000000000000 LIMIT 10"]
        assert reader.query("SELECT 1") == _ROWS  # no parameters: the text as it is
        assert server.queries[-1]["query"] == ["SELECT 1"]
        reader.close()


def test_a_refused_statement_is_a_questdb_error_naming_it() -> None:
    def refuse(path: str) -> Any:
        return 400, {"query": "SELECT nope", "error": "Invalid column: nope", "position": 7}

    with JsonServer(refuse) as server:
        reader = QuestDBPageReader("127.0.0.1", server.port)
        with pytest.raises(QuestDBError, match=r"Invalid column: nope at position 7.*"
                                               r"SELECT nope"):
            reader.query("SELECT nope")


@pytest.mark.parametrize("status", [500, 503, 429])
def test_questdb_failing_to_answer_is_a_503(status: int) -> None:
    with JsonServer(lambda path: (status, {"error": "busy"})) as server:
        reader = QuestDBPageReader("127.0.0.1", server.port)
        with pytest.raises(ServiceUnavailable, match=f"HTTP {status}") as caught:
            reader.query("SELECT 1")
        assert caught.value.details == {"dependency": "questdb", "error": "busy"}


def test_an_answer_without_rows_is_not_taken_for_an_empty_page() -> None:
    with JsonServer(lambda path: {"ddl": "OK"}) as server:
        with pytest.raises(QuestDBError, match="no rows in the answer"):
            QuestDBPageReader("127.0.0.1", server.port).query("SELECT 1")


def test_questdb_unreachable_is_a_503_naming_the_settings() -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    reader = QuestDBPageReader("127.0.0.1", port, connect_timeout_s=1.0)
    with pytest.raises(ServiceUnavailable, match=r"\[questdb\] host, http_port") as caught:
        reader.query("SELECT 1")
    assert caught.value.status == 503


def test_the_pool_is_made_again_in_a_forked_process(monkeypatch: pytest.MonkeyPatch) -> None:
    with JsonServer(_answer) as server:
        reader = QuestDBPageReader("127.0.0.1", server.port)
        reader.query("SELECT 1")
        parent_pool = reader._connections()
        monkeypatch.setattr("os.getpid", lambda: -42)  # as in a gunicorn worker after fork
        assert reader._connections() is not parent_pool
        assert reader.query("SELECT 1") == _ROWS


def test_max_connections_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        QuestDBPageReader("127.0.0.1", 9000, max_connections=0)
