"""QuestDB's CPU per commit for the pipeline's table shape: ``python -m bench.questdb_commits``.

Writes to a scratch copy of ``sensor_readings``' DDL (dropped afterwards) over ILP/HTTP,
as the job's sink does: ``--writers`` concurrent senders, each committing ``--rows`` rows
``--rate`` times a second for ``--seconds``. Each commit's timestamps spread over the
``--overlap-ms`` before its own time: 0 gives in-order appends; more than the gap between
commits makes every commit overlap earlier ones, i.e. out of order (O3) for QuestDB, which
is what the job's commits are (readings carry their sensors' clocks and arrive late, in no
order). ``--variants`` also tries the DDL without its symbol indexes or DEDUP keys.
Reports QuestDB's CPU (its process, from the stack's pid file) per commit and per
row, for each overlap given, in ``bench/results/questdb-commits-<UTC time>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import psutil
from questdb import Sender, TimestampMicros

from bench.drain import RESULTS, _context
from bench.resources import stack_pids
from config.settings import Settings, load_settings
from io_connectors.questdb_http import questdb_exec, questdb_http_url
from io_connectors.questdb_schema import DDL_STATEMENTS, SENSOR_READINGS

__all__ = ["measure", "main"]


def _cpu_s(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


# Variants of the table's DDL, to see what each feature costs per commit.
VARIANTS = {
    "as-is": lambda ddl: ddl,
    "no-index": lambda ddl: ddl.replace(" CACHE INDEX,", " CACHE,"),
    "no-asset-index": lambda ddl: ddl.replace("CAPACITY 65536 CACHE INDEX,",
                                              "CAPACITY 65536 CACHE,"),
    "no-site-index": lambda ddl: ddl.replace("CAPACITY 1024 CACHE INDEX,",
                                             "CAPACITY 1024 CACHE,"),
    "no-dedup": lambda ddl: ddl.replace("DEDUP UPSERT KEYS(timestamp, event_id)", ""),
    # The two enrichment texts (one value per site or asset) as SYMBOLs: fixed-width
    # columns for the out-of-order merge instead of VARCHAR's data and aux files.
    "symbol-texts": lambda ddl: ddl.replace("site_name VARCHAR", "site_name SYMBOL CAPACITY 1024 "
                                            "CACHE").replace("location VARCHAR", "location SYMBOL "
                                                             "CAPACITY 65536 CACHE"),
    # Without the two enrichment texts at all (what they cost an out-of-order merge).
    "no-texts": lambda ddl: ddl.replace("    site_name VARCHAR,\n", "").replace(
        "    location VARCHAR,\n", ""),
}
# The variants whose DDL has no VARCHAR site_name / location: the rows send them as symbols
# (symbol-texts) or not at all (no-texts).
_TEXTS_AS = {"symbol-texts": "symbols", "no-texts": "none"}


def measure(settings: Settings, writers: int, rows: int, rate: float, seconds: float,
            overlap_ms: int, variant: str = "as-is") -> dict[str, Any]:
    host, port = settings.questdb.host, settings.questdb.http_port
    base_url = questdb_http_url(host, port)
    table = f"bench_commits_{uuid.uuid4().hex[:6]}"
    ddl = VARIANTS[variant](
        DDL_STATEMENTS[0].replace(f"EXISTS {SENSOR_READINGS} ", f"EXISTS {table} "))
    questdb_exec(base_url, ddl)
    questdb = psutil.Process(stack_pids(settings.stack.run_dir / "pids")["questdb"])
    commits = [0] * writers
    texts_as = _TEXTS_AS.get(variant, "columns")

    def write(w: int) -> None:
        n = w * 10**9
        conf = f"http::addr={host}:{port};auto_flush=off;protocol_version=2;"
        with Sender.from_conf(conf) as sender:
            end, due = time.time() + seconds, time.time()
            while time.time() < end:
                now = int(time.time() * 1e6)
                for i in range(rows):
                    n += 1
                    sensor = n % 4000
                    symbols = {"site_id": f"site-{sensor % 10}",
                               "asset_id": f"asset-{sensor % 1000}",
                               "sensor_id": f"sensor-{sensor}", "sensor_type": "TEMPERATURE",
                               "unit": "C", "quality_flag": "GOOD", "asset_type": "inverter"}
                    columns = {"event_id": f"e{n}", "value": 20.5,
                               "ingested_at": TimestampMicros(now)}
                    texts = {"site_name": f"Site {sensor % 10}",
                             "location": f"{sensor % 1000 / 10:.4f},8.5"}
                    if texts_as == "columns":
                        columns.update(texts)
                    elif texts_as == "symbols":
                        symbols.update(texts)
                    sender.row(table, symbols=symbols, columns=columns,
                               at=TimestampMicros(now - overlap_ms * 1000 * (rows - i) // rows))
                sender.flush()
                commits[w] += 1
                due += 1 / rate
                time.sleep(max(0.0, due - time.time()))

    try:
        time.sleep(0.5)
        cpu0, t0 = _cpu_s(questdb), time.time()
        threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        time.sleep(1.5)  # the last commits are applied
        used, elapsed = _cpu_s(questdb) - cpu0, time.time() - t0
    finally:
        questdb_exec(base_url, f"DROP TABLE IF EXISTS {table}")
    total = sum(commits)
    return {"variant": variant, "writers": writers, "rows_per_commit": rows,
            "commits_per_s_each": rate,
            "overlap_ms": overlap_ms, "commits": total, "seconds": round(elapsed, 1),
            "questdb_cores": round(used / elapsed, 3),
            "ms_cpu_per_commit": round(used / total * 1000, 1),
            "us_cpu_per_row": round(used / (total * rows) * 1e6, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.questdb_commits",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--writers", type=int, default=2)
    parser.add_argument("--rows", type=int, default=100, help="rows per commit")
    parser.add_argument("--rate", type=float, default=5.0, help="commits/s per writer")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--overlap-ms", default="0,200,1000",
                        help="comma list: event-time spread of each commit (0 = in order)")
    parser.add_argument("--variants", default="as-is",
                        help=f"comma list of table DDL variants: {', '.join(VARIANTS)}")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    settings = load_settings()
    load_before = os.getloadavg()
    runs = []
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown --variants {unknown}; known: {', '.join(VARIANTS)}")
    for variant, overlap in ((v, int(x)) for v in variants for x in args.overlap_ms.split(",")):
        run = measure(settings, args.writers, args.rows, args.rate, args.seconds, overlap,
                      variant)
        print(f"{variant:15s} overlap {overlap:5d} ms: {run['commits']} commits of "
              f"{args.rows} rows, QuestDB "
              f"{run['questdb_cores']} cores = {run['ms_cpu_per_commit']} ms per commit, "
              f"{run['us_cpu_per_row']} us per row", flush=True)
        runs.append(run)
    result = {"runs": runs, "context": _context(settings, load_before, "bench.questdb_commits")}
    out = args.out or RESULTS / (
        f"questdb-commits-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json")
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
