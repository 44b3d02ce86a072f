#!/bin/bash
# A/B of [pipeline] early_flush_ms and [flink] max_bundle_time_ms: A = early 50, bundle 200 ms
# (defaults); D = early 0, bundle 200; E = early 50, bundle 50 ms. Order A D E E D A, each arm on a
# fresh default stack: MQTT quick ladder (500, 2,000, 5,000 x 30 s), bench.hops idle and next
# to bench.steady at 500/s.
set -u
cd /work/wt-lead
export PYTHONPATH=/work/wt-lead
PY=.venv/bin/python
OUT=/work/wt-lead/bench/results/ab-early
mkdir -p $OUT /tmp/ab
i=0
for arm in A D E E D A; do
  i=$((i+1))
  case $arm in A) early=50; bundle=200;; D) early=0; bundle=200;; E) early=50; bundle=50;; esac
  tag="early${early}-bundle${bundle}-run${i}"
  export DCMMS_PIPELINE_EARLY_FLUSH_MS=$early DCMMS_FLINK_MAX_BUNDLE_TIME_MS=$bundle
  echo "== $(date -u +%T) arm $arm $tag load $(cut -d' ' -f1-3 /proc/loadavg)"
  .venv/bin/dcmms-telemetry down >/dev/null 2>&1
  .venv/bin/dcmms-telemetry up --with-pipeline > /tmp/ab/up-$tag.log 2>&1 || { echo "up failed"; tail /tmp/ab/up-$tag.log; exit 1; }
  $PY -m bench --mode quick --phases mqtt --skip-anchors --skip-query --skip-drain --steps 2000,5000 --step-seconds 30 --output-dir $OUT/ladder-$tag > /tmp/ab/ladder-$tag.log 2>&1
  echo "   ladder rc=$? $(grep -E 'HELD|not held' /tmp/ab/ladder-$tag.log | sed 's/.*\] //' | cut -c1-100 | tr '\n' '|')"
  $PY -m bench.hops -n 40 --label "idle $tag" --out $OUT/hops-idle-$tag.json > /tmp/ab/hops-idle-$tag.log 2>&1
  $PY -m bench.steady --path mqtt --rate 500 --seconds 50 --out $OUT/steady-mqtt500-$tag.json > /tmp/ab/steady-$tag.log 2>&1 &
  sp=$!; sleep 12
  $PY -m bench.hops -n 60 --gap 0.5 --label "mqtt 500/s $tag" --out $OUT/hops-500-$tag.json > /tmp/ab/hops-500-$tag.log 2>&1
  wait $sp; echo "   steady rc=$? $(tail -1 /tmp/ab/steady-$tag.log | cut -c1-100)"
  if [ $arm != D ]; then
    $PY -m bench.drain -n 200000 --out $OUT/drain-$tag.json > /tmp/ab/drain-$tag.log 2>&1
    echo "   drain rc=$?"
  fi
done
.venv/bin/dcmms-telemetry down >/dev/null 2>&1
echo "== done $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
