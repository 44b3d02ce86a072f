"""Asset metadata for ``/api/v1/assets``: the same catalog the pipeline enriches with.

The file is ``[pipeline] assets_file`` (default ``config/assets.json``), parsed by
:func:`schemas.assets.load_asset_catalog` (the one parser of that format). It is
re-read when its modification time changes, so edits show up without a
restart, as they do in the pipeline's periodically refreshed side input.

The list is served in pages in asset_id order, keyset-paginated: a page starts
after the last asset_id of the previous one, so an asset added or removed
while a client walks the pages does not shift or repeat the others.
"""

from __future__ import annotations

import bisect
import logging
import threading
from pathlib import Path
from typing import Any

from api.questdb import Page
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
        self._ids: list[str] = []  # sorted asset ids of _catalog, for paging

    def _current(self) -> tuple[AssetCatalog, list[str]]:
        try:
            mtime = self.path.stat().st_mtime
        except OSError as exc:
            raise AssetCatalogError(
                f"asset file {self.path} unreadable ({exc.strerror}); "
                "setting [pipeline] assets_file") from None
        with self._lock:
            if self._catalog is None or mtime != self._mtime:
                self._catalog = load_asset_catalog(self.path)
                self._ids = sorted(self._catalog.assets)
                self._mtime = mtime
                _LOGGER.info("loaded %d assets from %s", len(self._catalog), self.path)
            return self._catalog, self._ids

    def page(self, limit: int, after: str | None) -> Page:
        """Up to ``limit`` assets with an asset_id greater than ``after``, in asset_id order.

        ``next_key`` is ``(asset_id,)`` of the last asset when more follow, else None.
        """
        catalog, ids = self._current()
        start = 0 if after is None else bisect.bisect_right(ids, after)
        chosen = ids[start:start + limit]
        more = start + limit < len(ids)
        return Page([catalog.assets[k].as_dict() for k in chosen],
                    (chosen[-1],) if more and chosen else None)

    def get(self, asset_id: str) -> dict[str, Any] | None:
        info = self._current()[0].get(asset_id)
        return None if info is None else info.as_dict()
