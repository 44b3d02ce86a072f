"""Asset metadata and alarm thresholds: the catalog behind enrichment and the alarm branch.

Pure (no Beam): the pipeline's enrichment side input, the query API's
``GET /api/v1/assets/{asset_id}`` and the benchmarks all read the catalog with
:func:`load_asset_catalog`. File format (``config/assets.json``)::

    {"sites":  {"site-001": {"name": "...", "location": "..."}},
     "assets": {"asset-001": {"site_id": "site-001", "asset_type": "inverter",
                              "location": "optional, defaults to the site's",
                              "thresholds": {"TEMPERATURE": {"warning_high": 80,
                                  "critical_high": 95, "warning_low": -20,
                                  "critical_low": -30, "hysteresis": 2}}}},
     "generated": [{"sites": 2, "assets_per_site": 3,
                    "site_id": "bench-site-{site:02d}",
                    "asset_id": "bench-asset-{site:02d}-{asset:03d}",
                    "site_name": "...", "asset_type": "...", "location": "...",
                    "thresholds": {...}, "max_silence_s": {...}}],
     "asset_types": {"inverter": {"max_silence_s": {"TEMPERATURE": 300, "POWER": 300}}}}

``generated`` blocks expand to many sites/assets for tests and benchmarks.
Every threshold is optional; a sensor type without thresholds only raises
alarms for quality BAD.

No-data alarms (transforms/alarms.py, docs/pipeline.md): ``asset_types.<type>.max_silence_s``
gives, per sensor type, the longest silence (seconds, > 0) expected of a sensor of that type
on an asset of that type; a sensor that has reported and is then silent longer raises a
NO_DATA alarm. An asset (or a ``generated`` block) may override it with its own
``max_silence_s`` object: a number replaces the type's value for that sensor type, ``null``
turns no-data alarms off for it; ``"max_silence_s": null`` turns them off for the whole
asset. The effective value is carried as :attr:`Thresholds.max_silence_s` (so a sensor type
with only a silence limit gets a Thresholds without bands, which alarms like none).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from schemas.events import SENSOR_TYPES

__all__ = [
    "DEFAULT_ASSETS_FILE",
    "AssetCatalogError",
    "Thresholds",
    "AssetInfo",
    "AssetCatalog",
    "load_asset_catalog",
    "parse_asset_catalog",
    "latest_catalog",
]

_LOGGER = logging.getLogger(__name__)

DEFAULT_ASSETS_FILE = Path(__file__).resolve().parent.parent / "config" / "assets.json"
_THRESHOLD_KEYS = ("warning_low", "warning_high", "critical_low", "critical_high", "hysteresis")
_ASSET_TYPE_KEYS = ("max_silence_s", "_doc")


class AssetCatalogError(ValueError):
    """The asset file is missing or malformed; the message names the file and the entry."""


@dataclass(frozen=True)
class Thresholds:
    """Alarm bands of one sensor type on one asset (None = no bound on that side)."""

    warning_low: float | None = None
    warning_high: float | None = None
    critical_low: float | None = None
    critical_high: float | None = None
    hysteresis: float = 0.0
    # No-data alarm: the longest expected silence of the sensor, seconds (None = no such alarm).
    max_silence_s: float | None = None

    def as_dict(self) -> dict[str, float | None]:
        return {k: getattr(self, k) for k in (*_THRESHOLD_KEYS, "max_silence_s")}


@dataclass(frozen=True)
class AssetInfo:
    asset_id: str
    site_id: str
    site_name: str
    asset_type: str
    location: str
    thresholds: Mapping[str, Thresholds] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "asset_id": self.asset_id, "site_id": self.site_id, "site_name": self.site_name,
            "asset_type": self.asset_type, "location": self.location,
            "thresholds": {k: v.as_dict() for k, v in sorted(self.thresholds.items())},
        }


@dataclass(frozen=True)
class AssetCatalog:
    """All assets by id. ``version`` is a content hash; ``loaded_at_ms`` orders refreshes."""

    assets: Mapping[str, AssetInfo]
    version: str = ""
    loaded_at_ms: int = 0

    def get(self, asset_id: str) -> AssetInfo | None:
        return self.assets.get(asset_id)

    def __len__(self) -> int:
        return len(self.assets)


def _parse_thresholds(spec: Any, where: str) -> dict[str, Thresholds]:
    if spec is None:
        return {}
    if not isinstance(spec, dict):
        raise AssetCatalogError(f"{where}.thresholds must be an object")
    out: dict[str, Thresholds] = {}
    for sensor_type, bands in spec.items():
        w = f"{where}.thresholds.{sensor_type}"
        if sensor_type not in SENSOR_TYPES:
            raise AssetCatalogError(f"{w}: unknown sensor type")
        if not isinstance(bands, dict) or set(bands) - set(_THRESHOLD_KEYS):
            raise AssetCatalogError(f"{w}: must be an object with keys among {_THRESHOLD_KEYS}")
        values: dict[str, float] = {}
        for key, val in bands.items():
            if val is None:
                continue
            if isinstance(val, bool) or not isinstance(val, int | float) or not math.isfinite(val):
                raise AssetCatalogError(f"{w}.{key}: must be a finite number, got {val!r}")
            values[key] = float(val)
        t = Thresholds(**values)
        if t.hysteresis < 0:
            raise AssetCatalogError(f"{w}.hysteresis: must be >= 0")
        if (t.warning_high is not None and t.critical_high is not None
                and t.critical_high < t.warning_high):
            raise AssetCatalogError(f"{w}: critical_high must be >= warning_high")
        if (t.warning_low is not None and t.critical_low is not None
                and t.critical_low > t.warning_low):
            raise AssetCatalogError(f"{w}: critical_low must be <= warning_low")
        lo = t.warning_low if t.warning_low is not None else t.critical_low
        hi = t.warning_high if t.warning_high is not None else t.critical_high
        if lo is not None and hi is not None and lo + t.hysteresis > hi - t.hysteresis:
            raise AssetCatalogError(f"{w}: the low and high bands (with hysteresis) overlap")
        out[sensor_type] = t
    return out


def _parse_silences(spec: Any, where: str, *, nullable: bool) -> dict[str, float | None]:
    """``{sensor_type: seconds}`` of a ``max_silence_s`` object (None values only if
    ``nullable``: an asset's way to turn its type's no-data alarm off)."""
    if not isinstance(spec, dict):
        raise AssetCatalogError(f"{where}: must be an object of sensor type -> seconds")
    out: dict[str, float | None] = {}
    for sensor_type, val in spec.items():
        w = f"{where}.{sensor_type}"
        if sensor_type not in SENSOR_TYPES:
            raise AssetCatalogError(f"{w}: unknown sensor type")
        if val is None and nullable:
            out[sensor_type] = None
            continue
        if (isinstance(val, bool) or not isinstance(val, int | float) or not math.isfinite(val)
                or val <= 0):
            raise AssetCatalogError(f"{w}: must be a number of seconds > 0"
                                    + (" or null" if nullable else "") + f", got {val!r}")
        out[sensor_type] = float(val)
    return out


def _parse_asset_types(spec: Any) -> dict[str, dict[str, float | None]]:
    """``{asset_type: {sensor_type: max_silence_s}}`` of the ``asset_types`` section."""
    if not isinstance(spec, dict):
        raise AssetCatalogError("'asset_types' must be an object")
    out = {}
    for asset_type, body in spec.items():
        if asset_type.startswith("_"):
            continue   # "_doc" and other comments
        where = f"asset_types.{asset_type}"
        if not isinstance(body, dict) or set(body) - set(_ASSET_TYPE_KEYS):
            raise AssetCatalogError(f"{where}: must be an object with keys among "
                                    f"{_ASSET_TYPE_KEYS}")
        out[asset_type] = _parse_silences(body.get("max_silence_s", {}),
                                          f"{where}.max_silence_s", nullable=False)
    return out


_UNSET = object()


def _with_silences(thresholds: dict[str, Thresholds], defaults: Mapping[str, float | None],
                   override: Any, where: str) -> dict[str, Thresholds]:
    """``thresholds`` with each sensor type's effective ``max_silence_s``: the asset's
    override (an object, or null for none at all) over its asset type's ``defaults``."""
    if override is None:
        return thresholds
    silences = dict(defaults)
    if override is not _UNSET:
        silences.update(_parse_silences(override, f"{where}.max_silence_s", nullable=True))
    out = dict(thresholds)
    for sensor_type, seconds in silences.items():
        if seconds is not None:
            out[sensor_type] = replace(out.get(sensor_type, Thresholds()), max_silence_s=seconds)
    return out


def _str(spec: Mapping[str, Any], key: str, where: str, default: str | None = None) -> str:
    val = spec.get(key, default)
    if not isinstance(val, str) or not val:
        raise AssetCatalogError(f"{where}.{key}: must be a non-empty string")
    return val


def parse_asset_catalog(doc: Any, *, version: str = "", loaded_at_ms: int = 0) -> AssetCatalog:
    """Build a catalog from a decoded document; raises AssetCatalogError naming the entry."""
    if not isinstance(doc, dict):
        raise AssetCatalogError("top level must be an object")
    sites = doc.get("sites", {})
    raw_assets = doc.get("assets", {})
    if not isinstance(sites, dict) or not isinstance(raw_assets, dict):
        raise AssetCatalogError("'sites' and 'assets' must be objects")
    type_silences = _parse_asset_types(doc.get("asset_types", {}))
    assets: dict[str, AssetInfo] = {}
    for asset_id, spec in raw_assets.items():
        where = f"assets.{asset_id}"
        if not isinstance(spec, dict):
            raise AssetCatalogError(f"{where}: must be an object")
        site_id = _str(spec, "site_id", where)
        site = sites.get(site_id)
        if not isinstance(site, dict):
            raise AssetCatalogError(f"{where}.site_id: site {site_id!r} is not in 'sites'")
        site_where = f"sites.{site_id}"
        asset_type = _str(spec, "asset_type", where)
        assets[asset_id] = AssetInfo(
            asset_id=asset_id, site_id=site_id, site_name=_str(site, "name", site_where),
            asset_type=asset_type,
            location=_str(spec, "location", where, site.get("location")),
            thresholds=_with_silences(_parse_thresholds(spec.get("thresholds"), where),
                                      type_silences.get(asset_type, {}),
                                      spec.get("max_silence_s", _UNSET), where),
        )
    for n, gen in enumerate(doc.get("generated", [])):
        where = f"generated[{n}]"
        if not isinstance(gen, dict):
            raise AssetCatalogError(f"{where}: must be an object")
        try:
            n_sites, per_site = int(gen["sites"]), int(gen["assets_per_site"])
            thresholds = _with_silences(_parse_thresholds(gen.get("thresholds"), where),
                                        type_silences.get(gen["asset_type"], {}),
                                        gen.get("max_silence_s", _UNSET), where)
            for s in range(1, n_sites + 1):
                site_id = gen["site_id"].format(site=s)
                for a in range(1, per_site + 1):
                    asset_id = gen["asset_id"].format(site=s, asset=a)
                    if asset_id in assets:
                        raise AssetCatalogError(f"{where}: asset id {asset_id!r} defined twice")
                    assets[asset_id] = AssetInfo(
                        asset_id, site_id, gen["site_name"].format(site=s),
                        gen["asset_type"], gen["location"].format(site=s), thresholds)
        except AssetCatalogError:
            raise
        except (KeyError, ValueError, TypeError, IndexError) as exc:
            raise AssetCatalogError(f"{where}: {exc!r}") from exc
    return AssetCatalog(assets, version, loaded_at_ms)


def load_asset_catalog(path: str | Path | None = None, *, now_ms: int | None = None
                       ) -> AssetCatalog:
    """Read the asset file (default ``config/assets.json``); errors name the file."""
    p = Path(path) if path is not None else DEFAULT_ASSETS_FILE
    try:
        data = p.read_bytes()
        doc = json.loads(data)
    except (OSError, ValueError) as exc:
        raise AssetCatalogError(f"cannot read asset file {p}: {exc}") from exc
    try:
        return parse_asset_catalog(
            doc, version=hashlib.sha256(data).hexdigest()[:16],
            loaded_at_ms=int(time.time() * 1000) if now_ms is None else now_ms)
    except AssetCatalogError as exc:
        raise AssetCatalogError(f"invalid asset file {p}: {exc}") from exc


def latest_catalog(catalogs: Iterable[AssetCatalog]) -> AssetCatalog | None:
    """The most recently loaded catalog of a side input (tolerates duplicated panes)."""
    best: AssetCatalog | None = None
    for c in catalogs:
        if best is None or c.loaded_at_ms > best.loaded_at_ms:
            best = c
    return best
