"""Pure parts of the live stream (api/stream.py): SSE wire format, stream positions,
the bounded per-stream queue and the per-key bound. No Flask, Kafka or network here.

Stream positions (the SSE event ids) cover every partition of the two topics a stream
reads: ``r<partition>:<next offset>`` for readings (``[kafka] topic_validated``) and
``a<partition>:<next offset>`` for alarm transitions (``[kafka] topic_alarms``), comma
separated: ``"r0:120,r1:98,a0:7,a1:3"``. A bare ``<partition>:<offset>`` pair (the id
form of the reading-only stream) is read as a readings pair, so old ids still resume.
"""

from __future__ import annotations

import json
import re
import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from api.errors import BadParameter

__all__ = ["READINGS", "ALARMS", "TAGS", "Position", "format_event", "format_comment",
           "format_position", "parse_position", "StreamCursor", "Dropped", "BoundedEventQueue",
           "StreamSlots", "MAX_ID_LENGTH"]

# Tags of the two topics in event ids (see the module docstring).
READINGS = "r"
ALARMS = "a"
TAGS = (READINGS, ALARMS)
MAX_ID_LENGTH = 4096
_PAIR = re.compile(r"^([ra]?)(\d{1,6}):(\d{1,19})$")

# {(topic tag, partition): next offset}
Position = dict[tuple[str, int], int]


def format_event(data: Any, event: str | None = None, event_id: str | None = None) -> str:
    """One SSE event: optional ``event:`` and ``id:`` lines, ``data:`` as compact JSON."""
    lines = []
    if event:
        lines.append(f"event: {event}")
    if event_id is not None:
        lines.append(f"id: {event_id}")
    # JSON has no raw newlines, so the data is one line.
    lines.append("data: " + json.dumps(data, separators=(",", ":"), default=str))
    return "\n".join(lines) + "\n\n"


def format_comment(text: str) -> str:
    """An SSE comment line (ignored by clients; used as heartbeat)."""
    return "".join(f": {line}\n" for line in text.splitlines() or [""]) + "\n"


def format_position(position: Mapping[tuple[str, int], int]) -> str:
    """A position as an event id: readings first, then alarms, each in partition order."""
    return ",".join(f"{tag}{p}:{o}" for (tag, p), o in
                    sorted(position.items(), key=lambda kv: (TAGS.index(kv[0][0]), kv[0][1])))


def parse_position(text: str) -> Position:
    """An event id back to ``{(tag, partition): next offset}``; BadParameter when malformed.

    A bare ``<partition>:<offset>`` pair is a readings pair (ids of the reading-only stream).
    """
    if len(text) > MAX_ID_LENGTH:
        raise BadParameter("Last-Event-ID", f"longer than {MAX_ID_LENGTH} characters")
    out: Position = {}
    for part in text.strip().split(","):
        m = _PAIR.match(part.strip())
        if m is None:
            raise BadParameter("Last-Event-ID",
                               "expected 'r<partition>:<offset>' (readings) and "
                               "'a<partition>:<offset>' (alarms) pairs separated by commas, "
                               "as sent in the id of a stream event", value=text[:256])
        key = (m.group(1) or READINGS, int(m.group(2)))
        if key in out:
            raise BadParameter("Last-Event-ID", f"partition {key[0]}{key[1]} given twice",
                               value=text[:256])
        out[key] = int(m.group(3))
    return out


class StreamCursor:
    """Where a stream's reader is, and which records it sends (one asset's).

    :meth:`advance` is called for every record read, in each partition's order (any
    interleaving of partitions and topics): the position moves past the record, and a
    record of the asset gets the new position as its event id. Resuming from that id
    therefore reads exactly the records after it in every partition of both topics.
    """

    def __init__(self, position: Position, asset_id: str) -> None:
        self.position: Position = dict(position)
        self.asset_id = asset_id

    def advance(self, tag: str, partition: int, offset: int,
                record: Mapping[str, Any] | None) -> str | None:
        """Record ``offset`` of ``tag``/``partition`` was read (None: it did not decode);
        its event id when it is the asset's, else None."""
        self.position[(tag, partition)] = offset + 1
        if record is None or record.get("asset_id") != self.asset_id:
            return None
        return format_position(self.position)


@dataclass(frozen=True)
class Dropped:
    """Marker in the queue: ``count`` items were dropped; ``event_id`` is the position after."""

    count: int
    event_id: str


class BoundedEventQueue:
    """A queue of at most ``maxsize`` items that drops new items when full (thread-safe).

    Drops are counted; the next :meth:`put` that finds room first enqueues one
    :class:`Dropped` marker (the marker takes a slot: never more than ``maxsize``).
    """

    def __init__(self, maxsize: int) -> None:
        if maxsize < 2:
            raise ValueError("maxsize must be at least 2 (one slot for the drop marker)")
        self.maxsize = maxsize
        self._items: deque[Any] = deque()
        self._cond = threading.Condition()
        self._dropped = 0
        self._dropped_id = ""
        self.dropped_total = 0

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: Any, event_id: str) -> bool:
        """Enqueue ``item`` (its id ``event_id``); False when it was dropped."""
        with self._cond:
            if self._dropped and len(self._items) < self.maxsize - 1:
                self._items.append(Dropped(self._dropped, self._dropped_id))
                self._dropped = 0
            if self._dropped or len(self._items) >= self.maxsize:
                self._dropped += 1
                self.dropped_total += 1
                self._dropped_id = event_id
                return False
            self._items.append(item)
            self._cond.notify()
            return True

    def put_final(self, item: Any) -> None:
        """Enqueue ``item`` even when full (one last item, e.g. an end marker)."""
        with self._cond:
            self._items.append(item)
            self._cond.notify()

    def get(self, timeout: float) -> Any | None:
        """The oldest item, or None after ``timeout`` seconds without one."""
        with self._cond:
            if not self._items:
                self._cond.wait(timeout)
            return self._items.popleft() if self._items else None


class StreamSlots:
    """Open streams per API key (this worker process), at most ``limit`` each."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: dict[str, int] = {}
        self._lock = threading.Lock()

    def acquire(self, key_id: str) -> bool:
        with self._lock:
            if self._open.get(key_id, 0) >= self.limit:
                return False
            self._open[key_id] = self._open.get(key_id, 0) + 1
            return True

    def release(self, key_id: str) -> None:
        with self._lock:
            left = self._open.get(key_id, 0) - 1
            if left > 0:
                self._open[key_id] = left
            else:
                self._open.pop(key_id, None)

    def count(self, key_id: str) -> int:
        with self._lock:
            return self._open.get(key_id, 0)
