#!/bin/bash
# A/B of the view rows read as buckets (no SAMPLE BY when the interval is the view's bucket).
# B = 73b80ea (before), A = the change; order B A B A on the same warm dense stack, the API
# restarted on each switch.
set -u
cd /work/wt-lead; export PYTHONPATH=/work/wt-lead; PY=.venv/bin/python
OUT=/work/wt-lead/bench/results/ab-bucket-rows; mkdir -p $OUT
i=0
for arm in B A B A; do
  i=$((i+1))
  git checkout -q -- api/questdb.py
  [ $arm = A ] && cp /work/main/api/questdb.py api/questdb.py
  .venv/bin/dcmms-telemetry restart api > /dev/null 2>&1 || { echo "restart failed"; exit 1; }
  sleep 5
  echo "== $(date -u +%T) arm $arm run $i load $(cut -d' ' -f1-3 /proc/loadavg)"
  $PY -m bench.query_dense --no-index-compare --kinds raw_first,bucket_1m,bucket_1h_7d,bucket_1h_90d_site,bucket_1h_90d_sensor --output $OUT/query-dense-$arm-run$i.json > /tmp/trace/ab-$arm-$i.log 2>&1
  grep -E 'api c1 p50' /tmp/trace/ab-$arm-$i.log | sed 's/.*\] /   /'
done
git checkout -q -- api/questdb.py
.venv/bin/dcmms-telemetry restart api > /dev/null 2>&1
echo "== done $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
