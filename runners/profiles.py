"""Stack profiles: environment overrides that give a second stack everything of its own.

A profile is a set of ``DCMMS_<SECTION>_<KEY>`` variables (read by
:mod:`config.settings`) that moves a stack off the default one of
config/local.toml: its own run directory ``.run-<name>`` (pid files, health
files, logs, Kafka/QuestDB/Mosquitto data, Flink checkpoints), every port into a
block of 10,000 of its own, and its own per-stack names (bridge client id and
share group, pipeline consumer group). So a profile's stack runs next to the
default stack, and next to the other profiles' stacks, without touching them.

* ``chaos`` (ports 1xxxx): ``make chaos``, see docs/reliability.md;
* ``test`` (ports 2xxxx): ``make test`` (scripts/run-tests.sh), see docs/local-stack.md;
* ``dev3``, ``dev4``, ``dev5`` (ports 3xxxx-5xxxx): stacks for parallel development.

Values already set in the environment win, so an operator can shift them again;
:func:`isolation_conflicts` (``--check``) then says whether the result still
shares anything with the default stack or another profile's.

    python -m runners.profiles test           # `export NAME=VALUE` lines for a shell's eval
    python -m runners.profiles test --check   # exit 1 if the settings in force share a port,
                                              # run dir or name with another stack
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Mapping, MutableMapping, Sequence
from types import MappingProxyType
from urllib.parse import urlsplit

from config.settings import Settings, env_name, load_settings

__all__ = ["PROFILES", "apply_profile", "isolation_conflicts", "main", "profile_environ",
           "shifted_environ"]

_BLOCK = 10_000

# Every port setting of a stack: (variable, value template, place in a profile's block).
# The place is the default port's last four digits, except the worker pool's (50000 ends
# in 0000, so it takes 5000). The bootstrap servers and the registry URL are what clients
# dial, the other ports what the services bind.
_PORTS: tuple[tuple[str, str, int], ...] = (
    ("DCMMS_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:{}", 9092),
    ("DCMMS_KAFKA_CONTROLLER_PORT", "{}", 9093),
    ("DCMMS_SCHEMA_REGISTRY_PORT", "{}", 8081),
    ("DCMMS_SCHEMA_REGISTRY_URL", "http://127.0.0.1:{}", 8081),
    ("DCMMS_QUESTDB_HTTP_PORT", "{}", 9000),
    ("DCMMS_QUESTDB_PG_PORT", "{}", 8812),
    ("DCMMS_QUESTDB_ILP_TCP_PORT", "{}", 9009),
    ("DCMMS_QUESTDB_MIN_HTTP_PORT", "{}", 9003),
    ("DCMMS_MQTT_PORT", "{}", 1883),
    ("DCMMS_MQTT_METRICS_PORT", "{}", 9883),
    ("DCMMS_FLINK_JOB_PORT", "{}", 8099),
    ("DCMMS_FLINK_ARTIFACT_PORT", "{}", 8098),
    ("DCMMS_FLINK_EXPANSION_PORT", "{}", 8097),
    ("DCMMS_FLINK_WEB_UI_PORT", "{}", 8082),
    ("DCMMS_FLINK_WORKER_POOL_PORT", "{}", 5000),
    ("DCMMS_API_PORT", "{}", 3000),
    ("DCMMS_CONSOLE_PORT", "{}", 8080),
)

# Names one stack's processes hold on its broker and Kafka. Two bridges with one client id
# kick each other off; one consumer group would split the topics between two pipelines.
_NAMES: tuple[tuple[str, str], ...] = (
    ("mqtt", "bridge_client_id"),
    ("mqtt", "bridge_share_group"),
    ("pipeline", "consumer_group"),
)


def _profile(name: str, block: int) -> Mapping[str, str]:
    env = {"DCMMS_STACK_RUN_DIR": f".run-{name}"}
    env.update((var, template.format(block * _BLOCK + place)) for var, template, place in _PORTS)
    env.update({
        "DCMMS_MQTT_BRIDGE_CLIENT_ID": f"dcmms-{name}-bridge-1",
        "DCMMS_MQTT_BRIDGE_SHARE_GROUP": f"dcmms-{name}-bridge",
        "DCMMS_PIPELINE_CONSUMER_GROUP": f"dcmms-{name}-pipeline",
    })
    return MappingProxyType(env)


# The chaos profile keeps the default checkpoint interval (60 s): with 10 s a job restored
# onto a backlog checkpointed before its asset side input was ready and failed every time
# (docs/reliability.md, "Known defects").
# dev3..dev5 are for parallel development (a second developer, or an assistant working
# beside the test suite). Their ports lie in Linux's ephemeral range (32768-60999): an
# outgoing connection may rarely hold one, which the supervisor's free-port check reports.
PROFILES: Mapping[str, Mapping[str, str]] = MappingProxyType({
    "chaos": _profile("chaos", 1),
    # The test stack creates the rollup views ([questdb] rollups, also the default; decision
    # 0006) whatever the user's config says, so the query tests cover both read paths.
    "test": MappingProxyType({**_profile("test", 2), "DCMMS_QUESTDB_ROLLUPS": "true"}),
    **{f"dev{block}": _profile(f"dev{block}", block) for block in (3, 4, 5)},
})


def _overrides(name: str) -> Mapping[str, str]:
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r}; known: {', '.join(PROFILES)}") from None


def profile_environ(name: str, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (default os.environ) with profile ``name`` added where not already set."""
    env = dict(os.environ if base is None else base)
    for var, value in _overrides(name).items():
        env.setdefault(var, value)
    return env


def apply_profile(name: str, environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Put profile ``name`` into ``environ`` (default os.environ); return the values in force."""
    target = os.environ if environ is None else environ
    overrides = _overrides(name)
    for var, value in overrides.items():
        target.setdefault(var, value)
    return {var: target[var] for var in overrides}


def shifted_environ(base: Mapping[str, str], offset: int, suffix: str) -> dict[str, str]:
    """``base`` (a profile's environment) moved beside itself: every port + ``offset``, run dir
    and per-stack names + ``-<suffix>``. The cluster integration test runs its stack so, next
    to the test profile's (tests/integration/test_cluster_profile.py)."""
    settings = load_settings(environ=base)
    env = dict(base)
    for var, template, _place in _PORTS:
        current = base[var]   # set by the profile
        port = int(urlsplit(current).port if "://" in current else current.rpartition(":")[2])
        env[var] = template.format(port + offset)
    # As the profile wrote it (relative to the repository), else the resolved setting.
    run_dir = base.get("DCMMS_STACK_RUN_DIR") or settings.stack.run_dir
    env["DCMMS_STACK_RUN_DIR"] = f"{run_dir}-{suffix}"
    for section, key in _NAMES:
        env[env_name(section, key)] = f"{getattr(getattr(settings, section), key)}-{suffix}"
    return env


def _footprint(settings: Settings) -> dict[str, str]:
    """What a stack under ``settings`` holds alone, as ``{item: the setting or service}``."""
    from runners.stack.supervisor import (
        MODULE_ORDER,
        PIPELINE_MODULE,
        load_specs,
        paths_from_settings,
    )

    paths = paths_from_settings(settings)
    held = {f"run dir {paths.run_dir}": "[stack] run_dir"}
    registry_port = urlsplit(settings.schema_registry.url).port
    held[f"port {registry_port}"] = "[schema_registry] url"
    # The services' own port lists (those the supervisor checks free before a start), so a
    # port added to a service later is covered without touching this module.
    for spec in load_specs(settings, paths, [*MODULE_ORDER, PIPELINE_MODULE]):
        held.update((f"port {port}", f"service {spec.name}") for port in spec.ports)
    held.update((f"{key} {getattr(getattr(settings, section), key)}", f"[{section}] {key}")
                for section, key in _NAMES)
    return held


def isolation_conflicts(settings: Settings, others: Mapping[str, Settings]) -> list[str]:
    """What ``settings``' stack would share with each of ``others`` (empty: nothing)."""
    mine = _footprint(settings)
    conflicts = []
    for other_name, other in others.items():
        theirs = _footprint(other)
        conflicts += [f"{item} ({mine[item]}) is also the {other_name} stack's ({theirs[item]})"
                      for item in sorted(mine.keys() & theirs.keys())]
    return conflicts


def _config_only(environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` without DCMMS_* overrides (the configuration file is kept): the default stack."""
    return {var: environ[var] for var in ("DCMMS_CONFIG",) if var in environ}


def _other_stacks(name: str, environ: Mapping[str, str]) -> dict[str, Settings]:
    base = _config_only(environ)
    others = {"default": load_settings(environ=base)}
    others.update((other, load_settings(environ=profile_environ(other, base)))
                  for other in PROFILES if other != name)
    return others


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runners.profiles",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("profile", choices=sorted(PROFILES))
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if the settings in force (os.environ with the profile added) "
                             "share a port, the run dir or a name with the default stack or "
                             "another profile's")
    args = parser.parse_args(argv)
    environ = profile_environ(args.profile)
    if args.check:
        conflicts = isolation_conflicts(load_settings(environ=environ),
                                        _other_stacks(args.profile, os.environ))
        for conflict in conflicts:
            print(f"profile {args.profile}: {conflict}", file=sys.stderr)
        return 1 if conflicts else 0
    for var in _overrides(args.profile):
        print(f"export {var}={shlex.quote(environ[var])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
