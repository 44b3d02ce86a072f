"""When a buffered batch may leave before its bundle ends (pure policy, no Beam).

The job's two bundle-bound buffers (transforms.buckets.BatchByBucket before the
keyed stage, the QuestDB sink's rows) hold a reading until the bundle ends: at
low rates that wait, not CPU, is most of a reading's latency (decision 0004,
seventh session). An early flush lets a small, old buffer go at once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

__all__ = ["NEVER", "EarlyFlush", "monotonic_ms"]


@dataclass(frozen=True)
class EarlyFlush:
    """When a buffer may be emitted before its bundle ends (``max_age_ms`` 0: never).

    Due when the oldest pending item is at least ``max_age_ms`` old and at most
    ``max_items`` items are pending: a low rate gets short waits, a high rate keeps
    its bundle-sized batches (and their per-batch costs) unchanged.
    """

    max_age_ms: int = 0
    max_items: int = 0

    def __post_init__(self) -> None:
        for name in ("max_age_ms", "max_items"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"EarlyFlush.{name} must be an int >= 0, got {value!r} "
                                 f"(setting [pipeline] early_flush_"
                                 f"{'ms' if name == 'max_age_ms' else 'max_items'})")

    @property
    def enabled(self) -> bool:
        return self.max_age_ms > 0 and self.max_items > 0

    def due(self, oldest_ms: float, pending: int, now_ms: float) -> bool:
        """True when ``pending`` items, the oldest buffered at ``oldest_ms``, should go now."""
        return (self.enabled and 0 < pending <= self.max_items
                and now_ms - oldest_ms >= self.max_age_ms)


NEVER = EarlyFlush()


def monotonic_ms() -> float:
    return time.monotonic() * 1000.0
