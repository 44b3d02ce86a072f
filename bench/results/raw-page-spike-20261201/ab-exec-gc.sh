#!/bin/bash
# Needs the code of commit b7d0f68 ([api] page_reads), reverted after it.
# Eleventh session, issue 12, third pass: /exec with orjson's parse under gc_paused (G) against
# PG wire (P), raw_first and bucket_1m only, 60 requests with 1 client, 15 per client with 8;
# order G P P G, the API restarted with DCMMS_API_PAGE_READS on each switch.
set -u
cd /work/main; PY=.venv/bin/python
OUT=bench/results/raw-page-spike-20261201; mkdir -p /tmp/trace
i=8
for arm in G P P G; do
  i=$((i+1))
  mode=$([ $arm = G ] && echo exec || echo pgwire)
  DCMMS_API_PAGE_READS=$mode .venv/bin/dcmms-telemetry restart api > /dev/null 2>&1 || { echo "restart failed"; exit 1; }
  sleep 5
  echo "== $(date -u +%T) arm $arm ($mode) run $i load $(cut -d' ' -f1-3 /proc/loadavg)"
  $PY -m bench.query_dense --no-index-compare --requests 60 --requests-per-client 15 \
    --kinds raw_first,bucket_1m --output $OUT/query-dense-$arm-run$i.json > /tmp/trace/ab-gc-$arm-$i.log 2>&1
  grep -E 'api c1 p50' /tmp/trace/ab-gc-$arm-$i.log | sed 's/.*\] /   /'
done
.venv/bin/dcmms-telemetry restart api > /dev/null 2>&1
echo "== done $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
