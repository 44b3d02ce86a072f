"""Settings: one TOML file with dev defaults, each value overridable by environment.

This is the only module that reads the configuration file and environment
variables; everything else receives a :class:`Settings` object.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["Settings", "SettingsError", "load_settings", "REPO_ROOT"]

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


_REQUIRED = object()


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names the setting and its source."""


class Settings:
    """Read-only view of the merged configuration.

    ``settings.get("kafka", "partitions", int)`` returns the value converted to
    the requested type, or raises :class:`SettingsError` naming the setting and
    where it came from (file or environment variable).
    """

    def __init__(self, values: Mapping[str, Mapping[str, Any]], source: Path,
                 env_overrides: Mapping[tuple[str, str], str]) -> None:
        self._values = {s: dict(v) for s, v in values.items()}
        self.source = source
        self._env_overrides = dict(env_overrides)

    @property
    def environment(self) -> str:
        return os.environ.get("DCMMS_ENV", "development")

    def origin(self, section: str, key: str) -> str:
        """Human-readable origin of a setting, for error messages."""
        env = self._env_overrides.get((section, key))
        return f"environment variable {env}" if env else f"[{section}] {key} in {self.source}"

    def get(self, section: str, key: str, kind: type = str, default: Any = _REQUIRED) -> Any:
        """The setting converted to ``kind``; ``default`` (if given) when it is absent."""
        try:
            raw = self._values[section][key]
        except KeyError:
            if default is not _REQUIRED:
                return default
            raise SettingsError(
                f"missing setting [{section}] {key} in {self.source} "
                f"(or environment variable {env_name(section, key)})"
            ) from None
        try:
            if kind is bool and isinstance(raw, str):
                return raw.strip().lower() in ("1", "true", "yes", "on")
            return kind(raw)
        except (TypeError, ValueError):
            raise SettingsError(
                f"setting {self.origin(section, key)} must be {kind.__name__}, got {raw!r}"
            ) from None

    def section(self, section: str) -> dict[str, Any]:
        return dict(self._values.get(section, {}))

    def path(self, section: str, key: str) -> Path:
        """A path setting, with ~ expanded and relative paths taken from the repo root."""
        p = Path(self.get(section, key)).expanduser()
        return p if p.is_absolute() else REPO_ROOT / p

    def dev_defaults_in_use(self) -> list[str]:
        return [
            self.origin(section, key)
            for (section, key), dev_value in DEV_DEFAULTS.items()
            if str(self._values.get(section, {}).get(key)) == dev_value
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

    overrides: dict[tuple[str, str], str] = {}
    for section, entries in values.items():
        if not isinstance(entries, dict):
            raise SettingsError(f"{source}: top-level key {section!r} must be a [section]")
        # Longest section names first would matter only for prefixes of one another
        # (none today); keys absent from the file can still be set by environment.
        prefix = env_name(section, "")
        for name, value in environ.items():
            if name.startswith(prefix) and len(name) > len(prefix):
                key = name[len(prefix):].lower()
                if not any(name.startswith(env_name(other, "")) and len(other) > len(section)
                           for other in values if other != section):
                    entries[key] = value
                    overrides[(section, key)] = name
    return Settings(values, source, overrides)
