"""The server.conf the stack writes for QuestDB (runners/stack/questdb.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from config.settings import SettingsError, load_settings
from runners.stack import questdb
from runners.stack.spec import StackPaths


def _written_conf(tmp_path: Path, environ: dict[str, str]) -> dict[str, str]:
    paths = StackPaths(run_dir=tmp_path / "run", jar_cache=tmp_path / "jars")
    jar = paths.jars("questdb") / questdb.QUESTDB_JAR
    jar.parent.mkdir(parents=True)
    jar.write_bytes(b"")  # prepare() only checks that the jar is there
    (spec,) = questdb.services(load_settings(environ=environ), paths)
    spec.prepare()
    text = (paths.data("questdb") / "conf" / "server.conf").read_text()
    return dict(line.split("=", 1) for line in text.splitlines()
                if line and not line.startswith("#"))


def test_out_of_order_split_size_defaults_to_2m(tmp_path: Path) -> None:
    assert _written_conf(tmp_path, {})["cairo.o3.partition.split.min.size"] == "2m"


def test_out_of_order_split_size_follows_the_setting(tmp_path: Path) -> None:
    conf = _written_conf(tmp_path, {"DCMMS_QUESTDB_O3_SPLIT_MIN_SIZE": "512k"})
    assert conf["cairo.o3.partition.split.min.size"] == "512k"


@pytest.mark.parametrize("bad", ["", "2 MB", "-1", "2mb", "lots"])
def test_a_malformed_split_size_names_the_setting(tmp_path: Path, bad: str) -> None:
    with pytest.raises(SettingsError, match="DCMMS_QUESTDB_O3_SPLIT_MIN_SIZE"):
        _written_conf(tmp_path, {"DCMMS_QUESTDB_O3_SPLIT_MIN_SIZE": bad})
