"""Unit tests of api.auth: key parsing and hashing, scopes, rate limit, and the wsgi guard."""

from __future__ import annotations

import importlib
import logging
from pathlib import Path

import pytest
from flask import Flask, jsonify

from api import create_app
from api.auth import (
    ApiKeyStore,
    AuthConfigError,
    RateLimiter,
    TokenBucket,
    configured_api_key,
    parse_api_keys,
    require_scope,
)
from config.settings import DEV_DEFAULTS, SettingsError, env_name, load_settings


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _settings(tmp_path: Path, api_keys: str, extra: str = "") -> object:
    """The repo's settings with [api] api_keys and the ``extra`` "key = value" lines replaced."""
    path = tmp_path / "settings.toml"
    path.write_text(Path(load_settings().source).read_text())
    environ = {env_name("api", "api_keys"): api_keys}
    for line in filter(None, extra.splitlines()):
        key, value = (part.strip() for part in line.split("=", 1))
        environ[env_name("api", key)] = value
    return load_settings(path, environ=environ)


class _NoStore:
    def ping(self) -> None:
        return None


def _app(tmp_path: Path, api_keys: str = "dev-api-key:read+write,reader:read",
         extra: str = "") -> Flask:
    app = create_app(_settings(tmp_path, api_keys, extra),
                     {"TESTING": True, "TELEMETRY_STORE": _NoStore(), "READY_CHECKS": {}})

    @app.post("/api/v1/_write_probe")
    @require_scope("write")
    def _probe() -> object:
        return jsonify({"ok": True})

    return app


def test_key_spec_parsing_and_lookup() -> None:
    store = ApiKeyStore.from_spec("k1:read+write, k2:read")
    assert store.lookup("k1").scopes == {"read", "write"}
    assert store.lookup("k2").scopes == {"read"}
    assert store.lookup("k3") is None
    assert store.lookup("k1").key_id != "k1"  # an id derived from the hash, never the key
    assert "k1" not in repr(store.lookup("k1").digest)


@pytest.mark.parametrize("spec", ["", "k1", "k1:", "k1:admin", ":read", "k1:read+delete"])
def test_bad_key_specs_name_the_setting_not_the_key(spec: str) -> None:
    with pytest.raises(AuthConfigError) as info:
        ApiKeyStore.from_spec(spec, "[api] api_keys in x.toml")
    assert "[api] api_keys in x.toml" in str(info.value) or "no API key" in str(info.value)
    if spec not in ("", ":read"):
        assert "k1" not in str(info.value)


def test_token_bucket_refills_at_rate() -> None:
    clock = _Clock()
    bucket = TokenBucket(rate=2.0, burst=2.0, clock=clock)
    assert bucket.take(1) == 0 and bucket.take(1) == 0
    assert bucket.take(1) == pytest.approx(0.5)
    clock.now = 0.5
    assert bucket.take(1) == 0
    assert bucket.take(5) >= 1.0  # larger than the burst: never fits


def test_rate_limiter_is_per_key_and_can_be_disabled() -> None:
    clock = _Clock()
    limiter = RateLimiter(1.0, 1.0, clock)
    assert limiter.check("a") == 0 and limiter.check("b") == 0
    assert limiter.check("a") > 0
    assert RateLimiter(0, 0).check("a") == 0


@pytest.mark.parametrize("header", [None, "Bearer wrong", "Basic ZGV2", "Bearer ", "dev-api-key"])
def test_missing_or_wrong_key_is_401_json(tmp_path: Path, header: str | None) -> None:
    client = _app(tmp_path).test_client()
    headers = {"Authorization": header} if header is not None else {}
    for path in ("/api/v1/telemetry", "/api/v1/telemetry/latest?site_id=s", "/api/v1/alarms",
                 "/api/v1/assets", "/api/v1/assets/asset-001"):
        response = client.get(path, headers=headers)
        assert response.status_code == 401, path
        assert set(response.json) == {"code", "message", "details"}
        assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_missing_scope_is_403(tmp_path: Path) -> None:
    client = _app(tmp_path).test_client()
    response = client.post("/api/v1/_write_probe", headers={"Authorization": "Bearer reader"})
    assert response.status_code == 403
    assert response.json["details"]["required_scope"] == "write"
    ok = client.post("/api/v1/_write_probe", headers={"Authorization": "Bearer dev-api-key"})
    assert ok.status_code == 200


def test_rate_limit_answers_429_with_retry_after(tmp_path: Path) -> None:
    app = _app(tmp_path, extra="rate_limit_per_second = 0.1\nrate_limit_burst = 2")
    client = app.test_client()
    headers = {"Authorization": "Bearer dev-api-key"}
    codes = [client.post("/api/v1/_write_probe", headers=headers).status_code for _ in range(3)]
    assert codes == [200, 200, 429]
    limited = client.post("/api/v1/_write_probe", headers=headers)
    assert limited.json["code"] == "rate_limited"
    assert int(limited.headers["Retry-After"]) >= 1
    # Another key has its own bucket.
    assert client.post("/api/v1/_write_probe",
                       headers={"Authorization": "Bearer reader"}).status_code == 403


def test_keys_never_appear_in_logs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    app = _app(tmp_path, "s3cr3t-key:read+write",
               "rate_limit_per_second = 0.1\nrate_limit_burst = 1")
    client = app.test_client()
    with caplog.at_level(logging.DEBUG):
        for key in ("s3cr3t-key", "s3cr3t-key", "wr0ng-key"):
            client.post("/api/v1/_write_probe", headers={"Authorization": f"Bearer {key}"})
    assert "rate limit" in caplog.text  # something was logged...
    assert "s3cr3t" not in caplog.text and "wr0ng" not in caplog.text  # ...but never a key


def test_bad_key_setting_fails_app_creation_naming_it(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"DCMMS_API_API_KEYS|\[api\] api_keys"):
        create_app(_settings(tmp_path, "k1:superuser"), {"TELEMETRY_STORE": _NoStore()})


def test_wsgi_refuses_dev_key_in_production(monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Path) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    monkeypatch.delenv("DCMMS_ENV", raising=False)
    wsgi = importlib.import_module("runners.wsgi")
    monkeypatch.setenv("DCMMS_ENV", "production")
    with pytest.raises(SettingsError, match="api_keys"):
        wsgi.build_app()
    # With production credentials the dev key is gone and the app builds.
    for section, key in DEV_DEFAULTS:
        monkeypatch.setenv(env_name(section, key), f"production-{section}-{key}")
    monkeypatch.setenv("DCMMS_API_API_KEYS", "prod-key-123:read")
    app = wsgi.build_app()
    client = app.test_client()
    assert client.get("/api/v1/alarms",
                      headers={"Authorization": "Bearer dev-api-key"}).status_code == 401


def test_one_parser_gives_keys_and_scopes_in_order() -> None:
    assert parse_api_keys(" a:read , b:read+write ,") == [
        ("a", frozenset({"read"})), ("b", frozenset({"read", "write"}))]


def test_tools_pick_the_first_key_with_the_scopes_they_need() -> None:
    settings = load_settings(environ={env_name("api", "api_keys"): "r:read,w:write,rw:read+write"})
    assert configured_api_key(settings) == "rw"
    assert configured_api_key(settings, needs=("read",)) == "r"
    assert configured_api_key(settings, needs=("write",)) == "w"


def test_tools_without_a_suitable_key_name_the_setting() -> None:
    settings = load_settings(environ={env_name("api", "api_keys"): "r:read"})
    with pytest.raises(AuthConfigError, match="DCMMS_API_API_KEYS"):
        configured_api_key(settings, needs=("write",))
