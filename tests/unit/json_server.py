"""A loopback HTTP server answering GETs with JSON, for unit tests that fake a REST service
(Flink's REST API in test_run_pipeline.py and test_chaos_crash_marks.py, QuestDB's /exec in
test_api_questdb_pages.py)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

__all__ = ["JsonServer"]


class JsonServer:
    """``route(path)`` gives the JSON body of a GET (the query string is cut off), a
    ``(status, body)`` pair for another status than 200, or ``None`` for a 404. Every path
    asked for is kept in :attr:`paths`, its query string parsed in :attr:`queries`. Use as
    a context manager."""

    def __init__(self, route: Callable[[str], Any]) -> None:
        self.paths: list[str] = []
        self.queries: list[dict[str, list[str]]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                url = urlsplit(self.path)
                server.paths.append(url.path)
                server.queries.append(parse_qs(url.query))
                body = route(url.path)
                if body is None:
                    self.send_error(404)
                    return
                status, body = body if isinstance(body, tuple) else (200, body)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *_args: Any) -> None:
                pass

        self._closed = False
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._http.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self._http.serve_forever, daemon=True).start()

    def close(self) -> None:
        """Stop answering (a test may do it early to fake a service that went away)."""
        if self._closed:
            return
        self._closed = True
        self._http.shutdown()
        self._http.server_close()

    def __enter__(self) -> JsonServer:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
