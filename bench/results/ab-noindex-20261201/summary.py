"""Ladder steps and drain of each arm: python3 summary.py <dir> (ab-noindex.sh's layout)."""
import glob
import json
import sys

base = sys.argv[1] if len(sys.argv) > 1 else "."
for lad in sorted(glob.glob(f"{base}/ladder-*"), key=lambda p: p.rsplit("run", 1)[1]):
    run = lad.rsplit("-", 1)[1]
    d = json.load(open(f"{lad}/latest.json"))
    steps = [f"{s['offered']}: {s['e2e_ms'].get('p50')}/{s['e2e_ms'].get('p99')} "
             f"{'held' if s.get('held') else 'NOT held'}" for s in d["steps"] if s["path"] == "mqtt"]
    drain = json.load(open(glob.glob(f"{base}/drain-*-{run}.json")[0]))
    cpu = drain["cpu_us_per_event"]
    print(f"{lad.rsplit('/', 1)[1]}: " + " | ".join(steps) + f" | drain {drain['drain_eps']} "
          f"events/s, stack {cpu.get('stack_total')} us/event (QuestDB {cpu.get('questdb')})")
