"""Gunicorn entry point of the operator console: ``gunicorn runners.console_wsgi:app``.

Loads the settings, refuses development credentials when ``DCMMS_ENV=production``
and builds :func:`api.console.create_console_app`. The console runs one worker
process (with threads): its counter sampler and the chart's history live in that
process, and its ``/metrics`` are that process's own (no multiprocess directory).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from config.settings import Settings, load_settings

if TYPE_CHECKING:
    from flask import Flask

__all__ = ["app", "build_app", "supervisor_statuses"]


def supervisor_statuses(settings: Settings) -> Callable[[], list[dict[str, Any]]]:
    """Statuses of every service of the stack of ``settings`` (cached for 3 s), for the
    console's overview."""
    cache: dict[str, Any] = {"at": 0.0, "value": []}
    lock = threading.Lock()

    def read() -> list[dict[str, Any]]:
        from runners.stack.supervisor import (
            Supervisor,
            load_specs,
            paths_from_settings,
            stack_modules,
        )

        with lock:
            if time.monotonic() - cache["at"] < 3.0:
                return cache["value"]
            paths = paths_from_settings(settings)
            modules = stack_modules(with_pipeline=paths.pidfile("pipeline").exists())
            specs = load_specs(settings, paths, modules)
            sup = Supervisor(specs, paths, bind_host=settings.stack.bind_host)
            value = [{"name": s.name, "pid": s.pid, "ports": list(s.ports), "up": s.healthy,
                      "running": s.pid is not None, "uptime_s": s.uptime_s,
                      "rss_mb": s.rss_mb, "restarts": s.restarts, "last_exit": s.last_exit,
                      "last_exit_at": s.last_exit_at, "pending": s.pending}
                     for s in sup.statuses()]
            cache.update(at=time.monotonic(), value=value)
            return value

    return read


def build_app() -> Flask:
    settings = load_settings()
    settings.check_production()
    # One process: its own metrics registry, not the API's multiprocess directory.
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    from api.console import create_console_app

    return create_console_app(settings, statuses=supervisor_statuses(settings))


app = build_app()
