"""Pipeline options: settings give the defaults, the command line wins."""

from __future__ import annotations

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
