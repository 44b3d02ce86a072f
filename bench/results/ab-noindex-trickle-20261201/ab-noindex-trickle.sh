#!/bin/bash
# Repeat of the trickle runs: A = defaults (asset_id index, bundles 200 ms); X = index dropped
# after start + bundles 50 ms. Order X A X A, fresh stacks; in each, a 10/s MQTT trickle of
# probes (bench.hops --trickle) next to bench.steady MQTT at 500/s and at 2,000/s.
set -u
cd /work/wt-lead; export PYTHONPATH=/work/wt-lead; PY=.venv/bin/python
OUT=/work/wt-lead/bench/results/ab-noindex-trickle-20261201; mkdir -p $OUT /tmp/ab
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
  sleep 15
  echo "== $(date -u +%T) $tag index: $(curl -s -G http://127.0.0.1:9000/exec --data-urlencode "query=select indexed from table_columns('sensor_readings') where \"column\" = 'asset_id'" | grep -o '"dataset":[^}]*') load $(cut -d' ' -f1-3 /proc/loadavg)"
  for rate in 500 2000; do
    $PY -m bench.steady --path mqtt --rate $rate --seconds 55 --out $OUT/steady-$rate-$tag.json > /dev/null 2>&1 &
    sp=$!; sleep 12
    $PY -m bench.hops --trickle 10 --seconds 35 --label "trickle 10/s mqtt next to mqtt $rate/s $tag" --out $OUT/hops-trickle-$rate-$tag.json | tail -1
    wait $sp
  done
done
.venv/bin/dcmms-telemetry down > /dev/null 2>&1
echo "== done $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
