#!/bin/bash
set -u
cd /work/wt-lead; export PYTHONPATH=/work/wt-lead; PY=.venv/bin/python
OUT=/work/wt-lead/bench/results/ab-early
.venv/bin/dcmms-telemetry up --with-pipeline > /tmp/ab/up-probe.log 2>&1 || exit 1
echo "idle: $($PY /tmp/probe-fetch.py)  load $(cut -d' ' -f1-3 /proc/loadavg)"
$PY -m bench.steady --path mqtt --rate 500 --seconds 40 --out $OUT/steady-probecheck-500.json > /dev/null 2>&1 &
sleep 8; echo "at 500/s: $($PY /tmp/probe-fetch.py)  load $(cut -d' ' -f1-3 /proc/loadavg)"; wait
$PY -m bench.steady --path mqtt --rate 5000 --seconds 40 --out $OUT/steady-probecheck-5000.json > /dev/null 2>&1 &
sleep 8; echo "at 5000/s: $($PY /tmp/probe-fetch.py)  load $(cut -d' ' -f1-3 /proc/loadavg)"; wait
.venv/bin/dcmms-telemetry down > /dev/null 2>&1
