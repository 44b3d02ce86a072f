"""Spike (issue 15): can a side input be checkpointed on Beam 2.70's portable Flink runner?

The minimal pipeline: ``PeriodicImpulse`` (main, every 0.5 s) -> ``ParDo`` reading a side
input fed by a second ``PeriodicImpulse`` (every 2 s), checkpointing every 3 s, parallelism
2, ``--finish_bundle_before_checkpointing`` and the LOOPBACK environment (the production
job uses the same options with an EXTERNAL worker pool). Each variant runs ``--seconds``
on a job server of its own (ports 18097/18098, Flink REST 18082, run directory
/tmp/sideinput-spike), then reads ``/jobs/<id>/checkpoints`` (completed vs failed) and
counts ``ClassCastException`` in the job server's log, and prints one verdict line.
A variant with ``restore`` cancels the job after its run and resubmits it from the
newest retained checkpoint, then checks that the ParDo still serves side-input values.

Run it under the machine lock (docs/decisions/0008-side-input-on-flink.md)::

    flock /tmp/machine.lock .venv/bin/python tests/spikes/side_input_checkpoint.py \\
        --variant aslist,control

``--variant all`` runs every variant (~90 s each). Variants ``rocksdb*`` need the RocksDB
state backend jars in ``<run dir>/jars`` (``mvn dependency:copy`` of
org.apache.flink:flink-statebackend-rocksdb:1.19.0 and com.ververica:frocksdbjni:
6.20.3-ververica-2.0); ``patched*`` variants need the translator built by
``--build-patch`` (Beam's FlinkStreamingPortablePipelineTranslator with the side-input
view coder fixed, compiled from the sources jar in ~/.m2).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import apache_beam as beam
import requests
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.transforms import trigger, window
from apache_beam.transforms.periodicsequence import PeriodicImpulse

__all__: list[str] = []

_LOGGER = logging.getLogger(__name__)

RUN_DIR = Path("/tmp/sideinput-spike")
JARS = Path("~/.cache/dcmms-telemetry/jars/flink").expanduser()
BEAM_SOURCES = Path("~/.m2/repository/org/apache/beam/beam-runners-flink-1.19/2.70.0/"
                    "beam-runners-flink-1.19-2.70.0-sources.jar").expanduser()
REPO = Path(__file__).resolve().parents[2]
# The project's bind fix (runners/stack/jvm_patches.py): Beam's gRPC servers on loopback only.
SERVER_FACTORY = REPO / "runners/stack/java/org/apache/beam/sdk/fn/server/ServerFactory.java"
TRANSLATOR = "org/apache/beam/runners/flink/FlinkStreamingPortablePipelineTranslator.java"
JOB_PORT, ARTIFACT_PORT, REST_PORT = 18097, 18098, 18082
HOST = "127.0.0.1"

_JAVA_OPENS = [f"--add-opens=java.base/{pkg}=ALL-UNNAMED" for pkg in (
    "java.lang", "java.lang.reflect", "java.lang.invoke", "java.util", "java.util.concurrent",
    "java.util.concurrent.atomic", "java.util.concurrent.locks", "java.io", "java.net",
    "java.nio", "sun.nio.ch", "sun.nio.cs", "java.text", "java.time", "java.math",
    "java.security", "sun.security.action", "sun.util.calendar", "jdk.internal.misc")]
_LOG_PROPS = [
    "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn",
    "-Dorg.slf4j.simpleLogger.showDateTime=true",
    "-Dorg.slf4j.simpleLogger.log.org.apache.flink.runtime.checkpoint.CheckpointCoordinator=info",
]


@dataclasses.dataclass(frozen=True)
class Variant:
    """One configuration of the minimal pipeline."""

    view: str = "list"            # list | iter | dict | singleton | none (no side input)
    side_trigger: str = "count"   # count: Repeatedly(AfterCount(1)); processing: ...Time(1 s)
    accumulating: bool = False
    windowing: str = "global"     # global | fixed (10 s windows on both inputs)
    flink_state_backend: str = "hashmap"   # flink-conf state.backend.type
    beam_state_backend: str | None = None  # Beam's --state_backend option
    patched: bool = False         # the fixed translator first on the job server's classpath
    stateful: bool = False        # keyed, stateful ParDo (as DedupAndDetectAlarms) reads it
    # int: side elements are ints (a standard coder, Long in Java); object: dicts, pickled
    # (bytes in Java), as the AssetCatalog objects of RefreshingAssetCatalog.
    payload: str = "int"
    restore: bool = False         # cancel, resubmit from the newest checkpoint, check serving


VARIANTS: dict[str, Variant] = {
    # No side input: the harness itself (PeriodicImpulse, LOOPBACK, checkpoints) works.
    "control": Variant(view="none"),
    # RefreshingAssetCatalog's shape: global window, Repeatedly(AfterCount(1)), AsList.
    "aslist": Variant(),
    "asiter": Variant(view="iter"),
    "asdict": Variant(view="dict"),
    "assingleton": Variant(view="singleton"),
    "processing-discarding": Variant(side_trigger="processing"),
    "processing-accumulating": Variant(side_trigger="processing", accumulating=True),
    "count-accumulating": Variant(accumulating=True),
    "fixed-windows": Variant(windowing="fixed"),
    "rocksdb": Variant(flink_state_backend="rocksdb"),
    "rocksdb-beam-option": Variant(beam_state_backend="rocksdb"),
    "patched": Variant(patched=True, restore=True),
    "patched-asdict": Variant(view="dict", patched=True, restore=True),
    "patched-rocksdb": Variant(flink_state_backend="rocksdb", patched=True),
    "stateful": Variant(stateful=True),
    "aslist-object": Variant(payload="object"),
    "patched-object": Variant(payload="object", patched=True, restore=True),
    "patched-stateful": Variant(stateful=True, patched=True, restore=True),
}


# -- the pipeline ----------------------------------------------------------------------------------

def _side_version(view: str, side: Any) -> int:
    if view == "none":
        return -1
    if view == "dict":
        return int(side.get("version", -2))
    if view == "singleton":
        return int(side)
    # list / iter: accumulating panes hold several
    return max((x["version"] if isinstance(x, dict) else x for x in side), default=-2)


def _mark(marker: str, version: int, count: int = -1) -> None:
    with open(marker, "a") as fh:
        fh.write(f"{time.time():.3f} {version} {count}\n")


class _ServeFn(beam.DoFn):
    """Appends ``<wall time> <side value> -1`` for every main element to ``marker`` (the
    LOOPBACK worker runs in this process, so the spike reads the file afterwards)."""

    def __init__(self, marker: str, view: str) -> None:
        self._marker = marker
        self._view = view

    def process(self, tick: Any, side: Any = None):  # type: ignore[override]
        version = _side_version(self._view, side)
        _mark(self._marker, version)
        yield version


_COUNT = beam.transforms.userstate.ReadModifyWriteStateSpec("count", beam.coders.VarIntCoder())
_COUNT_PARAM = beam.DoFn.StateParam(_COUNT)


class _StatefulServeFn(beam.DoFn):
    """As _ServeFn, keyed, with a per-key count in state (written as the third column)."""

    def __init__(self, marker: str, view: str) -> None:
        self._marker = marker
        self._view = view

    def process(self, element: tuple[int, int], side: Any = None,  # type: ignore[override]
                count=_COUNT_PARAM):
        n = (count.read() or 0) + 1
        count.write(n)
        version = _side_version(self._view, side)
        _mark(self._marker, version, n)
        yield version


def build(p: beam.Pipeline, v: Variant, marker: Path) -> None:
    start = time.time()
    main = p | "MainTick" >> PeriodicImpulse(start_timestamp=start, fire_interval=0.5)
    side = p | "SideTick" >> PeriodicImpulse(start_timestamp=start, fire_interval=2.0)
    if v.windowing == "fixed":
        main = main | "MainWindows" >> beam.WindowInto(window.FixedWindows(10))
        side = side | "SideWindows" >> beam.WindowInto(window.FixedWindows(10))
    else:
        fire = (trigger.AfterCount(1) if v.side_trigger == "count"
                else trigger.AfterProcessingTime(1))
        side = side | "SidePanes" >> beam.WindowInto(
            window.GlobalWindows(), trigger=trigger.Repeatedly(fire),
            accumulation_mode=(trigger.AccumulationMode.ACCUMULATING if v.accumulating
                               else trigger.AccumulationMode.DISCARDING))
    versions = side | "Version" >> beam.Map(lambda ts: int(float(ts)))
    if v.payload == "object":
        versions = versions | "AsObject" >> beam.Map(lambda n: {"version": n, "pad": "x" * 100})
    args: tuple[Any, ...] = ()
    if v.view == "list":
        args = (beam.pvalue.AsList(versions),)
    elif v.view == "iter":
        args = (beam.pvalue.AsIter(versions),)
    elif v.view == "singleton":
        args = (beam.pvalue.AsSingleton(versions),)
    elif v.view == "dict":
        args = (beam.pvalue.AsDict(versions | "Keyed" >> beam.Map(lambda n: ("version", n))),)
    if v.stateful:
        keyed = main | "Key" >> beam.Map(
            lambda ts: (int(float(ts) * 2) % 4, int(float(ts)))).with_output_types(
                beam.typehints.KV[int, int])
        _ = keyed | "Serve" >> beam.ParDo(_StatefulServeFn(str(marker), v.view), *args)
    else:
        _ = main | "Serve" >> beam.ParDo(_ServeFn(str(marker), v.view), *args)


# -- Flink ----------------------------------------------------------------------------------------

def write_conf(conf_dir: Path, v: Variant, checkpoints: Path,
               restore_from: str | None = None) -> Path:
    lines = [
        f"rest.bind-address: {HOST}", f"rest.address: {HOST}",
        f"rest.bind-port: {REST_PORT}", f"rest.port: {REST_PORT}",
        f"jobmanager.bind-host: {HOST}", f"taskmanager.bind-host: {HOST}",
        f"state.backend.type: {v.flink_state_backend}",
        f"state.checkpoints.dir: {checkpoints.as_uri()}",
        "execution.checkpointing.externalized-checkpoint-retention: RETAIN_ON_CANCELLATION",
        "state.checkpoints.num-retained: 3",
        "taskmanager.numberOfTaskSlots: 2",
        "parallelism.default: 2",
        f"io.tmp.dirs: {conf_dir.parent / 'tmp'}",
    ]
    if restore_from:
        lines.append(f"execution.savepoint.path: {restore_from}")
    conf_dir.mkdir(parents=True, exist_ok=True)
    (conf_dir.parent / "tmp").mkdir(exist_ok=True)
    (conf_dir / "flink-conf.yaml").write_text("\n".join(lines) + "\n")
    return conf_dir


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((HOST, port)) == 0


@contextmanager
def job_server(patched: bool, log: Path) -> Iterator[None]:
    """The Beam Flink job server (embedded [local] Flink) on the spike's ports."""
    if _port_open(JOB_PORT) or _port_open(REST_PORT):
        raise SystemExit(f"port {JOB_PORT} or {REST_PORT} is taken: another spike running?")
    classes = [RUN_DIR / "bind-classes"]
    if patched:
        classes.insert(0, RUN_DIR / "patch-classes")
    classpath = ":".join([*map(str, classes), f"{JARS}/*", f"{RUN_DIR / 'jars'}/*"])
    argv = ["java", "-Xmx1g", *_JAVA_OPENS, *_LOG_PROPS, "-cp", classpath,
            "org.apache.beam.runners.flink.FlinkJobServerDriver",
            "--job-host", HOST, "--job-port", str(JOB_PORT),
            "--artifact-port", str(ARTIFACT_PORT), "--expansion-port", "0",
            "--artifacts-dir", str(RUN_DIR / "artifacts"), "--flink-master", "[local]",
            "--flink-conf-dir", str(write_conf(RUN_DIR / "server-conf", Variant(),
                                               RUN_DIR / "server-checkpoints"))]
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not _port_open(JOB_PORT):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"job server did not start, see {log}")
            time.sleep(1)
        yield
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def _rest(path: str, method: str = "GET") -> Any:
    resp = requests.request(method, f"http://{HOST}:{REST_PORT}{path}", timeout=5)
    resp.raise_for_status()
    return resp.json() if resp.content else None


def _job_id(name: str, timeout_s: float = 180) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            for job in _rest("/jobs/overview")["jobs"]:
                if job["name"].startswith(name) and job["state"] not in (
                        "CANCELED", "FAILED", "FINISHED"):
                    return str(job["jid"])
        except requests.RequestException:
            pass
        time.sleep(1)
    raise SystemExit(f"no Flink job {name!r} appeared at REST port {REST_PORT}")


def _cancel(jid: str) -> None:
    try:
        _rest(f"/jobs/{jid}?mode=cancel", "PATCH")
    except requests.RequestException:
        return
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and _port_open(REST_PORT):
        try:
            if _rest(f"/jobs/{jid}")["state"] in ("CANCELED", "FAILED", "FINISHED"):
                break
        except requests.RequestException:
            break
        time.sleep(0.5)
    # The [local] mini cluster shuts down with its job: wait for its REST port to be free.
    while time.monotonic() < deadline and _port_open(REST_PORT):
        time.sleep(0.5)


def _stats(jid: str) -> dict[str, Any]:
    chk = _rest(f"/jobs/{jid}/checkpoints")
    counts = chk["counts"]
    # Job failures (each one a restart here): the exception history.
    history = _rest(f"/jobs/{jid}/exceptions?maxExceptions=100").get("exceptionHistory", {})
    latest = chk.get("latest") or {}
    completed = latest.get("completed") or {}
    failures = sorted({(c.get("failure_message") or "?").splitlines()[0][:160]
                       for c in chk.get("history", []) if c.get("status") == "FAILED"})
    return {"completed": counts["completed"], "failed": counts["failed"],
            "restored": counts.get("restored", 0),
            "job_failures": len(history.get("entries", [])),
            "state": _rest(f"/jobs/{jid}")["state"],
            "state_backend": _rest(f"/jobs/{jid}/checkpoints/config").get("state_backend"),
            "failure": "; ".join(failures),
            "external_path": completed.get("external_path"),
            "checkpoint_at": (completed.get("trigger_timestamp") or 0) / 1000}


def _served(marker: Path, since: float = 0.0
            ) -> tuple[int, int | None, int | None, int | None]:
    """(main elements served since ``since``, the newest and the first side version they
    saw, the first per-key count (stateful variants; -1 otherwise))."""
    if not marker.exists():
        return 0, None, None, None
    fields = [line.split() for line in marker.read_text().splitlines()]
    rows = [(float(t), int(ver), int(n)) for t, ver, n in fields if float(t) >= since]
    first = min(rows) if rows else None
    return (len(rows), max((ver for _t, ver, _n in rows), default=None),
            first[1] if first else None, first[2] if first else None)


def submit(name: str, v: Variant, conf_dir: Path, marker: Path) -> str:
    argv = ["--runner=FlinkRunner", f"--job_endpoint={HOST}:{JOB_PORT}",
            "--environment_type=LOOPBACK", "--streaming", "--parallelism=2",
            "--checkpointing_interval=3000", "--finish_bundle_before_checkpointing",
            f"--flink_conf_dir={conf_dir}", f"--job_name={name}"]
    if v.beam_state_backend:
        argv += [f"--state_backend={v.beam_state_backend}",
                 f"--state_backend_storage_path={(conf_dir.parent / 'beam-state').as_uri()}"]
    p = beam.Pipeline(options=PipelineOptions(argv))
    build(p, v, marker)
    p.run()   # non-blocking for a streaming job; the LOOPBACK worker lives in this process
    return _job_id(name)


def run_variant(key: str, v: Variant, seconds: float, log: Path) -> dict[str, Any]:
    vdir = RUN_DIR / key
    shutil.rmtree(vdir, ignore_errors=True)
    vdir.mkdir(parents=True)
    marker = vdir / "served.txt"
    log_start = log.stat().st_size if log.exists() else 0
    jid = submit(f"sideinput-spike-{key}", v, write_conf(vdir / "conf", v, vdir / "chk"),
                 marker)
    time.sleep(seconds)
    result = {"variant": key, **_stats(jid)}
    result["served"], result["side_version"], _first, _count = _served(marker)
    _cancel(jid)
    text = log.read_bytes()[log_start:].decode(errors="replace")
    result["cce_in_log"] = text.count("ClassCastException")
    if v.restore:
        path = result.get("external_path")
        if not path:
            result["restore"] = "no checkpoint to restore"
        else:
            since = time.time()
            jid2 = submit(f"sideinput-spike-{key}-restored", v,
                          write_conf(vdir / "conf-restore", v, vdir / "chk", path), marker)
            time.sleep(max(30.0, seconds / 2))
            again = _stats(jid2)
            served, version, first, first_count = _served(marker, since)
            _cancel(jid2)
            # Versions are side ticks' timestamps. A tick older than the checkpoint (1 s of
            # margin) was emitted before it: the first element after the restore was served
            # from the restored side-input state, not from a replayed or new side element.
            result["restore"] = {"from": path, "restored": again["restored"],
                                 "completed": again["completed"], "failed": again["failed"],
                                 "served": served, "side_version": version,
                                 "first_side_version": first,
                                 # > 1: the keyed count continued from the restored state
                                 "first_keyed_count": first_count,
                                 "served_from_restored_state": first is not None
                                 and 0 <= first <= result["checkpoint_at"] - 1,
                                 "state": again["state"]}
    return result


def verdict(r: dict[str, Any]) -> str:
    ok = r["completed"] > 0 and r["failed"] == 0
    line = (f"VERDICT {r['variant']}: {'CHECKPOINTS PASS' if ok else 'CHECKPOINTS FAIL'} "
            f"completed={r['completed']} failed={r['failed']} job_failures={r['job_failures']} "
            f"state={r['state']} backend={r['state_backend']} served={r['served']} "
            f"side_version={r['side_version']} "
            f"ClassCastException_in_log={r['cce_in_log']}")
    if r["failure"]:
        line += f" failure={r['failure']!r}"
    restore = r.get("restore")
    if isinstance(restore, dict):
        good = (restore["restored"] > 0 and restore["served"] > 0
                and restore["side_version"] is not None and restore["side_version"] >= 0)
        line += (f" | RESTORE {'PASS' if good else 'FAIL'}: restored={restore['restored']} "
                 f"completed={restore['completed']} failed={restore['failed']} "
                 f"served={restore['served']} side_version={restore['side_version']} "
                 f"first_after_restore={restore['first_side_version']} "
                 f"served_from_restored_state={restore['served_from_restored_state']} "
                 f"first_keyed_count={restore['first_keyed_count']}")
    elif restore:
        line += f" | RESTORE: {restore}"
    return line


# -- the patched translator ---------------------------------------------------------------------

def build_patch() -> None:
    """Compile Beam's translator with the side-input view coder fixed (and the bind fix)."""
    src = RUN_DIR / "patch-src"
    src.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(BEAM_SOURCES) as jar:
        text = jar.read(TRANSLATOR).decode()
    old = "      coder = wvCoder.withValueCoder(IterableCoder.of(wvCoder.getValueCoder()));\n"
    if text.count(old) != 1:
        raise SystemExit(f"{TRANSLATOR}: the line to patch is not there (another Beam version?)")
    text = text.replace(old, "      coder = (Coder) wvCoder.getValueCoder();\n")
    # AutoService only registers the class in META-INF; Beam's jar keeps that file.
    text = text.replace("import com.google.auto.service.AutoService;\n", "")
    text = text.replace("  @AutoService(NativeTransforms.IsNativeTransform.class)\n", "")
    (src / "FlinkStreamingPortablePipelineTranslator.java").write_text(text)
    for out, source in ((RUN_DIR / "patch-classes",
                         src / "FlinkStreamingPortablePipelineTranslator.java"),
                        (RUN_DIR / "bind-classes", SERVER_FACTORY)):
        out.mkdir(parents=True, exist_ok=True)
        subprocess.run(["javac", "-nowarn", "-proc:none", "-cp", f"{JARS}/*", "-d", str(out),
                        str(source)], check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="aslist",
                        help=f"comma-separated, or 'all': {', '.join(VARIANTS)}")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--build-patch", action="store_true",
                        help="compile the patched translator and the bind fix first")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    keys = list(VARIANTS) if args.variant == "all" else args.variant.split(",")
    unknown = [k for k in keys if k not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    if args.build_patch or not (RUN_DIR / "bind-classes").exists():
        build_patch()
    results = []
    for patched in (False, True):
        group = [k for k in keys if VARIANTS[k].patched == patched]
        if not group:
            continue
        log = RUN_DIR / f"jobserver-{'patched' if patched else 'stock'}.log"
        with job_server(patched, log):
            for key in group:
                result = run_variant(key, VARIANTS[key], args.seconds, log)
                results.append(result)
                print(verdict(result), flush=True)
    with (RUN_DIR / "results.jsonl").open("a") as fh:
        for result in results:
            fh.write(json.dumps({"at": time.time(), **result}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
