"""Unit tests of the landing page, the /api index and the Swagger UI docs (Flask test client)."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api import create_app
from api.landing import links
from config.settings import Settings, load_settings

KEY = "landing-key"


class _Refs(HTMLParser):
    """Every href/src of a page, and the text of its inline scripts."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.refs += [v for k, v in attrs if k in ("href", "src") and v]
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.scripts.append(data)


def refs(page: str) -> _Refs:
    parser = _Refs()
    parser.feed(page)
    return parser


def make_app(**api: Any) -> Flask:
    base = load_settings()
    values = {s: base.section(s) for s in ("stack", "kafka", "schema_registry", "questdb",
                                           "mqtt", "api", "pipeline")}
    values["api"].update({"api_keys": f"{KEY}:read,w-{KEY}:write"}, **api)
    return create_app(Settings(values, Path("landing-test"), {}),
                      {"TESTING": True, "TELEMETRY_STORE": object(), "READY_CHECKS": {}})


@pytest.fixture
def app() -> Flask:
    return make_app()


def test_every_local_link_of_the_landing_page_answers_200(app: Flask) -> None:
    client = app.test_client()
    page = client.get("/")
    assert page.status_code == 200 and page.mimetype == "text/html"
    hrefs = refs(page.get_data(as_text=True)).refs
    local = [h for h in hrefs if h.startswith("/")]
    assert {"/api/v1/docs/", "/api/v1/openapi.json", "/healthz", "/readyz",
            "/metrics", "/api/v1"} <= set(local)
    for href in local:
        response = client.get(href)  # no redirect followed: links point at the page itself
        assert response.status_code == 200, (href, response.status_code)
    # The one link elsewhere is the console, on its own port (served by the console service).
    assert [h for h in hrefs if not h.startswith("/")] == ["http://127.0.0.1:8080/"]
    assert 'class="coming"' not in page.get_data(as_text=True)


def test_landing_links_are_routes_of_the_app(app: Flask) -> None:
    with app.app_context():
        served = [link for link in links() if link.href.startswith("/")]
        elsewhere = [link for link in links() if not link.href.startswith("/")]
        coming = [link for link in links() if link.coming]
    adapter = app.url_map.bind("localhost")
    for link in served:
        endpoint, _ = adapter.match(link.href, method="GET")
        assert endpoint != "static", link
    assert [link.name for link in elsewhere] == ["console"]
    assert coming == []


def test_landing_page_is_public_and_shows_no_secret() -> None:
    secret = "landing-secret-key-value"
    app = make_app(api_keys=f"{secret}:read+write", public_docs=False)
    client = app.test_client()
    page = client.get("/")
    assert page.status_code == 200
    text = page.get_data(as_text=True)
    assert secret not in text and "dev-api-key" not in text and "password" not in text
    assert "<script" not in text and "src=" not in text, "the page loads nothing"


def test_console_link_follows_the_settings() -> None:
    app = make_app()
    app.config["DCMMS_SETTINGS"] = Settings(
        {**{s: app.config["DCMMS_SETTINGS"].section(s) for s in ("api", "stack")},
         "console": {"port": 18080}, "stack": {"bind_host": "0.0.0.0"}}, Path("x"), {})
    text = app.test_client().get("/").get_data(as_text=True)
    assert 'href="http://127.0.0.1:18080/"' in text


@pytest.mark.parametrize("path", ["/api", "/api/"])
def test_api_redirects_to_the_index(app: Flask, path: str) -> None:
    client = app.test_client()
    response = client.get(path)
    assert response.status_code == 308 and response.headers["Location"].endswith("/api/v1")
    index = client.get(path, follow_redirects=True)
    assert index.status_code == 200
    body = index.get_json()
    with app.app_context():
        assert body["links"] == {link.name: link.href for link in links()}
    assert body["coming"] == []
    assert {"/api/v1/telemetry", "/api/v1/alarms", "/api/v1/docs/"} <= set(body["paths"])
    assert client.get("/api/v1/").get_json() == body


def test_index_and_docs_need_the_read_scope_when_docs_are_not_public() -> None:
    client = make_app(public_docs=False).test_client()
    for path in ("/api/v1", "/api/v1/docs/", "/api/v1/docs/swagger-ui.css",
                 "/api/v1/openapi.json"):
        assert client.get(path).status_code == 401, path
        assert client.get(path, headers={"Authorization": f"Bearer w-{KEY}"}
                          ).status_code == 403, path
        assert client.get(path, headers={"Authorization": f"Bearer {KEY}"}
                          ).status_code == 200, path
    assert client.get("/").status_code == 200


def test_docs_page_is_swagger_ui_referring_only_to_local_files(app: Flask) -> None:
    client = app.test_client()
    assert client.get("/api/v1/docs").status_code == 308  # to /api/v1/docs/
    page = client.get("/api/v1/docs/")
    assert page.status_code == 200 and page.mimetype == "text/html"
    text = page.get_data(as_text=True)
    found = refs(text)
    assert any(r.endswith("/swagger-ui-bundle.js") for r in found.refs)
    for ref in found.refs:
        assert ref.startswith("/api/v1/docs/"), ref
        assert client.get(ref).status_code == 200, ref
    script = "".join(found.scripts)
    assert '"url": "/api/v1/openapi.json"' in script
    # Swagger UI's default validator would fetch a badge from the internet.
    assert '"validatorUrl": null' in script
    assert "http://" not in script and "https://" not in script


def test_openapi_document_describes_the_new_routes_and_this_server(app: Flask) -> None:
    doc = app.test_client().get("/api/v1/openapi.json").get_json()
    assert {"/", "/api", "/api/v1", "/api/v1/docs/"} <= set(doc["paths"])
    # "Try it out" must call the server that served the page, whatever its port.
    assert [s["url"] for s in doc["servers"]] == ["/"]


@pytest.mark.parametrize("path", [
    "/api/v1/docs/../../setup.py", "/api/v1/docs/..%2f..%2fsetup.py", "/api/v1/docs/%00",
    "/api/v1/docs/" + "a" * 5000, "/api/v1/docs/nothing.js", "/api/v1/docs//etc/passwd",
    "/api/v2", "/api/v1/index"])
def test_unknown_paths_are_a_json_404(app: Flask, path: str) -> None:
    # Werkzeug first redirects "//" to "/": follow it to the final answer.
    response = app.test_client().get(path, follow_redirects=True)
    assert response.status_code == 404 and response.get_json()["code"] == "not_found"


@pytest.mark.parametrize("path", ["/", "/api", "/api/v1", "/api/v1/docs/"])
@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
def test_other_methods_are_a_json_405(app: Flask, path: str, method: str) -> None:
    response = app.test_client().open(path, method=method, data=b"x")
    assert response.status_code == 405 and response.get_json()["code"] == "method_not_allowed"


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prefix=st.sampled_from(["/", "/api", "/api/", "/api/v1", "/api/v1/",
                               "/api/v1/docs/", "/api/v1/docs"]),
       tail=st.text(max_size=40),
       query=st.dictionaries(st.text(max_size=10), st.text(max_size=20), max_size=3),
       headers=st.dictionaries(st.sampled_from(["Authorization", "Accept", "Host"]),
                               st.text(st.characters(min_codepoint=32, max_codepoint=126),
                                       max_size=40), max_size=2))
def test_generated_requests_never_5xx(app: Flask, prefix: str, tail: str,
                                      query: dict[str, str], headers: dict[str, str]) -> None:
    path = prefix + quote(tail)
    if path.startswith("//"):
        # Werkzeug's test client reads "//x" as a host (and fails on it) before the app is
        # called; a client on the wire sends the path, which "/%2F" stands for here.
        path = "/%2F" + path[2:]
    response = app.test_client().get(path, query_string=query, headers=headers)
    assert response.status_code < 500, (prefix, tail, response.status_code)
