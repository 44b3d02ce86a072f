"""Hop table (p50 ms) of the bench.hops files in a folder: python3 summary.py <dir>."""
import json
import pathlib
import sys

HOPS = ("publish_to_raw", "raw_to_enriched", "enriched_to_validated", "validated_to_committed",
        "committed_to_visible", "total", "visible_to_api", "total_api")
folder = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else ".")
print("| file | load before | " + " | ".join(HOPS) + " |")
print("|---" * (len(HOPS) + 2) + "|")
for f in sorted(folder.glob("hops-*.json")):
    d = json.loads(f.read_text())
    cells = [str(round(d["hops_ms"][h]["p50"])) if h in d["hops_ms"] and d["hops_ms"][h]["p50"]
             is not None else "-" for h in HOPS]
    load = d["context"].get("loadavg_before") or d["context"].get("load_avg_before")
    print(f"| {f.stem} | {load[0]:.1f} | " + " | ".join(cells) + " |")
