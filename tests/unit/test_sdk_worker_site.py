"""SDK worker start-up settings: runners/worker_pool.py + runners/sdk_worker_site/."""

from __future__ import annotations

import subprocess
import sys

import pytest

from runners.worker_pool import configure_sdk_worker_env


def _child_gc_threshold(env: dict[str, str]) -> tuple[str, str]:
    """What a child started like Beam starts SDK workers (``python -c ...``) sees."""
    out = subprocess.run([sys.executable, "-c", "import gc; print(gc.get_threshold())"],
                         env=env, capture_output=True, text=True, timeout=60, check=True)
    return out.stdout.strip(), out.stderr


def test_workers_start_with_the_configured_gc_thresholds():
    env: dict[str, str] = {"PYTHONPATH": "/somewhere/else"}
    configure_sdk_worker_env("50000,20,100", env)
    assert env["PYTHONPATH"].endswith("/somewhere/else")   # what was there is kept
    assert _child_gc_threshold(env)[0] == "(50000, 20, 100)"


def test_empty_setting_keeps_pythons_default():
    env: dict[str, str] = {}
    configure_sdk_worker_env("", env)
    assert _child_gc_threshold(env)[0] == str(__import__("gc").get_threshold())


@pytest.mark.parametrize("bad", ["fast", "1,2,3,4", "-5", "10,,2"])
def test_bad_setting_is_refused_with_the_setting_named(bad):
    with pytest.raises(ValueError, match=r"\[flink\] sdk_gc_threshold"):
        configure_sdk_worker_env(bad, {})


def test_a_bad_value_reaching_a_worker_still_lets_it_start():
    env = {"DCMMS_SDK_GC_THRESHOLD": "nonsense"}
    configure_sdk_worker_env("", env)
    env["DCMMS_SDK_GC_THRESHOLD"] = "nonsense"
    threshold, err = _child_gc_threshold(env)
    assert threshold == str(__import__("gc").get_threshold())
    assert "sdk_gc_threshold" in err
