"""Unbounded Kafka source for the Beam pipeline: :class:`ReadRawTelemetry`.

On Flink, pass ``expansion_service`` (``runners.stack.flink.expansion_address``):
the read is then Beam's KafkaIO (cross-language ``ReadFromKafka``) expanded by
the stack's ``kafka-expansion`` service with ``--defaultEnvironmentType=EMBEDDED
--experiments=use_deprecated_read``, which the Flink runner runs as a native
source inside the job server: no Docker, watermarks that advance, offsets in
Flink checkpoints and committed to the group when a checkpoint completes. The
splittable-DoFn form of KafkaIO stalls on this runner once a partition has a
large backlog; see docs/decisions/0001-beam-flink-kafka.md.

Without ``expansion_service`` a Python reader is used (DirectRunner, or no
Java side). On the Flink runner of Beam 2.70 that reader's watermark does not
propagate (event-time windows and timers downstream never fire) and its
checkpoint state grows with every self-checkpoint, so do not use it there.

The Python reader is a splittable DoFn, one restriction per partition over an
offset range ``[start, inf)``:

* each call reads at most ``max_records_per_call`` records or for at most
  ``max_poll_seconds``, then defers the remainder (a self-checkpoint), so
  bundles stay small and the runner's checkpoints carry the exact next offset;
* a job restored from a Flink checkpoint or savepoint resumes at the
  checkpointed offsets (the restriction is the source of truth);
* a fresh job starts from the consumer group's committed offsets (or
  ``start_from`` when the group has none). Offsets are committed to the group
  only in bundle finalization, which the Flink runner calls after the
  checkpoint holding those records completed, so the group never runs ahead of
  durable progress;
* the watermark is the largest Kafka record timestamp seen, advanced to
  ``now - idle_watermark_lag_s`` while a partition is idle.

Each output is a :class:`KafkaRecord` (key, value, topic, partition, offset,
timestamp_ms); downstream dead-letter records can cite topic/partition/offset.
Partitions are listed when the job starts: partitions added later are not
read until the job is resubmitted. Consumers are cached per worker process
(shared by all instances of the DoFn) and live as long as that process.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
from apache_beam.metrics import Metrics
from apache_beam.transforms.core import RestrictionProvider
from apache_beam.utils.timestamp import Duration, Timestamp

__all__ = ["KafkaRecord", "ReadRawTelemetry", "KafkaSourceError"]

_LOGGER = logging.getLogger(__name__)

# Upper bound of an open offset range. Kafka offsets are int64.
_OFFSET_INFINITY = sys.maxsize
_START_FROM = ("earliest", "latest")
# DoFn parameter markers (module-level so they are not built per call). The DoFn is its own
# restriction provider.
_RESTRICTION_PARAM = beam.DoFn.RestrictionParam()
_WATERMARK_PARAM = beam.DoFn.WatermarkEstimatorParam(ManualWatermarkEstimator.default_provider())


class KafkaSourceError(RuntimeError):
    """The source cannot read: bad configuration or an unreachable or missing topic."""


class KafkaRecord(NamedTuple):
    """One Kafka record as read; ``key`` is None for records without a key."""

    key: bytes | None
    value: bytes
    topic: str
    partition: int
    offset: int
    timestamp_ms: int


class _PartitionSpec(NamedTuple):
    topic: str
    partition: int


class _UnboundedOffsetTracker(OffsetRestrictionTracker):
    """An offset tracker over ``[start, inf)``: unbounded, so the runner treats it as streaming."""

    def is_bounded(self) -> bool:
        return self.current_restriction().stop < _OFFSET_INFINITY


# Consumer settings the transform owns: they come from its arguments or carry its offset
# semantics (a fresh job starts at the group's committed offsets, else `start_from`; offsets are
# committed only after the checkpoint holding the records completed). A `consumer_config` entry
# for one of them is refused rather than silently winning or losing.
_OWNED_CONSUMER_KEYS: dict[str, str] = {
    "bootstrap.servers": "pass bootstrap_servers",
    "group.id": "pass group_id",
    "auto.offset.reset": "pass start_from",
    "enable.auto.commit": "offsets are committed after a checkpoint completed",
    "enable.auto.offset.store": "offsets are committed after a checkpoint completed",
    "key.deserializer": "records are read as raw bytes",
    "value.deserializer": "records are read as raw bytes",
}

# librdkafka tuning of the Python reader; KafkaIO's Java consumer does not know these names.
_PYTHON_READER_DEFAULTS: dict[str, Any] = {
    "enable.partition.eof": False,
    # Bigger fetches: the per-record cost is in Python, not in the network.
    "fetch.min.bytes": 1,
    "queued.min.messages": 20000,
}


def _check_consumer_config(extra: Mapping[str, Any]) -> None:
    for key in extra:
        if key in _OWNED_CONSUMER_KEYS:
            raise ValueError(f"ReadRawTelemetry: consumer_config must not set {key!r} "
                             f"({_OWNED_CONSUMER_KEYS[key]})")


def _consumer_config(bootstrap_servers: str, group_id: str,
                     extra: Mapping[str, Any]) -> dict[str, Any]:
    """librdkafka settings of the Python reader: ``extra`` overrides only the tuning defaults."""
    return {
        **_PYTHON_READER_DEFAULTS,
        **extra,
        "bootstrap.servers": bootstrap_servers,
        "group.id": group_id,
        # Offsets are committed by us, after the runner's checkpoint completed.
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
    }


def _java_config_value(key: str, value: Any) -> str:
    # The expansion payload carries a map of strings; Java's ConfigDef parses them.
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        return str(value)
    raise ValueError(f"ReadRawTelemetry: consumer_config[{key!r}] is a "
                     f"{type(value).__name__}; KafkaIO takes strings, numbers and booleans")


def _kafkaio_consumer_config(bootstrap_servers: str, group_id: str, start_from: str,
                             extra: Mapping[str, Any]) -> dict[str, str]:
    """KafkaIO's (Java) consumer settings: every ``extra`` entry verbatim, plus the owned keys."""
    config = {key: _java_config_value(key, value) for key, value in extra.items()}
    config.update({
        "bootstrap.servers": bootstrap_servers,
        "group.id": group_id,
        # Committed offsets of the group first, else start_from.
        "auto.offset.reset": start_from,
        # KafkaIO commits in bundle finalization (commit_offset_in_finalize).
        "enable.auto.commit": "false",
    })
    return config


class _PartitionRestrictionProvider(RestrictionProvider):
    """Initial restriction of a partition: the group's committed offset, else ``start_from``."""

    def __init__(self, consumer_config: dict[str, Any], start_from: str) -> None:
        self._consumer_config = consumer_config
        self._start_from = start_from

    def initial_restriction(self, element: _PartitionSpec) -> OffsetRange:
        from confluent_kafka import Consumer, TopicPartition  # worker-side import

        consumer = Consumer(self._consumer_config)
        try:
            tp = TopicPartition(element.topic, element.partition)
            committed = consumer.committed([tp], timeout=30)[0]
            low, high = consumer.get_watermark_offsets(tp, timeout=30)
        finally:
            consumer.close()
        if committed.offset >= 0:
            # A committed offset below the log start (retention deleted it) starts at the log start.
            start = max(committed.offset, low)
        else:
            start = low if self._start_from == "earliest" else high
        _LOGGER.info("Kafka %s[%d]: starting at offset %d (log %d..%d, committed %d)",
                     element.topic, element.partition, start, low, high, committed.offset)
        return OffsetRange(start, _OFFSET_INFINITY)

    def create_tracker(self, restriction: OffsetRange) -> _UnboundedOffsetTracker:
        return _UnboundedOffsetTracker(restriction)

    def split(self, element: _PartitionSpec, restriction: OffsetRange) -> Iterator[OffsetRange]:
        # One restriction per partition: Kafka order within a partition is kept.
        yield restriction

    def restriction_size(self, element: _PartitionSpec, restriction: OffsetRange) -> int:
        return 1


class _ListPartitionsFn(beam.DoFn):
    """Impulse -> one :class:`_PartitionSpec` per partition of each topic."""

    def __init__(self, consumer_config: dict[str, Any], topics: tuple[str, ...]) -> None:
        self._consumer_config = consumer_config
        self._topics = topics

    def process(self, _: bytes) -> Iterator[_PartitionSpec]:
        from confluent_kafka import Consumer

        consumer = Consumer(self._consumer_config)
        try:
            for topic in self._topics:
                metadata = consumer.list_topics(topic, timeout=30).topics.get(topic)
                if metadata is None or metadata.error is not None or not metadata.partitions:
                    raise KafkaSourceError(
                        f"Kafka topic {topic!r} is missing or has no partitions at "
                        f"{self._consumer_config['bootstrap.servers']} "
                        f"(error: {getattr(metadata, 'error', None)})")
                for partition in sorted(metadata.partitions):
                    yield _PartitionSpec(topic, partition)
        finally:
            consumer.close()


class _PartitionReader:
    """A consumer assigned to one partition, with the offset it will return next."""

    def __init__(self, consumer: Any, position: int) -> None:
        self.consumer = consumer
        self.position = position
        self.lock = threading.Lock()


# Readers shared by every DoFn instance of a worker process. The SDK harness creates
# many instances of the same DoFn (one per cached bundle processor), and the runner
# may resume a partition's residual in any of them: a per-instance cache would open
# a new consumer (and refetch) on most calls. Key: (config fingerprint, topic, partition).
_READERS: dict[tuple[str, str, int], _PartitionReader] = {}
_READERS_LOCK = threading.Lock()


def _fingerprint(config: Mapping[str, Any]) -> str:
    return repr(sorted(config.items()))


class _ReadPartitionFn(beam.DoFn, RestrictionProvider):
    """Splittable DoFn reading one partition from its restriction's start offset.

    It is its own restriction provider (delegating to
    :class:`_PartitionRestrictionProvider`) because the provider needs the
    consumer configuration, which a class-level parameter default cannot hold.
    """

    def __init__(self, consumer_config: dict[str, Any], start_from: str,
                 max_records_per_call: int, max_poll_seconds: float,
                 idle_watermark_lag_s: float) -> None:
        self._consumer_config = consumer_config
        self._provider = _PartitionRestrictionProvider(consumer_config, start_from)
        self._max_records = max_records_per_call
        self._max_poll_seconds = max_poll_seconds
        self._idle_lag = idle_watermark_lag_s
        self._records = Metrics.counter("kafka_source", "records_read")
        self._commit_failures = Metrics.counter("kafka_source", "offset_commit_failures")

    def initial_restriction(self, element: _PartitionSpec) -> OffsetRange:
        return self._provider.initial_restriction(element)

    def create_tracker(self, restriction: OffsetRange) -> _UnboundedOffsetTracker:
        return self._provider.create_tracker(restriction)

    def split(self, element: _PartitionSpec, restriction: OffsetRange) -> Iterator[OffsetRange]:
        return self._provider.split(element, restriction)

    def restriction_size(self, element: _PartitionSpec, restriction: OffsetRange) -> int:
        return self._provider.restriction_size(element, restriction)

    def _reader(self, spec: _PartitionSpec) -> _PartitionReader:
        from confluent_kafka import Consumer

        key = (_fingerprint(self._consumer_config), spec.topic, spec.partition)
        with _READERS_LOCK:
            reader = _READERS.get(key)
            if reader is None:
                reader = _PartitionReader(Consumer(self._consumer_config), -1)
                _READERS[key] = reader
        return reader

    def _commit(self, reader: _PartitionReader, spec: _PartitionSpec, offset: int) -> None:
        """Bundle-finalization callback: the checkpoint holding offsets < ``offset`` completed."""
        from confluent_kafka import KafkaException, TopicPartition

        try:
            with reader.lock:
                reader.consumer.commit(
                    offsets=[TopicPartition(spec.topic, spec.partition, offset)],
                    asynchronous=True)
        except KafkaException as exc:
            # The group offset only positions a fresh job; a restored job uses its checkpoint.
            self._commit_failures.inc()
            _LOGGER.warning("Kafka offset commit %s[%d]=%d failed: %s",
                            spec.topic, spec.partition, offset, exc)

    @beam.DoFn.unbounded_per_element()
    def process(
        self,
        element: _PartitionSpec,
        # The finalizer comes first: Beam passes the tracker and the watermark estimator
        # as keywords, and a positional parameter after them would receive them twice.
        finalizer: Any = beam.DoFn.BundleFinalizerParam,
        tracker: _UnboundedOffsetTracker = _RESTRICTION_PARAM,
        watermark: ManualWatermarkEstimator = _WATERMARK_PARAM,
    ) -> Iterator[beam.window.TimestampedValue]:
        from confluent_kafka import KafkaError, KafkaException, TopicPartition

        start = tracker.current_restriction().start
        reader = self._reader(element)
        claimed = 0
        last_ts: Timestamp | None = None
        with reader.lock:
            consumer = reader.consumer
            if reader.position < 0:
                consumer.assign([TopicPartition(element.topic, element.partition, start)])
            elif reader.position != start:
                # Restored from a checkpoint, or another restriction moved the consumer.
                consumer.seek(TopicPartition(element.topic, element.partition, start))
            reader.position = position = start
            deadline = time.monotonic() + self._max_poll_seconds
            stopped = False
            while not stopped and claimed < self._max_records and time.monotonic() < deadline:
                batch = consumer.consume(
                    num_messages=min(5000, self._max_records - claimed),
                    timeout=max(0.0, min(0.2, deadline - time.monotonic())))
                if not batch:
                    break
                for msg in batch:
                    err = msg.error()
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF:
                            continue
                        raise KafkaException(err)
                    offset = msg.offset()
                    if offset < position:
                        continue  # a seek that landed early: already read
                    if not tracker.try_claim(offset):
                        stopped = True
                        break
                    position = offset + 1
                    claimed += 1
                    _, ts_ms = msg.timestamp()
                    ts = Timestamp(micros=max(ts_ms, 0) * 1000)
                    if last_ts is None or ts > last_ts:
                        last_ts = ts
                    yield beam.window.TimestampedValue(
                        KafkaRecord(msg.key(), msg.value() or b"", element.topic,
                                    element.partition, offset, ts_ms), ts)
            # Records fetched beyond `position` are dropped by the next seek, if any.
            reader.position = position if not stopped else -2
        self._records.inc(claimed)
        if stopped:
            return
        candidate = (last_ts if last_ts is not None
                     else Timestamp.now() - Duration(seconds=self._idle_lag))
        current = watermark.current_watermark()
        if current is None or candidate > current:
            watermark.set_watermark(candidate)
        if claimed:
            finalizer.register(
                lambda reader=reader, spec=element, offset=position:
                self._commit(reader, spec, offset))
        # Self-checkpoint: the rest of the partition is a new restriction from `position`.
        tracker.defer_remainder(Duration(seconds=0 if claimed else 0.2))


class ReadRawTelemetry(beam.PTransform):
    """Read every partition of ``topic`` as an unbounded PCollection of :class:`KafkaRecord`.

    Args:
      bootstrap_servers: Kafka brokers, ``host:port[,host:port]`` (settings
        ``[kafka] bootstrap_servers``).
      topic: topic to read (``[kafka] topic_raw``).
      group_id: consumer group: where a fresh job starts and where progress is
        made visible (``kafka-consumer-groups --describe``); committed only
        after a Flink checkpoint completed.
      start_from: ``"earliest"`` or ``"latest"``, used when the group has no
        committed offset for a partition.
      max_records_per_call: records read per partition before a
        self-checkpoint; bounds bundle size and checkpoint latency.
      max_poll_seconds: time limit of one read call, same purpose.
      idle_watermark_lag_s: an idle partition's watermark trails wall time by
        this much, so event-time windows still close when no data arrives.
      consumer_config: extra consumer settings (security, fetch sizes...), passed
        verbatim to the client that reads: librdkafka for the Python reader,
        KafkaIO's Java consumer with ``expansion_service`` (so use the names
        that client knows, e.g. ``ssl.truststore.location`` in Java where
        librdkafka has ``ssl.ca.location``). Keys the transform owns
        (``bootstrap.servers``, ``group.id``, ``auto.offset.reset``,
        ``enable.auto.commit``, ``enable.auto.offset.store``, the
        deserializers) raise ValueError: use the arguments instead.
      expansion_service: ``host:port`` of a Java expansion service started with
        ``--defaultEnvironmentType=EMBEDDED --experiments=use_deprecated_read``
        (``runners.stack.flink``'s ``kafka-expansion`` service). When given, the
        read is Beam's KafkaIO as a runner-native Flink source: watermarks
        advance (event-time windows and timers fire), offsets are checkpointed
        and committed on checkpoint completion, state stays small. Use it on
        Flink. Without it the Python splittable DoFn below is used (DirectRunner,
        or a machine without the Java side); on Flink 2.70 that one leaves the
        watermark at -inf and its checkpoints grow (see the decision note).
        ``max_records_per_call``, ``max_poll_seconds``, ``idle_watermark_lag_s``
        apply to the Python reader only; ``consumer_config`` values for KafkaIO
        must be strings, numbers or booleans.
    """

    def __init__(self, bootstrap_servers: str, topic: str, group_id: str, *,
                 start_from: str = "earliest", max_records_per_call: int = 20000,
                 max_poll_seconds: float = 1.0, idle_watermark_lag_s: float = 5.0,
                 consumer_config: Mapping[str, Any] | None = None,
                 expansion_service: str | None = None) -> None:
        super().__init__()
        if not bootstrap_servers or not isinstance(bootstrap_servers, str):
            raise ValueError("ReadRawTelemetry: bootstrap_servers must be 'host:port[,...]'")
        if not topic:
            raise ValueError("ReadRawTelemetry: topic must be a non-empty string")
        if not group_id:
            raise ValueError("ReadRawTelemetry: group_id must be a non-empty string")
        if start_from not in _START_FROM:
            raise ValueError(f"ReadRawTelemetry: start_from must be one of {_START_FROM}, "
                             f"got {start_from!r}")
        if max_records_per_call < 1 or max_poll_seconds <= 0 or idle_watermark_lag_s < 0:
            raise ValueError("ReadRawTelemetry: max_records_per_call >= 1, max_poll_seconds > 0 "
                             "and idle_watermark_lag_s >= 0 are required")
        extra = dict(consumer_config or {})
        _check_consumer_config(extra)
        self._topic = topic
        self._config = _consumer_config(bootstrap_servers, group_id, extra)
        # Built here, not in expand(), so a value KafkaIO cannot take fails at construction.
        self._java_config = (_kafkaio_consumer_config(bootstrap_servers, group_id, start_from,
                                                      extra)
                             if expansion_service else {})
        self._start_from = start_from
        self._max_records = max_records_per_call
        self._max_poll_seconds = max_poll_seconds
        self._idle_lag = idle_watermark_lag_s
        self._expansion_service = expansion_service

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        if self._expansion_service:
            return self._expand_kafkaio(pbegin)
        read_fn = _ReadPartitionFn(self._config, self._start_from, self._max_records,
                                   self._max_poll_seconds, self._idle_lag)
        return (
            pbegin
            | "Impulse" >> beam.Impulse()
            | "ListPartitions" >> beam.ParDo(_ListPartitionsFn(self._config, (self._topic,)))
            | "ReadPartitions" >> beam.ParDo(read_fn).with_output_types(KafkaRecord)
        )

    def _expand_kafkaio(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        return (
            pbegin
            | "KafkaIO" >> self._kafkaio_read()
            | "ToKafkaRecord" >> beam.Map(_row_to_record).with_output_types(KafkaRecord)
        )

    def _kafkaio_read(self) -> beam.PTransform:
        """The cross-language read; its payload is what the expansion service receives."""
        from apache_beam.io.kafka import ReadFromKafka

        return ReadFromKafka(
            consumer_config=self._java_config,
            topics=[self._topic],
            # Offsets are committed when the checkpoint holding them completes.
            commit_offset_in_finalize=True,
            timestamp_policy=ReadFromKafka.create_time_policy,
            with_metadata=True,
            expansion_service=self._expansion_service)


def _row_to_record(row: Any) -> KafkaRecord:
    """KafkaIO's metadata Row (topic, partition, offset, timestamp, key, value) as a record."""
    value = row.value
    return KafkaRecord(
        key=bytes(row.key) if row.key is not None else None,
        value=bytes(value) if value is not None else b"",
        topic=str(row.topic),
        partition=int(row.partition),
        offset=int(row.offset),
        timestamp_ms=int(row.timestamp),
    )
