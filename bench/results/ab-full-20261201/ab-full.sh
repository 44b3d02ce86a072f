#!/bin/bash
# A/B of the ninth session's lever through the full benchmark (issue 11, decision 0004
# "Tenth session"): X = sensor_readings' asset_id index dropped after start + [flink]
# max_bundle_time_ms 50; N = the index dropped, bundles 200 ms (prepared, not run); A = the
# defaults of that day. One fresh default-port stack per arm. Run 2026-12-01: X A (fa8edd7; A's
# REST ladder lost one request to a dropped keep-alive connection, kept as
# full-A-...-run2-rest-dropped), then after the generator's retry fix (eb0be43) ARMS="A N" RUN0=2
# (stopped after A)
# and ARMS="X" RUN0=3: order X A A X.
# `python -m bench --mode full` without the anchors, the direct peer and the query phase
# (none of them depends on the lever): MQTT and REST ladders, the 600 s soak, the stream, the drain.
set -u
cd /work/wt-lead; export PYTHONPATH=/work/wt-lead; PY=.venv/bin/python
OUT=/work/wt-lead/bench/results/ab-full-20261201; mkdir -p $OUT /tmp/ab
export DCMMS_STACK_RUN_DIR=/work/wt-lead/.run-abfull
i=${RUN0:-0}
for arm in ${ARMS:-X A}; do
  i=$((i+1))
  case $arm in X) bundle=50; index=0;; N) bundle=200; index=0;; A) bundle=200; index=1;; esac
  tag="$arm-bundle$bundle-index$index-run$i"
  export DCMMS_FLINK_MAX_BUNDLE_TIME_MS=$bundle
  .venv/bin/dcmms-telemetry down > /dev/null 2>&1; rm -rf $DCMMS_STACK_RUN_DIR
  .venv/bin/dcmms-telemetry up --with-pipeline > /tmp/ab/up-$tag.log 2>&1 || { echo "up failed"; tail /tmp/ab/up-$tag.log; exit 1; }
  if [ $index = 0 ]; then
    curl -s -G http://127.0.0.1:9000/exec --data-urlencode "query=ALTER TABLE sensor_readings ALTER COLUMN asset_id DROP INDEX" > /dev/null
  fi
  echo "== $(date -u +%T) $tag index: $(curl -s -G http://127.0.0.1:9000/exec --data-urlencode "query=select indexed from table_columns('sensor_readings') where \"column\" = 'asset_id'" | grep -o '"dataset":[^}]*') load $(cut -d' ' -f1-3 /proc/loadavg)"
  $PY -m bench --mode full --phases mqtt,rest,soak,stream,drain --skip-anchors --skip-query --output-dir $OUT/full-$tag > /tmp/ab/full-$tag.log 2>&1
  echo "   full rc=$? $(grep -E 'HELD|not held|drain' /tmp/ab/full-$tag.log | sed 's/.*\] //' | cut -c1-110 | tr '\n' '|')"
done
.venv/bin/dcmms-telemetry down > /dev/null 2>&1
echo "== done $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
