"""Kafka 4.1 broker in KRaft single-node mode, run from the Maven Central jars.

Storage is formatted on the first start only; the cluster id is kept in
``<run>/data/kafka/cluster-id``. Broker logs go through log4j2 to stdout, which
the supervisor writes to ``<run>/logs/kafka.log``. Once healthy, the pipeline's
four topics (``[kafka]`` settings) and the schema registry's compacted
``_schemas`` topic are created or brought in line, idempotently.

:func:`broker_properties` and :func:`prepare_node` write and format a node of a KRaft
cluster of any size: this single broker is the one-node case of the cluster topology's
three (runners/stack/cluster.py).
"""

from __future__ import annotations

import base64
import logging
import socket
import subprocess
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewPartitions,
    NewTopic,
)

from config.settings import SchemaRegistrySettings, Settings
from runners.stack import cluster
from runners.stack.spec import ServiceSpec, StackPaths

__all__ = ["services", "SCHEMAS_TOPIC", "broker_properties", "pipeline_topics", "prepare_node",
           "ensure_topics"]

_LOGGER = logging.getLogger(__name__)

# Default of [schema_registry] topic.
SCHEMAS_TOPIC: str = SchemaRegistrySettings.topic
_JAVA_HINT = "install a JDK 17: apt-get install openjdk-17-jre-headless"
_JARS_HINT = "run `make jars` (bash scripts/fetch-jars.sh)"

_LOG4J2_XML = """<?xml version="1.0" encoding="UTF-8"?>
<!-- Written by runners/stack/kafka.py: everything to stdout (the supervisor's log file). -->
<Configuration status="WARN">
  <Appenders>
    <Console name="stdout" target="SYSTEM_OUT">
      <PatternLayout pattern="[%d{ISO8601}] %p %m (%c)%n"/>
    </Console>
  </Appenders>
  <Loggers>
    <Root level="INFO"><AppenderRef ref="stdout"/></Root>
    <Logger name="kafka.request.logger" level="WARN"/>
    <Logger name="state.change.logger" level="WARN"/>
    <Logger name="kafka.controller" level="INFO"/>
    <Logger name="kafka.log.LogCleaner" level="WARN"/>
    <Logger name="org.apache.kafka.raft" level="WARN"/>
    <Logger name="org.apache.kafka.metadata" level="WARN"/>
    <Logger name="org.apache.kafka.image" level="WARN"/>
    <Logger name="org.apache.kafka.storage.internals.log" level="WARN"/>
  </Loggers>
</Configuration>
"""


def pipeline_topics(settings: Settings) -> list[str]:
    kafka = settings.kafka
    return [kafka.topic_raw, kafka.topic_validated, kafka.topic_alarms, kafka.topic_dlq]


def _host_port(settings: Settings) -> tuple[str, int]:
    servers = settings.kafka.bootstrap_servers
    first = servers.split(",")[0].strip()
    host, sep, port = first.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"setting {settings.origin('kafka', 'bootstrap_servers')} must be "
                         f"host:port, got {servers!r}")
    return host, int(port)


def _cluster_id() -> str:
    """A Kafka cluster id: 16 random bytes, URL-safe base64 without padding, not starting '-'."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


def broker_properties(settings: Settings, node: int, brokers: Sequence[tuple[int, int]],
                      log_dir: Path, written_by: str) -> str:
    """``server.properties`` of KRaft node ``node`` (1-based) of ``len(brokers)`` nodes, each
    a broker and a controller; ``brokers`` holds every node's (client port, controller port).

    One node (the single topology): a dynamic quorum of its own controller (storage formatted
    ``--standalone``), every internal topic with one replica, threads for a broker that has
    the machine to itself. Several (the cluster topology): a static quorum of all their
    controllers, every topic replicated on each node, a write needing two in sync, fewer
    threads (the nodes share one machine), and leadership given back to a node that returns.
    """
    host, _port = _host_port(settings)
    bind_host = settings.stack.bind_host
    port, cport = brokers[node - 1]
    n = len(brokers)
    single = n == 1
    min_isr = 1 if single else 2
    quorum = (f"controller.quorum.bootstrap.servers={bind_host}:{cport}" if single else
              "controller.quorum.voters="
              + ",".join(f"{i + 1}@{bind_host}:{c}" for i, (_p, c) in enumerate(brokers)))
    return "\n".join([
        f"# Written by {written_by} on every start; edit config/local.toml instead.",
        "process.roles=broker,controller",
        f"node.id={node}",
        quorum,
        f"listeners=PLAINTEXT://{bind_host}:{port},CONTROLLER://{bind_host}:{cport}",
        f"advertised.listeners=PLAINTEXT://{host}:{port}",
        "controller.listener.names=CONTROLLER",
        "inter.broker.listener.name=PLAINTEXT",
        "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        f"log.dirs={log_dir}",
        f"num.partitions={settings.kafka.partitions}",
        f"log.retention.ms={settings.kafka.retention_ms}",
        f"num.network.threads={3 if single else 2}",
        f"num.io.threads={4 if single else 2}",
        *([] if single else [f"default.replication.factor={n}", f"min.insync.replicas={min_isr}"]),
        f"offsets.topic.replication.factor={n}",
        "offsets.topic.num.partitions=8",
        f"transaction.state.log.replication.factor={n}",
        f"transaction.state.log.min.isr={min_isr}",
        "transaction.state.log.num.partitions=4",
        f"share.coordinator.state.topic.replication.factor={n}",
        f"share.coordinator.state.topic.min.isr={min_isr}",
        "group.initial.rebalance.delay.ms=0",
        # A node that comes back catches up and takes its partitions' leadership back.
        *([] if single else ["auto.leader.rebalance.enable=true",
                             "leader.imbalance.check.interval.seconds=30"]),
        # Local dev: a producer to an unknown topic gets one with the standard layout.
        "auto.create.topics.enable=true",
        "",
    ])


def prepare_node(settings: Settings, paths: StackPaths, *, name: str, node: int,
                 brokers: Sequence[tuple[int, int]], conf_dir: Path, log_dir: Path,
                 id_file: Path, jvm: list[str], written_by: str) -> None:
    """Write node ``node``'s log4j2.xml and server.properties (:func:`broker_properties`)
    into ``conf_dir``; on its first start, format its storage in ``log_dir`` with the
    cluster id kept in ``id_file`` (made by whichever node starts first)."""
    jars = paths.jars("kafka")
    if not any(jars.glob("kafka_2.13-*.jar")):
        raise RuntimeError(f"Kafka jars not found in {jars}; {_JARS_HINT}")
    conf_dir.mkdir(parents=True, exist_ok=True)
    (conf_dir / "log4j2.xml").write_text(_LOG4J2_XML)
    props = conf_dir / "server.properties"
    props.write_text(broker_properties(settings, node, brokers, log_dir, written_by))
    if (log_dir / "meta.properties").exists():
        return
    if not id_file.exists():
        id_file.parent.mkdir(parents=True, exist_ok=True)
        id_file.write_text(_cluster_id() + "\n")
    cluster_id = id_file.read_text().strip()
    single = len(brokers) == 1
    _LOGGER.info("formatting Kafka storage of %s in %s (cluster id %s)", name, log_dir, cluster_id)
    result = subprocess.run(
        [*jvm, "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(props),
         *(["--standalone"] if single else [])],
        capture_output=True, text=True, timeout=120, check=False)
    with paths.log(name).open("a") as fh:
        fh.write(f"=== storage format (cluster id {cluster_id}"
                 f"{'' if single else f', node {node}'})\n{result.stdout}{result.stderr}")
    if result.returncode != 0:
        raise RuntimeError(f"Kafka storage format of {name} failed (exit {result.returncode}): "
                           f"{(result.stderr or result.stdout).strip()[-2000:]}")


def _admin(bootstrap: str) -> AdminClient:
    # A silent logger: the health probe polls while the broker is still starting.
    quiet = logging.getLogger(f"{__name__}.admin")
    quiet.propagate = False
    quiet.addHandler(logging.NullHandler())
    return AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": 3000,
                        "reconnect.backoff.max.ms": 1000}, logger=quiet)


def ensure_topics(bootstrap: str, wanted: dict[str, tuple[int, dict[str, str]]],
                  timeout_s: float = 30.0, replication_factor: int = 1) -> list[str]:
    """Create missing topics and align configs/partitions of existing ones; return actions taken.

    ``wanted`` maps topic -> (partitions, configs). Partitions are only ever
    increased (Kafka cannot shrink a topic); a topic with more partitions than
    wanted is left alone and reported. ``replication_factor`` applies to created
    topics (3 on the cluster topology, runners/stack/cluster.py).
    """
    admin = _admin(bootstrap)
    existing = admin.list_topics(timeout=timeout_s).topics
    actions: list[str] = []
    to_create = [NewTopic(name, num_partitions=parts, replication_factor=replication_factor,
                          config=cfg)
                 for name, (parts, cfg) in wanted.items() if name not in existing]
    for name, fut in (admin.create_topics(to_create, operation_timeout=timeout_s).items()
                      if to_create else []):
        try:
            fut.result()
            actions.append(f"created {name}")
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise RuntimeError(f"creating Kafka topic {name} failed: {exc}") from exc
    grow = {}
    for name, (parts, cfg) in wanted.items():
        if name not in existing:
            continue
        have = len(existing[name].partitions)
        if have < parts:
            grow[name] = NewPartitions(name, parts)
        elif have > parts:
            actions.append(f"{name} has {have} partitions (> {parts} wanted; Kafka cannot shrink)")
        resource = ConfigResource(
            ConfigResource.Type.TOPIC, name,
            incremental_configs=[ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET)
                                 for k, v in cfg.items()])
        # A KRaft quorum that has just formed (the cluster topology's three brokers) answers
        # "Timed out waiting for controller" for a while: retry what Kafka calls retriable.
        deadline = time.monotonic() + timeout_s
        while True:
            [fut] = admin.incremental_alter_configs([resource]).values()
            try:
                fut.result()
                break
            except KafkaException as exc:
                error = exc.args[0] if exc.args else None
                retriable = error is not None and (error.retriable() or
                                                   error.code() == KafkaError._TIMED_OUT)
                if not retriable or time.monotonic() > deadline:
                    raise RuntimeError(f"updating config {cfg} of Kafka topic {name} failed: "
                                       f"{exc}") from exc
                time.sleep(1.0)
    for name, fut in (admin.create_partitions(list(grow.values())).items() if grow else []):
        try:
            fut.result()
            actions.append(f"grew {name} to {grow[name].new_total_count} partitions")
        except KafkaException as exc:
            raise RuntimeError(f"adding partitions to Kafka topic {name} failed: {exc}") from exc
    return actions


def services(settings: Settings, paths: StackPaths) -> list[ServiceSpec]:
    host, port = _host_port(settings)
    cport = settings.kafka.controller_port
    partitions = settings.kafka.partitions
    retention_ms = settings.kafka.retention_ms
    bootstrap = f"{host}:{port}"
    schemas_topic = settings.schema_registry.topic
    conf_dir = paths.conf("kafka")
    data_dir = paths.data("kafka")
    log_dir = data_dir / "log"
    props = conf_dir / "server.properties"
    log4j = conf_dir / "log4j2.xml"
    jars = paths.jars("kafka")
    classpath = f"{jars}/*"
    jvm = ["java", "-Xms256m", "-Xmx768m", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
           "-XX:+ExitOnOutOfMemoryError", "-Djava.awt.headless=true",
           f"-Dlog4j2.configurationFile={log4j}", "-cp", classpath]

    def prepare() -> None:
        prepare_node(settings, paths, name="kafka", node=1, brokers=[(port, cport)],
                     conf_dir=conf_dir, log_dir=log_dir, id_file=data_dir / "cluster-id",
                     jvm=jvm, written_by="runners/stack/kafka.py")

    def healthy() -> bool:
        try:
            with socket.create_connection((host, port), timeout=1.0):
                pass
        except OSError:
            return False
        md = _admin(bootstrap).list_topics(timeout=3.0)
        return bool(md.brokers)

    replicated = cluster.enabled(settings)
    # On the cluster topology every topic has 3 replicas and an acks=all write needs 2.
    replicas = {"min.insync.replicas": "2"} if replicated else {}

    def after_start() -> None:
        wanted: dict[str, tuple[int, dict[str, str]]] = {
            t: (partitions, {"retention.ms": str(retention_ms), **replicas})
            for t in pipeline_topics(settings)
        }
        # The schema registry stores schemas here, like Confluent's: keep every key forever.
        wanted[schemas_topic] = (1, {"cleanup.policy": "compact", "retention.ms": "-1",
                                     **replicas})
        for action in ensure_topics(cluster.cluster_bootstrap(bootstrap) if replicated
                                    else bootstrap, wanted,
                                    replication_factor=cluster.BROKERS if replicated else 1):
            _LOGGER.info("kafka topics: %s", action)

    if replicated:
        return cluster.kafka_cluster_services(settings, paths, after_start=after_start)

    return [ServiceSpec(
        name="kafka",
        argv=[*jvm, "kafka.Kafka", str(props)],
        ports=(port, cport),
        healthy=healthy,
        start_timeout_s=90.0,
        stop_timeout_s=30.0,
        prepare=prepare,
        after_start=after_start,
        requires={"java": _JAVA_HINT},
    )]
