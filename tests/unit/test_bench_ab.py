"""bench.ab: arms, order, the runs' record, and the restarts it asks of the stack's CLI (a
stand-in script that logs its calls)."""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path

import pytest

from bench.ab import Arm, dotted, main, parse_arm, plan

# Writes {"v": $AB_X} to the file named by its argument; exits 3 when AB_X is "fail".
_WRITE = ("import json, os, sys; v = os.environ.get('AB_X'); "
          "json.dump({'r': {'v': v}}, open(sys.argv[1], 'w')); sys.exit(3 if v == 'fail' else 0)")


def test_arms_and_order() -> None:
    a, b = parse_arm(["A", "AB_X=1", "AB_Y=a=b"]), parse_arm(["B"])
    assert a == Arm("A", {"AB_X": "1", "AB_Y": "a=b"}) and b == Arm("B", {})
    assert [(arm.name, tag) for arm, tag in plan([a, b], "A B B A")] == [
        ("A", "A-run1"), ("B", "B-run2"), ("B", "B-run3"), ("A", "A-run4")]
    with pytest.raises(ValueError, match="not KEY=VALUE"):
        parse_arm(["A", "AB_X"])
    with pytest.raises(ValueError, match="C, not an arm"):
        plan([a, b], "A C")
    with pytest.raises(ValueError, match="share a name"):
        plan([a, a], "A")
    assert dotted({"a": {"b": 2}}, "a.b") == 2 and dotted({"a": 1}, "a.b") is None
    assert dotted(None, "a") is None and dotted({"a": {}}, "a.b") is None


def test_runs_interleave_the_arms_and_record_their_keys(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ab"
    rc = main(["--arm", "A", "AB_X=1", "--arm", "B", "AB_X=2", "--order", "A B B A",
               "--output-dir", str(out), "--keys", "r.v,r.missing",
               "--", sys.executable, "-c", _WRITE, "{out}/{tag}.json"])
    assert rc == 0
    record = json.loads((out / "ab.json").read_text())
    assert [r["tag"] for r in record["runs"]] == ["A-run1", "B-run2", "B-run3", "A-run4"]
    assert [r["keys"]["r.v"] for r in record["runs"]] == ["1", "2", "2", "1"]
    assert all(r["keys"]["r.missing"] is None and r["rc"] == 0 for r in record["runs"])
    assert record["arms"] == {"A": {"AB_X": "1"}, "B": {"AB_X": "2"}}
    assert len(record["git_sha"]) == 40 and isinstance(record["git_dirty"], bool)
    assert len(record["runs"][0]["load_avg_before"]) == 3
    assert (out / "B-run3.log").exists()
    assert "B-run2  " in capsys.readouterr().out


def test_a_failing_run_is_recorded_and_the_others_still_run(tmp_path: Path) -> None:
    out = tmp_path / "ab"
    rc = main(["--arm", "F", "AB_X=fail", "--arm", "G", "AB_X=ok", "--order", "F G",
               "--output-dir", str(out), "--", sys.executable, "-c", _WRITE,
               "{out}/{tag}.json"])
    assert rc == 1
    runs = json.loads((out / "ab.json").read_text())["runs"]
    assert [(r["tag"], r["rc"]) for r in runs] == [("F-run1", 3), ("G-run2", 0)]


def _fake_cli(tmp_path: Path, fail_on: str = "") -> tuple[Path, Path]:
    calls = tmp_path / "calls.txt"
    cli = tmp_path / "dcmms-telemetry"
    cli.write_text(f"#!/bin/sh\necho \"$* AB_X=${{AB_X:-unset}} "
                   f"RUN_DIR=${{DCMMS_STACK_RUN_DIR:-unset}}\" >> {calls}\n"
                   f"[ \"$1\" = \"{fail_on}\" ] && exit 4\nexit 0\n")
    cli.chmod(cli.stat().st_mode | stat.S_IEXEC)
    return cli, calls


def test_api_restarts_with_each_arm_and_the_defaults_at_the_end(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DCMMS_STACK_RUN_DIR", raising=False)  # `make test` sets its own
    cli, calls = _fake_cli(tmp_path)
    rc = main(["--arm", "A", "AB_X=1", "--arm", "B", "AB_X=2", "--order", "A B",
               "--restart", "api", "--output-dir", str(tmp_path / "ab"), "--cli", str(cli),
               "--", sys.executable, "-c", "pass"])
    assert rc == 0
    assert calls.read_text().splitlines() == [
        "restart api AB_X=1 RUN_DIR=unset", "restart api AB_X=2 RUN_DIR=unset",
        "restart api AB_X=unset RUN_DIR=unset"]


def test_fresh_stacks_need_their_own_run_dir_and_are_stopped_at_the_end(
        tmp_path: Path) -> None:
    cli, calls = _fake_cli(tmp_path)
    base = ["--arm", "A", "--order", "A", "--restart", "fresh", "--output-dir",
            str(tmp_path / "ab"), "--cli", str(cli), "--pipeline"]
    with pytest.raises(SystemExit):
        main([*base, "--", sys.executable, "-c", "pass"])
    assert not calls.exists()
    run_dir = tmp_path / "run"
    (run_dir / "data").mkdir(parents=True)
    assert main([*base, "--run-dir", str(run_dir), "--", sys.executable, "-c", "pass"]) == 0
    assert calls.read_text().splitlines() == [
        f"down AB_X=unset RUN_DIR={run_dir}", f"up --with-pipeline AB_X=unset RUN_DIR={run_dir}",
        f"down AB_X=unset RUN_DIR={run_dir}"]
    assert not (run_dir / "data").exists()  # deleted between down and up


def test_a_failed_restart_stops_the_ab(tmp_path: Path) -> None:
    cli, calls = _fake_cli(tmp_path, fail_on="restart")
    out = tmp_path / "ab"
    rc = main(["--arm", "A", "--order", "A A", "--restart", "api", "--output-dir", str(out),
               "--cli", str(cli), "--", sys.executable, "-c", "pass"])
    assert rc == 1
    record = json.loads((out / "ab.json").read_text())
    assert record["runs"] == [] and "restart api" in record["stopped"]
