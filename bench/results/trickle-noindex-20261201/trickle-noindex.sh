#!/bin/bash
# As trickle.sh next to MQTT 500/s, with sensor_readings' asset_id index dropped after the
# stack's start (ALTER TABLE ... DROP INDEX), bundles of 50 ms and 200 ms, fresh stacks.
set -u
cd /work/wt-lead; export PYTHONPATH=/work/wt-lead; PY=.venv/bin/python
OUT=/work/wt-lead/bench/results/trickle-noindex-20261201; mkdir -p $OUT
export DCMMS_STACK_RUN_DIR=/work/wt-lead/.run-trickle
for bundle in 50 200; do
  export DCMMS_FLINK_MAX_BUNDLE_TIME_MS=$bundle
  tag="bundle$bundle-noindex"
  .venv/bin/dcmms-telemetry down > /dev/null 2>&1; rm -rf $DCMMS_STACK_RUN_DIR
  .venv/bin/dcmms-telemetry up --with-pipeline > /tmp/trace/up-$tag.log 2>&1 || { echo "up failed"; tail /tmp/trace/up-$tag.log; exit 1; }
  curl -s -G http://127.0.0.1:9000/exec --data-urlencode "query=ALTER TABLE sensor_readings ALTER COLUMN asset_id DROP INDEX" ; echo
  curl -s -G http://127.0.0.1:9000/exec --data-urlencode "query=select \"column\", indexed from table_columns('sensor_readings') where \"column\" = 'asset_id'"; echo
  sleep 20
  echo "== $(date -u +%T) $tag next to MQTT 500/s, load $(cut -d' ' -f1-3 /proc/loadavg)"
  $PY -m bench.hops --trickle 10 --seconds 30 --path rest --label "idle trickle 10/s rest $tag" --out $OUT/hops-trickle-idle-rest-$tag.json | tail -1
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
