"""Per-minute rates from samples of cumulative counters: pure, no IO.

The console samples the job's Beam counters every few seconds (:mod:`api.console.sampler`);
a counter only grows while the job runs and starts again from 0 when the job is
resubmitted, so a drop between two samples means "restarted": the newer value is then
the increase since the restart.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

__all__ = ["RATE_SERIES", "increase", "per_minute_history", "rates_per_minute"]

# What the console charts, and the Beam counters behind each series (summed).
RATE_SERIES: Mapping[str, tuple[str, ...]] = {
    "read": ("read",),
    "valid": ("valid",),
    "invalid": ("invalid",),
    "duplicates": ("duplicates_dropped",),
    "dead_lettered": ("dead_letters",),
    "alarms_raised": ("alarms_raised",),
    "alarms_cleared": ("alarms_cleared",),
}

Sample = tuple[float, Mapping[str, float]]  # (epoch seconds, counters)


def increase(before: float, after: float) -> float:
    """How much a cumulative counter grew from ``before`` to ``after`` (restart aware)."""
    return after - before if after >= before else after


def _series_value(counters: Mapping[str, float], names: Sequence[str]) -> float:
    return sum(counters.get(n, 0.0) for n in names)


def rates_per_minute(older: Sample, newer: Sample,
                     series: Mapping[str, Sequence[str]] = RATE_SERIES,
                     prefixes: Sequence[str] = ("invalid_", "decode_failed_", "enrich_failed_")
                     ) -> dict[str, float]:
    """Rate of each series (and each counter with one of ``prefixes``: the reasons) per minute
    between two samples; {} when they are not at least a second apart."""
    dt = newer[0] - older[0]
    if dt < 1.0:
        return {}
    out = {name: increase(_series_value(older[1], names), _series_value(newer[1], names))
           * 60.0 / dt for name, names in series.items()}
    for name in newer[1]:
        if name.startswith(tuple(prefixes)):
            out[name] = increase(older[1].get(name, 0.0), newer[1][name]) * 60.0 / dt
    return out


def per_minute_history(samples: Sequence[Sample], bucket_s: float = 60.0,
                       series: Mapping[str, Sequence[str]] = RATE_SERIES
                       ) -> list[dict[str, float]]:
    """Events per minute of each series in consecutive buckets of ``bucket_s``.

    Each pair of consecutive samples adds its increase to the bucket of the newer
    sample's time; the result lists every bucket from the first to the last sample
    (``at`` = bucket start, epoch seconds), scaled to a per-minute rate.
    """
    if len(samples) < 2:
        return []
    buckets: dict[int, dict[str, float]] = {}
    for (t0, c0), (t1, c1) in zip(samples, samples[1:], strict=False):
        key = int(t1 // bucket_s)
        acc = buckets.setdefault(key, dict.fromkeys(series, 0.0))
        for name, names in series.items():
            acc[name] += increase(_series_value(c0, names), _series_value(c1, names))
        del t0
    first, last = min(buckets), max(buckets)
    scale = 60.0 / bucket_s
    history = []
    for key in range(first, last + 1):
        values = buckets.get(key, dict.fromkeys(series, 0.0))
        history.append({"at": key * bucket_s, **{k: v * scale for k, v in values.items()}})
    return history
