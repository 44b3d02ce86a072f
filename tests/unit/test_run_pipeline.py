"""Pipeline options: settings give the defaults, the command line wins; the job runs, and
is found, under [pipeline] job_name."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from apache_beam.options.pipeline_options import StandardOptions

from config.settings import load_settings
from runners.pipeline_options import TelemetryOptions
from runners.run_pipeline import build_sinks, make_options

SETTINGS = load_settings(environ={})


def test_settings_fill_telemetry_options_and_argv_wins() -> None:
    # Settings given on the command line win over config/local.toml; the rest come from it.
    options = make_options(["--runner=DirectRunner", "--raw_topic=other_raw"], SETTINGS)
    assert options.view_as(StandardOptions).runner == "DirectRunner"
    opts = options.view_as(TelemetryOptions)
    assert opts.raw_topic == "other_raw" != SETTINGS.kafka.topic_raw
    assert opts.validated_topic == SETTINGS.kafka.topic_validated
    assert opts.bootstrap_servers == SETTINGS.kafka.bootstrap_servers
    assert opts.kafka_expansion_service is None  # the Python reader off Flink


def test_sinks_cover_kafka_and_questdb_for_each_output() -> None:
    sinks = build_sinks(make_options([], SETTINGS).view_as(TelemetryOptions))
    assert [s.label for s in sinks.validated] == ["ToKafkaValidated", "ToQuestDBReadings"]
    assert [s.label for s in sinks.alarms] == ["ToKafkaAlarms", "ToQuestDBAlarms"]
    assert [s.label for s in sinks.dead_letters] == ["ToKafkaDeadLetters"]


def test_restore_only_sees_checkpoints_of_the_same_job_and_state_layout(tmp_path) -> None:
    from pipelines.state_layout import STATE_LAYOUT
    from runners.stack.flink import job_checkpoint_dir, latest_checkpoint
    from runners.stack.spec import StackPaths

    paths = StackPaths(run_dir=tmp_path, jar_cache=tmp_path / "jars")
    root = paths.data("flink") / "checkpoints"
    old = root / "job-old" / "chk-7"                          # layout 1 kept them here
    old.mkdir(parents=True)
    (old / "_metadata").write_bytes(b"x")
    mine = job_checkpoint_dir(paths)
    assert mine == root / f"layout-{STATE_LAYOUT}"
    assert latest_checkpoint(mine) is None                   # an older layout is never restored
    new = mine / "job-new" / "chk-1"
    new.mkdir(parents=True)
    (new / "_metadata").write_bytes(b"x")
    assert latest_checkpoint(mine) == new
    other = job_checkpoint_dir(paths, "it-restart")
    assert other == root / "jobs" / "it-restart" / f"layout-{STATE_LAYOUT}"
    assert latest_checkpoint(other) is None                  # never another job's state


class _FlinkJobs:
    """Flink REST with two running jobs: one under the configured [pipeline] job_name, one
    under the name the submitter used to hard-code. Records every path asked for."""

    def __init__(self, configured: str) -> None:
        # The other job is the newer one: a look-up that ignores names finds it first.
        self.jobs = jobs = [
            {"jid": "old", "name": "dcmms-telemetry", "state": "FAILED", "start-time": 2},
            {"jid": "mine", "name": configured, "state": "RUNNING", "start-time": 1}]
        for job in jobs:
            job["tasks"] = {"running": 1, "total": 1}
        self.paths: list[str] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                path = self.path.split("?")[0]
                fake.paths.append(path)
                body: object = {"vertices": []}
                if path == "/jobs/overview":
                    body = {"jobs": jobs}
                elif path.endswith("/metrics"):
                    body = [{"id": "numRestarts", "value": "0"}]
                elif path.endswith("/exceptions"):
                    body = {"exceptionHistory": {"entries": []}}
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def jids_read(self) -> set[str]:
        return {p.split("/")[2] for p in self.paths if p.startswith("/jobs/")
                and p != "/jobs/overview"}


def test_the_job_is_submitted_and_looked_up_under_the_configured_name() -> None:
    """[pipeline] job_name is the one name: the submitter's options carry it, and the
    launcher (the stack's watcher of the job), the console, the bad-input drill's crash
    marks and the drain benchmark find the job by it, not by another name."""
    from api.console.backend import ConsoleBackend
    from bench.drain import flink_vertex_load
    from chaos.badinput import flink_job_marks
    from runners.pipeline_launcher import PipelineLauncher

    name = "unit-configured-job"
    flink = _FlinkJobs(name)
    try:
        settings = load_settings(environ={"DCMMS_PIPELINE_JOB_NAME": name,
                                          "DCMMS_FLINK_WEB_UI_PORT": str(flink.port)})
        assert settings.pipeline.job_name == name
        submitted = make_options([], settings).get_all_options()
        assert submitted["runner"] == "FlinkRunner" and submitted["job_name"] == name
        assert PipelineLauncher(settings, None).job_state() == "RUNNING"  # not "old"'s FAILED
        flink.jobs[0]["state"] = "RUNNING"  # both running now: only the name tells them apart
        console = ConsoleBackend(settings, kafka=object(), schema_lookup=lambda _id: None)
        job = console.job()
        assert job is not None and job.jid == "mine"
        url = f"http://127.0.0.1:{flink.port}"
        assert set(flink_job_marks(url, settings.pipeline.job_name)) == {
            "flink job mine restarts", "flink job mine failures"}
        flink_vertex_load(settings)
        assert flink.jids_read() == {"mine"}
    finally:
        flink.server.shutdown()
        flink.server.server_close()
