"""Live stream of an asset's readings and alarms: ``GET /api/v1/telemetry/stream`` (SSE).

Two Kafka topics are read, never QuestDB: ``[kafka] topic_validated`` (``event:
reading``) and ``[kafka] topic_alarms`` (``event: alarm``, one alarm transition),
both Confluent-framed Avro decoded with the schema registry; only the records of
the requested asset are sent.

* Event ids are the stream's *position* in both topics (api/sse.py):
  ``r<partition>:<next offset>`` for every partition of the readings topic and
  ``a<partition>:<next offset>`` for every partition of the alarms topic, comma
  separated. A client that reconnects with ``Last-Event-ID`` resumes exactly after
  the last event it saw, in every partition of both topics. An id of the
  reading-only stream (bare ``<partition>:<offset>`` pairs) resumes the readings;
  its alarms start at the end. Without it the stream starts at the end of both
  topics (only new events).
* A comment line (``: heartbeat``) is sent every ``[api] stream_heartbeat_s``
  (15 s) of silence; it also lets the server notice a client that went away.
* At most ``[api] stream_max_per_key`` (2) open streams per API key and gunicorn
  worker; one more is a 429 ``too_many_streams``. A stream holds one gunicorn
  thread for its whole life, so keep this below ``[api] threads``.
* Back-pressure: each stream has a bounded queue (``[api] stream_queue_size``,
  1000) shared by readings and alarms. When the client reads slower than events
  arrive, new events are dropped and, once there is room again, one ``event:
  dropped`` is sent with how many were dropped and the position after them.
  Memory never grows.

Design (one Kafka consumer per stream, not one per worker fanning out): resume
needs per-connection offsets, which a shared consumer cannot give without a seek
per client; streams are few (bounded by threads), so a consumer each is cheap.
Its cost: every stream reads every record of both topics; it decodes only those
keyed with its asset_id (the design's topic key) or without a key, and filters
them on the decoded asset_id.
The consumer (assigned every partition of both topics) runs in a reader thread
that fills the bounded queue; the gunicorn thread writes to the socket. The
consumer never commits and has a throw-away group id: streams never move the
pipeline's offsets.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Response, current_app, g, request

from api.auth import require_scope
from api.errors import ApiError, BadParameter, ServiceUnavailable
from api.sse import (
    ALARMS,
    READINGS,
    BoundedEventQueue,
    Dropped,
    Position,
    StreamCursor,
    StreamSlots,
    format_comment,
    format_event,
    format_position,
    parse_position,
)

__all__ = ["bp", "STREAM_EXTENSION", "StreamTopic", "StreamConfig", "init_stream"]

_LOGGER = logging.getLogger(__name__)

STREAM_EXTENSION = "dcmms_stream"

bp = Blueprint("stream", __name__)


# ---------------------------------------------------------------- Kafka side

@dataclass(frozen=True)
class StreamTopic:
    """One topic a stream reads: its tag in event ids, SSE event name and setting."""

    tag: str        # api.sse READINGS / ALARMS
    event: str      # "reading" / "alarm"
    name: str       # the Kafka topic
    setting: str    # where it is configured, for error messages


@dataclass
class StreamConfig:
    bootstrap_servers: str
    topics: tuple[StreamTopic, ...]
    schema_lookup: Callable[[int], Any]
    heartbeat_s: float = 15.0
    queue_size: int = 1000
    timeout_s: float = 5.0


class KafkaReader:
    """A consumer of the stream's topics at a position, filtering ``asset_id``, filling a
    queue with ``(event name, record, event id)``."""

    def __init__(self, cfg: StreamConfig, asset_id: str,
                 resume: Position | None, queue: BoundedEventQueue) -> None:
        from confluent_kafka import Consumer

        self.cfg = cfg
        self.asset_id = asset_id
        self.queue = queue
        self._by_name = {t.name: t for t in cfg.topics}
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

    def _partitions(self, topic: StreamTopic) -> list[int]:
        from confluent_kafka import KafkaException

        try:
            meta = self._consumer.list_topics(topic.name, timeout=self.cfg.timeout_s)
        except KafkaException as exc:
            raise ServiceUnavailable(f"Kafka did not answer: {exc}",
                                     setting="[kafka] bootstrap_servers") from None
        info = meta.topics.get(topic.name)
        if info is None or info.error is not None or not info.partitions:
            raise ServiceUnavailable(f"topic {topic.name!r} not found on Kafka",
                                     setting=topic.setting)
        return sorted(info.partitions)

    def _start_position(self, resume: Position | None) -> Position:
        """Resume offsets (checked against the topics) or the end of every partition."""
        from confluent_kafka import KafkaException, TopicPartition

        ids = {t.tag: self._partitions(t) for t in self.cfg.topics}
        if resume is not None:
            unknown = sorted(f"{tag}{p}" for tag, p in resume if p not in ids.get(tag, ()))
            if unknown:
                sizes = ", ".join(f"{t.tag}: {len(ids[t.tag])} ({t.name})"
                                  for t in self.cfg.topics)
                raise BadParameter("Last-Event-ID", f"partitions {unknown} do not exist "
                                   f"(partitions per topic: {sizes})")
        position: Position = {}
        assign = []
        for topic in self.cfg.topics:
            for p in ids[topic.tag]:
                key = (topic.tag, p)
                if resume is not None and key in resume:
                    position[key] = resume[key]
                else:
                    try:
                        _, position[key] = self._consumer.get_watermark_offsets(
                            TopicPartition(topic.name, p), timeout=self.cfg.timeout_s)
                    except KafkaException as exc:
                        raise ServiceUnavailable(f"Kafka did not answer: {exc}",
                                                 setting="[kafka] bootstrap_servers") from None
                assign.append(TopicPartition(topic.name, p, position[key]))
        self._consumer.assign(assign)
        return position

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        from io_connectors.kafka_inspect import decode_record

        cursor = StreamCursor(self.position, self.asset_id)
        asset_key = self.asset_id.encode()
        try:
            while not self._stop.is_set():
                for msg in self._consumer.consume(500, timeout=0.5):
                    if msg.error() is not None:
                        continue
                    topic = self._by_name[msg.topic()]
                    key = msg.key()
                    record = None
                    if key is None or key == asset_key:
                        _, record, error = decode_record(msg.value(), self.cfg.schema_lookup)
                        if record is None:
                            _LOGGER.warning("stream: undecodable record %d:%d of %s: %s",
                                            msg.partition(), msg.offset(), topic.name, error)
                    # else another asset's record (the topics are keyed by asset_id): not
                    # decoded, which keeps a stream's CPU per record of the topic small
                    event_id = cursor.advance(topic.tag, msg.partition(), msg.offset(), record)
                    if event_id is not None:
                        self.queue.put((topic.event, record, event_id), event_id)
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

        schema_lookup = RegistrySchemas(settings.schema_registry.url)
    limit = settings.api.stream_max_per_key
    queue_size = settings.api.stream_queue_size
    heartbeat = settings.api.stream_heartbeat_s
    # >= 1, >= 2 and > 0: checked (naming the setting) by config.settings.
    topics = (StreamTopic(READINGS, "reading", settings.kafka.topic_validated,
                          "[kafka] topic_validated"),
              StreamTopic(ALARMS, "alarm", settings.kafka.topic_alarms,
                          "[kafka] topic_alarms"))
    cfg = StreamConfig(settings.kafka.bootstrap_servers, topics, schema_lookup,
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
    """Server-Sent Events of one asset's validated readings and alarm transitions."""
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
                    event, record, event_id = item
                    yield format_event(record, event, event_id)
                last_sent = time.monotonic()
        finally:
            cleanup()

    response = Response(generate(), mimetype="text/event-stream",
                        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    response.call_on_close(cleanup)
    return response
