"""Keeps the telemetry job running on the local Flink job server.

``python -m runners.pipeline_launcher`` is the stack's ``pipeline`` service. It
submits the job (resuming from the newest retained checkpoint, so Kafka
offsets, dedup and alarm state carry over), then watches it through the Flink
REST API:

* while the job is RUNNING it touches its heartbeat file (``DCMMS_HEALTH_FILE``),
  which is what ``dcmms-telemetry status`` reads;
* when the job fails or disappears (job server restarted, worker pool killed)
  it resubmits from the newest checkpoint, with a growing back-off;
* on SIGTERM (``dcmms-telemetry down``) it cancels the job (checkpoints are
  retained on cancel) and exits.

A job that is already running under the same name when the launcher starts
(the launcher itself was restarted) is adopted, not submitted twice.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time

import requests

from config.settings import Settings, SettingsError, load_settings
from runners.run_pipeline import run
from runners.stack import cluster
from runners.stack.flink import cancel_jobs, job_submission_args, running_jobs
from runners.stack.supervisor import HEARTBEAT_ENV, paths_from_settings, write_heartbeat

__all__ = ["PipelineLauncher", "main"]

_LOGGER = logging.getLogger(__name__)

READY_MARKER = "pipeline job running"
_ACTIVE_STATES = frozenset({"CREATED", "INITIALIZING", "RUNNING", "RESTARTING", "RECONCILING"})


class PipelineLauncher:
    """Submit, watch, resubmit and finally cancel the telemetry job."""

    def __init__(self, settings: Settings, heartbeat_file: str | None,
                 poll_interval_s: float = 5.0, start_timeout_s: float = 180.0) -> None:
        self.settings = settings
        self.paths = paths_from_settings(settings)
        self.heartbeat_file = heartbeat_file
        self.poll_interval_s = poll_interval_s
        self.start_timeout_s = start_timeout_s
        self.rest_url = f"http://127.0.0.1:{settings.flink.web_ui_port}"
        # The name run_pipeline submits the job under ([pipeline] job_name).
        self.job_name = settings.pipeline.job_name
        self.stopping = threading.Event()

    def job_state(self) -> str | None:
        """State of the newest job named ``job_name``, or None when Flink has none / is down."""
        try:
            jobs = [j for j in running_jobs(self.rest_url) if j.get("name") == self.job_name]
        except requests.RequestException:
            return None
        if not jobs:
            return None
        newest = max(jobs, key=lambda j: int(j.get("start-time", 0) or 0))
        return str(newest.get("state"))

    def submit(self) -> None:
        args = job_submission_args(self.settings, self.paths, name="pipeline", restore=True)
        _LOGGER.info("submitting %s to the Flink job server", self.job_name)
        run(args, self.settings)

    def wait_running(self) -> bool:
        deadline = time.monotonic() + self.start_timeout_s
        while not self.stopping.is_set() and time.monotonic() < deadline:
            if self.job_state() == "RUNNING":
                return True
            self.stopping.wait(2.0)
        return False

    def serve(self) -> int:
        backoff_s = 5.0
        announced = False
        while not self.stopping.is_set():
            state = self.job_state()
            if state == "RUNNING":
                if not announced:
                    _LOGGER.info("%s (Flink UI %s)", READY_MARKER, self.rest_url)
                    announced = True
                if self.heartbeat_file:
                    write_heartbeat(self.heartbeat_file)
                backoff_s = 5.0
                self.stopping.wait(self.poll_interval_s)
                continue
            if state in _ACTIVE_STATES:
                self.stopping.wait(2.0)
                continue
            announced = False
            if state is not None:
                _LOGGER.warning("job %s is %s: resubmitting from the newest checkpoint",
                                self.job_name, state)
            try:
                self.submit()
            except Exception:  # noqa: BLE001 - any submission failure is retried, and logged
                _LOGGER.exception("submission failed; retrying in %.0f s", backoff_s)
                self.stopping.wait(backoff_s)
                backoff_s = min(backoff_s * 2, 60.0)
                continue
            if not self.wait_running():
                _LOGGER.warning("job did not reach RUNNING within %.0f s (see the flink-jobserver"
                                " log); retrying in %.0f s", self.start_timeout_s, backoff_s)
                self.stopping.wait(backoff_s)
                backoff_s = min(backoff_s * 2, 60.0)
        return self.shutdown()

    def shutdown(self) -> int:
        try:
            # A session cluster (the cluster topology) outlives its jobs: wait for the job only.
            cancelled = cancel_jobs(self.rest_url, self.job_name,
                                    until_gone=not cluster.enabled(self.settings))
        except (RuntimeError, requests.RequestException) as exc:
            _LOGGER.error("could not cancel %s: %s", self.job_name, exc)
            return 1
        _LOGGER.info("cancelled %d job(s); checkpoints kept for the next start", cancelled)
        return 0


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        settings = load_settings()
        settings.check_production()
    except SettingsError as exc:
        print(f"pipeline_launcher: {exc}", file=sys.stderr)
        return 2
    launcher = PipelineLauncher(settings, os.environ.get(HEARTBEAT_ENV))
    signal.signal(signal.SIGTERM, lambda *_: launcher.stopping.set())
    signal.signal(signal.SIGINT, lambda *_: launcher.stopping.set())
    return launcher.serve()


if __name__ == "__main__":
    sys.exit(main())
