"""Settings: typed sections, file values, environment overrides, defaults and production checks."""

from __future__ import annotations

import dataclasses
import tomllib
import warnings
from pathlib import Path

import pytest

from config.settings import (
    DEFAULT_CONFIG,
    DEV_DEFAULTS,
    REPO_ROOT,
    SECTIONS,
    SettingsError,
    SettingsWarning,
    env_name,
    load_settings,
)

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


def _quiet_load(path: Path, environ: dict[str, str]):
    """load_settings, failing the test on any SettingsWarning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", SettingsWarning)
        return load_settings(path, environ=environ)


# -- defaults: one place, equal to config/local.toml -------------------------------------------

def test_every_section_default_equals_config_local_toml(tmp_path: Path) -> None:
    """A file with nothing in it gives exactly what config/local.toml spells out."""
    defaults = _quiet_load(_write(tmp_path, ""), {})
    local = _quiet_load(DEFAULT_CONFIG, {})
    for name in SECTIONS:
        assert getattr(defaults, name) == getattr(local, name), name


def test_config_local_toml_spells_out_every_setting_and_nothing_else() -> None:
    """The file documents every field (and holds no key the dataclasses do not know)."""
    with DEFAULT_CONFIG.open("rb") as fh:
        doc = tomllib.load(fh)
    assert set(doc) == set(SECTIONS)
    for name, cls in SECTIONS.items():
        assert set(doc[name]) == {f.name for f in dataclasses.fields(cls)}, name


def test_sections_are_typed_and_frozen() -> None:
    settings = load_settings(environ={})
    assert isinstance(settings.kafka.partitions, int)
    assert isinstance(settings.api.rate_limit_per_second, float)  # 1000 in the file
    assert isinstance(settings.questdb.rollups, bool)
    assert settings.stack.run_dir == REPO_ROOT / ".run"
    assert settings.stack.jar_cache.is_absolute() and "~" not in str(settings.stack.jar_cache)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.kafka.partitions = 1  # type: ignore[misc]
    with pytest.raises(AttributeError):
        settings.kafka = settings.kafka  # type: ignore[misc]


# -- environment overrides ---------------------------------------------------------------------

def test_environment_overrides_file_and_is_named_in_errors(tmp_path: Path) -> None:
    assert load_settings(_write(tmp_path), environ={"DCMMS_KAFKA_PARTITIONS": "12"}
                         ).kafka.partitions == 12
    with pytest.raises(SettingsError, match="environment variable DCMMS_KAFKA_PARTITIONS "
                                            "must be an integer, got 'many'"):
        load_settings(_write(tmp_path), environ={"DCMMS_KAFKA_PARTITIONS": "many"})


def test_environment_sets_keys_and_sections_absent_from_the_file(tmp_path: Path) -> None:
    settings = _quiet_load(_write(tmp_path), {"DCMMS_KAFKA_TOPIC_DLQ": "dlq2",
                                              "DCMMS_SCHEMA_REGISTRY_TOPIC": "_s",
                                              "DCMMS_CONSOLE_PORT": "18080",
                                              "DCMMS_QUESTDB_ROLLUPS": "yes"})
    assert settings.kafka.topic_dlq == "dlq2"
    # The longest section name wins: schema_registry, not a "schema" section's "registry_topic".
    assert settings.schema_registry.topic == "_s"
    assert settings.console.port == 18080      # [console] is not in the file at all
    assert settings.questdb.rollups is True
    assert settings.origin("console", "port") == "environment variable DCMMS_CONSOLE_PORT"


@pytest.mark.parametrize("var,value,expect", [
    ("DCMMS_QUESTDB_ROLLUPS", "maybe", "must be a boolean"),
    ("DCMMS_API_PORT", "70000", "must be a port number 1..65535"),
    ("DCMMS_API_WORKERS", "0", "must be >= 1"),
    ("DCMMS_STACK_TOPOLOGY", "mesh", "must be one of 'single', 'cluster'"),
    ("DCMMS_SCHEMA_REGISTRY_COMPATIBILITY", "SIDEWAYS", "must be one of 'NONE'"),
    ("DCMMS_KAFKA_BOOTSTRAP_SERVERS", "localhost", "must be host:port"),
    ("DCMMS_API_INGEST_ACK_TIMEOUT_S", "soon", "must be a number"),
])
def test_a_bad_environment_value_names_the_variable(tmp_path: Path, var: str, value: str,
                                                    expect: str) -> None:
    with pytest.raises(SettingsError, match=f"environment variable {var} {expect}"):
        load_settings(_write(tmp_path), environ={var: value})


def test_the_compatibility_choices_are_the_registry_levels() -> None:
    from config.settings import COMPATIBILITY_LEVELS
    from schemas.compatibility import CompatibilityLevel

    assert set(COMPATIBILITY_LEVELS) == {level.value for level in CompatibilityLevel}


def test_values_are_normalized_once() -> None:
    settings = load_settings(environ={"DCMMS_STACK_TOPOLOGY": " Cluster ",
                                      "DCMMS_SCHEMA_REGISTRY_COMPATIBILITY": "full",
                                      "DCMMS_MQTT_BENCH_TOPIC_ROOT": " /bench/ ",
                                      "DCMMS_API_PUBLIC_DOCS": "off"})
    assert settings.stack.topology == "cluster"
    assert settings.schema_registry.compatibility == "FULL"
    assert settings.mqtt.bench_topic_root == "bench"
    assert settings.api.public_docs is False


# -- file values ---------------------------------------------------------------------------------

@pytest.mark.parametrize("line,expect", [
    ('[kafka]\npartitions = "many"', r"\[kafka\] partitions in .*local.toml must be an integer"),
    ("[kafka]\npartitions = 8.5", r"\[kafka\] partitions in .*must be an integer, got 8.5"),
    ("[questdb]\nrollups = 1", r"\[questdb\] rollups in .*must be a boolean, got 1"),
    ("[stack]\nbind_host = true", r"\[stack\] bind_host in .*must be a string, got True"),
    ("[api]\nthreads = 0", r"\[api\] threads in .*must be >= 1, got 0"),
    ('[questdb]\no3_split_min_size = "2 MB"', r"\[questdb\] o3_split_min_size in .*must be "
                                              r"a size like 2m"),
])
def test_a_bad_file_value_names_the_key_and_file(tmp_path: Path, line: str, expect: str) -> None:
    with pytest.raises(SettingsError, match=expect):
        load_settings(_write(tmp_path, line + "\n"), environ={})


def test_an_unquoted_number_is_a_string_setting(tmp_path: Path) -> None:
    settings = load_settings(_write(tmp_path, "[questdb]\no3_split_min_size = 1048576\n"),
                             environ={})
    assert settings.questdb.o3_split_min_size == "1048576"


def test_default_only_when_absent(tmp_path: Path) -> None:
    settings = _quiet_load(_write(tmp_path, "[kafka]\npartitions = 3\n"), {})
    assert settings.kafka.partitions == 3
    assert settings.kafka.topic_raw == "raw_telemetry"  # the dataclass default


def test_unknown_keys_and_sections_warn_with_the_nearest_name(tmp_path: Path) -> None:
    """Today's behaviour (kept, as given, in section()) plus a warning: a typo does not pass
    silently."""
    path = _write(tmp_path, "[kafka]\npartitons = 3\n[kafak]\nx = 1\n")
    with pytest.warns(SettingsWarning) as record:
        settings = load_settings(path, environ={"DCMMS_API_RATE_LIMIT_PER_SECONDS": "5"})
    text = "\n".join(str(w.message) for w in record)
    assert "unknown setting [kafka] partitons in" in text and "did you mean 'partitions'" in text
    assert "environment variable DCMMS_API_RATE_LIMIT_PER_SECONDS" in text
    assert "did you mean 'rate_limit_per_second'" in text
    assert "unknown section [kafak]" in text
    assert settings.kafka.partitions == 8        # the typo did not set it
    assert settings.section("kafka")["partitons"] == 3


def test_bad_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="local.toml"):
        load_settings(_write(tmp_path, "[kafka\n"), environ={})
    with pytest.raises(SettingsError, match="not found"):
        load_settings(tmp_path / "nope.toml", environ={})


def test_production_refuses_dev_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                            ) -> None:
    monkeypatch.setenv("DCMMS_ENV", "production")
    settings = load_settings(_write(tmp_path), environ={})
    with pytest.raises(SettingsError, match="sensor_password") as err:
        settings.check_production()
    # Absent from the file is no escape: the defaults are the dev values.
    assert "[api] api_keys (its default: not set in" in str(err.value)
    replaced = {env_name(section, key): f"s3cret-{key}" for section, key in DEV_DEFAULTS}
    partly = load_settings(_write(tmp_path), environ={"DCMMS_MQTT_SENSOR_PASSWORD": "s3cret!"})
    with pytest.raises(SettingsError, match="bridge_password"):
        partly.check_production()
    load_settings(_write(tmp_path), environ=replaced).check_production()
