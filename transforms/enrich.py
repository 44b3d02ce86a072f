"""Enrich validated events with asset metadata, from a periodically refreshed side input.

Pure core: :func:`enrich` turns an event into a *reading row* (exactly
:data:`READING_FIELDS`, the fields of schemas/sensor-reading.avsc, i.e.
io_connectors.questdb_schema.SENSOR_READING_COLUMNS) using an
:class:`schemas.assets.AssetCatalog`, or returns a transforms.common.Rejected.

Unknown-asset policy (``unknown_asset_policy``):

* ``dead_letter`` (default): a reading whose asset is not in the catalog goes to
  the dead-letter output (stage ``enrich``) and can be replayed once the asset
  is registered. Counter ``enrich_failed.unknown_asset``.
* ``pass_unenriched``: the reading is stored with site_name, asset_type and
  location null; it has no thresholds, so only quality-BAD alarms apply.
  Counter ``unenriched``.

A reading whose site_id contradicts the asset's site is always dead-lettered
(``enrich_failed.site_mismatch``): it cannot be routed to the right site.

Where the catalog comes from (``catalogs`` of EnrichWithAssets and DetectAlarms):

* a :class:`FileAssetCatalog` (what the streaming job uses): every worker
  process keeps the file's catalog in memory and re-reads the file at most
  every ``refresh_seconds`` (only when its content changed, counted as
  ``asset_refreshes``). No side input: on the Beam 2.70 portable Flink runner
  an operator holding side-input state cannot take a checkpoint (its broadcast
  state is snapshotted with a coder that does not match the stored bytes:
  ``ClassCastException: [B cannot be cast to WindowedValue``), so every
  checkpoint of a job with a side input failed and the job restarted;
* a PCollection of AssetCatalog (side input, read ``AsList``; the newest
  catalog by ``loaded_at_ms`` wins, so duplicated or accumulated panes are
  harmless): :class:`StaticAssetCatalog` for batch runs and tests, or
  :class:`RefreshingAssetCatalog` on runners that checkpoint side inputs.
:class:`RefreshingAssetCatalog` reloads the file every ``refresh_seconds`` from a
``PeriodicImpulse`` in the global window (the "slowly updating side input"
pattern) and only emits when the file content changed; a file that became
invalid is logged, counted (``asset_refresh_failed``) and the previous catalog
stays in force. :class:`StaticAssetCatalog` is the bounded equivalent for
batch runs and tests.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import apache_beam as beam
from apache_beam.transforms import trigger, window
from apache_beam.transforms.periodicsequence import PeriodicImpulse

from schemas.assets import AssetCatalog, AssetCatalogError, latest_catalog, load_asset_catalog
from schemas.avro import SENSOR_READING, field_names
from transforms.common import (
    DEAD_LETTER_TAG,
    Envelope,
    Rejected,
    counter,
    wall_clock_ms,
)

__all__ = [
    "READING_FIELDS",
    "DEAD_LETTER_POLICY",
    "PASS_UNENRICHED_POLICY",
    "UNKNOWN_ASSET_POLICIES",
    "enrich",
    "refresh_catalog",
    "EnrichWithAssets",
    "FileAssetCatalog",
    "catalog_input",
    "StaticAssetCatalog",
    "RefreshingAssetCatalog",
]

_LOGGER = logging.getLogger(__name__)

# Derived from sensor-reading.avsc; enrich's dict literal has exactly these keys in this order
# (unit test tests/unit/test_schemas_wire.py), built with known keys as it is the hot path.
READING_FIELDS = field_names(SENSOR_READING)
DEAD_LETTER_POLICY = "dead_letter"
PASS_UNENRICHED_POLICY = "pass_unenriched"
UNKNOWN_ASSET_POLICIES = (DEAD_LETTER_POLICY, PASS_UNENRICHED_POLICY)


def enrich(event: Mapping[str, Any], catalog: AssetCatalog | None, *, ingested_at_ms: int,
           policy: str = DEAD_LETTER_POLICY) -> dict[str, Any] | Rejected:
    """Pure: the reading row, or a :class:`Rejected` (stage ``enrich``, code
    ``unknown_asset`` or ``site_mismatch``, the event's id; the caller passes the envelope
    to its ``dead_letter()``).

    ``catalog`` None (no catalog loaded) counts as an empty catalog.
    """
    asset = catalog.get(event["asset_id"]) if catalog is not None else None
    if asset is None:
        if policy != PASS_UNENRICHED_POLICY:
            return Rejected("enrich", ("unknown_asset",),
                            (f"asset_id: unknown asset {event['asset_id']!r} "
                             f"(not in the asset catalog)",), event["event_id"])
        site_name = asset_type = location = None
    elif asset.site_id != event["site_id"]:
        return Rejected("enrich", ("site_mismatch",),
                        (f"site_id: asset {asset.asset_id!r} belongs to site "
                         f"{asset.site_id!r}, event says {event['site_id']!r}",),
                        event["event_id"])
    else:
        site_name, asset_type, location = asset.site_name, asset.asset_type, asset.location
    return {
        "timestamp": event["timestamp"],
        "event_id": event["event_id"],
        "site_id": event["site_id"],
        "asset_id": event["asset_id"],
        "sensor_id": event["sensor_id"],
        "sensor_type": event["sensor_type"],
        "value": event["value"],
        "unit": event["unit"],
        "quality_flag": event["quality_flag"],
        "site_name": site_name,
        "asset_type": asset_type,
        "location": location,
        "ingested_at": ingested_at_ms,
    }


def refresh_catalog(path: str | Path, previous_version: str | None, *, now_ms: int
                    ) -> AssetCatalog | None:
    """Pure refresh step: the reloaded catalog if the file changed, else None.

    Raises AssetCatalogError (naming the file) when the file is unreadable or invalid.
    """
    catalog = load_asset_catalog(path, now_ms=now_ms)
    return None if catalog.version == previous_version else catalog


class _CachedCatalog:
    """One file's catalog in one worker process, and when the file was last looked at."""

    def __init__(self) -> None:
        self.catalog: AssetCatalog | None = None
        self.checked_at = -float("inf")
        self.lock = threading.Lock()


# Shared by every DoFn instance of a worker process (the SDK harness makes many): one
# load per file and refresh period, not one per instance. Key: the file path.
_FILE_CATALOGS: dict[str, _CachedCatalog] = {}
_FILE_CATALOGS_LOCK = threading.Lock()


class FileAssetCatalog:
    """The asset file as a worker-side catalog, re-read at most every ``refresh_seconds``.

    Picklable (only the path and the period travel to the workers). The file is
    loaded once at construction so that a bad file fails the submission with
    an error naming it. A file that later becomes invalid is logged and
    counted (``asset_refresh_failed``) and the previous catalog stays in force.
    """

    def __init__(self, path: str | Path, refresh_seconds: float = 60.0,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        if refresh_seconds <= 0:
            raise ValueError(f"refresh_seconds must be > 0, got {refresh_seconds} "
                             "(setting [pipeline] asset_refresh_seconds)")
        load_asset_catalog(path)
        self.path = str(path)
        self.refresh_seconds = float(refresh_seconds)
        self._monotonic = monotonic

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "refresh_seconds": self.refresh_seconds}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.path = state["path"]
        self.refresh_seconds = state["refresh_seconds"]
        self._monotonic = time.monotonic

    def current(self) -> AssetCatalog | None:
        """The catalog in force now (None only if the file never loaded in this process)."""
        with _FILE_CATALOGS_LOCK:
            cached = _FILE_CATALOGS.setdefault(self.path, _CachedCatalog())
        now = self._monotonic()
        if now - cached.checked_at < self.refresh_seconds:
            return cached.catalog
        with cached.lock:
            if now - cached.checked_at >= self.refresh_seconds:
                self._refresh(cached)
                cached.checked_at = self._monotonic()
        return cached.catalog

    def _refresh(self, cached: _CachedCatalog) -> None:
        catalog = _reload(self.path, cached.catalog)
        if catalog is not None:
            cached.catalog = catalog


def catalog_input(catalogs: beam.PCollection | FileAssetCatalog
                  ) -> tuple[FileAssetCatalog | None, tuple[Any, ...]]:
    """``(file catalog or None, side-input args)`` for a ParDo that needs the catalog."""
    if isinstance(catalogs, FileAssetCatalog):
        return catalogs, ()
    return None, (beam.pvalue.AsList(catalogs),)


class _CatalogUser:
    """Mixin of the DoFns that read the catalog: from a FileAssetCatalog or a side input."""

    _file: FileAssetCatalog | None
    _last_side: Any
    _catalog: AssetCatalog | None

    def _current(self, catalogs: Sequence[AssetCatalog] | None) -> AssetCatalog | None:
        if self._file is not None:
            return self._file.current()
        # The side-input list object is stable between refreshes: pick the newest once.
        if catalogs is not self._last_side:
            self._last_side = catalogs
            self._catalog = latest_catalog(catalogs or ())
        return self._catalog


class _EnrichFn(_CatalogUser, beam.DoFn):
    def __init__(self, policy: str, clock: Callable[[], int],
                 file_catalog: FileAssetCatalog | None = None) -> None:
        self._policy = policy
        self._clock = clock
        self._file = file_catalog
        self._last_side: Any = None
        self._catalog: AssetCatalog | None = None

    def process(self, envelopes: list[Envelope],  # type: ignore[override]
                catalogs: Sequence[AssetCatalog] | None = None):
        catalog = self._current(catalogs)
        ingested_at_ms = self._clock()
        rows: list[dict[str, Any]] = []
        unenriched = 0
        for envelope in envelopes:
            out = enrich(envelope[0], catalog, ingested_at_ms=ingested_at_ms,
                         policy=self._policy)
            if not isinstance(out, Rejected):
                if out["site_name"] is None:
                    unenriched += 1
                rows.append(out)
                continue
            counter(f"enrich_failed.{out.code}").inc()
            counter("dead_letters").inc()
            yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, out.dead_letter(envelope))
        if unenriched:
            counter("unenriched").inc(unenriched)
        if rows:
            yield rows


class EnrichWithAssets(beam.PTransform):
    """Lists of valid envelopes -> lists of reading rows (main) and dead letters
    (``dead_letters``).

    ``catalogs`` is a :class:`FileAssetCatalog` (streaming jobs) or a
    PCollection of AssetCatalog (StaticAssetCatalog or RefreshingAssetCatalog)
    used as a side input; see the module docstring.
    """

    def __init__(self, catalogs: beam.PCollection | FileAssetCatalog, *, unknown_asset_policy: str =
                 DEAD_LETTER_POLICY, clock: Callable[[], int] | None = None) -> None:
        super().__init__()
        if unknown_asset_policy not in UNKNOWN_ASSET_POLICIES:
            raise ValueError(f"unknown_asset_policy must be one of {UNKNOWN_ASSET_POLICIES}, "
                             f"got {unknown_asset_policy!r}")
        self._catalogs = catalogs
        self._policy = unknown_asset_policy
        self._clock = clock or wall_clock_ms

    def expand(self, pcoll):
        file_catalog, side = catalog_input(self._catalogs)
        return pcoll | "Enrich" >> beam.ParDo(
            _EnrichFn(self._policy, self._clock, file_catalog), *side,
        ).with_outputs(DEAD_LETTER_TAG, main="readings")


class StaticAssetCatalog(beam.PTransform):
    """A one-element PCollection holding ``catalog`` (bounded: batch runs, tests)."""

    def __init__(self, catalog: AssetCatalog) -> None:
        super().__init__()
        self._catalog = catalog

    def expand(self, pbegin):
        return pbegin | "Catalog" >> beam.Create([self._catalog])


class _RefreshCatalogFn(beam.DoFn):
    def __init__(self, path: str) -> None:
        self._path = path
        self._catalog: AssetCatalog | None = None

    def process(self, _tick: Any):  # type: ignore[override]
        catalog = _reload(self._path, self._catalog)
        if catalog is not None:
            self._catalog = catalog
            yield catalog


def _reload(path: str, previous: AssetCatalog | None) -> AssetCatalog | None:
    """The file's catalog if it changed since ``previous``, else None; a bad file is logged
    and counted (``asset_refresh_failed``) and None keeps ``previous`` in force. Load times
    strictly increase, so latest_catalog never faces a tie."""
    now_ms = max(wall_clock_ms(), previous.loaded_at_ms + 1 if previous else 0)
    version = previous.version if previous else None
    try:
        catalog = refresh_catalog(path, version, now_ms=now_ms)
    except AssetCatalogError as exc:
        counter("asset_refresh_failed").inc()
        _LOGGER.error("asset catalog refresh failed, keeping version %s: %s", version, exc)
        return None
    if catalog is not None:
        counter("asset_refreshes").inc()
        _LOGGER.info("asset catalog %s loaded from %s: %d assets", catalog.version, path,
                     len(catalog))
    return catalog


class RefreshingAssetCatalog(beam.PTransform):
    """The asset file, reloaded every ``refresh_seconds`` (unbounded: streaming runs).

    The file is loaded once at construction so that a bad file fails the
    submission with an error naming it, instead of a job that waits forever
    for its first side input.
    """

    def __init__(self, path: str | Path, refresh_seconds: float = 60.0, *,
                 stop_timestamp: float | None = None) -> None:
        """``stop_timestamp`` (epoch s) makes the refresh bounded: for tests and benchmarks."""
        super().__init__()
        if refresh_seconds <= 0:
            raise ValueError(f"refresh_seconds must be > 0, got {refresh_seconds} "
                             "(setting [pipeline] asset_refresh_seconds)")
        load_asset_catalog(path)
        self._path = str(path)
        self._refresh_seconds = float(refresh_seconds)
        self._stop_timestamp = stop_timestamp

    def expand(self, pbegin):
        stop = {} if self._stop_timestamp is None else {
            "start_timestamp": time.time(), "stop_timestamp": self._stop_timestamp}
        return (
            pbegin
            | "Tick" >> PeriodicImpulse(fire_interval=self._refresh_seconds, **stop)
            | "GlobalPanes" >> beam.WindowInto(
                window.GlobalWindows(),
                trigger=trigger.Repeatedly(trigger.AfterCount(1)),
                accumulation_mode=trigger.AccumulationMode.DISCARDING)
            | "Load" >> beam.ParDo(_RefreshCatalogFn(self._path))
        )
