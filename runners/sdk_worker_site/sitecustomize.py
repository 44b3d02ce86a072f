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
* ``DCMMS_SDK_STATE_SIZING`` ("fast", the default, or "beam"): how Beam's state cache
  weighs the values it caches, see :func:`_size_state_without_module_globals`.
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


def _size_state_without_module_globals() -> None:
    """Make Beam's state cache measure a value without walking every module first.

    Each time the SDK worker caches a state value (every commit of every key's state, i.e.
    each bucket's dedup bag and version per bundle) Beam weighs it with
    ``objsize.get_deep_size``, whose default first collects the ids of every loaded
    module's globals to exclude them: ~1,300-2,000 modules, ~385 us per call against ~9 us
    for the value itself (measured on this box; same sizes). py-spy on a worker at 2,000
    MQTT events/s: 26 % of its busy samples were in that call. Module globals are shared
    objects, never part of a cached state value; Beam's own filter still skips types,
    modules, functions and weak references. Any failure keeps Beam's function.
    """
    try:
        import objsize
        from apache_beam.runners.worker import statecache

        size_func = statecache._size_func
        referents_func = statecache._get_referents_func
        filter_func = statecache._filter_func
        objsize.get_deep_size([b""], get_size_func=size_func, get_referents_func=referents_func,
                              filter_func=filter_func, exclude_modules_globals=False)
    except Exception as exc:  # noqa: BLE001 - an SDK worker must start whatever changed
        import sys

        print(f"sitecustomize: keeping Beam's state-cache sizing ({exc!r})", file=sys.stderr)
        return

    def get_deep_size(*objs: object) -> int:
        return objsize.get_deep_size(*objs, get_size_func=size_func,
                                     get_referents_func=referents_func,
                                     filter_func=filter_func, exclude_modules_globals=False)

    statecache.get_deep_size = get_deep_size


if os.environ.get("DCMMS_SDK_STATE_SIZING", "fast") == "fast":
    _size_state_without_module_globals()
