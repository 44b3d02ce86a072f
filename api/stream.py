"""Live stream of an asset's validated readings: ``GET /api/v1/telemetry/stream`` (SSE).

Readings are read from the Kafka topic ``[kafka] topic_validated`` (Confluent-framed
Avro, decoded with the schema registry), never by polling QuestDB.

* Event ids are the stream's *position*: ``"<partition>:<next offset>"`` for every
  partition of the topic, comma separated (``"0:120,1:98,..."``). A client that
  reconnects with ``Last-Event-ID`` resumes exactly after the last event it saw,
  in every partition (an asset's sensors may live in several partitions).
  Without it the stream starts at the end of the topic (only new readings).
* A comment line (``: heartbeat``) is sent every ``[api] stream_heartbeat_s``
  (15 s) of silence; it also lets the server notice a client that went away.
* At most ``[api] stream_max_per_key`` (2) open streams per API key and gunicorn
  worker; one more is a 429 ``too_many_streams``. A stream holds one gunicorn
  thread for its whole life, so keep this below ``[api] threads``.
* Back-pressure: each stream has a bounded queue (``[api] stream_queue_size``,
  1000). When the client reads slower than readings arrive, new readings are
  dropped and, once there is room again, one ``event: dropped`` is sent with how
  many were dropped and the position after them. Memory never grows.

Design (one Kafka consumer per stream, not one per worker fanning out): resume
needs per-connection offsets, which a shared consumer cannot give without a seek
per client; streams are few (bounded by threads), so a consumer each is cheap.
Its cost: every stream decodes every record of the topic to filter on asset_id.
The consumer runs in a reader thread that fills the bounded queue; the gunicorn
thread writes to the socket. The consumer never commits and has a throw-away
group id: streams never move the pipeline's offsets.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Response, current_app, g, request

from api.auth import require_scope
from api.errors import ApiError, BadParameter, ServiceUnavailable

__all__ = ["bp", "BoundedEventQueue", "StreamSlots", "format_event", "format_comment",
           "format_position", "parse_position", "STREAM_EXTENSION"]

_LOGGER = logging.getLogger(__name__)

STREAM_EXTENSION = "dcmms_stream"
MAX_ID_LENGTH = 4096
_PAIR = re.compile(r"^(\d{1,6}):(\d{1,19})$")

bp = Blueprint("stream", __name__)


# ---------------------------------------------------------------- pure parts

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


def format_position(position: Mapping[int, int]) -> str:
    """``{partition: next offset}`` as an event id: ``"0:12,1:40"`` (partition order)."""
    return ",".join(f"{p}:{o}" for p, o in sorted(position.items()))


def parse_position(text: str) -> dict[int, int]:
    """An event id back to ``{partition: next offset}``; raises BadParameter when malformed."""
    if len(text) > MAX_ID_LENGTH:
        raise BadParameter("Last-Event-ID", f"longer than {MAX_ID_LENGTH} characters")
    out: dict[int, int] = {}
    for part in text.strip().split(","):
        m = _PAIR.match(part.strip())
        if m is None:
            raise BadParameter("Last-Event-ID",
                               "expected '<partition>:<offset>' pairs separated by commas, "
                               "as sent in the id of a stream event", value=text[:256])
        p, o = int(m.group(1)), int(m.group(2))
        if p in out:
            raise BadParameter("Last-Event-ID", f"partition {p} given twice", value=text[:256])
        out[p] = o
    return out


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


# ---------------------------------------------------------------- Kafka side

@dataclass
class StreamConfig:
    bootstrap_servers: str
    topic: str
    schema_lookup: Callable[[int], Any]
    heartbeat_s: float = 15.0
    queue_size: int = 1000
    timeout_s: float = 5.0


class KafkaReader:
    """A consumer of ``topic`` at a position, filtering ``asset_id``, filling a queue."""

    def __init__(self, cfg: StreamConfig, asset_id: str,
                 resume: dict[int, int] | None, queue: BoundedEventQueue) -> None:
        from confluent_kafka import Consumer

        self.cfg = cfg
        self.asset_id = asset_id
        self.queue = queue
        self._stop = threading.Event()
        self._consumer = Consumer({
            "bootstrap.servers": cfg.bootstrap_servers,
            "group.id": f"dcmms-stream-{uuid.uuid4().hex[:12]}",
            "enable.auto.commit": False,
            "enable.partition.eof": False,
            "auto.offset.reset": "earliest",  # a resume offset older than retention
            "socket.timeout.ms": int(cfg.timeout_s * 1000),
            "fetch.wait.max.ms": 50,
            "queued.max.messages.kbytes": 4096,  # librdkafka's prefetch, bounded
            "logger": _LOGGER,
        })
        try:
            self.position = self._start_position(resume)
        except BaseException:
            self._consumer.close()
            raise
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"stream-{asset_id[:32]}")

    def _start_position(self, resume: dict[int, int] | None) -> dict[int, int]:
        """Resume offsets (checked against the topic) or the end of every partition."""
        from confluent_kafka import KafkaException, TopicPartition

        topic = self.cfg.topic
        try:
            meta = self._consumer.list_topics(topic, timeout=self.cfg.timeout_s)
        except KafkaException as exc:
            raise ServiceUnavailable(f"Kafka did not answer: {exc}",
                                     setting="[kafka] bootstrap_servers") from None
        info = meta.topics.get(topic)
        if info is None or info.error is not None or not info.partitions:
            raise ServiceUnavailable(f"topic {topic!r} not found on Kafka",
                                     setting="[kafka] topic_validated")
        ids = sorted(info.partitions)
        if resume is not None:
            unknown = sorted(set(resume) - set(ids))
            if unknown:
                raise BadParameter("Last-Event-ID", f"partitions {unknown} do not exist in "
                                   f"the topic (it has {len(ids)})")
        position: dict[int, int] = {}
        for p in ids:
            if resume is not None and p in resume:
                position[p] = resume[p]
                continue
            try:
                _, high = self._consumer.get_watermark_offsets(TopicPartition(topic, p),
                                                               timeout=self.cfg.timeout_s)
            except KafkaException as exc:
                raise ServiceUnavailable(f"Kafka did not answer: {exc}",
                                         setting="[kafka] bootstrap_servers") from None
            position[p] = high
        self._consumer.assign([TopicPartition(topic, p, o) for p, o in position.items()])
        return position

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        from io_connectors.kafka_inspect import decode_record

        position = dict(self.position)
        try:
            while not self._stop.is_set():
                for msg in self._consumer.consume(500, timeout=0.5):
                    if msg.error() is not None:
                        continue
                    position[msg.partition()] = msg.offset() + 1
                    _, record, error = decode_record(msg.value(), self.cfg.schema_lookup)
                    if record is None:
                        _LOGGER.warning("stream: undecodable record %d:%d of %s: %s",
                                        msg.partition(), msg.offset(), self.cfg.topic, error)
                        continue
                    if record.get("asset_id") != self.asset_id:
                        continue
                    event_id = format_position(position)
                    self.queue.put((record, event_id), event_id)
        except Exception:  # noqa: BLE001 - a reader failure ends the stream, logged
            _LOGGER.exception("stream reader for %s failed", self.asset_id)
            self.queue.put_final(_ReaderFailed())

    def close(self) -> None:
        """Stop the thread and close the consumer; idempotent."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        self._consumer.close()


class _ReaderFailed:
    pass


# ---------------------------------------------------------------- the view

@dataclass
class StreamState:
    config: StreamConfig
    slots: StreamSlots


def init_stream(settings: Any, schema_lookup: Callable[[int], Any] | None = None
                ) -> StreamState:
    """The stream's settings, read once at app start."""
    if schema_lookup is None:
        from io_connectors.schema_registry import RegistrySchemas

        schema_lookup = RegistrySchemas(settings.get("schema_registry", "url"))
    limit = settings.get("api", "stream_max_per_key", int, 2)
    queue_size = settings.get("api", "stream_queue_size", int, 1000)
    heartbeat = settings.get("api", "stream_heartbeat_s", float, 15.0)
    if limit < 1 or queue_size < 2 or heartbeat <= 0:
        raise ValueError("[api] stream_max_per_key must be >= 1, stream_queue_size >= 2, "
                         "stream_heartbeat_s > 0")
    cfg = StreamConfig(settings.get("kafka", "bootstrap_servers"),
                       settings.get("kafka", "topic_validated"), schema_lookup,
                       heartbeat, queue_size)
    return StreamState(cfg, StreamSlots(limit))


def _state() -> StreamState:
    state = current_app.extensions.get(STREAM_EXTENSION)
    if state is None:
        state = current_app.extensions[STREAM_EXTENSION] = init_stream(
            current_app.config["DCMMS_SETTINGS"])
    return state


@bp.get("/api/v1/telemetry/stream")
@require_scope("read")
def stream() -> Response:
    """Server-Sent Events of one asset's validated readings, as they arrive."""
    from api.assets import AssetCatalogError
    from api.query import ASSETS_EXTENSION

    asset_id = request.args.get("asset_id", "").strip()
    if not asset_id:
        raise BadParameter("asset_id", "required")
    unknown_args = sorted(set(request.args) - {"asset_id"})
    if unknown_args:
        raise BadParameter(unknown_args[0], "unknown parameter", allowed=["asset_id"])
    try:
        known = current_app.extensions[ASSETS_EXTENSION].get(asset_id)
    except AssetCatalogError as exc:
        raise ApiError(503, "assets_unavailable", str(exc),
                       {"setting": "[pipeline] assets_file"}, {"Retry-After": "30"}) from None
    if known is None:
        raise ApiError(404, "not_found", "unknown asset", {"asset_id": asset_id[:256]})
    last_id = request.headers.get("Last-Event-ID")
    resume = parse_position(last_id) if last_id is not None and last_id.strip() else None

    state = _state()
    key_id = g.api_key_id
    if not state.slots.acquire(key_id):
        raise ApiError(429, "too_many_streams",
                       f"this API key already has {state.slots.limit} open streams on this "
                       "server process; close one first",
                       {"limit": state.slots.limit, "setting": "[api] stream_max_per_key"},
                       {"Retry-After": "5"})
    try:
        queue = BoundedEventQueue(state.config.queue_size)
        reader = KafkaReader(state.config, asset_id, resume, queue)
    except BaseException:
        state.slots.release(key_id)
        raise
    reader.start()
    start_id = format_position(reader.position)
    heartbeat = state.config.heartbeat_s
    closed = threading.Lock()

    def cleanup() -> None:
        # Runs from the generator's finally or the response's close(), whichever first
        # (a response closed before its first chunk never runs the generator's finally).
        if closed.acquire(blocking=False):
            reader.close()
            state.slots.release(key_id)

    def generate() -> Iterator[str]:
        try:
            yield "retry: 3000\n" + format_comment(f"stream of {asset_id} from {start_id}")
            last_sent = time.monotonic()
            while True:
                item = queue.get(timeout=max(0.05, heartbeat - (time.monotonic() - last_sent)))
                if item is None:
                    if time.monotonic() - last_sent >= heartbeat:
                        yield format_comment("heartbeat")
                        last_sent = time.monotonic()
                    continue
                if isinstance(item, _ReaderFailed):
                    yield format_event({"code": "stream_failed",
                                        "message": "reading Kafka failed; reconnect"},
                                       "error")
                    return
                if isinstance(item, Dropped):
                    yield format_event({"dropped": item.count}, "dropped", item.event_id)
                else:
                    record, event_id = item
                    yield format_event(record, "reading", event_id)
                last_sent = time.monotonic()
        finally:
            cleanup()

    response = Response(generate(), mimetype="text/event-stream",
                        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    response.call_on_close(cleanup)
    return response
