"""Gunicorn entry point of the operator console: ``gunicorn runners.console_wsgi:app``.

Loads the settings, refuses development credentials when ``DCMMS_ENV=production``
and builds :func:`api.console.create_console_app`. The console runs one worker
process (with threads): its counter sampler and the chart's history live in that
process, and its ``/metrics`` are that process's own (no multiprocess directory).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from runners.settings import load_settings

if TYPE_CHECKING:
    from flask import Flask

__all__ = ["app", "build_app"]


def build_app() -> Flask:
    settings = load_settings()
    settings.check_production()
    # One process: its own metrics registry, not the API's multiprocess directory.
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    from api.console import create_console_app

    return create_console_app(settings)


app = build_app()
