"""The telemetry job as a stack service (``up --with-pipeline``); spec only.

The service is :mod:`runners.pipeline_launcher`, which submits the job to the
Flink job server and keeps it running. It is healthy while the Flink job is
RUNNING: the launcher touches its heartbeat file only then.
"""

from __future__ import annotations

import sys

from config.settings import Settings
from runners.stack.spec import ServiceSpec, StackPaths
from runners.stack.supervisor import HEARTBEAT_ENV, heartbeat_healthy

__all__ = ["services"]


def services(settings: Settings, paths: StackPaths) -> list[ServiceSpec]:
    heartbeat = paths.run_dir / "health" / "pipeline"
    pidfile = paths.pidfile("pipeline")
    return [ServiceSpec(
        name="pipeline",
        argv=[sys.executable, "-m", "runners.pipeline_launcher"],
        env={HEARTBEAT_ENV: str(heartbeat)},
        healthy=lambda: heartbeat_healthy(heartbeat, pidfile),
        # First submission: Python dependencies staged, mini cluster started, job RUNNING.
        start_timeout_s=240.0,
        # Cancelling waits for Flink to stop the job.
        stop_timeout_s=90.0,
    )]
