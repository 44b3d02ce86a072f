#!/bin/bash
# Needs the code of commit b7d0f68 ([api] page_reads), reverted after it.
# Eleventh session, issue 12: the API's page rows over /exec (E, [api] page_reads = "exec")
# against PG wire (P, "pgwire"), through HTTP on the warm dense stack of /work/main, order
# P E E P (ORDER="E P P E" FIRST=5 for the second pass), the API restarted with DCMMS_API_PAGE_READS on each switch (same code otherwise).
set -u
cd /work/main; PY=.venv/bin/python
OUT=bench/results/raw-page-spike-20261201; mkdir -p /tmp/trace
i=$(( ${FIRST:-1} - 1 ))
for arm in ${ORDER:-P E E P}; do
  i=$((i+1))
  mode=$([ $arm = E ] && echo exec || echo pgwire)
  DCMMS_API_PAGE_READS=$mode .venv/bin/dcmms-telemetry restart api > /dev/null 2>&1 || { echo "restart failed"; exit 1; }
  sleep 5
  echo "== $(date -u +%T) arm $arm ($mode) run $i load $(cut -d' ' -f1-3 /proc/loadavg)"
  $PY -m bench.query_dense --no-index-compare --requests 40 --requests-per-client 10 \
    --kinds raw_first,raw_next,bucket_1m,bucket_1h_90d_site \
    --output $OUT/query-dense-$arm-run$i.json > /tmp/trace/ab-exec-$arm-$i.log 2>&1
  grep -E 'api c1 p50' /tmp/trace/ab-exec-$arm-$i.log | sed 's/.*\] /   /'
done
.venv/bin/dcmms-telemetry restart api > /dev/null 2>&1
echo "== done $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
