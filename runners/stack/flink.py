"""Beam's Flink job server and the Python worker pool, without Docker.

``flink-jobserver`` runs ``org.apache.beam.runners.flink.FlinkJobServerDriver``
from the classpath resolved by ``jars/flink/pom.xml`` (Beam 2.70.0, Flink
1.19; Maven Central serves no shaded job-server jar). It serves the job API
(``[flink] job_port``), artifact staging (``artifact_port``) and a Java
expansion service (``expansion_port``). Each submitted job runs in its own
local Flink mini cluster inside that JVM; the Flink web UI (``web_ui_port``)
exists while a job runs (it is that job's mini cluster's REST endpoint).

``beam-worker-pool`` runs the Python SDK harness pool the jobs use with
``--environment_type=EXTERNAL --environment_config=localhost:<worker_pool_port>``,
so a streaming job does not depend on the process that submitted it.

Flink configuration lives in ``<run>/conf/flink/`` (written on every start from
config/local.toml; edit that, not the files). The pipeline's checkpoints go to
``<run>/data/flink/checkpoints/layout-<N>/<job id>/chk-N``, those of other jobs (tests,
benchmarks) to ``checkpoints/jobs/<name>/layout-<N>/<job id>/chk-N`` (N: the job's state
layout, pipelines/state_layout.py); they are kept when a job is
cancelled or the job server dies. :func:`job_submission_args` gives the
arguments that make a submission resume from the newest retained checkpoint
(``--savepoint_path`` is ignored by the job server for its ``[local]`` cluster,
so the restore path goes into a per-job Flink conf dir instead).

Stopping a job: ``PipelineResult.cancel()`` (the Beam job API) marks the job
CANCELLED but leaves the Flink job of a ``[local]`` job server running, with its
SDK workers; :func:`cancel_jobs` cancels through the job's Flink REST endpoint.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

from config.settings import REPO_ROOT, Settings
from pipelines.state_layout import STATE_LAYOUT
from runners.stack import cluster, jvm_patches
from runners.stack.spec import ServiceSpec, StackPaths

__all__ = [
    "services",
    "job_submission_args",
    "latest_checkpoint",
    "job_checkpoint_dir",
    "PIPELINE_JOB",
    "write_flink_conf",
    "cancel_jobs",
    "running_jobs",
    "JOB_SERVER_MAIN",
    "EXPANSION_MAIN",
    "expansion_address",
    "JAVA_OPENS",
]

_LOGGER = logging.getLogger(__name__)

JOB_SERVER_MAIN = "org.apache.beam.runners.flink.FlinkJobServerDriver"
EXPANSION_MAIN = "org.apache.beam.sdk.expansion.service.ExpansionService"
_JAVA_HINT = "install a JDK 17: apt-get install openjdk-17-jre-headless"
_JARS_HINT = "run `make jars` (bash scripts/fetch-jars.sh)"
# A jar that must be in the classpath directory; its absence means the jars were not fetched.
_MARKER_JAR = "beam-runners-flink-1.19-2.70.0.jar"

# Flink 1.19 on Java 17 reflects into these packages (Kryo, the closure cleaner, netty).
JAVA_OPENS = [
    f"--add-opens=java.base/{pkg}=ALL-UNNAMED"
    for pkg in ("java.lang", "java.lang.reflect", "java.lang.invoke", "java.util",
                "java.util.concurrent", "java.util.concurrent.atomic",
                "java.util.concurrent.locks", "java.io", "java.net", "java.nio",
                "sun.nio.ch", "sun.nio.cs", "java.text", "java.time", "java.math",
                "java.security", "sun.security.action", "sun.util.calendar",
                "jdk.internal.misc")
] + ["--add-opens=java.sql/java.sql=ALL-UNNAMED"]

# Logging through slf4j-simple to stderr (the supervisor's log file): warnings, plus
# job submissions and checkpoints, which an operator wants to see.
_LOG_PROPS = [
    "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn",
    "-Dorg.slf4j.simpleLogger.showDateTime=true",
    "-Dorg.slf4j.simpleLogger.dateTimeFormat=yyyy-MM-dd'T'HH:mm:ss.SSS",
    "-Dorg.slf4j.simpleLogger.log.org.apache.beam.runners.jobsubmission=info",
    "-Dorg.slf4j.simpleLogger.log.org.apache.beam.runners.flink.FlinkJobInvoker=info",
    "-Dorg.slf4j.simpleLogger.log.org.apache.flink.runtime.checkpoint.CheckpointCoordinator=info",
    # Python SDK harness log lines forwarded to the runner.
    "-Dorg.slf4j.simpleLogger.log.org.apache.beam.runners.fnexecution.logging=info",
]


def _checkpoint_root(paths: StackPaths) -> Path:
    # The cluster topology keeps its own (runners/stack/cluster.py): its checkpoints hold
    # offsets of the three-broker Kafka's topics, which the single broker's are not. The
    # CLI puts the topology in force into the environment of everything it starts.
    if os.environ.get(cluster.TOPOLOGY_ENV) == "cluster":
        return paths.data("flink") / "checkpoints-cluster"
    return paths.data("flink") / "checkpoints"


# The stack's own job: <checkpoints>/layout-<N>/<job id>/chk-N.
PIPELINE_JOB = "pipeline"


def job_checkpoint_dir(paths: StackPaths, name: str = PIPELINE_JOB) -> Path:
    """Where the job submitted as ``name`` keeps its checkpoints (``<dir>/<job id>/chk-N``).

    The stack's pipeline gets ``<checkpoints>/layout-<STATE_LAYOUT>``, every other
    job (tests, benchmarks) ``<checkpoints>/jobs/<name>/layout-<STATE_LAYOUT>``: a
    restore only ever sees checkpoints of the same job name and state layout
    (pipelines/state_layout.py), so the pipeline never resumes from a test job's
    state (other topics, other operators) nor from an incompatible older layout.
    """
    root = _checkpoint_root(paths)
    base = root if name == PIPELINE_JOB else root / "jobs" / name
    return base / f"layout-{STATE_LAYOUT}"


def write_flink_conf(conf_dir: Path, settings: Settings, paths: StackPaths, *,
                     web_ui_port: int | None = None, restore_from: Path | None = None,
                     checkpoint_dir: Path | None = None) -> Path:
    """Write ``flink-conf.yaml`` into ``conf_dir`` and return the directory.

    ``web_ui_port`` None uses ``[flink] web_ui_port``; 0 lets the job's mini
    cluster pick a free port (for extra jobs next to the pipeline, e.g. tests).
    ``restore_from`` is a retained checkpoint or savepoint directory to start from.
    ``checkpoint_dir`` (default: the pipeline's, see :func:`job_checkpoint_dir`)
    receives the job's checkpoints.
    """
    bind_host = settings.stack.bind_host
    port = settings.flink.web_ui_port if web_ui_port is None else web_ui_port
    data = paths.data("flink")
    lines = [
        "# Written by runners/stack/flink.py; edit config/local.toml instead.",
        # The mini cluster's REST endpoint and web UI; 8081 belongs to the schema registry.
        f"rest.bind-address: {bind_host}",
        f"rest.address: {bind_host}",
        f"rest.bind-port: {port}",
        f"rest.port: {port}",
        # The mini cluster's blob server (and any TaskManager data port) would otherwise
        # listen on every interface.
        f"jobmanager.bind-host: {bind_host}",
        f"taskmanager.bind-host: {bind_host}",
        "state.backend.type: hashmap",
        f"state.checkpoints.dir: {(checkpoint_dir or _checkpoint_root(paths)).as_uri()}",
        f"state.savepoints.dir: {(data / 'savepoints').as_uri()}",
        # Keep checkpoints when a job is cancelled or the job server dies: they are the
        # restart points (see job_submission_args).
        "execution.checkpointing.externalized-checkpoint-retention: RETAIN_ON_CANCELLATION",
        "state.checkpoints.num-retained: 3",
        f"taskmanager.numberOfTaskSlots: {max(2, settings.flink.parallelism)}",
        f"parallelism.default: {settings.flink.parallelism}",
        f"io.tmp.dirs: {data / 'tmp'}",
        # How long a partly filled network buffer waits before it is sent to the next
        # stage (Flink's default 100 ms is paid at each keyed exchange).
        f"execution.buffer-timeout.interval: "
        f"{settings.flink.buffer_timeout_ms} ms",
    ]
    if restore_from is not None:
        lines += [
            f"execution.savepoint.path: {restore_from.as_uri()}",
            # Operators removed from the pipeline since the checkpoint must not block a restart.
            "execution.savepoint.ignore-unclaimed-state: true",
        ]
    conf_dir.mkdir(parents=True, exist_ok=True)
    (data / "tmp").mkdir(parents=True, exist_ok=True)
    (conf_dir / "flink-conf.yaml").write_text("\n".join(lines) + "\n")
    return conf_dir


def latest_checkpoint(checkpoint_root: Path) -> Path | None:
    """The newest completed checkpoint (a ``chk-N`` dir with ``_metadata``) of any job id
    directly under ``checkpoint_root`` (one job name's dir, see :func:`job_checkpoint_dir`)."""
    candidates = [meta.parent for meta in checkpoint_root.glob("*/chk-*/_metadata")]
    if not candidates:
        return None
    return max(candidates, key=lambda chk: (chk / "_metadata").stat().st_mtime)


def job_submission_args(settings: Settings, paths: StackPaths, *, name: str = "pipeline",
                        restore: bool = True, web_ui_port: int | None = None) -> list[str]:
    """Extra pipeline arguments for a job submitted to the job server.

    Writes a per-job Flink conf dir ``<run>/conf/flink/jobs/<name>`` and returns
    ``["--flink_conf_dir=..."]``. With ``restore`` the job starts from the
    newest retained checkpoint (Kafka offsets, dedup and alarm state) when there
    is one. Checkpoints are kept per ``name`` (:func:`job_checkpoint_dir`), so a
    restore only takes checkpoints of earlier jobs submitted under the same
    name. Jobs other than the pipeline pass a name of their own and
    ``web_ui_port=0`` (or a free port) so they take neither the pipeline's
    state nor its UI port.
    """
    checkpoint_dir = job_checkpoint_dir(paths, name)
    restore_from = latest_checkpoint(checkpoint_dir) if restore else None
    if restore_from is not None:
        _LOGGER.info("job %s resumes from checkpoint %s", name, restore_from)
    conf_dir = write_flink_conf(paths.conf("flink") / "jobs" / name, settings, paths,
                                web_ui_port=web_ui_port, restore_from=restore_from,
                                checkpoint_dir=checkpoint_dir)
    return [f"--flink_conf_dir={conf_dir}"]


def expansion_address(settings: Settings) -> str:
    """``host:port`` of the kafka-expansion service, for ReadRawTelemetry(expansion_service=...)."""
    return f"{settings.stack.bind_host}:{settings.flink.expansion_port}"


def running_jobs(rest_url: str, timeout_s: float = 5.0) -> list[dict[str, object]]:
    """Jobs of the Flink mini cluster at ``rest_url`` (``http://host:web_ui_port``), any state."""
    import requests

    resp = requests.get(f"{rest_url}/jobs/overview", timeout=timeout_s)
    resp.raise_for_status()
    return list(resp.json().get("jobs", []))


def cancel_jobs(rest_url: str, job_name: str, wait_s: float = 60.0,
                until_gone: bool = True) -> int:
    """Cancel every unfinished Flink job named ``job_name``; return how many were cancelled.

    ``rest_url`` is the job's mini cluster (``http://host:web_ui_port``). Waits
    until the mini cluster, which shuts down with its only job, stops answering:
    a job submitted while the previous one's SDK environment is still being torn
    down was seen to stall without processing anything. Raises RuntimeError when
    the job does not stop in time. Retained checkpoints stay on disk
    (RETAIN_ON_CANCELLATION) as restart points. With ``until_gone`` False (a session
    cluster, runners/stack/cluster.py, which keeps answering) it waits until the jobs
    are cancelled instead.
    """
    import requests

    try:
        jobs = running_jobs(rest_url)
    except requests.ConnectionError:
        return 0
    jids = [str(job["jid"]) for job in jobs if job.get("name") == job_name
            and job.get("state") not in ("CANCELED", "FINISHED", "FAILED")]
    for jid in jids:
        requests.patch(f"{rest_url}/jobs/{jid}", params={"mode": "cancel"}, timeout=10)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            jobs = running_jobs(rest_url, timeout_s=2.0)
        except requests.ConnectionError:
            return len(jids)
        if not until_gone and all(str(job.get("state")) in ("CANCELED", "FINISHED", "FAILED")
                                  for job in jobs if job.get("jid") in jids):
            return len(jids)
        if time.monotonic() > deadline:
            raise RuntimeError(f"Flink job {job_name!r} at {rest_url} did not stop "
                               f"within {wait_s:.0f} s")
        time.sleep(0.5)


def _grpc_ready(target: str, timeout_s: float = 2.0) -> bool:
    """True when a gRPC server answers at ``target`` (an HTTP/2 handshake, no log noise)."""
    import grpc  # a dependency of apache-beam

    channel = grpc.insecure_channel(target)
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout_s)
        return True
    except grpc.FutureTimeoutError:
        return False
    finally:
        channel.close()


def services(settings: Settings, paths: StackPaths) -> list[ServiceSpec]:
    bind_host = settings.stack.bind_host
    job_port = settings.flink.job_port
    artifact_port = settings.flink.artifact_port
    expansion_port = settings.flink.expansion_port
    web_ui_port = settings.flink.web_ui_port
    pool_port = settings.flink.worker_pool_port
    # Optional [flink] job_server_heap (default 1g): each job's mini cluster lives in this JVM.
    heap = settings.flink.job_server_heap
    jars = paths.jars("flink")
    conf_dir = paths.conf("flink") / "server"
    artifacts = paths.data("flink") / "artifacts"

    def prepare() -> None:
        if not (jars / _MARKER_JAR).exists():
            raise RuntimeError(f"Flink job server jars not found in {jars}: {_JARS_HINT}")
        artifacts.mkdir(parents=True, exist_ok=True)
        _checkpoint_root(paths).mkdir(parents=True, exist_ok=True)
        write_flink_conf(conf_dir, settings, paths)
        # Bind fix (runners/stack/jvm_patches.py): Beam's gRPC servers would listen on every
        # interface.
        jvm_patches.compile_patches(paths)
        if on_cluster:
            cluster.build_patch_jar(paths)

    # The cluster topology (runners/stack/cluster.py): a JobManager and TaskManagers start
    # first and the job server submits to the JobManager instead of a mini cluster.
    on_cluster = cluster.enabled(settings)
    master = cluster.jobmanager_address(settings) if on_cluster else "[local]"
    cluster_specs = (cluster.flink_cluster_services(settings, paths, java_opens=JAVA_OPENS,
                                                    log_props=_LOG_PROPS)
                     if on_cluster else [])

    job_server = ServiceSpec(
        name="flink-jobserver",
        argv=["java", f"-Xmx{heap}", "-XX:+ExitOnOutOfMemoryError", *JAVA_OPENS, *_LOG_PROPS,
              "-cp", cluster.patched_classpath(paths) if on_cluster
              else jvm_patches.classpath(paths), JOB_SERVER_MAIN,
              "--job-host", bind_host,
              "--job-port", str(job_port),
              "--artifact-port", str(artifact_port),
              # Its built-in expansion service would give Java transforms a DOCKER
              # environment; kafka-expansion below owns the expansion port instead.
              "--expansion-port", "0",
              "--artifacts-dir", str(artifacts),
              "--flink-master", master,
              "--flink-conf-dir", str(conf_dir)],
        # The web UI port is bound by each job's mini cluster, not at start: check it too
        # (on the cluster topology the JobManager holds it).
        ports=(job_port, artifact_port) if on_cluster else (job_port, artifact_port, web_ui_port),
        healthy=lambda: _grpc_ready(f"{bind_host}:{job_port}"),
        start_timeout_s=60.0,
        stop_timeout_s=20.0,
        prepare=prepare,
        requires={"java": _JAVA_HINT},
    )

    # KafkaIO for ReadRawTelemetry(expansion_service=...): Java transforms run EMBEDDED in
    # the job server JVM; use_deprecated_read makes KafkaIO a runner-native Flink source
    # (the SDF form stalls on backlogs and holds the watermark on this runner).
    expansion = ServiceSpec(
        name="kafka-expansion",
        argv=["java", "-Xmx256m", "-XX:+ExitOnOutOfMemoryError", *JAVA_OPENS, *_LOG_PROPS,
              "-cp", jvm_patches.classpath(paths), jvm_patches.EXPANSION_MAIN,
              bind_host, str(expansion_port),
              "--defaultEnvironmentType=EMBEDDED", "--experiments=use_deprecated_read"],
        ports=(expansion_port,),
        healthy=lambda: _grpc_ready(f"{bind_host}:{expansion_port}"),
        prepare=lambda: jvm_patches.compile_patches(paths),
        start_timeout_s=60.0,
        stop_timeout_s=10.0,
        requires={"java": _JAVA_HINT},
    )

    venv_bin = str(Path(sys.executable).parent)
    worker_pool = ServiceSpec(
        name="beam-worker-pool",
        argv=[sys.executable, "-m", "runners.worker_pool", f"--port={pool_port}",
              f"--bind_host={settings.stack.bind_host}",
              f"--state_cache_mb={settings.flink.sdk_state_cache_mb}",
              f"--gc_threshold={settings.flink.sdk_gc_threshold}"],
        ports=(pool_port,),
        # The pool starts SDK workers as `python -c ...` from PATH: put this venv first so
        # workers import the same Beam and the project's modules.
        env={"PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}",
             "PYTHONPATH": str(REPO_ROOT)},
        cwd=REPO_ROOT,
        healthy=lambda: _grpc_ready(f"{bind_host}:{pool_port}"),
        start_timeout_s=30.0,
        stop_timeout_s=10.0,
    )
    return [*cluster_specs, job_server, expansion, worker_pool]
