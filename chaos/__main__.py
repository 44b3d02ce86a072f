"""``python -m chaos`` (``make chaos``): crash, back-pressure and bad-input drills.

    python -m chaos                          every scenario + bad input, then the table
    python -m chaos --scenarios bridge-sigkill,kafka-restart --bad-cases 0
    python -m chaos --scenarios none --entries mqtt --bad-cases 10000
    python -m chaos --keep-stack             leave the chaos stack running afterwards
    python -m chaos --scenarios mosquitto-sigkill-backlog --bad-cases 0
                                             the documented Mosquitto limit (not in 'all')
    python -m chaos --profile cluster        the same on the cluster topology (Flink session
                                             cluster, 3 Kafka brokers), plus taskmanager-sigkill
                                             and kafka-broker-sigkill

Runs on its own stack (the chaos profile of :mod:`runners.profiles`: ``.run-chaos``
and ports shifted into 1xxxx), brought up with ``dcmms-telemetry up
--with-pipeline`` and stopped with ``dcmms-telemetry down`` at the end, so a
stack on the standard ports is never touched. Prints the results table
(also written to ``<run_dir>/chaos-results.md`` and ``.json``) and exits 1 when
any scenario lost or duplicated an event, doubled or lost an alarm, answered
a 5xx other than 503, or when bad input caused a 5xx, a crash or a lost
sentinel.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict

from api.auth import configured_api_key

__all__ = ["main"]

_LOGGER = logging.getLogger("chaos")


def _say(text: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {text}", flush=True)


def _cli(*args: str) -> int:
    return subprocess.call([sys.executable, "-m", "runners.cli", *args])


def _wait_healthy(sup: object, timeout_s: float = 300.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all(s.healthy for s in sup.statuses()):  # type: ignore[attr-defined]
            return True
        time.sleep(2.0)
    return False


def main(argv: Sequence[str] | None = None) -> int:
    from runners.profiles import apply_profile

    parser = argparse.ArgumentParser(prog="python -m chaos", description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", default="all",
                        help="comma-separated scenario names, 'all' (default) or 'none'")
    parser.add_argument("--mqtt-rate", type=float, default=1000.0, help="MQTT events/s")
    parser.add_argument("--rest-rate", type=float, default=1000.0, help="REST events/s")
    parser.add_argument("--outage-s", type=float, default=15.0,
                        help="how long QuestDB/Kafka/Mosquitto stay down")
    parser.add_argument("--bad-cases", type=int, default=10_000,
                        help="generated bad inputs per entry point (0: skip)")
    parser.add_argument("--entries", default="all",
                        help="comma-separated bad-input entry points (mqtt, rest-body, "
                             "rest-headers, query, raw-kafka) or 'all' (default)")
    parser.add_argument("--keep-stack", action="store_true", help="do not stop the chaos stack")
    parser.add_argument("--no-up", action="store_true", help="use the chaos stack as it runs")
    parser.add_argument("--profile", choices=("single", "cluster"), default="single",
                        help="stack topology: 'cluster' = Flink session cluster (2 TaskManagers) "
                             "and 3 Kafka brokers, with the cluster drills (docs/scaling.md)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    profile = apply_profile("chaos")
    _say("chaos profile: " + " ".join(f"{k}={v}" for k, v in profile.items()))
    from runners.stack.cluster import apply_topology
    topology = apply_topology(args.profile)
    _say(f"topology: {topology}")

    from chaos.badinput import run_bad_input, select_entries
    from chaos.scenarios import (
        CLUSTER_SCENARIOS,
        KNOWN_LIMIT_SCENARIOS,
        SCENARIOS,
        ChaosContext,
        run_scenario,
    )
    from chaos.traffic import Asset
    from chaos.verify import QuestDBReader, results_table
    from config.settings import load_settings
    from runners.stack.supervisor import (
        Supervisor,
        load_specs,
        paths_from_settings,
        stack_modules,
    )

    names = ([n for n in SCENARIOS if (topology == "cluster" or n not in CLUSTER_SCENARIOS)
              and n not in KNOWN_LIMIT_SCENARIOS]
             if args.scenarios == "all"
             else [] if args.scenarios == "none" else args.scenarios.split(","))
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {unknown}; known: {', '.join(SCENARIOS)}")
    if topology != "cluster" and set(names) & set(CLUSTER_SCENARIOS):
        parser.error(f"{', '.join(sorted(set(names) & set(CLUSTER_SCENARIOS)))} need "
                     "--profile cluster")
    try:
        entries = select_entries(args.entries)
    except ValueError as exc:
        parser.error(str(exc))

    settings = load_settings()
    paths = paths_from_settings(settings)
    if not args.no_up:
        _say("bringing up the chaos stack (dcmms-telemetry up --with-pipeline)")
        if _cli("up", "--with-pipeline", "--profile", topology) != 0:
            _say("the chaos stack did not come up; see the messages above")
            _cli("down")
            return 1
    specs = load_specs(settings, paths, stack_modules(with_pipeline=True))
    sup = Supervisor(specs, paths, bind_host=settings.stack.bind_host)
    host = settings.stack.bind_host
    assets_doc = json.loads(settings.pipeline.assets_file.read_text())["assets"]
    assets = [Asset(a["site_id"], aid) for aid, a in assets_doc.items()
              if "TEMPERATURE" in a.get("thresholds", {})]
    alarm_asset = next(a for a in assets
                       if assets_doc[a.asset_id]["thresholds"]["TEMPERATURE"]
                       .get("critical_high", 1e9) < 99)
    ctx = ChaosContext(
        supervisor=sup,
        reader=QuestDBReader(f"http://{settings.questdb.host}:"
                             f"{settings.questdb.http_port}"),
        api_url=f"http://{host}:{settings.api.port}",
        api_key=configured_api_key(settings),
        mqtt=(settings.mqtt.host, settings.mqtt.port,
              settings.mqtt.sensor_username, settings.mqtt.sensor_password),
        assets=assets, alarm_asset=alarm_asset, mqtt_rate=args.mqtt_rate,
        rest_rate=args.rest_rate, outage_s=args.outage_s, say=_say)

    results = []
    bad_ok = True
    bad_report = ""
    try:
        for name in names:
            if not _wait_healthy(sup):
                _say(f"the chaos stack is not healthy before {name}; status follows")
                sup.status()
            results.append(run_scenario(ctx, SCENARIOS[name]))
        if args.bad_cases > 0:
            _wait_healthy(sup)
            bad = run_bad_input(settings, sup, cases=args.bad_cases, say=_say,
                                entries=entries)
            bad_ok, bad_report = bad.ok, bad.table()
    finally:
        table = results_table(results)
        out = paths.run_dir / "chaos-results"
        out.parent.mkdir(parents=True, exist_ok=True)
        load = os.getloadavg()
        header = (f"chaos run {time.strftime('%Y-%m-%d %H:%M:%S')}, load "
                  f"{args.mqtt_rate:.0f}/s MQTT + {args.rest_rate:.0f}/s REST, "
                  f"outage {args.outage_s:.0f} s, topology {topology}, "
                  f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, "
                  f"{os.cpu_count()} cores")
        out.with_suffix(".md").write_text(f"{header}\n\n{table}\n\n{bad_report}\n")
        out.with_suffix(".json").write_text(json.dumps([asdict(r) for r in results], indent=1))
        if not args.keep_stack:
            _say("stopping the chaos stack (dcmms-telemetry down)")
            _cli("down")
    print()
    print(header)
    print()
    print(table)
    for r in results:
        for note in r.notes:
            print(f"  {r.name}: {note}")
    if bad_report:
        print()
        print(bad_report)
    ok = all(r.ok for r in results) and bad_ok
    print(f"\nchaos: {'PASS' if ok else 'FAIL'} (results in {out}.md)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
