"""The operator console service: gunicorn serving ``runners.console_wsgi:app``; spec only.

Bound to ``[stack] bind_host``:``[console] port`` (8080), one worker process with
``[console] threads`` threads (default 8): the console's counter sampler keeps its
history in that one process. Health: ``GET /healthz`` answers 200. docs/console.md.
"""

from __future__ import annotations

import sys

import requests

from config.settings import ConsoleSettings, Settings
from runners.stack.spec import ServiceSpec, StackPaths

__all__ = ["services", "DEFAULT_PORT"]

DEFAULT_PORT: int = ConsoleSettings.port


def services(settings: Settings, paths: StackPaths) -> list[ServiceSpec]:
    bind_host = settings.stack.bind_host
    port = settings.console.port
    threads = settings.console.threads  # >= 1: checked by config.settings
    url = f"http://{'127.0.0.1' if bind_host in ('', '0.0.0.0') else bind_host}:{port}/healthz"

    def healthy() -> bool:
        return requests.get(url, timeout=2.0).status_code == 200

    return [ServiceSpec(
        name="console",
        argv=[sys.executable, "-m", "gunicorn",
              "--bind", f"{bind_host}:{port}",
              "--workers", "1", "--worker-class", "gthread", "--threads", str(threads),
              "--graceful-timeout", "10", "--timeout", "60",
              "--access-logfile", "-",
              "--no-control-socket", "runners.console_wsgi:app"],
        ports=(port,),
        healthy=healthy,
        start_timeout_s=60.0,
        stop_timeout_s=15.0,
    )]
