"""Table of the full-run A/B (ab-full.sh): one row per arm, ladder e2e by step, the soak, the
stream, the drain and CPU per event. Usage: python3 summary.py [folder] (default: this one)."""
import glob
import json
import os
import sys

folder = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))


def pct(e2e: dict | None) -> str:
    return "-" if not e2e else f"{e2e['p50']:,.0f} / {e2e['p99']:,.0f}"


for path in sorted(glob.glob(os.path.join(folder, "full-*", "2*.json"))):
    if path.endswith("-soak.json"):
        continue
    d = json.load(open(path))
    arm = os.path.basename(os.path.dirname(path))[len("full-"):]
    p = d["pipeline"]
    print(f"== {arm} ({os.path.relpath(path, folder)}, git {d['git_sha'][:7]}, "
          f"started {d['started_at']}, load {d['machine'].get('load_avg_before')} -> {d['machine'].get('load_avg_after')})")
    for s in d["steps"]:
        if s.get("path") in ("mqtt", "rest") and "e2e_ms" in s:
            print(f"  {s['path']:4} {s['offered']:>6,}/s e2e p50/p99 {pct(s['e2e_ms'])} ms "
                  f"{'held' if s['held'] else 'NOT held: ' + '; '.join(s['reasons'])[:80]}")
    soak = p.get("soak") or {}
    print(f"  sustained mqtt {p['mqtt']['sustained_eps']} rest {p['rest']['sustained_eps']}; "
          f"soak {soak.get('rate')}/s held={soak.get('held')} lost={soak.get('lost')} "
          f"dup={soak.get('duplicated')} slope={soak.get('backlog_slope')} e2e {pct(soak.get('e2e_ms'))}")
    st = d.get("stream") or {}
    print(f"  stream {st.get('rate')}/s sent->pushed p50/p99 {pct(st.get('e2e_ms'))} ms; "
          f"sent->validated {pct((st.get('hops_ms') or {}).get('sent_to_validated'))}")
    dr = p.get("drain") or {}
    print(f"  drain {dr.get('drain_eps')} events/s; cpu us/event {d['cpu_us_per_event']}")
