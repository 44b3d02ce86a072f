"""The REST API service: gunicorn serving ``runners.wsgi:app``; spec only.

Bound to ``[stack] bind_host``:``[api] port`` with ``[api] workers`` worker
processes of ``[api] threads`` threads each (gunicorn's gthread worker when > 1).
Gunicorn's master and workers share one process group, so ``down`` stops them
together. Health: ``GET /healthz`` answers 200.
"""

from __future__ import annotations

import sys

import requests

from config.settings import Settings
from runners.stack.spec import ServiceSpec, StackPaths

__all__ = ["services"]


def services(settings: Settings, paths: StackPaths) -> list[ServiceSpec]:
    bind_host = settings.stack.bind_host
    port = settings.api.port
    workers = settings.api.workers  # >= 1, as threads: checked by config.settings
    # Threads per worker (gunicorn's gthread worker when > 1): a request waiting for
    # QuestDB or streaming a CSV export no longer holds a whole worker process.
    threads = settings.api.threads
    url = f"http://{bind_host}:{port}/healthz"

    def healthy() -> bool:
        return requests.get(url, timeout=2.0).status_code == 200

    return [ServiceSpec(
        name="api",
        # No gunicorn config file: the flags set bind and workers, so the port check and the
        # process agree; runners/wsgi.py does what a config's hooks would (metrics directory).
        argv=[sys.executable, "-m", "gunicorn",
              "--bind", f"{bind_host}:{port}",
              "--workers", str(workers), "--threads", str(threads),
              "--graceful-timeout", "10",
              "--access-logfile", "-",
              # The default control socket (~/.gunicorn/gunicorn.ctl) would clash
              # with the registry's gunicorn; nothing here uses it.
              "--no-control-socket", "runners.wsgi:app"],
        ports=(port,),
        healthy=healthy,
        start_timeout_s=60.0,
        stop_timeout_s=15.0,
    )]
