"""Stack profiles: each profile's stack shares nothing with the default stack nor another's."""

from __future__ import annotations

import shlex

import pytest

from config.settings import Settings, load_settings
from runners.profiles import PROFILES, apply_profile, isolation_conflicts, main, profile_environ


def _stack(profile: str | None, environ: dict[str, str] | None = None) -> Settings:
    """Settings of the default stack (``profile`` None) or of a profile's, without os.environ."""
    base = dict(environ or {})
    return load_settings(environ=base if profile is None else profile_environ(profile, base))


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_a_profile_shares_no_port_run_dir_or_name_with_any_other_stack(name: str) -> None:
    others = {"default": _stack(None)}
    others.update((other, _stack(other)) for other in PROFILES if other != name)
    assert isolation_conflicts(_stack(name), others) == []


def test_the_test_profile_has_its_own_run_dir_ports_and_names() -> None:
    default, test = _stack(None), _stack("test")
    assert test.stack.run_dir.name == ".run-test"
    assert test.kafka.bootstrap_servers.endswith(":29092")
    assert test.schema_registry.url.endswith(":28081")
    assert test.questdb.http_port == 29000
    for section, key in (("mqtt", "bridge_client_id"), ("mqtt", "bridge_share_group"),
                         ("pipeline", "consumer_group")):
        value = getattr(getattr(test, section), key)
        assert value not in (getattr(getattr(default, section), key),
                             getattr(getattr(_stack("chaos"), section), key))


def test_the_check_finds_what_two_stacks_would_share() -> None:
    """A variable set before the profile wins; the check names what then collides."""
    test = _stack("test", {"DCMMS_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9092",
                           "DCMMS_STACK_RUN_DIR": ".run",
                           "DCMMS_MQTT_BRIDGE_SHARE_GROUP": "dcmms-chaos-bridge",
                           "DCMMS_FLINK_WORKER_POOL_PORT": "15000"})
    conflicts = isolation_conflicts(test, {"default": _stack(None), "chaos": _stack("chaos")})
    text = "\n".join(conflicts)
    assert "port 9092 (service kafka) is also the default stack's" in text
    assert "run dir" in text and "[stack] run_dir" in text
    assert "bridge_share_group dcmms-chaos-bridge" in text and "chaos stack's" in text
    assert "port 15000 (service beam-worker-pool) is also the chaos stack's" in text
    assert len(conflicts) == 4, conflicts


def test_values_already_set_win_and_apply_reports_those_in_force() -> None:
    env = {"DCMMS_API_PORT": "24000", "OTHER": "x"}
    in_force = apply_profile("test", env)
    assert env["DCMMS_API_PORT"] == in_force["DCMMS_API_PORT"] == "24000"
    assert env["DCMMS_STACK_RUN_DIR"] == ".run-test" and env["OTHER"] == "x"
    assert set(in_force) == set(PROFILES["test"])
    assert profile_environ("chaos", {})["DCMMS_STACK_RUN_DIR"] == ".run-chaos"
    with pytest.raises(ValueError, match="unknown profile 'nope'"):
        profile_environ("nope", {})


def test_the_shell_exports_are_the_profile(capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """scripts/run-tests.sh evals this output: every line one quoted `export NAME=VALUE`."""
    for var in PROFILES["test"]:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("DCMMS_API_PORT", "23 000")  # a value needing quotes survives the eval
    assert main(["test"]) == 0
    exported = {}
    for line in capsys.readouterr().out.splitlines():
        word, assignment = shlex.split(line)
        assert word == "export"
        name, _, value = assignment.partition("=")
        exported[name] = value
    assert exported == {**PROFILES["test"], "DCMMS_API_PORT": "23 000"}


def test_the_command_line_check_fails_on_a_shared_port(capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    for var in PROFILES["test"]:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("DCMMS_CONFIG", raising=False)
    assert main(["test", "--check"]) == 0
    monkeypatch.setenv("DCMMS_QUESTDB_HTTP_PORT", "9000")
    assert main(["test", "--check"]) == 1
    assert "port 9000 (service questdb) is also the default stack's" in capsys.readouterr().err
