#!/bin/bash
# Issue 16's stream at 5,000 REST events/s: A = defaults; X = asset_id index dropped after
# start + bundles of 50 ms. Order X A X A, fresh stacks, python -m bench.stream --seconds 50.
set -u
cd /work/wt-lead; export PYTHONPATH=/work/wt-lead; PY=.venv/bin/python
OUT=/work/wt-lead/bench/results/ab-stream-20261201; mkdir -p $OUT /tmp/ab
export DCMMS_STACK_RUN_DIR=/work/wt-lead/.run-trickle
i=0
for arm in X A X A; do
  i=$((i+1))
  case $arm in X) bundle=50; index=0;; A) bundle=200; index=1;; esac
  tag="$arm-bundle$bundle-index$index-run$i"
  export DCMMS_FLINK_MAX_BUNDLE_TIME_MS=$bundle
  .venv/bin/dcmms-telemetry down > /dev/null 2>&1; rm -rf $DCMMS_STACK_RUN_DIR
  .venv/bin/dcmms-telemetry up --with-pipeline > /tmp/ab/up-$tag.log 2>&1 || { echo "up failed"; tail /tmp/ab/up-$tag.log; exit 1; }
  if [ $index = 0 ]; then
    curl -s -G http://127.0.0.1:9000/exec --data-urlencode "query=ALTER TABLE sensor_readings ALTER COLUMN asset_id DROP INDEX" > /dev/null
  fi
  sleep 10
  echo "== $(date -u +%T) $tag load $(cut -d' ' -f1-3 /proc/loadavg)"
  $PY -m bench.stream --seconds 50 --out $OUT/stream-$tag.json > /tmp/ab/stream-$tag.log 2>&1
  echo "   rc=$? $(tail -3 /tmp/ab/stream-$tag.log | tr '\n' ' ' | cut -c1-250)"
done
.venv/bin/dcmms-telemetry down > /dev/null 2>&1
echo "== done $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
