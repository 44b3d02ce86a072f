"""Pipeline options: settings give the defaults, the command line wins; the job runs, and
is found, under [pipeline] job_name."""

from __future__ import annotations

from apache_beam.options.pipeline_options import StandardOptions

from config.settings import load_settings
from runners.pipeline_options import TelemetryOptions
from runners.run_pipeline import build_sinks, make_options
from tests.unit.json_server import JsonServer

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


def _flink_with_two_jobs(configured: str) -> tuple[JsonServer, list[dict[str, object]]]:
    """Flink REST with two jobs: one under the configured [pipeline] job_name, one under the
    name the submitter used to hard-code (the newer one: a look-up that ignores names finds
    it first). The server records every path asked for."""
    jobs: list[dict[str, object]] = [
        {"jid": "old", "name": "dcmms-telemetry", "state": "FAILED", "start-time": 2},
        {"jid": "mine", "name": configured, "state": "RUNNING", "start-time": 1}]
    for job in jobs:
        job["tasks"] = {"running": 1, "total": 1}

    def route(path: str) -> object:
        if path == "/jobs/overview":
            return {"jobs": jobs}
        if path.endswith("/metrics"):
            return [{"id": "numRestarts", "value": "0"}]
        if path.endswith("/exceptions"):
            return {"exceptionHistory": {"entries": []}}
        return {"vertices": []}

    return JsonServer(route), jobs


def _jids_read(server: JsonServer) -> set[str]:
    return {p.split("/")[2] for p in server.paths if p.startswith("/jobs/")
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
    flink, jobs = _flink_with_two_jobs(name)
    with flink:
        settings = load_settings(environ={"DCMMS_PIPELINE_JOB_NAME": name,
                                          "DCMMS_FLINK_WEB_UI_PORT": str(flink.port)})
        assert settings.pipeline.job_name == name
        submitted = make_options([], settings).get_all_options()
        assert submitted["runner"] == "FlinkRunner" and submitted["job_name"] == name
        assert PipelineLauncher(settings, None).job_state() == "RUNNING"  # not "old"'s FAILED
        jobs[0]["state"] = "RUNNING"  # both running now: only the name tells them apart
        console = ConsoleBackend(settings, kafka=object(), schema_lookup=lambda _id: None)
        job = console.job()
        assert job is not None and job.jid == "mine"
        assert set(flink_job_marks(flink.url, settings.pipeline.job_name)) == {
            "flink job mine restarts", "flink job mine failures"}
        flink_vertex_load(settings)
        assert _jids_read(flink) == {"mine"}
