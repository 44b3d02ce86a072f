#!/bin/bash
# Dense query figures with the new default (no asset_id index): load, then raw pages c1.
set -u
cd /work/wt-lead; export PYTHONPATH=/work/wt-lead; PY=.venv/bin/python
export DCMMS_STACK_RUN_DIR=/work/wt-lead/.run-dense
OUT=/work/wt-lead/bench/results/dense-noindex-20261201; mkdir -p $OUT
.venv/bin/dcmms-telemetry up > /tmp/dense-up.log 2>&1 || { echo "up failed"; tail /tmp/dense-up.log; exit 1; }
echo "== $(date -u +%T) up; index: $(curl -s -G http://127.0.0.1:9000/exec --data-urlencode "query=select indexed from table_columns('sensor_readings') where \"column\" = 'asset_id'" | grep -o '"dataset":[^}]*') load $(cut -d' ' -f1-3 /proc/loadavg)"
$PY -m bench.query_dense --load-only > $OUT/load.log 2>&1; echo "== $(date -u +%T) load rc=$? $(tail -1 $OUT/load.log | cut -c1-200)"
sleep 20
echo "== $(date -u +%T) measure, load $(cut -d' ' -f1-3 /proc/loadavg)"
$PY -m bench.query_dense --kinds raw_first,raw_next --skip-c8 --no-index-compare --requests 40 --output $OUT/query-dense-raw-noindex.json > $OUT/measure.log 2>&1
echo "== $(date -u +%T) measure rc=$? load $(cut -d' ' -f1-3 /proc/loadavg)"
