"""``python -m runners.worker_pool``: Beam's external Python worker pool, configured by us.

Beam's own ``apache_beam.runners.worker.worker_pool_main`` takes only a port: it
listens on every interface and starts each SDK worker with ``state_cache_size=0``,
and the pipeline option ``--max_cache_memory_usage_mb`` never reaches workers
started that way. This entry point starts the same servicer with

* ``--bind_host``: the address to listen on ([stack] bind_host, 127.0.0.1 by default);
* ``--state_cache_mb``: the SDK workers' user-state cache ([flink] sdk_state_cache_mb).
  The dedup and alarm stages read their bucket state once per batch
  (transforms/buckets.py); cached, that read costs no round trip to the runner;
* ``--gc_threshold``: the SDK workers' garbage-collector thresholds ([flink]
  sdk_gc_threshold), applied at their start by runners/sdk_worker_site/sitecustomize.py.
"""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import grpc
from apache_beam.portability.api import beam_fn_api_pb2_grpc
from apache_beam.runners.worker.worker_pool_main import (
    BeamFnExternalWorkerPoolServicer,
    kill_process_gracefully,
)
from apache_beam.utils import thread_pool_executor

__all__ = ["main", "start_pool", "SDK_WORKER_SITE", "configure_sdk_worker_env"]

# Holds the sitecustomize module every SDK worker imports at start-up.
SDK_WORKER_SITE = Path(__file__).resolve().parent / "sdk_worker_site"


def configure_sdk_worker_env(gc_threshold: str, environ: dict[str, str] | None = None) -> None:
    """Settings the SDK worker processes (children of this pool) pick up at start-up."""
    env = os.environ if environ is None else environ
    parts = gc_threshold.split(",") if gc_threshold else []
    if gc_threshold and (len(parts) not in (1, 2, 3)
                         or not all(p.strip().isdigit() for p in parts)):
        raise ValueError(f"gc threshold {gc_threshold!r} must be 1-3 non-negative integers "
                         "separated by commas (setting [flink] sdk_gc_threshold)")
    path = env.get("PYTHONPATH", "")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SDK_WORKER_SITE), path) if p)
    env["DCMMS_SDK_GC_THRESHOLD"] = gc_threshold

_LOGGER = logging.getLogger(__name__)


def start_pool(bind_host: str, port: int, state_cache_mb: int) -> grpc.Server:
    """Start the worker pool servicer on ``bind_host:port``; SDK workers run as processes."""
    server = grpc.server(thread_pool_executor.shared_unbounded_instance(),
                         options=[("grpc.http2.max_pings_without_data", 0),
                                  ("grpc.http2.max_ping_strikes", 0)])
    address = f"[{bind_host}]:{port}" if ":" in bind_host else f"{bind_host}:{port}"
    if server.add_insecure_port(address) == 0:
        raise OSError(f"cannot listen on {address} (setting [flink] worker_pool_port)")
    pool = BeamFnExternalWorkerPoolServicer(
        use_process=True, state_cache_size=state_cache_mb << 20, data_buffer_time_limit_ms=-1)
    beam_fn_api_pb2_grpc.add_BeamFnExternalWorkerPoolServicer_to_server(pool, server)
    server.start()

    def stop_workers() -> None:
        for process in pool._worker_processes.values():   # no public accessor in Beam
            kill_process_gracefully(process)

    atexit.register(stop_workers)
    _LOGGER.info("worker pool listening on %s (SDK state cache %d MB)", address, state_cache_mb)
    return server


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bind_host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--state_cache_mb", type=int, default=0)
    parser.add_argument("--gc_threshold", default="",
                        help="SDK workers' gc thresholds, e.g. 50000,20,100 (empty: Python's)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        configure_sdk_worker_env(args.gc_threshold)
        server = start_pool(args.bind_host, args.port, args.state_cache_mb)
    except (OSError, RuntimeError, ValueError) as exc:
        print(f"worker_pool: {exc}", file=sys.stderr)
        return 2
    # SIGTERM (dcmms-telemetry down) exits normally, so the atexit hook stops the workers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
