"""Our BeamFnDataOutboundAggregator, checked in a JVM against Beam 2.70's real types.

runners/stack/java/org/apache/beam/sdk/fn/data/BeamFnDataOutboundAggregator.java replaces
Beam's class on the Flink JVMs' classpath (runners/stack/jvm_patches.py; why:
docs/decisions/0004-throughput.md, "Sixth session"). The harness
tests/java/org/apache/beam/sdk/fn/data/OutboundAggregatorCheck.java drives it with Beam's
options, coders, ``BeamFnApi.Elements`` and an outbound observer that records what it is sent.
This module compiles the patch (:func:`jvm_patches.compile_patches`, the same build the stack
uses) and the harness against the Flink jars of the jar cache, runs one JVM per check and
asserts its exit status and the figures of its report. No service of the stack is needed, only
the jars ``make test`` fetches (``make jars``): missing jars fail the test, naming the directory.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from config.settings import load_settings
from runners.stack import jvm_patches
from runners.stack.supervisor import paths_from_settings

pytestmark = pytest.mark.integration

SETTINGS = load_settings()
HARNESS_SOURCE = (Path(__file__).resolve().parents[1] / "java" / "org" / "apache" / "beam"
                  / "sdk" / "fn" / "data" / "OutboundAggregatorCheck.java")
HARNESS_MAIN = "org.apache.beam.sdk.fn.data.OutboundAggregatorCheck"
# Small heap, serial GC: few JVM threads of its own, little CPU taken from the box.
JVM_FLAGS = ("-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1")
JVM_TIMEOUT_S = 180
SCHEDULER_THREADS = 4  # the patch's shared flush scheduler (FLUSH_THREADS)


@dataclass(frozen=True)
class Harness:
    java: str
    classpath: str
    patch_dir: Path


@dataclass(frozen=True)
class Report:
    class_location: Path | None
    status: str  # "ok", "FAIL" or "missing"
    detail: str
    figures: dict[str, str]


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Harness:
    paths = paths_from_settings(SETTINGS)
    flink_jars = paths.jars("flink")
    if not any(flink_jars.glob("beam-sdks-java-core-*.jar")):
        pytest.fail(f"Beam's jars are missing from {flink_jars} ([stack] jar_cache = "
                    f"{SETTINGS.stack.jar_cache}): run `make jars` (part of `make test`)")
    javac, java = shutil.which("javac"), shutil.which("java")
    if javac is None or java is None:
        pytest.fail("java/javac not found: install a JDK 17 "
                    "(apt-get install openjdk-17-jdk-headless; scripts/install-system-deps.sh)")
    try:
        patches = jvm_patches.compile_patches(paths)
    except RuntimeError as exc:
        pytest.fail(f"the Java patches of {jvm_patches.SOURCE_DIR} did not compile: {exc}")
    out = tmp_path_factory.mktemp("aggregator-check")
    built = subprocess.run(
        [javac, "-nowarn", "-d", str(out), "-cp", f"{patches}:{flink_jars}/*",
         str(HARNESS_SOURCE)],
        capture_output=True, text=True, check=False, timeout=JVM_TIMEOUT_S)
    if built.returncode != 0:
        pytest.fail(f"javac failed on {HARNESS_SOURCE} (patch classes {patches}, Beam jars "
                    f"{flink_jars}):\n{built.stderr[-3000:]}")
    return Harness(java=java, classpath=f"{out}:{jvm_patches.classpath(paths)}",
                   patch_dir=patches)


def run_check(harness: Harness, name: str) -> Report:
    """Run one check in a JVM of its own; fail the test unless it passed."""
    done = subprocess.run(
        [harness.java, *JVM_FLAGS, "-cp", harness.classpath, HARNESS_MAIN, name],
        capture_output=True, text=True, check=False, timeout=JVM_TIMEOUT_S)
    location: Path | None = None
    report = Report(None, "missing", "no CHECK line in the harness's output", {})
    for line in done.stdout.splitlines():
        if line.startswith("CLASS "):
            location = Path(line.removeprefix("CLASS ").removeprefix("file:")).resolve()
        elif line.startswith(f"CHECK {name} "):
            status, _, detail = line.removeprefix(f"CHECK {name} ").partition(" ")
            figures = dict(pair.split("=", 1) for pair in detail.split() if status == "ok")
            report = Report(location, status, detail, figures)
    output = f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}"
    assert location == harness.patch_dir.resolve(), (
        f"the aggregator class was loaded from {location}, not from the compiled patch "
        f"{harness.patch_dir}: the check would test Beam's own class\n{output}")
    assert report.status == "ok", f"check {name}: {report.status} {report.detail}\n{output}"
    assert done.returncode == 0, f"check {name}: exit status {done.returncode}\n{output}"
    return Report(location, report.status, report.detail, report.figures)


def test_size_flush_sends_before_the_bundle_ends(harness: Harness) -> None:
    figures = run_check(harness, "size_flush").figures
    # 10 elements of 302 encoded bytes over a 1,000-byte limit: flushed after each 4th.
    assert figures["elements_before_end"] == "8/10", figures
    assert figures["elements_before_end_locked"] == "8/10", figures


def test_time_flush_sends_without_more_input(harness: Harness) -> None:
    figures = run_check(harness, "time_flush").figures
    latencies = [int(ms) for ms in figures["latency_ms"].split(",")]
    assert max(latencies) <= int(figures["bound_ms"]), figures


def test_bundle_end_sends_data_then_is_last_for_every_endpoint(harness: Harness) -> None:
    figures = run_check(harness, "markers_and_order").figures
    # Two bundles of 3 data endpoints (one never written) and 2 timer endpoints, one message each.
    assert figures["data_last_markers"] == "6", figures
    assert figures["timer_last_markers"] == "4", figures
    assert figures["messages"] == "2", figures


def test_collect_mode_returns_the_end_unless_sent_during_the_bundle(harness: Harness) -> None:
    figures = run_check(harness, "collect_mode").figures
    # Bundles 2 (a size flush) and 4 (a time flush) sent data before their end: sent, not collected.
    assert figures["collected"] == "1,3", figures


def test_discard_stops_sends_and_removes_the_task(harness: Harness) -> None:
    figures = run_check(harness, "discard").figures
    assert figures["sent_after_discard"] == "0", figures
    assert figures["task_queued_after_discard"] == "false", figures
    # The shared scheduler kept flushing another aggregator after the discard.
    assert int(figures["witness_flushes_after_discard"]) >= 1, figures


def test_thread_count_flat_over_5000_bundles(harness: Harness) -> None:
    figures = run_check(harness, "threads_flat").figures
    assert int(figures["bundles"]) == 5000, figures
    # Beam's own class grows by about one thread per bundle (5,000 here); the shared
    # scheduler by at most its size. The margin is for threads the JVM may start lazily
    # during the loop (it measured exactly SCHEDULER_THREADS on an idle box).
    assert int(figures["growth"]) <= SCHEDULER_THREADS + 8, figures
    assert int(figures["tasks_left"]) == 0, figures
