"""The cluster topology: a Flink standalone session cluster and a three-broker Kafka cluster.

``dcmms-telemetry up --profile cluster`` (``make run-cluster``) sets
``[stack] topology = "cluster"`` (environment ``DCMMS_STACK_TOPOLOGY``) and
records it in ``<run>/topology``, so ``down``, ``status``, the watcher and the
drills find the same services later. On top of whatever port block is in force
(the default stack's, or a profile's of runners/profiles.py), the kafka and
flink modules then describe:

* Kafka as ``kafka``, ``kafka-2``, ``kafka-3``: three KRaft nodes, each broker and
  controller, with a static quorum of the three controllers. Node ``i`` (1..3)
  listens on the bootstrap port + 2(i-1) and the controller port + 2(i-1)
  (9092/9093, 9094/9095, 9096/9097 by default), so the configured bootstrap
  address stays broker 1's. Topics get replication factor 3 and
  ``min.insync.replicas=2``; the stack's clients get all three addresses
  (:func:`apply_topology`), so a new client still bootstraps while one broker is down.
* Flink as ``flink-jobmanager`` (REST and web UI on ``[flink] web_ui_port``, RPC on
  web_ui_port + 1, blob server + 2) and ``flink-taskmanager-1`` / ``-2`` (RPC and
  data ports web_ui_port + 3.., one slot each by default, ``[flink]
  cluster_slots_per_taskmanager``), all three from the Flink jars the job server
  already uses (flink-runtime holds both entry points). The Beam job server
  submits to the JobManager (``--flink-master``) and the job's parallelism is the
  total number of slots. The TaskManagers start Python SDK workers through the
  host's worker pool (``beam-worker-pool``, as in the single-node stack): Beam's
  EXTERNAL environment has one address per job, so on one host both TaskManagers
  share the pool, on several hosts each host runs its own (docs/scaling.md).

Everything else (registry, QuestDB, Mosquitto, API, bridge, pipeline launcher) is
the single-node stack's.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import MutableMapping
from pathlib import Path

from config.settings import Settings
from runners.stack.spec import ServiceSpec, StackPaths

__all__ = [
    "TOPOLOGY_ENV",
    "BROKERS",
    "TASK_MANAGERS",
    "apply_topology",
    "broker_names",
    "broker_ports",
    "cluster_bootstrap",
    "enabled",
    "flink_cluster_services",
    "jobmanager_address",
    "kafka_cluster_services",
    "broker_health",
    "build_patch_jar",
    "patched_classpath",
    "record_topology",
    "recorded_topology",
    "registered_taskmanagers",
    "slots_per_taskmanager",
    "status_lines",
    "taskmanager_health",
    "taskmanager_names",
    "total_slots",
]

_LOGGER = logging.getLogger(__name__)

TOPOLOGY_ENV = "DCMMS_STACK_TOPOLOGY"
BROKERS = 3
TASK_MANAGERS = 2
_TOPOLOGY_FILE = "topology"
_JAVA_HINT = "install a JDK 17: apt-get install openjdk-17-jre-headless"
_JARS_HINT = "run `make jars` (bash scripts/fetch-jars.sh)"

JOBMANAGER_MAIN = "org.apache.flink.runtime.entrypoint.StandaloneSessionClusterEntrypoint"
TASKMANAGER_MAIN = "org.apache.flink.runtime.taskexecutor.TaskManagerRunner"


# -- topology --------------------------------------------------------------------------------------

def enabled(settings: Settings) -> bool:
    """True when ``[stack] topology`` (DCMMS_STACK_TOPOLOGY) is ``cluster``."""
    # config.settings checked it is one of the two when it loaded them.
    return settings.stack.topology == "cluster"


def recorded_topology(run_dir: Path) -> str | None:
    """The topology ``up`` recorded in ``run_dir`` (None: none recorded)."""
    try:
        return (run_dir / _TOPOLOGY_FILE).read_text().strip() or None
    except FileNotFoundError:
        return None


def record_topology(run_dir: Path, topology: str | None) -> None:
    """Remember the stack's topology for later commands (None: forget it)."""
    path = run_dir / _TOPOLOGY_FILE
    if topology is None:
        path.unlink(missing_ok=True)
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(topology + "\n")


def _bootstrap_first(servers: str) -> tuple[str, int]:
    first = servers.split(",")[0].strip()
    host, _sep, port = first.rpartition(":")
    return host, int(port)


def cluster_bootstrap(servers: str) -> str:
    """The three brokers' addresses for a bootstrap setting naming broker 1 (or all three)."""
    host, port = _bootstrap_first(servers)
    return ",".join(f"{host}:{port + 2 * i}" for i in range(BROKERS))


def apply_topology(topology: str | None, environ: MutableMapping[str, str] | None = None,
                   run_dir: Path | None = None) -> str:
    """Put the cluster topology into ``environ`` (default os.environ); return the one in force.

    ``topology`` None takes DCMMS_STACK_TOPOLOGY if set, else what ``up`` recorded in
    ``run_dir``, else ``[stack] topology`` of the configuration file (``single``). For
    ``cluster`` the Kafka bootstrap setting is widened to the three brokers, so every
    service and client started from here can reach the cluster while any one broker is down.
    """
    from config.settings import load_settings

    env = os.environ if environ is None else environ
    chosen = topology or env.get(TOPOLOGY_ENV) or (
        recorded_topology(run_dir) if run_dir is not None else None) or \
        load_settings(environ=env).stack.topology
    if chosen not in ("single", "cluster"):
        from config.settings import SettingsError
        raise SettingsError(f"unknown stack topology {chosen!r} (environment variable "
                            f"{TOPOLOGY_ENV} or {run_dir}/{_TOPOLOGY_FILE}): 'single' or 'cluster'")
    env[TOPOLOGY_ENV] = chosen
    if chosen == "cluster":
        servers = load_settings(environ=env).kafka.bootstrap_servers
        env["DCMMS_KAFKA_BOOTSTRAP_SERVERS"] = cluster_bootstrap(servers)
    return chosen


# -- ports -----------------------------------------------------------------------------------------

def broker_names() -> list[str]:
    return ["kafka", *(f"kafka-{i}" for i in range(2, BROKERS + 1))]


def taskmanager_names() -> list[str]:
    return [f"flink-taskmanager-{i}" for i in range(1, TASK_MANAGERS + 1)]


def broker_ports(settings: Settings) -> list[tuple[int, int]]:
    """(client port, controller port) of brokers 1..3: the configured ones + 2(i-1)."""
    _host, port = _bootstrap_first(settings.kafka.bootstrap_servers)
    cport = settings.kafka.controller_port
    return [(port + 2 * i, cport + 2 * i) for i in range(BROKERS)]


def _flink_ports(settings: Settings) -> dict[str, int]:
    web = settings.flink.web_ui_port
    ports = {"rest": web, "jm_rpc": web + 1, "blob": web + 2}
    for i in range(TASK_MANAGERS):
        ports[f"tm{i + 1}_rpc"] = web + 3 + 2 * i
        ports[f"tm{i + 1}_data"] = web + 4 + 2 * i
    return ports


def slots_per_taskmanager(settings: Settings) -> int:
    return settings.flink.cluster_slots_per_taskmanager


def total_slots(settings: Settings) -> int:
    """The job's parallelism on the cluster: every slot of every TaskManager."""
    return TASK_MANAGERS * slots_per_taskmanager(settings)


def jobmanager_address(settings: Settings) -> str:
    """``host:port`` of the JobManager's REST endpoint (the job server's ``--flink-master``)."""
    return f"{settings.stack.bind_host}:{settings.flink.web_ui_port}"


# -- Kafka -----------------------------------------------------------------------------------------

def kafka_cluster_services(settings: Settings, paths: StackPaths, *,
                           after_start) -> list[ServiceSpec]:  # noqa: ANN001 - callable
    """Three KRaft nodes; ``after_start`` (topic creation) runs once the third is healthy.

    Their configuration is the single broker's (runners/stack/kafka.py's
    :func:`~runners.stack.kafka.broker_properties`) for three nodes."""
    from runners.stack.kafka import prepare_node

    host, _port = _bootstrap_first(settings.kafka.bootstrap_servers)
    ports = broker_ports(settings)
    jars = paths.jars("kafka")
    # Data of their own (not the single-node broker's, formatted for another quorum).
    id_file = paths.data("kafka-cluster") / "cluster-id"
    specs = []
    for idx, (name, (port, cport)) in enumerate(zip(broker_names(), ports, strict=True)):
        node = idx + 1
        conf_dir = paths.conf(name)
        log_dir = paths.data("kafka-cluster") / f"node-{node}"
        props = conf_dir / "server.properties"
        log4j = conf_dir / "log4j2.xml"
        # Modest heaps: three brokers on one machine.
        jvm = ["java", "-Xms128m", "-Xmx512m", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
               "-XX:+ExitOnOutOfMemoryError", "-Djava.awt.headless=true",
               f"-Dlog4j2.configurationFile={log4j}", "-cp", f"{jars}/*"]

        def prepare(node: int = node, conf_dir: Path = conf_dir, log_dir: Path = log_dir,
                    jvm: list[str] = jvm, name: str = name) -> None:
            prepare_node(settings, paths, name=name, node=node, brokers=ports,
                         conf_dir=conf_dir, log_dir=log_dir, id_file=id_file, jvm=jvm,
                         written_by="runners/stack/cluster.py")

        def healthy(node: int = node, port: int = port, cport: int = cport) -> bool:
            return broker_registered(host, ports, node, cport)

        specs.append(ServiceSpec(
            name=name,
            argv=[*jvm, "kafka.Kafka", str(props)],
            ports=(port, cport),
            healthy=healthy,
            start_timeout_s=120.0,
            # The last broker standing waits for a controller quorum to shut down cleanly.
            stop_timeout_s=15.0,
            prepare=prepare,
            after_start=after_start if node == BROKERS else None,
            requires={"java": _JAVA_HINT},
        ))
    return specs


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def cluster_brokers(host: str, ports: list[tuple[int, int]], timeout_s: float = 3.0
                    ) -> set[int] | None:
    """Node ids of the brokers registered in the cluster's metadata (None: no answer)."""
    from runners.stack.kafka import _admin

    try:
        md = _admin(",".join(f"{host}:{p}" for p, _c in ports)).list_topics(timeout=timeout_s)
    except Exception:  # noqa: BLE001 - no quorum yet: no metadata
        return None
    return set(md.brokers) if md.brokers else None


def broker_registered(host: str, ports: list[tuple[int, int]], node: int, cport: int) -> bool:
    """Health of node ``node``: registered in the cluster metadata and serving its port.

    While the quorum is not formed (fewer than two controllers up, i.e. during the
    first ``up``) no broker answers metadata; a node then counts as healthy once its
    controller listens, so the next node can start and complete the quorum.
    """
    port = ports[node - 1][0]
    brokers = cluster_brokers(host, ports)
    if brokers is None:
        others_up = any(_port_open(host, c) for i, (_p, c) in enumerate(ports) if i != node - 1)
        return not others_up and _port_open(host, cport) if node < BROKERS else False
    return node in brokers and _port_open(host, port)


def broker_health(settings: Settings) -> dict[str, bool]:
    """Each broker's name -> registered in the cluster (for status and drills)."""
    host, _port = _bootstrap_first(settings.kafka.bootstrap_servers)
    ports = broker_ports(settings)
    brokers = cluster_brokers(host, ports) or set()
    return {name: (i + 1) in brokers and _port_open(host, ports[i][0])
            for i, name in enumerate(broker_names())}


# -- Flink -----------------------------------------------------------------------------------------

def _write_cluster_conf(conf_dir: Path, settings: Settings, paths: StackPaths,
                        extra: list[str]) -> None:
    bind_host = settings.stack.bind_host
    ports = _flink_ports(settings)
    data = paths.data("flink")
    heartbeat_ms = settings.flink.cluster_heartbeat_timeout_ms
    lines = [
        "# Written by runners/stack/cluster.py on every start; edit config/local.toml instead.",
        f"jobmanager.rpc.address: {bind_host}",
        f"jobmanager.rpc.port: {ports['jm_rpc']}",
        f"jobmanager.bind-host: {bind_host}",
        f"rest.address: {bind_host}",
        f"rest.bind-address: {bind_host}",
        f"rest.port: {ports['rest']}",
        f"rest.bind-port: {ports['rest']}",
        f"blob.server.port: {ports['blob']}",
        # Modest heaps: the Java side of a portable Beam job only moves bytes.
        f"jobmanager.memory.process.size: "
        f"{settings.flink.cluster_jobmanager_memory}",
        # Each TaskManager's memory, every part given (what Flink's shell scripts compute with
        # BashJavaUtils before they start a TaskManager): 1056 MB per process in total. The
        # hashmap state backend keeps state on the heap, so managed memory stays small.
        *(f"taskmanager.memory.{key}: {value}" for key, value in _TM_MEMORY.items()),
        "taskmanager.cpu.cores: 1.0",
        f"taskmanager.numberOfTaskSlots: {slots_per_taskmanager(settings)}",
        f"parallelism.default: {total_slots(settings)}",
        "state.backend.type: hashmap",
        f"state.checkpoints.dir: {(data / 'checkpoints-cluster').as_uri()}",
        f"state.savepoints.dir: {(data / 'savepoints').as_uri()}",
        "execution.checkpointing.externalized-checkpoint-retention: RETAIN_ON_CANCELLATION",
        "state.checkpoints.num-retained: 3",
        # A lost TaskManager is noticed within seconds (its RPC fails) or at the heartbeat
        # timeout; the job then restarts from its last checkpoint.
        "heartbeat.interval: 2000",
        f"heartbeat.timeout: {heartbeat_ms}",
        "restart-strategy.type: exponential-delay",
        "restart-strategy.exponential-delay.initial-backoff: 1 s",
        "restart-strategy.exponential-delay.max-backoff: 30 s",
        "restart-strategy.exponential-delay.attempts-before-reset-backoff: 1000000",
        # The job's jars (the job server's classpath) are already on every process's
        # classpath: load them from there, once.
        "classloader.resolve-order: parent-first",
        "execution.buffer-timeout.interval: "
        f"{settings.flink.buffer_timeout_ms} ms",
        "web.submit.enable: false",
        "web.cancel.enable: true",
        *extra,
    ]
    conf_dir.mkdir(parents=True, exist_ok=True)
    (conf_dir / "flink-conf.yaml").write_text("\n".join(lines) + "\n")


def _rest_json(settings: Settings, path: str, timeout_s: float = 3.0) -> dict | None:
    import requests

    url = f"http://127.0.0.1:{settings.flink.web_ui_port}{path}"
    try:
        resp = requests.get(url, timeout=timeout_s)
        resp.raise_for_status()
        return resp.json()
    except (requests.RequestException, ValueError):
        return None


def registered_taskmanagers(settings: Settings) -> dict[str, dict] | None:
    """TaskManagers the JobManager knows, by resource id (None: JobManager not answering)."""
    body = _rest_json(settings, "/taskmanagers")
    if body is None:
        return None
    return {str(tm.get("id")): tm for tm in body.get("taskmanagers", [])}


def taskmanager_health(settings: Settings) -> dict[str, bool]:
    """Each TaskManager's service name -> registered with the JobManager."""
    tms = registered_taskmanagers(settings) or {}
    return {name: name in tms for name in taskmanager_names()}


def flink_cluster_services(settings: Settings, paths: StackPaths, *, java_opens: list[str],
                           log_props: list[str]) -> list[ServiceSpec]:
    """JobManager and TaskManagers, in start order."""
    jars = paths.jars("flink")
    ports = _flink_ports(settings)
    bind_host = settings.stack.bind_host
    data = paths.data("flink")
    java = ["java", "-XX:+ExitOnOutOfMemoryError", *java_opens, *log_props,
            "-Dorg.slf4j.simpleLogger.log.org.apache.flink.runtime.executiongraph=info",
            "-Dorg.slf4j.simpleLogger.log.org.apache.flink.runtime.resourcemanager=info",
            "-Dorg.slf4j.simpleLogger.log.org.apache.flink.runtime.jobmaster=info"]
    jm_conf = paths.conf("flink-jobmanager")

    def jm_prepare() -> None:
        if not any(jars.glob("flink-runtime-*.jar")):
            raise RuntimeError(f"Flink jars not found in {jars}: {_JARS_HINT}")
        (data / "tmp").mkdir(parents=True, exist_ok=True)
        (data / "checkpoints-cluster").mkdir(parents=True, exist_ok=True)
        build_patch_jar(paths)
        _write_cluster_conf(jm_conf, settings, paths, [f"io.tmp.dirs: {data / 'tmp'}"])

    def jm_healthy() -> bool:
        return _rest_json(settings, "/overview") is not None

    # Flink computes its JVM heap from the process size; the entry points are given the
    # -Xmx/-Xms it would pass (flink's shell scripts do the same via BashJavaUtils).
    specs = [ServiceSpec(
        name="flink-jobmanager",
        argv=[*java, "-Xmx512m", "-Xms512m", "-XX:MaxMetaspaceSize=256m",
              "-cp", patched_classpath(paths), JOBMANAGER_MAIN, "--configDir", str(jm_conf)],
        ports=(ports["rest"], ports["jm_rpc"], ports["blob"]),
        healthy=jm_healthy,
        start_timeout_s=90.0,
        stop_timeout_s=20.0,
        prepare=jm_prepare,
        requires={"java": _JAVA_HINT},
    )]
    for i, name in enumerate(taskmanager_names(), start=1):
        conf = paths.conf(name)
        rpc, dport = ports[f"tm{i}_rpc"], ports[f"tm{i}_data"]
        tmp = paths.data(name) / "tmp"

        def tm_prepare(conf: Path = conf, rpc: int = rpc, dport: int = dport,
                       tmp: Path = tmp, name: str = name) -> None:
            tmp.mkdir(parents=True, exist_ok=True)
            build_patch_jar(paths)
            _write_cluster_conf(conf, settings, paths, [
                f"taskmanager.resource-id: {name}",
                f"taskmanager.host: {bind_host}",
                f"taskmanager.bind-host: {bind_host}",
                f"taskmanager.rpc.port: {rpc}",
                f"taskmanager.data.port: {dport}",
                f"io.tmp.dirs: {tmp}",
            ])

        def tm_healthy(name: str = name) -> bool:
            return name in (registered_taskmanagers(settings) or {})

        specs.append(ServiceSpec(
            name=name,
            argv=[*java, *_tm_jvm_sizes(), "-cp", patched_classpath(paths), TASKMANAGER_MAIN,
                  "--configDir", str(conf)],
            ports=(rpc, dport),
            healthy=tm_healthy,
            start_timeout_s=90.0,
            stop_timeout_s=20.0,
            prepare=tm_prepare,
            requires={"java": _JAVA_HINT},
        ))
    return specs


_TM_MEMORY = {
    "framework.heap.size": "128m", "task.heap.size": "256m", "managed.size": "32m",
    "network.min": "64m", "network.max": "64m", "framework.off-heap.size": "128m",
    "task.off-heap.size": "0m", "jvm-metaspace.size": "256m",
    "jvm-overhead.min": "192m", "jvm-overhead.max": "192m",
}


def patched_classpath(paths: StackPaths) -> str:
    """``-cp`` of the cluster's JVMs and of a job server that submits to them.

    The job server stages every entry of its classpath with the job (Flink's remote
    environment accepts jar files only), so the bind patches of runners/stack/jvm_patches.py
    go in as a jar built from their class directory (:func:`build_patch_jar`). The
    TaskManagers need them too: they host the Fn API servers the SDK workers dial.
    """
    from runners.stack import jvm_patches

    return f"{jvm_patches.patch_dir(paths).with_suffix('.jar')}:{paths.jars('flink')}/*"


def build_patch_jar(paths: StackPaths) -> Path:
    """Compile the bind patches if needed and zip them into ``<patch dir>.jar`` (idempotent)."""
    import shutil
    import zipfile

    from runners.stack import jvm_patches

    classes = jvm_patches.compile_patches(paths)
    jar = classes.with_suffix(".jar")
    if jar.exists():
        return jar
    tmp = jar.with_name(f"{jar.name}.tmp{os.getpid()}")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(classes.rglob("*.class")):
            zf.write(f, f.relative_to(classes).as_posix())
    shutil.move(tmp, jar)
    return jar


def _tm_jvm_sizes() -> list[str]:
    """The JVM limits matching _TM_MEMORY: heap = framework + task heap; direct = framework +
    task off-heap + network."""
    return ["-Xmx384m", "-Xms384m", "-XX:MaxDirectMemorySize=192m",
            "-XX:MaxMetaspaceSize=256m"]


def status_lines(settings: Settings) -> list[str]:
    """Cluster members with health, for ``dcmms-telemetry status``."""
    lines = []
    brokers = broker_health(settings)
    ports = broker_ports(settings)
    for (name, ok), (port, _c) in zip(brokers.items(), ports, strict=True):
        lines.append(f"  kafka broker {name:20s} port {port:<6d} "
                     f"{'registered' if ok else 'NOT registered'}")
    tms = registered_taskmanagers(settings)
    for name in taskmanager_names():
        tm = (tms or {}).get(name)
        if tm is None:
            lines.append(f"  flink taskmanager {name:20s} NOT registered with the JobManager")
        else:
            lines.append(f"  flink taskmanager {name:20s} registered, slots "
                         f"{tm.get('slotsNumber')} ({tm.get('freeSlots')} free)")
    overview = _rest_json(settings, "/overview")
    if overview is not None:
        lines.append(f"  flink cluster: {overview.get('taskmanagers')} TaskManager(s), "
                     f"{overview.get('slots-total')} slots, {overview.get('jobs-running')} "
                     f"job(s) running")
    return lines
