"""Asset metadata for ``/api/v1/assets``: the same catalog the pipeline enriches with.

The file is ``[pipeline] assets_file`` (default ``config/assets.json``), parsed by
:func:`schemas.assets.load_asset_catalog` (the one parser of that format). It is
re-read when its modification time changes, so edits show up without a
restart, as they do in the pipeline's periodically refreshed side input.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from schemas.assets import AssetCatalog, AssetCatalogError, load_asset_catalog

__all__ = ["AssetDirectory", "AssetCatalogError"]

_LOGGER = logging.getLogger(__name__)


class AssetDirectory:
    """Assets as JSON-ready dicts, reloaded from ``path`` when the file changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._mtime: float | None = None
        self._catalog: AssetCatalog | None = None

    def _current(self) -> AssetCatalog:
        try:
            mtime = self.path.stat().st_mtime
        except OSError as exc:
            raise AssetCatalogError(
                f"asset file {self.path} unreadable ({exc.strerror}); "
                "setting [pipeline] assets_file") from None
        with self._lock:
            if self._catalog is None or mtime != self._mtime:
                self._catalog = load_asset_catalog(self.path)
                self._mtime = mtime
                _LOGGER.info("loaded %d assets from %s", len(self._catalog), self.path)
            return self._catalog

    def all(self) -> list[dict[str, Any]]:
        catalog = self._current()
        return [catalog.assets[k].as_dict() for k in sorted(catalog.assets)]

    def get(self, asset_id: str) -> dict[str, Any] | None:
        info = self._current().get(asset_id)
        return None if info is None else info.as_dict()
