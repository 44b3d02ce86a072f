"""FileAssetCatalog: the worker-side asset catalog that replaces the side input on Flink."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from transforms import enrich as enrich_module
from transforms.alarms import DetectAlarms
from transforms.common import make_envelope
from transforms.enrich import EnrichWithAssets, FileAssetCatalog


def _write(path: Path, assets: dict) -> None:
    path.write_text(json.dumps({"sites": {"s-1": {"name": "Site 1", "location": "here"}},
                                "assets": assets}))


@pytest.fixture(autouse=True)
def _fresh_cache():
    enrich_module._FILE_CATALOGS.clear()
    yield
    enrich_module._FILE_CATALOGS.clear()


def test_reloads_only_after_the_refresh_period(tmp_path):
    path = tmp_path / "assets.json"
    _write(path, {"a-1": {"site_id": "s-1", "asset_type": "inverter"}})
    now = [100.0]
    catalog = FileAssetCatalog(path, refresh_seconds=10, monotonic=lambda: now[0])
    assert set(catalog.current().assets) == {"a-1"}
    _write(path, {"a-1": {"site_id": "s-1", "asset_type": "inverter"},
                  "a-2": {"site_id": "s-1", "asset_type": "meter"}})
    now[0] += 5
    assert set(catalog.current().assets) == {"a-1"}          # not yet looked at again
    now[0] += 6
    assert set(catalog.current().assets) == {"a-1", "a-2"}   # refreshed


def test_a_broken_file_keeps_the_previous_catalog(tmp_path):
    path = tmp_path / "assets.json"
    _write(path, {"a-1": {"site_id": "s-1", "asset_type": "inverter"}})
    now = [0.0]
    catalog = FileAssetCatalog(path, refresh_seconds=1, monotonic=lambda: now[0])
    first = catalog.current()
    path.write_text("{not json")
    now[0] += 2
    assert catalog.current() is first


def test_bad_file_or_period_fails_at_construction_naming_the_setting(tmp_path):
    with pytest.raises(ValueError, match="asset_refresh_seconds"):
        FileAssetCatalog("config/assets.json", refresh_seconds=0)
    with pytest.raises(ValueError, match="missing.json"):
        FileAssetCatalog(tmp_path / "missing.json")


def test_pickles_without_its_clock(tmp_path):
    path = tmp_path / "assets.json"
    _write(path, {"a-1": {"site_id": "s-1", "asset_type": "inverter"}})
    catalog = pickle.loads(pickle.dumps(FileAssetCatalog(path, 5, monotonic=lambda: 0.0)))
    assert (catalog.path, catalog.refresh_seconds) == (str(path), 5.0)
    assert catalog.current().get("a-1").asset_type == "inverter"


def test_enrich_and_alarms_use_the_file_catalog_without_side_input(tmp_path):
    path = tmp_path / "assets.json"
    _write(path, {"a-1": {"site_id": "s-1", "asset_type": "inverter",
                          "thresholds": {"TEMPERATURE": {"warning_high": 80}}}})
    catalog = FileAssetCatalog(path, 60)
    event = {"event_id": "e-1", "timestamp": 1_700_000_000_000, "site_id": "s-1",
             "asset_id": "a-1", "sensor_id": "t-1", "sensor_type": "TEMPERATURE",
             "value": 90.0, "unit": "celsius", "quality_flag": "GOOD", "source": "mqtt"}
    with TestPipeline() as p:
        out = (p | beam.Create([[make_envelope(event)]])
               | EnrichWithAssets(catalog, clock=lambda: 1))
        assert_that(out.readings | beam.FlatMap(
            lambda rows: [(r["event_id"], r["site_name"]) for r in rows]),
                    equal_to([("e-1", "Site 1")]), label="Enriched")
        alarms = out.readings | DetectAlarms(catalog)
        assert_that(alarms | beam.Map(lambda a: (a["state"], a["severity"])),
                    equal_to([("RAISED", "WARNING")]), label="Alarm")
