"""Unit tests of the explicit registries (stack services, API blueprints) and of the one
QuestDB ``/exec`` client (io_connectors.questdb_http)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from config.settings import load_settings
from io_connectors.questdb_http import QuestDBError, as_dicts, questdb_exec
from runners.stack.supervisor import (
    MODULE_ORDER,
    PIPELINE_MODULE,
    WATCHER_MODULE,
    load_specs,
    paths_from_settings,
    service_modules,
    stack_modules,
)


def test_every_stack_module_is_registered_and_the_order_is_the_start_order() -> None:
    assert set(service_modules()) == {*MODULE_ORDER, PIPELINE_MODULE, WATCHER_MODULE}
    settings = load_settings()
    specs = load_specs(settings, paths_from_settings(settings), stack_modules(True))
    names = [spec.name for spec in specs]
    assert names[0] == "kafka" and names[-1] == "watcher"
    assert names.index("bridge") < names.index("console") < names.index("pipeline")


def test_an_unknown_stack_module_is_an_error_not_a_skip() -> None:
    settings = load_settings()
    with pytest.raises(ValueError, match="unknown stack module 'kafak'"):
        load_specs(settings, paths_from_settings(settings), ["kafka", "kafak"])


def test_blueprints_registered_by_name_and_unknown_names_refused(tmp_path: Path) -> None:
    from api import BLUEPRINT_MODULES, create_app
    from api.console import CONSOLE_BLUEPRINTS

    config = {"TESTING": True, "TELEMETRY_STORE": object(), "READY_CHECKS": {},
              "ASSETS_FILE": str(tmp_path / "assets.json"), "ALARM_ACKS": object()}
    def registered(app: Any) -> set[str]:      # nested blueprints (Swagger UI) aside
        return {f"api.{name}" for name in app.blueprints if "." not in name}

    assert registered(create_app(load_settings(), dict(config))) == set(BLUEPRINT_MODULES)
    console = create_app(load_settings(), dict(config), modules=CONSOLE_BLUEPRINTS)
    assert registered(console) == set(CONSOLE_BLUEPRINTS)
    with pytest.raises(ValueError, match="unknown blueprint module 'api.ingets'"):
        create_app(load_settings(), dict(config), modules=("api.health", "api.ingets"))


class FakeResponse:
    def __init__(self, status: int, body: Any) -> None:
        self.status_code = status
        self._body = body
        self.text = str(body)

    def json(self) -> Any:
        if isinstance(self._body, str):
            raise ValueError("not JSON")
        return self._body


class FakeSession:
    def __init__(self, response: FakeResponse) -> None:
        self.response = response
        self.calls: list[tuple[str, dict[str, str], float]] = []

    def get(self, url: str, params: dict[str, str], timeout: float) -> FakeResponse:
        self.calls.append((url, params, timeout))
        return self.response


def test_questdb_exec_returns_the_answer_and_rows_by_column() -> None:
    body = {"columns": [{"name": "n", "type": "LONG"}, {"name": "s", "type": "SYMBOL"}],
            "dataset": [[1, "a"], [2, "b"]], "count": 2}
    session = FakeSession(FakeResponse(200, body))
    got = questdb_exec("http://q:9000/", "SELECT n, s FROM t", timeout_s=3,
                       session=session, params={"count": "true"})  # type: ignore[arg-type]
    assert got == body
    assert session.calls == [("http://q:9000/exec",
                              {"query": "SELECT n, s FROM t", "count": "true"}, 3)]
    assert as_dicts(got) == [{"n": 1, "s": "a"}, {"n": 2, "s": "b"}]


@pytest.mark.parametrize("response, needle", [
    (FakeResponse(400, {"error": "table does not exist [table=t]", "position": 14}),
     "HTTP 400): table does not exist [table=t] at position 14"),
    (FakeResponse(200, {"error": "odd answer"}), "odd answer"),
    (FakeResponse(502, "<html>bad gateway</html>"), "HTTP 502): <html>bad gateway</html>"),
], ids=["sql-error", "error-in-200", "not-json"])
def test_questdb_exec_raises_with_questdb_message_and_the_statement(response: FakeResponse,
                                                                    needle: str) -> None:
    with pytest.raises(QuestDBError) as info:
        questdb_exec("http://q:9000", "SELECT * FROM t\nWHERE x = 1",
                     session=FakeSession(response))  # type: ignore[arg-type]
    assert needle in str(info.value)
    assert "'SELECT * FROM t'" in str(info.value) and "http://q:9000" in str(info.value)
