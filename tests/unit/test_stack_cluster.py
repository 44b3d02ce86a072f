"""The cluster topology's service lists, ports and settings (runners/stack/cluster.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from config.settings import SettingsError, load_settings
from runners.profiles import PROFILES, profile_environ, shifted_environ
from runners.run_pipeline import flink_defaults
from runners.stack import cluster
from runners.stack.supervisor import MODULE_ORDER, load_specs, paths_from_settings


def _settings(topology: str | None, base: dict[str, str] | None = None):
    env = dict(base or {})
    if topology is not None:
        env[cluster.TOPOLOGY_ENV] = topology
    return load_settings(environ=env)


def _specs(settings):
    return load_specs(settings, paths_from_settings(settings), MODULE_ORDER)


def test_single_is_the_default_and_unchanged() -> None:
    settings = _settings(None)
    assert not cluster.enabled(settings)
    names = [s.name for s in _specs(settings)]
    assert "kafka-2" not in names and "flink-taskmanager-1" not in names
    job_server = next(s for s in _specs(settings) if s.name == "flink-jobserver")
    assert job_server.argv[job_server.argv.index("--flink-master") + 1] == "[local]"


def test_cluster_services_in_start_order() -> None:
    settings = _settings("cluster")
    names = [s.name for s in _specs(settings)]
    brokers = cluster.broker_names()
    flink = ["flink-jobmanager", *cluster.taskmanager_names(), "flink-jobserver"]
    assert brokers == ["kafka", "kafka-2", "kafka-3"]
    assert [n for n in names if n in brokers] == brokers
    assert [n for n in names if n in flink] == flink
    assert names.index("kafka-3") < names.index("registry")
    job_server = next(s for s in _specs(settings) if s.name == "flink-jobserver")
    master = job_server.argv[job_server.argv.index("--flink-master") + 1]
    assert master == f"127.0.0.1:{settings.flink.web_ui_port}"
    # Only the last broker creates the topics (replication 3 needs all three).
    assert [s.name for s in _specs(settings) if s.after_start and s.name in brokers] == ["kafka-3"]


def test_cluster_ports_are_distinct_and_derived_from_the_block() -> None:
    for profile in [None, *PROFILES]:
        base = profile_environ(profile, {}) if profile else {}
        settings = _settings("cluster", base)
        ports = [p for s in _specs(settings) for p in s.ports]
        assert len(ports) == len(set(ports)), f"{profile}: a port twice in {sorted(ports)}"
        kafka_port = int(settings.kafka.bootstrap_servers.rpartition(":")[2])
        assert cluster.broker_ports(settings)[0][0] == kafka_port


def test_shifted_cluster_never_shares_with_the_test_stack() -> None:
    test_env = profile_environ("test", {})
    single = {p for s in _specs(_settings(None, test_env)) for p in s.ports}
    shifted_env = shifted_environ(test_env, 100, "cluster")
    shifted = _settings("cluster", shifted_env)
    assert not single & {p for s in _specs(shifted) for p in s.ports}
    assert shifted_env["DCMMS_STACK_RUN_DIR"] == ".run-test-cluster"
    assert shifted.pipeline.consumer_group != \
        _settings(None, test_env).pipeline.consumer_group


def test_apply_topology_widens_the_bootstrap_and_is_recorded(tmp_path: Path) -> None:
    env: dict[str, str] = {"DCMMS_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:39092"}
    assert cluster.apply_topology("cluster", env) == "cluster"
    assert env["DCMMS_KAFKA_BOOTSTRAP_SERVERS"] == \
        "127.0.0.1:39092,127.0.0.1:39094,127.0.0.1:39096"
    # Applying twice keeps three addresses.
    cluster.apply_topology("cluster", env)
    assert env["DCMMS_KAFKA_BOOTSTRAP_SERVERS"].count(",") == 2
    cluster.record_topology(tmp_path, "cluster")
    later: dict[str, str] = {}
    assert cluster.apply_topology(None, later, run_dir=tmp_path) == "cluster"
    cluster.record_topology(tmp_path, None)
    assert cluster.apply_topology(None, {}, run_dir=tmp_path) == "single"
    with pytest.raises(SettingsError, match=cluster.TOPOLOGY_ENV):
        cluster.apply_topology(None, {cluster.TOPOLOGY_ENV: "mesh"})


def test_job_parallelism_is_total_slots() -> None:
    args = flink_defaults(_settings("cluster"))
    assert "--parallelism=2" in args and "--sdk_worker_parallelism=1" in args
    more = _settings("cluster", {"DCMMS_FLINK_CLUSTER_SLOTS_PER_TASKMANAGER": "3"})
    assert "--parallelism=6" in flink_defaults(more)


def test_unknown_topology_names_the_setting() -> None:
    with pytest.raises(SettingsError, match="DCMMS_STACK_TOPOLOGY"):
        cluster.enabled(_settings("mesh"))


def test_checkpoints_are_kept_apart_per_topology(monkeypatch: pytest.MonkeyPatch) -> None:
    from runners.stack.flink import job_checkpoint_dir

    paths = paths_from_settings(_settings(None))
    monkeypatch.delenv(cluster.TOPOLOGY_ENV, raising=False)
    single = job_checkpoint_dir(paths)
    monkeypatch.setenv(cluster.TOPOLOGY_ENV, "cluster")
    on_cluster = job_checkpoint_dir(paths)
    assert single != on_cluster
    assert on_cluster.name == single.name  # the same state layout, another root


def _properties(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines()
                if "=" in line and not line.startswith("#"))


def test_one_broker_configuration_serves_one_node_and_three(tmp_path: Path) -> None:
    """runners/stack/kafka.py's broker_properties writes the single broker (one node: its own
    dynamic quorum, one replica) and each node of the cluster topology (a static quorum of
    the three controllers, three replicas, two in sync)."""
    from runners.stack.kafka import broker_properties

    single = _settings(None)
    port, cport = cluster.broker_ports(single)[0]
    one = _properties(broker_properties(single, 1, [(port, cport)], tmp_path, "unit"))
    assert one["controller.quorum.bootstrap.servers"] == f"127.0.0.1:{cport}"
    assert "controller.quorum.voters" not in one and "min.insync.replicas" not in one
    assert (one["node.id"], one["offsets.topic.replication.factor"],
            one["transaction.state.log.min.isr"]) == ("1", "1", "1")
    clustered = _settings("cluster")
    ports = cluster.broker_ports(clustered)
    second = _properties(broker_properties(clustered, 2, ports, tmp_path, "unit"))
    assert second["controller.quorum.voters"] == ",".join(
        f"{i + 1}@127.0.0.1:{c}" for i, (_p, c) in enumerate(ports))
    assert second["listeners"] == (f"PLAINTEXT://127.0.0.1:{ports[1][0]},"
                                   f"CONTROLLER://127.0.0.1:{ports[1][1]}")
    assert (second["node.id"], second["default.replication.factor"],
            second["offsets.topic.replication.factor"], second["min.insync.replicas"],
            second["transaction.state.log.min.isr"]) == ("2", "3", "3", "2", "2")
    assert "controller.quorum.bootstrap.servers" not in second
    assert one["log.dirs"] == second["log.dirs"] == str(tmp_path)
