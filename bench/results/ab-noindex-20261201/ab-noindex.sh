#!/bin/bash
# A/B: A = defaults (asset_id index, bundles 200 ms); X = sensor_readings' asset_id index
# dropped after start + [flink] max_bundle_time_ms 50. Order X A X A, fresh default stacks:
# MQTT quick ladder (500, 2,000, 5,000 x 30 s) and bench.drain -n 200000.
set -u
cd /work/wt-lead; export PYTHONPATH=/work/wt-lead; PY=.venv/bin/python
OUT=/work/wt-lead/bench/results/ab-noindex-20261201; mkdir -p $OUT /tmp/ab
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
  echo "== $(date -u +%T) $tag index: $(curl -s -G http://127.0.0.1:9000/exec --data-urlencode "query=select indexed from table_columns('sensor_readings') where \"column\" = 'asset_id'" | grep -o '"dataset":[^}]*') load $(cut -d' ' -f1-3 /proc/loadavg)"
  $PY -m bench --mode quick --phases mqtt --skip-anchors --skip-query --skip-drain --steps 2000,5000 --step-seconds 30 --output-dir $OUT/ladder-$tag > /tmp/ab/ladder-$tag.log 2>&1
  echo "   ladder rc=$? $(grep -E 'HELD|not held' /tmp/ab/ladder-$tag.log | sed 's/.*\] //' | cut -c1-110 | tr '\n' '|')"
  $PY -m bench.drain -n 200000 --out $OUT/drain-$tag.json > /tmp/ab/drain-$tag.log 2>&1
  echo "   drain rc=$? $(tail -2 /tmp/ab/drain-$tag.log | tr '\n' ' ' | cut -c1-200)"
done
.venv/bin/dcmms-telemetry down > /dev/null 2>&1
echo "== done $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
