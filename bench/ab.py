"""A/B runs of any benchmark command: arms of settings, interleaved, one record of them all.

Every A/B of the sessions before this module was a shell script of its own around the same
loop (bench/results/*-20261201/ab-*.sh): for each arm in an order such as ``A B B A``, set
its environment overrides (``DCMMS_<SECTION>_<KEY>``, config/settings.py), restart the API
or the stack with them, note the load average, run the benchmark, keep its log. This is
that loop once::

    python -m bench.ab --output-dir bench/results/ab-pages \\
        --arm P DCMMS_API_PAGE_READS=pgwire --arm E DCMMS_API_PAGE_READS=exec \\
        --order "P E E P" --restart api \\
        --keys query.dense.raw_first.c1.p50_ms,query.dense.raw_first.c1.p99_ms \\
        -- python -m bench.query_dense --kinds raw_first --output {out}/{tag}.json

``{out}`` in the command is the output directory, ``{tag}`` the run's tag (``P-run1``...).
``--restart``: ``none`` (the command reads the environment itself), ``api`` (the running
stack's API restarted with the arm's environment; the defaults again at the end), ``stack``
(``down`` then ``up``, data kept) or ``fresh`` (``down``, the run directory deleted, ``up``:
only with ``--run-dir``, never the stack of ``make run``). ``--pipeline`` starts the job too.
``<out>/ab.json`` records the command, the commit, every run's arm, environment, load
average before and after, duration and exit status, and the ``--keys`` read from
``<out>/<tag>.json`` when the command wrote one; a table of them is printed at the end.
A failing command is recorded and the next run goes on; a failed restart stops the A/B.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import report
from bench.harness import git_sha
from config.settings import REPO_ROOT

RESTARTS = ("none", "api", "stack", "fresh")
_CLI = REPO_ROOT / ".venv" / "bin" / "dcmms-telemetry"


def say(msg: str) -> None:
    print(f"[ab {time.strftime('%H:%M:%S')}] {msg}", flush=True)


@dataclass(frozen=True)
class Arm:
    name: str
    env: dict[str, str]


def parse_arm(values: Sequence[str]) -> Arm:
    """``NAME KEY=VALUE ...`` -> :class:`Arm` (an arm may set nothing: the defaults)."""
    name, *assignments = values
    env = {}
    for item in assignments:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"arm {name}: {item!r} is not KEY=VALUE")
        env[key] = value
    return Arm(name, env)


def plan(arms: Sequence[Arm], order: str) -> list[tuple[Arm, str]]:
    """The runs in ``order`` (arm names separated by spaces), each with its tag."""
    by_name = {arm.name: arm for arm in arms}
    if len(by_name) != len(arms):
        raise ValueError("two arms share a name")
    names = order.split()
    unknown = sorted(set(names) - set(by_name))
    if unknown:
        raise ValueError(f"--order names {', '.join(unknown)}, not an arm "
                         f"(arms: {', '.join(by_name)})")
    if not names:
        raise ValueError("--order is empty")
    return [(by_name[name], f"{name}-run{i}") for i, name in enumerate(names, start=1)]


def dotted(data: Any, key: str) -> Any:
    """``data["a"]["b"]`` for ``a.b`` (:func:`bench.report._get`); None where a part is
    missing."""
    try:
        return report._get(data, key) if isinstance(data, Mapping) else None
    except KeyError:
        return None


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


class Runner:
    def __init__(self, out: Path, restart: str, pipeline: bool = False,
                 run_dir: Path | None = None, cli: Path = _CLI) -> None:
        if restart not in RESTARTS:
            raise ValueError(f"--restart {restart!r}: one of {', '.join(RESTARTS)}")
        if restart == "fresh" and run_dir is None:
            raise ValueError("--restart fresh deletes the run directory: name it with "
                             "--run-dir (never the stack of `make run`)")
        self.out, self.restart, self.pipeline, self.run_dir, self.cli = (
            out, restart, pipeline, run_dir, cli)

    def environment(self, arm: Arm) -> dict[str, str]:
        env = {**os.environ, **arm.env}
        if self.run_dir is not None:
            env["DCMMS_STACK_RUN_DIR"] = str(self.run_dir)
        return env

    def _cli(self, env: Mapping[str, str], *args: str) -> None:
        result = subprocess.run([str(self.cli), *args], env=dict(env), text=True,
                                capture_output=True)
        if result.returncode != 0:
            raise RuntimeError(f"'dcmms-telemetry {' '.join(args)}' failed "
                               f"({result.returncode}): {(result.stderr or result.stdout)[-500:]}")

    def prepare(self, arm: Arm) -> None:
        env = self.environment(arm)
        if self.restart == "api":
            self._cli(env, "restart", "api")
        elif self.restart in ("stack", "fresh"):
            self._cli(env, "down")
            if self.restart == "fresh" and self.run_dir is not None:
                shutil.rmtree(self.run_dir, ignore_errors=True)
            self._cli(env, "up", *(["--with-pipeline"] if self.pipeline else []))

    def finish(self) -> None:
        """The API back on the defaults (``api``); a stack of ``--run-dir`` stopped."""
        if self.restart == "api":
            self._cli(self.environment(Arm("defaults", {})), "restart", "api")
        elif self.restart in ("stack", "fresh") and self.run_dir is not None:
            self._cli(self.environment(Arm("defaults", {})), "down")
        elif self.restart == "stack":
            say("the stack keeps running with the last arm's settings: `make run` restores "
                "the defaults")

    def run(self, arm: Arm, tag: str, command: Sequence[str],
            keys: Sequence[str]) -> dict[str, Any]:
        self.prepare(arm)
        argv = [part.replace("{out}", str(self.out)).replace("{tag}", tag) for part in command]
        record: dict[str, Any] = {"tag": tag, "arm": arm.name, "env": arm.env,
                                  "started_at": dt.datetime.now(dt.UTC).isoformat(
                                      timespec="seconds"),
                                  "load_avg_before": _load(), "argv": argv}
        say(f"{tag}: {' '.join(f'{k}={v}' for k, v in arm.env.items()) or 'defaults'}, "
            f"load {record['load_avg_before']}")
        t0 = time.monotonic()
        with open(self.out / f"{tag}.log", "w") as log:
            rc = subprocess.run(argv, env=self.environment(arm), stdout=log,
                                stderr=subprocess.STDOUT).returncode
        record.update(seconds=round(time.monotonic() - t0, 1), rc=rc,
                      load_avg_after=_load())
        result = self.out / f"{tag}.json"
        if keys and result.is_file():
            try:
                data = json.loads(result.read_text())
            except ValueError:
                data = None
            record["keys"] = {key: dotted(data, key) for key in keys}
        say(f"{tag}: exit {rc} in {record['seconds']} s"
            + (f" (log {self.out / f'{tag}.log'})" if rc else ""))
        return record


def table(runs: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> str:
    """One line per run: tag, load before, then each key's value."""
    lines = ["tag  load  " + "  ".join(keys)]
    for run in runs:
        values = [run.get("keys", {}).get(key) for key in keys]
        lines.append(f"{run['tag']}  {run['load_avg_before'][0]}  "
                     + "  ".join("-" if v is None else str(v) for v in values)
                     + ("" if run["rc"] == 0 else f"  (exit {run['rc']})"))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        print("bench.ab: give the benchmark command after `--`", file=sys.stderr)
        return 2
    split = argv.index("--")
    own, command = argv[:split], argv[split + 1:]
    parser = argparse.ArgumentParser(prog="python -m bench.ab",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--arm", nargs="+", action="append", required=True,
                        metavar="NAME [KEY=VALUE ...]")
    parser.add_argument("--order", required=True, help='arm names, e.g. "A B B A"')
    parser.add_argument("--restart", default="none", choices=RESTARTS)
    parser.add_argument("--pipeline", action="store_true",
                        help="with --restart stack/fresh: start the job too")
    parser.add_argument("--run-dir", type=Path, default=None,
                        help="the stack's run directory (DCMMS_STACK_RUN_DIR) for every arm")
    parser.add_argument("--output-dir", type=Path, required=True)
    parser.add_argument("--keys", default="", help="comma list of dotted keys of <tag>.json")
    parser.add_argument("--cli", type=Path, default=_CLI, help=argparse.SUPPRESS)
    args = parser.parse_args(own)
    if not command:
        parser.error("the benchmark command after `--` is empty")
    try:
        runs = plan([parse_arm(a) for a in args.arm], args.order)
        runner = Runner(args.output_dir, args.restart, args.pipeline, args.run_dir, args.cli)
    except ValueError as exc:
        parser.error(str(exc))
    keys = [k for k in args.keys.split(",") if k]
    args.output_dir.mkdir(parents=True, exist_ok=True)
    sha, dirty = git_sha()  # an A/B of uncommitted code says so
    record: dict[str, Any] = {"command": ["python", "-m", "bench.ab", *argv],
                              "git_sha": sha, "git_dirty": dirty, "restart": args.restart,
                              "arms": {a.name: a.env for a, _ in runs}, "runs": []}
    manifest = args.output_dir / "ab.json"
    say(f"{len(runs)} runs ({args.order}), restart {args.restart}, into {args.output_dir}")
    try:
        for arm, tag in runs:
            record["runs"].append(runner.run(arm, tag, command, keys))
            manifest.write_text(json.dumps(record, indent=1) + "\n")
    except RuntimeError as exc:
        say(f"stopped: {exc}")
        manifest.write_text(json.dumps({**record, "stopped": str(exc)}, indent=1) + "\n")
        return 1
    finally:
        try:
            runner.finish()
        except RuntimeError as exc:
            say(f"could not restore the stack: {exc}")
    print(table(record["runs"], keys))
    return 0 if all(run["rc"] == 0 for run in record["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
