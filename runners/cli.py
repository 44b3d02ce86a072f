"""``dcmms-telemetry``: start, stop and inspect the local stack.

    dcmms-telemetry up [--with-pipeline]   start every service (idempotent), wait until healthy;
                                           the last one, the watcher, restarts crashed services
    dcmms-telemetry down                   stop everything, leave no process behind
    dcmms-telemetry status                 table of services with restarts and last exit;
                                           exit 0 only if all are healthy
    dcmms-telemetry restart SERVICE        stop one service and start it again (until healthy)
    dcmms-telemetry kill SERVICE [-s SIG]  crash drill: SIGKILL one service's process group;
                                           the watcher restarts it after its back-off
    dcmms-telemetry logs [service] [-n N] [--no-follow]
    dcmms-telemetry replay (--id P:O ... | --all | --list) [--stage S] [--reason R]
                                           re-publish dead letters to raw_telemetry
                                           (idempotent; runners/pipeline_report.py)

    --profile cluster (any command; ``up`` records it in the run dir, ``down`` forgets it):
    a Flink session cluster (JobManager + 2 TaskManagers) and 3 Kafka brokers instead of
    the job server's local Flink and one broker (runners/stack/cluster.py, docs/scaling.md).

Settings come from config/local.toml (or DCMMS_CONFIG) with DCMMS_<SECTION>_<KEY>
environment overrides; see docs/local-stack.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence

from config.settings import Settings, SettingsError, load_settings
from runners.mqtt_bridge import metrics_url
from runners.pipeline_report import add_replay_parser, bridge_lines, pipeline_lines, replay_main
from runners.stack import cluster
from runners.stack.supervisor import (
    PIPELINE_MODULE,
    WATCHER_MODULE,
    StackError,
    Supervisor,
    load_specs,
    paths_from_settings,
    stack_modules,
)

__all__ = ["main", "build_parser"]

_LOGGER = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dcmms-telemetry",
                                     description="Manage the local dCMMS telemetry stack.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the stack (idempotent)")
    up.add_argument("--with-pipeline", action="store_true",
                    help="also submit the telemetry pipeline to Flink")
    sub.add_parser("down", help="stop every service of the stack")
    sub.add_parser("status", help="show services, pids, ports, health, memory, uptime, "
                                  "restarts and last exit")
    restart = sub.add_parser("restart", help="stop one service and start it again")
    restart.add_argument("service")
    kill = sub.add_parser("kill", help="send a signal (default SIGKILL) to one service; "
                                       "the watcher restarts it")
    kill.add_argument("service")
    kill.add_argument("-s", "--signal", default="KILL", help="signal name (default KILL)")
    logs = sub.add_parser("logs", help="show (and follow) service logs")
    logs.add_argument("service", nargs="?", help="one service (default: all)")
    logs.add_argument("-n", "--lines", type=int, default=50, help="lines of history (default 50)")
    logs.add_argument("--no-follow", action="store_true", help="print and exit")
    add_replay_parser(sub)
    for command in (up, *(sub.choices[name] for name in ("down", "status")), restart, kill, logs):
        command.add_argument("--profile", choices=("single", "cluster"), default=None,
                             help="stack topology: 'cluster' = Flink session cluster and 3 "
                                  "Kafka brokers (default: what `up` recorded, else single)")
    return parser


def _supervisor(with_pipeline: bool) -> Supervisor:
    settings = load_settings()
    paths = paths_from_settings(settings)
    specs = load_specs(settings, paths, stack_modules(with_pipeline))
    return Supervisor(specs, paths, bind_host=settings.stack.bind_host)


def _pipeline_running() -> bool:
    settings = load_settings()
    return paths_from_settings(settings).pidfile(PIPELINE_MODULE).exists()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # A Ctrl-C during `up` must still run the cleanup of what was started.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        # The topology goes into the environment, so every service (and the watcher) started
        # from here sees it too.
        run_dir = paths_from_settings(load_settings()).run_dir
        topology = cluster.apply_topology(args.profile, run_dir=run_dir)
        if args.command == "up":
            settings = load_settings()
            settings.check_production()
            cluster.record_topology(run_dir, topology)
            sup = _supervisor(args.with_pipeline)
            sup.up()
            _print_endpoints(settings, {s.name for s in sup.specs})
            return 0
        if args.command == "down":
            # Always include the pipeline so a stack started with it is fully stopped.
            sup = _supervisor(with_pipeline=True)
            stopped = sup.down()
            if stopped:
                cluster.record_topology(run_dir, None)
            return 0 if stopped else 1
        if args.command == "status":
            sup = _supervisor(with_pipeline=_pipeline_running())
            healthy = sup.status()
            if any(spec.name == PIPELINE_MODULE for spec in sup.specs):
                # Job state, checkpoint age, counters and lag (docs/console.md).
                for line in pipeline_lines(load_settings()):
                    print(line)
            if sup.running_process("bridge") is not None:
                # Counters and queues from the bridge's /metrics (docs/metrics.md).
                for line in bridge_lines(load_settings()):
                    print(line)
            if topology == "cluster":
                settings = load_settings()
                print("\ncluster members:")
                for line in cluster.status_lines(settings):
                    print(line)
                healthy = healthy and all(cluster.broker_health(settings).values()) \
                    and all(cluster.taskmanager_health(settings).values())
            return 0 if healthy else 1
        if args.command == "restart":
            load_settings().check_production()
            _supervisor(with_pipeline=True).restart(args.service)
            return 0
        if args.command == "kill":
            name = args.signal.upper()
            try:
                sig = signal.Signals[name if name.startswith("SIG") else f"SIG{name}"]
            except KeyError:
                print(f"unknown signal {args.signal!r}", file=sys.stderr)
                return 2
            sup = _supervisor(with_pipeline=True)
            pgid = sup.kill(args.service, sig)
            if pgid is None:
                print(f"{args.service} is not running", file=sys.stderr)
                return 1
            print(f"sent {sig.name} to {args.service} (process group {pgid})")
            if args.service != WATCHER_MODULE and sup.running_process(WATCHER_MODULE) is None:
                print(f"the watcher is not running, so nothing restarts {args.service}: "
                      f"`dcmms-telemetry up` starts both", file=sys.stderr)
            return 0
        if args.command == "replay":
            settings = load_settings()
            settings.check_production()
            return replay_main(settings, args)
        if args.command == "logs":
            sup = _supervisor(with_pipeline=True)
            files = sup.log_files(args.service)
            if not files:
                print("no logs yet (is the stack up?)", file=sys.stderr)
                return 1
            cmd = ["tail", "-n", str(args.lines)]
            if not args.no_follow:
                cmd.append("-F")
            sys.stdout.flush()
            os.execvp("tail", [*cmd, *map(str, files)])
    except (SettingsError, StackError) as exc:
        print(f"dcmms-telemetry {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\ndcmms-telemetry {args.command}: interrupted", file=sys.stderr)
        return 130
    return 2


def _print_endpoints(settings: Settings, running: set[str]) -> None:
    host = settings.stack.bind_host
    q = settings.questdb
    lines = [
        ("kafka", "Kafka bootstrap", settings.kafka.bootstrap_servers),
        ("registry", "Schema registry", settings.schema_registry.url),
        ("questdb", "QuestDB console/HTTP", f"http://{q.host}:{q.http_port}"),
        ("questdb", "QuestDB PG wire", f"postgresql://{q.pg_user}@{q.host}:{q.pg_port}/qdb"),
        ("questdb", "QuestDB ILP TCP", f"{q.host}:{q.ilp_tcp_port}"),
        ("mosquitto", "MQTT", f"mqtt://{settings.mqtt.host}:"
                              f"{settings.mqtt.port} "
                              f"(user {settings.mqtt.sensor_username})"),
        ("pipeline", "Flink web UI (job)", f"http://{host}:{settings.flink.web_ui_port}"),
        ("flink-jobmanager", "Flink web UI (cluster)",
         f"http://{host}:{settings.flink.web_ui_port}"),
        ("api", "REST API", f"http://{host}:{settings.api.port}/api/v1 "
                            f"(health http://{host}:{settings.api.port}/healthz)"),
        ("bridge", "MQTT bridge metrics", metrics_url(settings) or "none ([mqtt] metrics_port 0)"),
        ("console", "Operator console",
         f"http://{host}:{settings.console.port}/ (sign in with an API key)"),
    ]
    print("\nendpoints:")
    for service, name, value in lines:
        if service in running:
            print(f"  {name:22s} {value}")


if __name__ == "__main__":
    sys.exit(main())
