"""Start-up settings of the Beam SDK worker processes (imported by Python itself).

Beam's worker pool starts each SDK worker as ``python -c "...SdkHarness(...).run()"``, a
command no option reaches. runners/worker_pool.py puts this folder first on the workers'
``PYTHONPATH``, so Python imports this module when a worker starts (``site`` imports any
``sitecustomize`` it finds), and passes the settings in the environment:

* ``DCMMS_SDK_GC_THRESHOLD`` ("gen0,gen1,gen2", from ``[flink] sdk_gc_threshold``): the
  cyclic garbage collector's thresholds. A worker holds the dedup state of its buckets
  (a minute or more of event ids, hundreds of thousands of tuples) and allocates a dict
  per event; with Python's default (700, 10, 10) the collector kept walking that heap.
  50000,20,100 took the drain from ~14,600 to 16,300-18,100 events/s and the workers from
  73-81 to 60-64 us per event (decision 0004). Reference cycles are still collected.
"""

from __future__ import annotations

import gc
import os

_threshold = os.environ.get("DCMMS_SDK_GC_THRESHOLD", "").strip()
if _threshold:
    try:
        gc.set_threshold(*(int(part) for part in _threshold.split(",")))
    except (TypeError, ValueError) as exc:
        # A worker must still start: say which setting is wrong and keep Python's default.
        import sys

        print(f"sitecustomize: ignoring DCMMS_SDK_GC_THRESHOLD={_threshold!r} "
              f"(setting [flink] sdk_gc_threshold): {exc}", file=sys.stderr)
