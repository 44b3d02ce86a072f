"""Where the CPU goes at one steady rate: ``python -m bench.steady --path mqtt --rate 5000``.

Offers ``--rate`` events/s for ``--seconds`` through the benchmark's own generator
(bench.loadgen: ``mosquitto_pub`` for MQTT, HTTP batches for REST), skips the first
``--warmup`` seconds, then samples every stack component's CPU (bench.resources: each
service with its descendants) until the load ends. Writes cores and microseconds per
offered event per component, with the load's figures and the context (commit, load
average, job settings), to ``bench/results/steady-<UTC time>.json``.

Unlike ``make bench`` it judges nothing: it is the tool for A/B runs of one change
(run it before and after, alternating, and compare the components).
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from bench import report
from bench.drain import RESULTS, _context
from bench.loadgen import GeneratorConfig, resolve_mqtt_client, run_load
from bench.probes import api_endpoint
from bench.resources import ResourceSampler
from config.settings import Settings, load_settings

__all__ = ["steady", "main"]


def steady(settings: Settings, path: str, rate: float, seconds: float,
           warmup: float) -> dict[str, Any]:
    """Run the load; the CPU of each component over the measured part of it."""
    if not 0 <= warmup < seconds:
        raise ValueError(f"--warmup ({warmup}) must be shorter than --seconds ({seconds})")
    base_url, key = api_endpoint(settings)
    cfg = GeneratorConfig(
        path=path, rate=rate, seconds=seconds, id_prefix=f"s{uuid.uuid4().hex[:6]}-",
        mqtt_host=settings.mqtt.host, mqtt_port=settings.mqtt.port,
        mqtt_username=settings.mqtt.sensor_username,
        mqtt_password=settings.mqtt.sensor_password,
        rest_url=f"{base_url}/api/v1/telemetry", api_key=key,
        mqtt_client=resolve_mqtt_client("auto"))
    sampler = ResourceSampler(settings.stack.run_dir / "pids")
    sampler.start()
    sampler.phase("warmup")
    measured: dict[str, float] = {}

    def switch_phase() -> None:
        time.sleep(warmup)
        sampler.phase("measure")
        measured["t0"] = time.monotonic()

    switcher = threading.Thread(target=switch_phase, daemon=True)
    switcher.start()
    load, _workers = run_load(cfg)
    switcher.join()
    measured_s = time.monotonic() - measured["t0"]
    sampler.stop()
    usage = report.sum_usage(sampler.by_phase(), ["measure"])
    events = rate * measured_s
    cores = {comp: round(cpu_s / measured_s, 3) for comp, cpu_s in usage.items()}
    return {
        "path": path, "rate": rate, "seconds": seconds, "warmup_s": warmup,
        "measured_s": round(measured_s, 1),
        "sent": load.sent, "accepted": load.accepted,
        "achieved_eps": round(load.achieved_eps),
        "cores": dict(sorted(cores.items(), key=lambda kv: -kv[1])),
        "cores_stack_total": round(sum(v for k, v in cores.items()
                                       if k not in report.NOT_STACK), 3),
        "cpu_us_per_event": report.cpu_us_per_event(usage, round(events)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.steady",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--path", choices=("mqtt", "rest"), default="mqtt")
    parser.add_argument("--rate", type=float, default=2000.0, help="offered events/s")
    parser.add_argument("--seconds", type=float, default=40.0, help="length of the load")
    parser.add_argument("--warmup", type=float, default=10.0,
                        help="seconds of load before the CPU is counted")
    parser.add_argument("--out", type=Path, default=None,
                        help="result file (default bench/results/steady-<UTC time>.json)")
    args = parser.parse_args(argv)
    settings = load_settings()
    load_before = os.getloadavg()
    print(f"steady {args.path} load at {args.rate:,.0f} events/s for {args.seconds:.0f} s "
          f"(CPU counted after {args.warmup:.0f} s)", flush=True)
    result = steady(settings, args.path, args.rate, args.seconds, args.warmup)
    result["context"] = _context(settings, load_before, "bench.steady")
    out = args.out or RESULTS / f"steady-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print("cores:", ", ".join(f"{k} {v}" for k, v in result["cores"].items() if v >= 0.005))
    print(f"stack total {result['cores_stack_total']} cores; achieved "
          f"{result['achieved_eps']:,} events/s; written to {out}")
    return 0 if result["accepted"] == result["sent"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
