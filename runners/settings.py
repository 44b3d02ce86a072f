"""Compatibility alias: the settings live in :mod:`config.settings` (a layer below runners and
api). Import from there; this module re-exports the same objects for older imports."""

from config.settings import (  # noqa: F401
    DEFAULT_CONFIG,
    DEV_DEFAULTS,
    REPO_ROOT,
    SECTIONS,
    Settings,
    SettingsError,
    SettingsWarning,
    env_name,
    load_settings,
)

__all__ = ["Settings", "SettingsError", "SettingsWarning", "load_settings", "REPO_ROOT",
           "DEFAULT_CONFIG", "DEV_DEFAULTS", "SECTIONS", "env_name"]
