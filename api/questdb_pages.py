"""The rows of the API's large page reads through QuestDB's HTTP ``GET /exec``.

A JSON page of ``/api/v1/telemetry`` is up to 10,001 rows read from QuestDB. Over PG wire,
psycopg2 turns every value of QuestDB's text into a Python object one at a time; ``/exec``
sends the same rows as one JSON document that orjson parses in C. Measured on a dense
asset-day, the same SQL alternating (decision 0006, "Seventh pass";
bench/results/raw-page-spike-20261201/exec-spike-output.txt): a raw page 52.3 ms over PG
wire (execute and fetchall) against 35.7 ms through ``/exec`` and orjson, a page of
1-minute buckets 40.2 against 27.2 ms. The small reads (the raw page's probe, rollup
status, latest values, alarms) stay on PG wire (:class:`api.questdb.QuestDBClient`).

What comes back differs from psycopg2's rows only in form: lists instead of tuples, and
TIMESTAMP columns as QuestDB's ISO text ``2026-11-27T00:00:00.300000Z`` instead of its PG
text ``2026-11-27 00:00:00.300000``; :func:`api.rows_json.json_timestamp` and
:func:`api.questdb.timestamp_micros` read both. Doubles carry the same digits either way
(Java's shortest text, ``1.0E-5``), NaN comes as null, which the API prints as null
anyway. ``/exec`` takes no bind parameters: the builders' ``(sql, params)`` are inlined
with :func:`api.questdb.inline_sql` (each value a standard SQL literal), as for ``/exp``.

urllib3's pool (the library under ``requests``) keeps the connections; it is made again
in a forked process. One retry covers a kept-alive connection that QuestDB closed while
it was idle: the statements are SELECTs, safe to send twice.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import Any

import orjson
import urllib3
from urllib3.exceptions import HTTPError as Urllib3Error

from api.errors import ServiceUnavailable
from api.questdb import inline_sql
from api.rows_json import gc_paused
from io_connectors.questdb_http import QuestDBError

__all__ = ["QuestDBPageReader"]


class QuestDBPageReader:
    """``query(sql, params)`` -> QuestDB's rows (lists, in the SELECT's column order)."""

    def __init__(self, host: str, http_port: int, max_connections: int = 4,
                 connect_timeout_s: float = 3.0, read_timeout_s: float = 60.0) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self.address = f"{host}:{http_port}"
        self._host, self._port = host, http_port
        self._max = max_connections
        self._timeout = urllib3.Timeout(connect=connect_timeout_s, read=read_timeout_s)
        self._lock = threading.Lock()
        self._pid = -1
        self._pool: urllib3.HTTPConnectionPool | None = None

    def _connections(self) -> urllib3.HTTPConnectionPool:
        # A pool inherited from a parent process (gunicorn forks its workers) shares its
        # sockets with the parent: every process makes its own.
        with self._lock:
            if self._pool is None or self._pid != os.getpid():
                self._pool = urllib3.HTTPConnectionPool(
                    self._host, self._port, maxsize=self._max, block=True,
                    timeout=self._timeout,
                    retries=urllib3.Retry(total=1, connect=1, read=1, redirect=0, status=0))
                self._pid = os.getpid()
            return self._pool

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[list[Any]]:
        """The rows of one SELECT (``params`` inlined into ``%s`` placeholders)."""
        text = inline_sql(sql, params) if params else sql
        try:
            resp = self._connections().request("GET", "/exec", fields={"query": text},
                                               headers={"Accept-Encoding": "identity"})
        except Urllib3Error as exc:
            raise ServiceUnavailable(
                f"QuestDB at {self.address} failed during a query ([questdb] host, "
                "http_port)", dependency="questdb", error=str(exc).strip()[:200]) from None
        try:
            with gc_paused():  # ~130,000 new objects, no cycles (api.rows_json.gc_paused)
                body = orjson.loads(resp.data)
        except orjson.JSONDecodeError:
            body = {"error": resp.data[:300].decode("utf-8", "replace")}
        if resp.status == 200 and "dataset" in body:
            return body["dataset"]
        error = body.get("error", "no rows in the answer")
        if resp.status >= 500 or resp.status == 429:
            raise ServiceUnavailable(
                f"QuestDB at {self.address} could not answer a query (HTTP {resp.status})",
                dependency="questdb", error=str(error)[:200])
        # QuestDB refused the SQL: the builders' bug, never the request's (a 500, logged).
        where = f" at position {body['position']}" if "position" in body else ""
        raise QuestDBError(f"QuestDB at {self.address} rejected a page query (HTTP "
                           f"{resp.status}): {error}{where}; SQL: {text[:300]}")

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()
