"""Settings: one TOML file with dev defaults, each value overridable by environment.

This is the only module that reads the configuration file and the ``DCMMS_<SECTION>_<KEY>``
environment variables. It sits below every other layer (api, runners, io_connectors, bench,
chaos import it; it imports none of them) and builds, once, a :class:`Settings` object
holding one frozen dataclass per TOML section::

    settings = load_settings()
    settings.kafka.bootstrap_servers      # str
    settings.questdb.http_port            # int, checked 1..65535
    settings.stack.run_dir                # Path, ~ expanded, relative to the repository

The dataclasses below are the one place the defaults live: a key absent from the file and
from the environment takes its field's default (config/local.toml spells every one of them
out, and tests/unit/test_settings.py checks the two agree). Every value is converted and
checked when the settings are loaded; a wrong type or value raises :class:`SettingsError`
naming the setting and where it came from (``[kafka] partitions in config/local.toml`` or
``environment variable DCMMS_KAFKA_PARTITIONS``). A key or section no dataclass declares is
kept (:meth:`Settings.section` returns it as given) but reported with a
:class:`SettingsWarning`, with the nearest known key, so a typo does not pass silently.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from functools import cache
from pathlib import Path
from typing import Any, get_type_hints

__all__ = [
    "ApiSettings", "ConsoleSettings", "DEFAULT_CONFIG", "DEV_DEFAULTS", "FlinkSettings",
    "KafkaSettings", "MqttSettings", "PipelineSettings", "QuestdbSettings", "REPO_ROOT",
    "SECTIONS", "SchemaRegistrySettings", "Settings", "SettingsError", "SettingsWarning",
    "StackSettings", "env_name", "load_settings",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO_ROOT / "config" / "local.toml"

# Values that are only acceptable on a developer's machine. DCMMS_ENV=production
# refuses to start while any of them is still in force.
DEV_DEFAULTS: dict[tuple[str, str], str] = {
    ("mqtt", "sensor_password"): "password",
    ("mqtt", "bridge_password"): "bridge-password",
    ("questdb", "pg_password"): "quest",
    ("api", "api_keys"): "dev-api-key:read+write",
}


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names the setting and its source."""


class SettingsWarning(UserWarning):
    """A key or section the settings do not declare (a typo, or a setting since removed)."""


# -- value checks ----------------------------------------------------------------------------------
# A check returns None when the (converted) value is acceptable, else what it must be.

Check = Callable[[Any], "str | None"]


def _between(low: float, high: float | None = None, what: str | None = None) -> Check:
    def check(value: Any) -> str | None:
        if value < low or (high is not None and value > high):
            return what or (f"{low}..{high}" if high is not None else f">= {low}")
        return None
    return check


_PORT = _between(1, 65535, "a port number 1..65535")


def _above(low: float) -> Check:
    def check(value: Any) -> str | None:
        return None if value > low else f"> {low}"
    return check


def _one_of(*choices: str) -> Check:
    def check(value: Any) -> str | None:
        return None if value in choices else "one of " + ", ".join(repr(c) for c in choices)
    return check


def _matches(pattern: str, what: str) -> Check:
    def check(value: Any) -> str | None:
        return None if re.fullmatch(pattern, value) else what
    return check


def _host_port(value: str) -> str | None:
    first = value.split(",")[0].strip()
    _host, sep, port = first.rpartition(":")
    return None if sep and port.isdigit() else "host:port[,host:port...]"


def _setting(default: Any, check: Check | None = None,
             normalize: Callable[[Any], Any] | None = None) -> Any:
    return field(default=default, metadata={"check": check, "normalize": normalize})


def _lower(value: str) -> str:
    return value.strip().lower()


def _upper(value: str) -> str:
    return value.strip().upper()


# -- the sections ----------------------------------------------------------------------------------
# Field names are the TOML keys; the defaults are those of config/local.toml.

@dataclass(frozen=True)
class StackSettings:
    """``[stack]``: where the local stack keeps its files and which addresses it binds."""

    run_dir: Path = _setting(Path(".run"))
    jar_cache: Path = _setting(Path("~/.cache/dcmms-telemetry/jars"))
    bind_host: str = "127.0.0.1"
    topology: str = _setting("single", _one_of("single", "cluster"), _lower)


@dataclass(frozen=True)
class KafkaSettings:
    """``[kafka]``: the brokers and the pipeline's topics."""

    bootstrap_servers: str = _setting("127.0.0.1:9092", _host_port)
    controller_port: int = _setting(9093, _PORT)
    partitions: int = _setting(8, _between(1))
    retention_ms: int = 604_800_000
    topic_raw: str = "raw_telemetry"
    topic_validated: str = "validated_telemetry"
    topic_alarms: str = "alarms"
    topic_dlq: str = "telemetry_dlq"
    edge_batch_max_events: int = _setting(500, _between(1))


# Confluent's compatibility levels (schemas.compatibility.CompatibilityLevel; a unit test
# keeps the two equal: this module imports nothing of the project).
COMPATIBILITY_LEVELS = ("NONE", "BACKWARD", "BACKWARD_TRANSITIVE", "FORWARD",
                        "FORWARD_TRANSITIVE", "FULL", "FULL_TRANSITIVE")


@dataclass(frozen=True)
class SchemaRegistrySettings:
    """``[schema_registry]``: our Confluent-compatible registry."""

    url: str = "http://127.0.0.1:8081"
    port: int = _setting(8081, _PORT)
    compatibility: str = _setting("BACKWARD", _one_of(*COMPATIBILITY_LEVELS), _upper)
    topic: str = "_schemas"
    replication_factor: int = _setting(1, _between(1))


@dataclass(frozen=True)
class QuestdbSettings:
    """``[questdb]``: the time-series store."""

    host: str = "127.0.0.1"
    http_port: int = _setting(9000, _PORT)
    pg_port: int = _setting(8812, _PORT)
    ilp_tcp_port: int = _setting(9009, _PORT)
    min_http_port: int = _setting(9003, _PORT)
    heap: str = _setting("2g", _matches(r"[0-9]+[kKmMgG]?", "a JVM size like 2g or 1536m"))
    pg_user: str = "admin"
    pg_password: str = "quest"
    rollups: bool = True
    asset_id_index: bool = False
    o3_split_min_size: str = _setting(
        "2m", _matches(r"[0-9]+[kKmMgG]?", "a size like 2m, 512k or 1048576"), str.strip)
    export_connection_limit: int = _setting(16, _between(1, what="at least 1"))


@dataclass(frozen=True)
class MqttSettings:
    """``[mqtt]``: Mosquitto, its accounts, and the MQTT -> Kafka bridge."""

    host: str = "127.0.0.1"
    port: int = _setting(1883, _PORT)
    sensor_username: str = "sensor01"
    sensor_password: str = "password"
    bridge_username: str = "bridge"
    bridge_password: str = "bridge-password"
    bridge_client_id: str = "dcmms-bridge-1"
    bridge_share_group: str = "dcmms-bridge"
    bridge_shared_subscription: bool = False
    bridge_receive_maximum: int = _setting(20000, _between(1, 65535))
    bridge_linger_ms: float = _setting(50.0, _between(0))
    bridge_session_expiry_s: int = _setting(604_800, _between(0))
    metrics_port: int = _setting(9883, _between(0, 65535, "0..65535 (0: no metrics)"))
    autosave_interval: int = _setting(30, _between(
        1, what=">= 1 (0 would turn autosave off: state saved only at a clean stop)"))
    autosave_on_changes: bool = False
    bench_topic_root: str = _setting("bench", normalize=lambda v: v.strip().strip("/"))


@dataclass(frozen=True)
class FlinkSettings:
    """``[flink]``: the Beam job server, Flink, and the Python SDK workers."""

    job_port: int = _setting(8099, _PORT)
    artifact_port: int = _setting(8098, _PORT)
    expansion_port: int = _setting(8097, _PORT)
    job_server_heap: str = _setting("1g", _matches(r"[0-9]+[kKmMgG]?",
                                                   "a JVM size like 1g or 768m"))
    web_ui_port: int = _setting(8082, _PORT)
    worker_pool_port: int = _setting(50000, _PORT)
    parallelism: int = _setting(2, _between(1))
    checkpointing_interval_ms: int = 60000
    max_bundle_size: int = _setting(1000, _between(1))
    max_bundle_time_ms: int = _setting(50, _between(1))
    sdk_state_cache_mb: int = _setting(256, _between(0))
    sdk_worker_parallelism: int = _setting(2, _between(1))
    sdk_gc_threshold: str = "50000,20,100"
    buffer_timeout_ms: int = _setting(5, _between(0))
    data_flush_ms: int = _setting(20, _between(0, what=">= 0 (0 = off)"))
    cluster_slots_per_taskmanager: int = _setting(1, _between(1))
    cluster_heartbeat_timeout_ms: int = _setting(10000, _between(1))
    cluster_jobmanager_memory: str = _setting("768m", _matches(r"[0-9]+[kKmMgG]?",
                                                               "a size like 768m or 1g"))


@dataclass(frozen=True)
class ApiSettings:
    """``[api]``: the REST API under gunicorn."""

    port: int = _setting(3000, _PORT)
    workers: int = _setting(2, _between(1))
    threads: int = _setting(4, _between(1))
    api_keys: str = "dev-api-key:read+write"
    rate_limit_per_second: float = _setting(1000.0, _between(0))
    rate_limit_burst: float = _setting(2000.0, _between(0))
    public_docs: bool = True
    questdb_pool_size: int = _setting(4, _between(1))
    export_timeout_s: float = _setting(60.0, _between(0))
    ingest_max_body_bytes: int = _setting(5_242_880, _between(1))
    ingest_max_items: int = _setting(10_000, _between(1))
    ingest_ack_timeout_s: float = _setting(5.0, _between(0))
    ingest_retry_after_s: int = _setting(5, _between(0))
    stream_max_per_key: int = _setting(2, _between(1))
    stream_queue_size: int = _setting(1000, _between(2))
    stream_heartbeat_s: float = _setting(15.0, _above(0))


@dataclass(frozen=True)
class PipelineSettings:
    """``[pipeline]``: the Beam job's own settings."""

    assets_file: Path = _setting(Path("config/assets.json"))
    asset_refresh_seconds: float = _setting(60.0, _between(0))
    dedup_window_seconds: float = _setting(60.0, _between(0))
    consumer_group: str = "dcmms-telemetry-pipeline"
    unknown_asset_policy: str = "dead_letter"
    sensor_rules_file: Path = _setting(Path("config/sensor_types.json"))
    sink_batch_rows: int = _setting(5000, _between(1))
    state_buckets: int = _setting(64, _between(1))
    no_data_check_seconds: float = _setting(15.0, _between(0))
    early_flush_ms: int = _setting(50, _between(0))
    early_flush_max_items: int = _setting(50, _between(0))
    job_name: str = "dcmms-telemetry"


@dataclass(frozen=True)
class ConsoleSettings:
    """``[console]``: the operator console."""

    port: int = _setting(8080, _PORT)
    threads: int = _setting(8, _between(1))
    sample_interval_s: float = _setting(10.0, _above(0))


# Section name -> its dataclass, in config/local.toml's order.
SECTIONS: dict[str, type] = {
    "stack": StackSettings,
    "kafka": KafkaSettings,
    "schema_registry": SchemaRegistrySettings,
    "questdb": QuestdbSettings,
    "mqtt": MqttSettings,
    "flink": FlinkSettings,
    "api": ApiSettings,
    "pipeline": PipelineSettings,
    "console": ConsoleSettings,
}


@cache
def _field_types(cls: type) -> dict[str, type]:
    return get_type_hints(cls)


# -- conversion ------------------------------------------------------------------------------------

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")
_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "a boolean",
               Path: "a path"}


def _convert(kind: type, raw: Any) -> Any:
    """``raw`` (from TOML, an environment variable or a caller) as ``kind``; ValueError if not."""
    if kind is bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.strip().lower() in _TRUE + _FALSE:
            return raw.strip().lower() in _TRUE
        raise ValueError
    if isinstance(raw, bool):          # bool is an int: never a number, string or path here
        raise ValueError
    if kind is int:
        if isinstance(raw, int):
            return raw
        if isinstance(raw, float) and raw.is_integer():
            return int(raw)
        if isinstance(raw, str):
            return int(raw.strip().replace("_", ""))
        raise ValueError
    if kind is float:
        if isinstance(raw, int | float):
            return float(raw)
        if isinstance(raw, str):
            return float(raw.strip())
        raise ValueError
    if kind is str:
        if isinstance(raw, str):
            return raw
        if isinstance(raw, int | float):  # `o3_split_min_size = 1048576` written unquoted
            return str(raw)
        raise ValueError
    if kind is Path:
        if isinstance(raw, str | os.PathLike):
            path = Path(raw).expanduser()
            return path if path.is_absolute() else REPO_ROOT / path
        raise ValueError
    raise TypeError(f"unsupported setting type {kind!r}")


# -- the settings object ---------------------------------------------------------------------------

class Settings:
    """The merged configuration: one typed, frozen section object per TOML section.

    ``settings.kafka.partitions`` and friends are converted and checked when the object is
    built (a :class:`SettingsError` then names the setting and its source). ``values`` maps
    section -> key -> raw value (file values with the environment's applied);
    ``env_overrides`` maps (section, key) -> the environment variable that set it.
    """

    stack: StackSettings
    kafka: KafkaSettings
    schema_registry: SchemaRegistrySettings
    questdb: QuestdbSettings
    mqtt: MqttSettings
    flink: FlinkSettings
    api: ApiSettings
    pipeline: PipelineSettings
    console: ConsoleSettings

    def __init__(self, values: Mapping[str, Mapping[str, Any]], source: Path,
                 env_overrides: Mapping[tuple[str, str], str]) -> None:
        self.source = Path(source)
        self._env_overrides = dict(env_overrides)
        self._values = {s: dict(v) for s, v in values.items()}
        unknown: list[str] = []
        for name, cls in SECTIONS.items():
            object.__setattr__(self, name, self._build(name, cls, self._values.get(name, {}),
                                                       unknown))
        unknown += [f"unknown section [{name}] in {self.source}; the typed settings ignore it"
                    for name in self._values if name not in SECTIONS]
        for problem in unknown:
            warnings.warn(problem, SettingsWarning, stacklevel=3)

    def _build(self, section: str, cls: type, raw: Mapping[str, Any],
               unknown: list[str]) -> Any:
        types = _field_types(cls)
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            kind = types[f.name]
            value = raw.get(f.name, f.default)
            try:
                value = _convert(kind, value)
            except (TypeError, ValueError):
                raise SettingsError(f"setting {self.origin(section, f.name)} must be "
                                    f"{_TYPE_NAMES[kind]}, got {value!r}") from None
            if f.metadata.get("normalize"):
                value = f.metadata["normalize"](value)
            check = f.metadata.get("check")
            problem = check(value) if check else None
            if problem:
                raise SettingsError(f"setting {self.origin(section, f.name)} must be "
                                    f"{problem}, got {raw.get(f.name, f.default)!r}")
            kwargs[f.name] = value
        names = [f.name for f in fields(cls)]
        for key in raw:
            if key not in kwargs:
                near = difflib.get_close_matches(key, names, n=1)
                unknown.append(f"unknown setting {self.origin(section, key)}"
                               + (f" (did you mean {near[0]!r}?)" if near else "")
                               + "; the typed settings ignore it")
        return cls(**kwargs)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in SECTIONS:
            raise AttributeError(f"settings are read-only: {name}")
        super().__setattr__(name, value)

    @property
    def environment(self) -> str:
        return os.environ.get("DCMMS_ENV", "development")

    def origin(self, section: str, key: str) -> str:
        """Human-readable origin of a setting, for error messages."""
        env = self._env_overrides.get((section, key))
        if env:
            return f"environment variable {env}"
        if key and key not in self._values.get(section, {}):
            return f"[{section}] {key} (its default: not set in {self.source})"
        return f"[{section}] {key} in {self.source}"

    def section(self, section: str) -> dict[str, Any]:
        """Section ``section`` as ``{key: value}`` (typed values; keys no dataclass declares
        as they were given), e.g. to build a changed copy: ``Settings({..}, source, {})``."""
        typed = getattr(self, section, None) if section in SECTIONS else None
        values = dict(self._values.get(section, {}))
        if typed is not None:
            values.update((f.name, getattr(typed, f.name)) for f in fields(typed))
        return values

    def dev_defaults_in_use(self) -> list[str]:
        return [
            self.origin(section, key)
            for (section, key), dev_value in DEV_DEFAULTS.items()
            if str(getattr(getattr(self, section), key)) == dev_value
        ]

    def check_production(self) -> None:
        """Raise if DCMMS_ENV=production and a dev credential is still configured."""
        if self.environment != "production":
            return
        in_use = self.dev_defaults_in_use()
        if in_use:
            raise SettingsError(
                "DCMMS_ENV=production refuses development credentials; replace: "
                + "; ".join(in_use)
            )


def env_name(section: str, key: str) -> str:
    return f"DCMMS_{section}_{key}".upper()


def _env_section(name: str, sections: list[str]) -> str | None:
    """The section an environment variable DCMMS_<SECTION>_<KEY> belongs to (longest match)."""
    for section in sorted(sections, key=len, reverse=True):
        prefix = env_name(section, "")
        if name.startswith(prefix) and len(name) > len(prefix):
            return section
    return None


def load_settings(path: str | os.PathLike[str] | None = None,
                  environ: Mapping[str, str] | None = None) -> Settings:
    """Load the TOML file (``DCMMS_CONFIG`` or config/local.toml) and apply env overrides."""
    environ = os.environ if environ is None else environ
    source = Path(path or environ.get("DCMMS_CONFIG") or DEFAULT_CONFIG)
    try:
        with source.open("rb") as fh:
            values = tomllib.load(fh)
    except FileNotFoundError:
        raise SettingsError(f"configuration file not found: {source} (set DCMMS_CONFIG)") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"configuration file {source} is not valid TOML: {exc}") from None

    for section, entries in values.items():
        if not isinstance(entries, dict):
            raise SettingsError(f"{source}: top-level key {section!r} must be a [section]")
    # Every declared section takes its variables, also when the file leaves it out; so do the
    # file's own extra sections (kept as before, with a warning).
    sections = sorted({*SECTIONS, *values})
    overrides: dict[tuple[str, str], str] = {}
    for name, value in environ.items():
        section = _env_section(name, sections) if name.startswith("DCMMS_") else None
        if section is not None:
            key = name[len(env_name(section, "")):].lower()
            values.setdefault(section, {})[key] = value
            overrides[(section, key)] = name
    return Settings(values, source, overrides)
