"""Gunicorn entry point of the REST API: ``gunicorn runners.wsgi:app``.

Loads the settings (config file and environment), refuses development
credentials when ``DCMMS_ENV=production``, and builds the app. gunicorn imports
this module in each worker (unless ``--preload``).

Metrics of all workers: unless ``PROMETHEUS_MULTIPROC_DIR`` is already set,
it is pointed at ``<run_dir>/api-metrics/<parent pid>`` before prometheus_client
is imported. Every worker of one gunicorn master shares its parent pid, so
``/metrics`` sums all workers of this run and never a previous run's samples;
directories of masters that are gone are removed.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from config.settings import Settings, load_settings

if TYPE_CHECKING:
    from flask import Flask

__all__ = ["app", "build_app"]

_LOGGER = logging.getLogger(__name__)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _prepare_metrics_dir(settings: Settings) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return
    base = settings.stack.run_dir / "api-metrics"
    master = os.getppid()
    for old in base.glob("*") if base.is_dir() else ():
        if old.name.isdigit() and int(old.name) != master and not _pid_alive(int(old.name)):
            shutil.rmtree(old, ignore_errors=True)
    own = Path(base, str(master))
    own.mkdir(parents=True, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(own)


def build_app() -> Flask:
    settings = load_settings()
    settings.check_production()
    _prepare_metrics_dir(settings)
    from api import create_app  # after the metrics directory is chosen

    return create_app(settings)


app = build_app()
