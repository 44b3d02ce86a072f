#!/bin/bash
# Same stack: add the asset_id index back, wait for it, measure the same raw kinds again.
set -u
cd /work/wt-lead; export PYTHONPATH=/work/wt-lead; PY=.venv/bin/python
export DCMMS_STACK_RUN_DIR=/work/wt-lead/.run-dense
OUT=/work/wt-lead/bench/results/dense-noindex-20261201
t0=$(date +%s)
curl -s -G http://127.0.0.1:9000/exec --data-urlencode "query=ALTER TABLE sensor_readings ALTER COLUMN asset_id ADD INDEX"; echo
for i in $(seq 1 120); do
  idx=$(curl -s -G http://127.0.0.1:9000/exec --data-urlencode "query=select indexed from table_columns('sensor_readings') where \"column\" = 'asset_id'" | grep -o '"dataset":[^}]*')
  lag=$(curl -s -G http://127.0.0.1:9000/exec --data-urlencode "query=select writerTxn, sequencerTxn, suspended from wal_tables() where name = 'sensor_readings'" | grep -o '"dataset":[^}]*')
  case "$idx" in *true*) break;; esac
  sleep 5
done
echo "== $(date -u +%T) index $idx after $(( $(date +%s) - t0 )) s; wal $lag"
sleep 20
echo "== $(date -u +%T) measure with index, load $(cut -d' ' -f1-3 /proc/loadavg)"
$PY -m bench.query_dense --kinds raw_first,raw_next --skip-c8 --no-index-compare --requests 40 --output $OUT/query-dense-raw-index.json > $OUT/measure-index.log 2>&1
echo "== $(date -u +%T) measure rc=$? load $(cut -d' ' -f1-3 /proc/loadavg)"
