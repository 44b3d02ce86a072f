"""QuestDB's HTTP SQL endpoint (``GET /exec``): the one client of the stack, tools and tests.

The API reads QuestDB over PG wire (:mod:`api.questdb`) and the sinks write over ILP; DDL at
start (runners/stack/questdb.py), health checks, the benchmark, the chaos drills and the
integration tests send SQL through ``/exec`` with :func:`questdb_exec`, which turns
QuestDB's error answers into :class:`QuestDBError` naming the statement, and
:func:`as_dicts` turns a result into rows keyed by column name.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import requests

__all__ = ["QuestDBError", "as_dicts", "questdb_exec", "questdb_http_url"]


class QuestDBError(RuntimeError):
    """QuestDB answered ``/exec`` with an error (its message, the statement's start)."""


def questdb_http_url(host: str, port: int) -> str:
    """The base URL of QuestDB's HTTP server (``[questdb] host`` and ``http_port``)."""
    return f"http://{host}:{port}"


def questdb_exec(base_url: str, sql: str, *, timeout_s: float = 30.0,
                 session: requests.Session | None = None,
                 params: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Run ``sql`` through ``<base_url>/exec``; QuestDB's JSON answer (``columns``,
    ``dataset``, ``count``, or ``ddl`` for a statement).

    Raises :class:`QuestDBError` when QuestDB refuses the statement (with its message and
    position), and ``requests.RequestException`` when it cannot be reached.
    ``params`` adds query parameters (``count``, ``limit``, ...).
    """
    http = session or requests
    resp = http.get(f"{base_url.rstrip('/')}/exec", params={"query": sql, **(params or {})},
                    timeout=timeout_s)
    try:
        body = resp.json()
    except ValueError:
        body = {"error": resp.text[:500]}
    if resp.status_code != 200 or "error" in body:
        first_line = (sql.strip().splitlines() or [""])[0][:160]
        where = f" at position {body['position']}" if "position" in body else ""
        raise QuestDBError(f"QuestDB at {base_url} rejected '{first_line}' (HTTP "
                           f"{resp.status_code}): {body.get('error')}{where}")
    return body


def as_dicts(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The rows of a :func:`questdb_exec` answer as ``{column: value}``."""
    names = [c["name"] for c in body.get("columns", [])]
    return [dict(zip(names, row, strict=True)) for row in body.get("dataset", [])]
