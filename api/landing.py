"""Where a person starts: ``GET /`` (an HTML page of links) and ``GET /api/v1`` (the same as JSON).

* ``GET /`` — public, no key: it holds links and nothing else (no data, no key,
  no setting but the console's address), so anyone who can reach the port may read it.
* ``GET /api`` — 308 to ``/api/v1``.
* ``GET /api/v1`` (and ``/api/v1/``) — the links as JSON; public like the docs
  (:func:`api.openapi.guard_docs`: the read scope when ``[api] public_docs = false``).

The operator console (:mod:`api.console`, its own service) is linked from both: its
address is ``http://<[stack] bind_host>:<[console] port>/`` (port 8080 unless set).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from flask import Blueprint, Response, current_app, jsonify, redirect, render_template_string

from api.openapi import DOCS_PATH, OPENAPI_PATH, build_openapi, guard_docs
from config.settings import ConsoleSettings

__all__ = ["CONSOLE_DEFAULT_PORT", "INDEX_PATH", "Link", "bp", "links"]

_LOGGER = logging.getLogger(__name__)

INDEX_PATH = "/api/v1"
CONSOLE_DEFAULT_PORT: int = ConsoleSettings.port

bp = Blueprint("landing", __name__)


@dataclass(frozen=True)
class Link:
    """One link of the landing page and the JSON index."""

    name: str
    href: str
    title: str
    note: str = ""
    # Not served yet: shown as "coming" and never checked by the tests for a 200.
    coming: bool = False


def links() -> tuple[Link, ...]:
    """The links of the landing page, in display order (needs an app context)."""
    return (
        Link("docs", f"{DOCS_PATH}/", "API documentation",
             "Swagger UI: every endpoint, its parameters and answers. Authorize with your "
             "API key to try requests."),
        Link("openapi", OPENAPI_PATH, "OpenAPI document", "OpenAPI 3.1 JSON, for clients "
             "and code generators."),
        Link("index", INDEX_PATH, "API index", "These links as JSON."),
        Link("health", "/healthz", "Liveness", "200 while the API process serves requests."),
        Link("ready", "/readyz", "Readiness", "QuestDB and Kafka reachable (503 if not)."),
        Link("metrics", "/metrics", "Prometheus metrics",
             "Requests, ingest accepted / rejected, Kafka delivery latency "
             "(docs/metrics.md)."),
        Link("console", _console_url(), "Operator console",
             "Services, the Flink job, rates and lag, topics, dead letters and replay, "
             "alarms and acknowledgement, live asset charts (same API key; docs/console.md)."),
    )


def _console_url() -> str:
    settings = current_app.config["DCMMS_SETTINGS"]
    host = settings.stack.bind_host
    if host in ("", "0.0.0.0", "::"):  # listening everywhere: loopback is one of them
        host = "127.0.0.1"
    elif ":" in host:
        host = f"[{host}]"
    port = settings.console.port
    return f"http://{host}:{port}/"


# Autoescaped (render_template_string escapes like a .html template). Inline style
# only: the page loads nothing, so it works offline and leaks nothing.
_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>dCMMS telemetry API</title>
<style>
body{font-family:system-ui,sans-serif;max-width:46rem;margin:2rem auto;padding:0 1rem;
line-height:1.45;color:#1f2328}
h1{font-size:1.6rem;margin-bottom:.25rem}
ul{list-style:none;padding:0}li{margin:.9rem 0}
a{font-weight:600}.note{display:block;color:#59636e}
.coming{color:#9a6700;font-weight:600;margin-left:.4rem}
code{font-family:ui-monospace,monospace;background:#f6f8fa;padding:.1rem .3rem}
</style></head><body>
<h1>dCMMS telemetry API</h1>
<p>Ingests sensor readings of renewable-energy sites and serves them back. Every
<code>/api</code> route needs <code>Authorization: Bearer &lt;api key&gt;</code>;
the documentation, health and metrics below do not.</p>
<ul>
{% for link in links %}
<li><a href="{{ link.href }}">{{ link.title }}</a>
{%- if link.coming %}<span class="coming">coming</span>{% endif %}
<span class="note">{{ link.note }} <code>{{ link.href }}</code></span></li>
{% endfor %}
</ul>
</body></html>
"""


@bp.get("/")
def landing() -> str:
    return render_template_string(_PAGE, links=links())


@bp.get("/api", strict_slashes=False)
def api_root() -> Response:
    # 308 keeps the method; only GET/HEAD reach here (others are a JSON 405).
    return redirect(INDEX_PATH, 308)


@bp.get(INDEX_PATH, strict_slashes=False)
def api_index() -> Response:
    guard_docs()
    return jsonify({
        "name": "dCMMS telemetry API",
        "version": "v1",
        "links": {link.name: link.href for link in links()},
        "coming": [link.name for link in links() if link.coming],
        # Every documented path, so the index never drifts from the OpenAPI document.
        "paths": sorted(build_openapi()["paths"]),
    })
