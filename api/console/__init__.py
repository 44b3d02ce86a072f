"""The operator console: a small web app on ``[console] port`` (8080) beside the REST API.

:func:`create_console_app` builds it from :func:`api.create_app` with the blueprints
the console needs (queries, alarms and their acknowledgement, dead letters and replay,
health, metrics) plus this one: HTML pages and a few JSON endpoints of its own.

Auth: the same API keys as the REST API. The pages themselves hold no data; the
login page asks for a key, checks it against ``GET /console/api/whoami`` and keeps it
in the tab's ``sessionStorage``; every data request sends it as
``Authorization: Bearer <key>`` (so there is no cookie, and no cross-site request can
act with it). Replay and acknowledge need the write scope.

Pages: ``/`` overview, ``/topics``, ``/dead-letters``, ``/alarms``, ``/assets`` and
``/assets/<asset_id>``, ``/login``. JSON (read scope): ``/console/api/whoami``,
``/console/api/overview``, ``/console/api/topics``,
``/console/api/topics/<topic>/messages?limit=&partition=``. ``/metrics`` adds the
pipeline's metrics (:class:`api.console.backend.PipelineCollector`, docs/metrics.md).

The chart library (uPlot) is fetched from the npm registry by ``scripts/fetch-web-assets.sh``
(``make install``) into ``api/console/static/vendor/``; docs/console.md has the details.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify, render_template, request

from api.auth import authenticate, require_scope
from api.errors import ApiError, BadParameter, ServiceUnavailable
from config.settings import Settings

__all__ = ["BACKEND_EXTENSION", "CONSOLE_BLUEPRINTS", "PAGES", "bp", "create_console_app",
           "vendor_ready"]

_LOGGER = logging.getLogger(__name__)

BACKEND_EXTENSION = "dcmms_console"
CONSOLE_BLUEPRINTS = ("api.query", "api.health", "api.alarm_acks", "api.dead_letters",
                      "api.console")
STATIC_DIR = Path(__file__).resolve().parent / "static"
UPLOT_FILES = ("vendor/uplot/uPlot.iife.min.js", "vendor/uplot/uPlot.min.css")
# (path, page id, title) in navigation order.
PAGES = (("/", "overview", "Overview"), ("/topics", "topics", "Topics"),
         ("/dead-letters", "dead-letters", "Dead letters"), ("/alarms", "alarms", "Alarms"),
         ("/assets", "assets", "Assets"))
MAX_MESSAGES = 200

bp = Blueprint("console", __name__, template_folder="templates", static_folder="static",
               static_url_path="/console/static")


def vendor_ready() -> bool:
    return all((STATIC_DIR / f).is_file() for f in UPLOT_FILES)


def _backend() -> Any:
    return current_app.extensions[BACKEND_EXTENSION]


def _page(page: str, **extra: Any) -> str:
    title = next((t for _p, pid, t in PAGES if pid == page), page.title())
    return render_template("console.html", page=page, title=title, pages=PAGES,
                           chart_ready=vendor_ready(), **extra)


@bp.get("/")
def overview_page() -> str:
    return _page("overview")


@bp.get("/topics")
def topics_page() -> str:
    return _page("topics")


@bp.get("/dead-letters")
def dead_letters_page() -> str:
    return _page("dead-letters")


@bp.get("/alarms")
def alarms_page() -> str:
    return _page("alarms")


@bp.get("/assets")
def assets_page() -> str:
    return _page("assets")


@bp.get("/assets/<path:asset_id>")
def asset_page(asset_id: str) -> str:
    return _page("asset", asset_id=asset_id[:256])


@bp.get("/login")
def login_page() -> str:
    return _page("login")


@bp.get("/console/api/whoami")
def whoami() -> Response:
    key = authenticate()
    return jsonify({"key_id": key.key_id, "scopes": sorted(key.scopes)})


@bp.get("/console/api/overview")
@require_scope("read")
def overview() -> Response:
    return jsonify(_backend().overview())


@bp.get("/console/api/topics")
@require_scope("read")
def topics() -> Response:
    return jsonify({"data": _backend().topics_overview()})


@bp.get("/console/api/topics/<topic>/messages")
@require_scope("read")
def topic_messages(topic: str) -> Response:
    from io_connectors.kafka_inspect import KafkaUnavailable

    backend = _backend()
    if topic not in backend.topics.values():
        raise ApiError(404, "not_found", "not one of the pipeline's topics",
                       {"topic": topic[:256], "topics": sorted(backend.topics.values())})
    unknown = sorted(set(request.args) - {"limit", "partition"})
    if unknown:
        raise BadParameter(unknown[0], "unknown parameter", allowed=["limit", "partition"])
    limit = _small_int("limit", 20, 1, MAX_MESSAGES)
    partition = _small_int("partition", None, 0, 9999)
    try:
        messages = backend.newest_messages(topic, limit, partition)
    except KafkaUnavailable as exc:
        raise ServiceUnavailable(str(exc)) from None
    return jsonify({"topic": topic, "data": messages})


def _small_int(name: str, default: int | None, low: int, high: int) -> int | None:
    value = request.args.get(name)
    if value is None:
        return default
    if not (value.isascii() and value.isdigit()) or len(value) > 6 or not low <= int(value) <= high:
        raise BadParameter(name, f"must be an integer from {low} to {high}",
                           minimum=low, maximum=high)
    return int(value)


def create_console_app(settings: Settings | None = None,
                       test_config: dict[str, Any] | None = None,
                       backend: Any = None,
                       statuses: Callable[[], list[dict[str, Any]]] | None = None) -> Flask:
    """The console app: :func:`api.create_app` with :data:`CONSOLE_BLUEPRINTS` and the
    console backend (``backend`` replaces it in tests; the counter sampler starts here).
    ``statuses`` lists the stack's services (the entry point, runners.console_wsgi, passes
    the supervisor's; without it the overview lists none)."""
    from prometheus_client import REGISTRY  # noqa: F401 - imported for side-effect order

    from api import create_app
    from api.console.backend import ConsoleBackend, PipelineCollector
    from api.health import METRICS_EXTENSION
    from config.settings import load_settings

    settings = settings or load_settings()
    app = create_app(settings, test_config, modules=CONSOLE_BLUEPRINTS)
    if backend is None:
        backend = ConsoleBackend(settings, statuses)
        backend.sampler.start()
    app.extensions[BACKEND_EXTENSION] = backend
    app.extensions[METRICS_EXTENSION].registry.register(PipelineCollector(backend))
    if not vendor_ready():
        _LOGGER.warning("console chart library missing in %s: run `make install` "
                        "(scripts/fetch-web-assets.sh); charts are not drawn", STATIC_DIR)
    return app
