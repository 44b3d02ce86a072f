#!/bin/bash
# Isolated readings (bench.hops) against a steady trickle of the benchmark's probes
# (bench.hops --trickle 10), idle and next to bench.steady MQTT 500/s, on a fresh default
# stack (own run dir), with bundles of 200 ms (default) and of 50 ms.
set -u
cd /work/wt-lead; export PYTHONPATH=/work/wt-lead; PY=.venv/bin/python
# (the files were then copied to bench/results/trickle-20261201/)
OUT=/work/wt-lead/bench/results/trickle-20261201; mkdir -p $OUT
export DCMMS_STACK_RUN_DIR=/work/wt-lead/.run-trickle
for bundle in 200 50; do
  export DCMMS_FLINK_MAX_BUNDLE_TIME_MS=$bundle
  tag="bundle$bundle"
  .venv/bin/dcmms-telemetry down > /dev/null 2>&1; rm -rf $DCMMS_STACK_RUN_DIR
  .venv/bin/dcmms-telemetry up --with-pipeline > /tmp/trace/up-$tag.log 2>&1 || { echo "up failed"; tail /tmp/trace/up-$tag.log; exit 1; }
  sleep 20
  echo "== $(date -u +%T) $tag idle, load $(cut -d' ' -f1-3 /proc/loadavg)"
  $PY -m bench.hops -n 40 --label "idle isolated $tag" --out $OUT/hops-isolated-idle-$tag.json | tail -1
  $PY -m bench.hops --trickle 10 --seconds 30 --label "idle trickle 10/s mqtt $tag" --out $OUT/hops-trickle-idle-mqtt-$tag.json | tail -1
  $PY -m bench.hops --trickle 10 --seconds 30 --path rest --label "idle trickle 10/s rest $tag" --out $OUT/hops-trickle-idle-rest-$tag.json | tail -1
  echo "== $(date -u +%T) $tag next to MQTT 500/s, load $(cut -d' ' -f1-3 /proc/loadavg)"
  $PY -m bench.steady --path mqtt --rate 500 --seconds 60 --out $OUT/steady-500-a-$tag.json > /dev/null 2>&1 &
  sp=$!; sleep 12
  $PY -m bench.hops -n 40 --gap 0.5 --label "isolated next to mqtt 500/s $tag" --out $OUT/hops-isolated-500-$tag.json | tail -1
  wait $sp
  $PY -m bench.steady --path mqtt --rate 500 --seconds 55 --out $OUT/steady-500-b-$tag.json > /dev/null 2>&1 &
  sp=$!; sleep 12
  $PY -m bench.hops --trickle 10 --seconds 35 --label "trickle 10/s mqtt next to mqtt 500/s $tag" --out $OUT/hops-trickle-500-mqtt-$tag.json | tail -1
  wait $sp
done
.venv/bin/dcmms-telemetry down > /dev/null 2>&1
echo "== done $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
