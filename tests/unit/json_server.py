"""A loopback HTTP server answering GETs with JSON, for unit tests that fake a REST service
(Flink's REST API in test_run_pipeline.py and test_chaos_crash_marks.py)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["JsonServer"]


class JsonServer:
    """``route(path)`` gives the JSON body of a GET (the query string is cut off), or ``None``
    for a 404. Every path asked for is kept in :attr:`paths`. Use as a context manager."""

    def __init__(self, route: Callable[[str], Any]) -> None:
        self.paths: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                path = self.path.split("?")[0]
                server.paths.append(path)
                body = route(path)
                if body is None:
                    self.send_error(404)
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
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
