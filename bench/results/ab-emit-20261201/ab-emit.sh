#!/bin/bash
# A/B of [flink] emit_poll_ms (0 / 10) and [pipeline] early_flush_ms (50 / 0), each arm on a
# fresh default stack: A = emit 0 early 50 (HEAD before the patch), B = emit 10 early 50 (new
# default), C = emit 10 early 0. Order A B C C B A.
set -u
cd /work/wt-lead
export PYTHONPATH=/work/wt-lead
PY=.venv/bin/python
OUT=/work/wt-lead/bench/results/ab-emit
mkdir -p $OUT /tmp/ab
i=0
for arm in A B C C B A; do
  i=$((i+1))
  case $arm in A) emit=0; early=50;; B) emit=10; early=50;; C) emit=10; early=0;; esac
  tag="emit${emit}-early${early}-run${i}"
  export DCMMS_FLINK_EMIT_POLL_MS=$emit DCMMS_PIPELINE_EARLY_FLUSH_MS=$early
  echo "== $(date -u +%T) arm $arm $tag load $(cut -d' ' -f1-3 /proc/loadavg)"
  .venv/bin/dcmms-telemetry down >/dev/null 2>&1
  .venv/bin/dcmms-telemetry up --with-pipeline > /tmp/ab/up-$tag.log 2>&1 || { echo "up failed"; tail /tmp/ab/up-$tag.log; exit 1; }
  ps -eo args | grep -o 'dcmms.emitPollMs=[0-9]*' | sort -u | tr '\n' ' '; echo
  $PY -m bench --mode quick --phases mqtt --skip-anchors --skip-query --skip-drain --steps 2000,5000 --step-seconds 30 --output-dir $OUT/ladder-$tag > /tmp/ab/ladder-$tag.log 2>&1
  echo "   ladder rc=$? $(grep -E '^\[.*(held|not held)' /tmp/ab/ladder-$tag.log | sed 's/.*mqtt/mqtt/' | cut -c1-110 | tr '\n' '|')"
  $PY -m bench.hops -n 40 --label "idle $tag" --out $OUT/hops-idle-$tag.json > /tmp/ab/hops-idle-$tag.log 2>&1
  $PY -m bench.steady --path mqtt --rate 500 --seconds 50 --out $OUT/steady-mqtt500-$tag.json > /tmp/ab/steady-$tag.log 2>&1 &
  sp=$!; sleep 12
  $PY -m bench.hops -n 60 --gap 0.5 --label "mqtt 500/s $tag" --out $OUT/hops-500-$tag.json > /tmp/ab/hops-500-$tag.log 2>&1
  wait $sp; echo "   steady rc=$? $(tail -1 /tmp/ab/steady-$tag.log | cut -c1-100)"
  if [ $arm != C ]; then
    $PY -m bench.drain -n 200000 --out $OUT/drain-$tag.json > /tmp/ab/drain-$tag.log 2>&1
    echo "   drain rc=$? $(grep -i 'events/s' /tmp/ab/drain-$tag.log | tail -1 | cut -c1-120)"
  fi
done
.venv/bin/dcmms-telemetry down >/dev/null 2>&1
echo "== done $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
