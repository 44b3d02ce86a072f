"""runners/stack/jvm_patches.py: Beam source patches are applied to the sources jar's file.

The real sources jar and javac are exercised by tests/integration/test_outbound_aggregator.py
(it compiles every patch the stack compiles); here a small jar built by the test stands in for
Beam's, so the extraction, the `patch` run and the error messages are checked alone.
"""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import pytest

from config.settings import load_settings
from runners.stack import jvm_patches
from runners.stack.spec import StackPaths

MEMBER = "org/example/Greeter.java"
ORIGINAL = "class Greeter {\n  String hello() {\n    return \"hello\";\n  }\n}\n"
PATCH = f"""Why this patch exists (free text before the diff is ignored by patch).

--- {MEMBER}\t2026-12-01 00:00:00
+++ {MEMBER}\t2026-12-01 00:00:01
@@ -1,5 +1,5 @@
 class Greeter {{
   String hello() {{
-    return "hello";
+    return "hello, patched";
   }}
 }}
"""

pytestmark = pytest.mark.skipif(shutil.which("patch") is None, reason="needs `patch`")


def _setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, original: str = ORIGINAL,
           with_jar: bool = True) -> StackPaths:
    patches = tmp_path / "beam_patches"
    patches.mkdir()
    (patches / "Greeter.patch").write_text(PATCH)
    monkeypatch.setattr(jvm_patches, "BEAM_PATCH_DIR", patches)
    paths = StackPaths(run_dir=tmp_path / "run", jar_cache=tmp_path / "jars")
    if with_jar:
        jar_dir = paths.jars("beam-sources")
        jar_dir.mkdir(parents=True)
        with zipfile.ZipFile(jar_dir / "beam-runners-flink-1.19-2.70.0-sources.jar", "w") as z:
            z.writestr(MEMBER, original)
    return paths


def test_the_patched_file_is_named_by_the_plus_line(tmp_path: Path) -> None:
    patch = tmp_path / "p.patch"
    patch.write_text(PATCH)
    assert jvm_patches.patched_file(patch) == MEMBER
    patch.write_text("no diff here\n")
    with pytest.raises(RuntimeError, match="not a unified diff"):
        jvm_patches.patched_file(patch)


def test_the_file_is_taken_from_the_sources_jar_and_patched(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = _setup(tmp_path, monkeypatch)
    out = jvm_patches._apply_beam_patches(paths, tmp_path / "src")
    assert out == [tmp_path / "src" / MEMBER]
    assert 'return "hello, patched";' in out[0].read_text()


def test_a_patch_that_no_longer_applies_names_itself(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = _setup(tmp_path, monkeypatch, original=ORIGINAL.replace('"hello"', '"hi"'))
    with pytest.raises(RuntimeError, match="Greeter.patch does not apply"):
        jvm_patches._apply_beam_patches(paths, tmp_path / "src")


def test_a_missing_sources_jar_names_the_directory_and_make_jars(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = _setup(tmp_path, monkeypatch, with_jar=False)
    with pytest.raises(RuntimeError, match="make jars") as err:
        jvm_patches._apply_beam_patches(paths, tmp_path / "src")
    assert str(paths.jars("beam-sources")) in str(err.value)


def test_a_changed_patch_gets_a_new_class_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = _setup(tmp_path, monkeypatch)
    before = jvm_patches.patch_dir(paths)
    (jvm_patches.BEAM_PATCH_DIR / "Greeter.patch").write_text(PATCH.replace("patched", "again"))
    assert jvm_patches.patch_dir(paths) != before


def test_the_operator_jvms_get_the_emit_interval() -> None:
    from runners.stack.cluster import emit_poll_property
    settings = load_settings(environ={"DCMMS_FLINK_EMIT_POLL_MS": "7"})
    assert emit_poll_property(settings) == "-Ddcmms.emitPollMs=7"
