"""Settings: file values, environment overrides, defaults and production checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from runners.settings import SettingsError, load_settings

TOML = """
[kafka]
bootstrap_servers = "127.0.0.1:9092"
partitions = 8

[schema_registry]
url = "http://127.0.0.1:8081"

[mqtt]
sensor_password = "password"
"""


def _write(tmp_path: Path, text: str = TOML) -> Path:
    path = tmp_path / "local.toml"
    path.write_text(text)
    return path


def test_environment_overrides_file_and_is_named_in_errors(tmp_path: Path) -> None:
    settings = load_settings(_write(tmp_path), environ={"DCMMS_KAFKA_PARTITIONS": "many"})
    with pytest.raises(SettingsError, match="DCMMS_KAFKA_PARTITIONS"):
        settings.get("kafka", "partitions", int)


def test_environment_sets_keys_absent_from_the_file(tmp_path: Path) -> None:
    settings = load_settings(_write(tmp_path), environ={"DCMMS_KAFKA_LINGER_MS": "7",
                                                        "DCMMS_SCHEMA_REGISTRY_TOPIC": "_s"})
    assert settings.get("kafka", "linger_ms", int) == 7
    # A longer section name wins over a shorter one that is its prefix-free match.
    assert settings.get("schema_registry", "topic") == "_s"
    assert "registry_topic" not in settings.section("kafka")


def test_default_only_when_absent(tmp_path: Path) -> None:
    settings = load_settings(_write(tmp_path), environ={})
    assert settings.get("kafka", "missing_key", int, 42) == 42
    assert settings.get("kafka", "partitions", int, 42) == 8
    with pytest.raises(SettingsError, match=r"missing setting \[kafka\] missing_key"):
        settings.get("kafka", "missing_key")


def test_bad_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="local.toml"):
        load_settings(_write(tmp_path, "[kafka\n"), environ={})
    with pytest.raises(SettingsError, match="not found"):
        load_settings(tmp_path / "nope.toml", environ={})


def test_production_refuses_dev_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                            ) -> None:
    monkeypatch.setenv("DCMMS_ENV", "production")
    settings = load_settings(_write(tmp_path), environ={})
    with pytest.raises(SettingsError, match="sensor_password"):
        settings.check_production()
    fixed = load_settings(_write(tmp_path), environ={"DCMMS_MQTT_SENSOR_PASSWORD": "s3cret!"})
    fixed.check_production()
