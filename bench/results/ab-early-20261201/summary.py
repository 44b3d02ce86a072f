import json,glob,os,sys
base=sys.argv[1] if len(sys.argv)>1 else "/work/wt-lead/bench/results/ab-emit"
runs=sorted({f.split('-run')[1].split('.')[0].split('/')[0] for f in glob.glob(base+"/*run*")}, key=int)
for r in runs:
    tag=[os.path.basename(p) for p in glob.glob(f"{base}/hops-idle-*-run{r}.json")][0].replace("hops-idle-","").replace(".json","")
    row=[tag]
    lad=[p for p in glob.glob(f"{base}/ladder-{tag}/*.json") if 'latest' not in p]
    if lad:
        d=json.load(open(lad[0]))
        steps=[s for s in d["steps"] if s.get("path")=="mqtt"]
        row.append(" ".join(f"{s['offered']}:{s['e2e_ms']['p50']:.0f}/{s['e2e_ms']['p99']:.0f}" for s in steps))
    for kind in ("idle","500"):
        h=json.load(open(f"{base}/hops-{kind}-{tag}.json"))["hops_ms"]
        row.append(kind+" "+"/".join(f"{h[k]['p50']:.0f}" for k in ("publish_to_raw","raw_to_enriched","enriched_to_validated","validated_to_committed","committed_to_visible","total")))
    s=json.load(open(f"{base}/steady-mqtt500-{tag}.json")); row.append(f"cores {s['cores_stack_total']}")
    dp=f"{base}/drain-{tag}.json"
    if os.path.exists(dp):
        d=json.load(open(dp)); row.append(f"drain {d['drain_eps']} ({d['cpu_us_per_event']['stack_total']} us)")
    print(" | ".join(row))
