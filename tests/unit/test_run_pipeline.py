"""Pipeline options: settings give the defaults, the command line wins."""

from __future__ import annotations

from apache_beam.options.pipeline_options import PortableOptions, StandardOptions

from runners.pipeline_options import TelemetryOptions
from runners.run_pipeline import JOB_NAME, build_sinks, make_options
from runners.settings import load_settings

SETTINGS = load_settings(environ={})


def test_flink_is_the_default_with_local_job_server_and_worker_pool() -> None:
    options = make_options([], SETTINGS)
    assert options.view_as(StandardOptions).runner == "FlinkRunner"
    assert options.view_as(StandardOptions).streaming
    portable = options.view_as(PortableOptions)
    assert portable.job_endpoint == "localhost:8099"
    # EXTERNAL: no Docker container and no download for the Python SDK harness.
    assert portable.environment_type == "EXTERNAL"
    assert portable.environment_config == "localhost:50000"
    assert options.get_all_options()["job_name"] == JOB_NAME
    # Kafka is read by KafkaIO through the local expansion service (no Docker).
    assert options.view_as(TelemetryOptions).kafka_expansion_service == "localhost:8097"
    # Passed through to the Java runner (FlinkPipelineOptions), see flink_defaults.
    unknown = options.get_all_options(retain_unknown_options=True)
    assert unknown["finish_bundle_before_checkpointing"] in (True, "true")
    assert int(unknown["sdk_worker_parallelism"]) == SETTINGS.get("flink",
                                                                  "sdk_worker_parallelism", int)


def test_settings_fill_telemetry_options_and_argv_wins() -> None:
    options = make_options(["--runner=DirectRunner", "--raw_topic=other_raw"], SETTINGS)
    assert options.view_as(StandardOptions).runner == "DirectRunner"
    opts = options.view_as(TelemetryOptions)
    assert opts.raw_topic == "other_raw"
    assert opts.validated_topic == "validated_telemetry"
    assert opts.bootstrap_servers == "127.0.0.1:9092"
    assert opts.dedup_window_seconds == 60.0
    assert opts.assets_file.endswith("config/assets.json")
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
