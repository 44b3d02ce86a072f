"""What the console shows, gathered from the stack: services, the Flink job, Kafka, counters.

:class:`ConsoleBackend` wires the read-only helpers of ``io_connectors`` (Flink's REST
API, Kafka watermarks and group offsets, the schema registry) and the stack supervisor's
status for one stack (its settings). :class:`CounterSampler` is a daemon thread that
samples the job's Beam counters every ``[console] sample_interval_s`` seconds and keeps
the last ``history_minutes`` of samples in memory, for the per-minute rates and the
chart of the last hour (after a console restart the chart starts again from empty).
:class:`PipelineCollector` exports the job's state, checkpoint age, consumer lag and
Beam counters to Prometheus under readable names when ``/metrics`` is scraped.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from api.console.rates import Sample, per_minute_history, rates_per_minute
from io_connectors.flink_rest import FlinkRest, FlinkUnavailable, JobSummary
from io_connectors.kafka_inspect import KafkaInspector, KafkaUnavailable, decode_record, printable

__all__ = ["ConsoleBackend", "CounterSampler", "PipelineCollector", "REASON_FAMILIES",
           "TOPIC_KEYS"]

_LOGGER = logging.getLogger(__name__)

TOPIC_KEYS = ("topic_raw", "topic_validated", "topic_alarms", "topic_dlq")
# Beam counters with the reason in their name: Prometheus family -> counter-name prefix.
REASON_FAMILIES = {
    "dcmms_pipeline_invalid_by_reason": "invalid_",
    "dcmms_pipeline_decode_failed": "decode_failed_",
    "dcmms_pipeline_enrich_failed": "enrich_failed_",
}


class CounterSampler:
    """Samples ``read()`` (a dict of counters, or None when the job is not there) regularly."""

    def __init__(self, read: Callable[[], dict[str, float] | None], interval_s: float,
                 history_minutes: int = 65, clock: Callable[[], float] = time.time) -> None:
        self._read = read
        self.interval_s = max(1.0, float(interval_s))
        self._clock = clock
        self._samples: collections.deque[Sample] = collections.deque(
            maxlen=int(history_minutes * 60 / self.interval_s) + 2)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def sample_once(self) -> None:
        try:
            counters = self._read()
        except Exception as exc:  # Flink down: the gap shows in the chart
            _LOGGER.debug("counter sample failed: %s", exc)
            return
        if counters is not None:
            with self._lock:
                self._samples.append((self._clock(), dict(counters)))

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._thread = threading.Thread(target=self._run, name="console-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample_once()
            self._stop.wait(self.interval_s)

    def samples(self) -> list[Sample]:
        with self._lock:
            return list(self._samples)

    def current_rates(self, window_s: float = 60.0) -> dict[str, float]:
        """Per-minute rates over the newest ``window_s`` (at least two samples needed)."""
        samples = self.samples()
        if len(samples) < 2:
            return {}
        newest = samples[-1]
        older = next((s for s in samples if newest[0] - s[0] <= window_s + 0.5), samples[-2])
        if older is newest:
            older = samples[-2]
        return rates_per_minute(older, newest)

    def history(self) -> list[dict[str, float]]:
        return per_minute_history(self.samples())


class ConsoleBackend:
    """The stack's state for the console's JSON endpoints (one per console process)."""

    def __init__(self, settings: Any, statuses: Callable[[], list[dict[str, Any]]] | None = None,
                 flink: FlinkRest | None = None, kafka: KafkaInspector | None = None,
                 schema_lookup: Callable[[int], Any] | None = None) -> None:
        self.settings = settings
        host = settings.stack.bind_host
        host = "127.0.0.1" if host in ("", "0.0.0.0", "::") else host
        self.flink = flink or FlinkRest(
            f"http://{host}:{settings.flink.web_ui_port}")
        self.kafka = kafka or KafkaInspector(settings.kafka.bootstrap_servers)
        if schema_lookup is None:
            from io_connectors.schema_registry import RegistrySchemas
            schema_lookup = RegistrySchemas(settings.schema_registry.url)
        self.schema_lookup = schema_lookup
        self.job_name = settings.pipeline.job_name
        self.group = settings.pipeline.consumer_group
        self.topics = {key: getattr(settings.kafka, key) for key in TOPIC_KEYS}
        # The stack's services (runners.console_wsgi passes the supervisor's view; api/ does
        # not import runners): none without one.
        self._statuses = statuses or (lambda: [])
        self.sampler = CounterSampler(self.counters_or_none,
                                      settings.console.sample_interval_s)

    # -- Flink ------------------------------------------------------------------------------

    def job(self) -> JobSummary | None:
        return self.flink.job_summary(self.job_name)

    def counters_or_none(self) -> dict[str, float] | None:
        job = self.job()
        if job is None or job.state != "RUNNING":
            return None
        return self.flink.beam_counters(job.jid)

    # -- the pages' data ---------------------------------------------------------------------

    def overview(self) -> dict[str, Any]:
        now_ms = int(time.time() * 1000)
        out: dict[str, Any] = {"now": now_ms, "services": self._statuses()}
        try:
            job = self.job()
            out["job"] = job.as_dict(now_ms) if job else None
            out["job_error"] = None if job else f"no Flink job named {self.job_name!r}"
            out["counters"] = (self.flink.beam_counters(job.jid)
                               if job and job.state == "RUNNING" else {})
        except FlinkUnavailable as exc:
            out.update(job=None, job_error=str(exc), counters={})
        out["rates"] = self.sampler.current_rates()
        out["history"] = self.sampler.history()
        out["sample_interval_s"] = self.sampler.interval_s
        try:
            out["lag"] = [p.as_dict() for p in self.kafka.partitions(self.topics["topic_raw"],
                                                                      self.group)]
            out["lag_error"] = None
        except KafkaUnavailable as exc:
            out.update(lag=[], lag_error=str(exc))
        return out

    def topics_overview(self) -> list[dict[str, Any]]:
        result = []
        for key, topic in self.topics.items():
            group = self.group if key == "topic_raw" else None
            try:
                parts = [p.as_dict() for p in self.kafka.partitions(topic, group)]
                error = None
            except KafkaUnavailable as exc:
                parts, error = [], str(exc)
            result.append({"topic": topic, "consumer_group": group, "partitions": parts,
                           "messages": sum(p["messages"] for p in parts),
                           "lag": (sum(p["lag"] or 0 for p in parts) if group else None),
                           "error": error})
        return result

    def newest_messages(self, topic: str, limit: int, partition: int | None) -> list[dict]:
        per_partition = limit if partition is not None else max(1, limit)
        records = self.kafka.read_tail(topic, per_partition,
                                       [partition] if partition is not None else None)
        out = []
        for rec in records[:limit]:
            schema_id, value, error = decode_record(rec.value, self.schema_lookup)
            out.append({"id": rec.record_id, "partition": rec.partition, "offset": rec.offset,
                        "timestamp": rec.timestamp_ms, "key": printable(rec.key, 256),
                        "schema_id": schema_id, "value": _jsonable(value),
                        "error": error, "raw": printable(rec.value, 512) if error else None})
        return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return printable(value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


class PipelineCollector:
    """A prometheus_client collector: the job's metrics read from Flink at scrape time."""

    def __init__(self, backend: ConsoleBackend) -> None:
        self.backend = backend

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        up = GaugeMetricFamily("dcmms_pipeline_job_running",
                               "1 while the telemetry job is RUNNING on Flink, else 0")
        # A scrape never fails because a dependency is down: what cannot be read is left out.
        try:
            job = self.backend.job()
        except Exception as exc:
            _LOGGER.debug("pipeline metrics: Flink not read: %s", exc)
            job = None
        up.add_metric([], 1.0 if job is not None and job.state == "RUNNING" else 0.0)
        yield up
        if job is not None:
            uptime = GaugeMetricFamily("dcmms_pipeline_job_uptime_seconds",
                                       "Seconds since the job was submitted")
            uptime.add_metric([], job.duration_ms / 1000.0)
            yield uptime
            age = job.checkpoint_age_s()
            if age is not None:
                gauge = GaugeMetricFamily("dcmms_pipeline_checkpoint_age_seconds",
                                          "Seconds since the last completed checkpoint")
                gauge.add_metric([], age)
                yield gauge
            done = CounterMetricFamily("dcmms_pipeline_checkpoints_completed",
                                       "Completed checkpoints of the job")
            done.add_metric([], job.checkpoints_completed)
            yield done
            failed = CounterMetricFamily("dcmms_pipeline_checkpoints_failed",
                                         "Failed checkpoints of the job")
            failed.add_metric([], job.checkpoints_failed)
            yield failed
            if job.state == "RUNNING":
                try:
                    counters = self.backend.flink.beam_counters(job.jid)
                except Exception as exc:
                    _LOGGER.debug("pipeline metrics: counters not read: %s", exc)
                    counters = {}
                yield from _counter_families(counters)
        try:
            parts = self.backend.kafka.partitions(self.backend.topics["topic_raw"],
                                                  self.backend.group)
        except Exception as exc:
            _LOGGER.debug("pipeline metrics: consumer lag not read: %s", exc)
            return
        lag = GaugeMetricFamily("dcmms_pipeline_consumer_lag",
                                "Records of raw_telemetry not yet committed by the job's "
                                "consumer group, per partition", labels=["partition"])
        for p in parts:
            if p.lag is not None:
                lag.add_metric([str(p.partition)], float(p.lag))
        yield lag


def _counter_families(counters: dict[str, float]) -> Iterator[Any]:
    """Beam counters as Prometheus counters: reasons as labels, the rest one family each."""
    from prometheus_client.core import CounterMetricFamily

    families = {name: CounterMetricFamily(name, f"Beam counters {prefix}<reason> of the job",
                                          labels=["reason"])
                for name, prefix in REASON_FAMILIES.items()}
    for counter, value in sorted(counters.items()):
        family = next((f for f, p in REASON_FAMILIES.items() if counter.startswith(p)), None)
        if family is not None:
            families[family].add_metric([counter[len(REASON_FAMILIES[family]):]], value)
            continue
        metric = CounterMetricFamily(f"dcmms_pipeline_{counter}",
                                     f"Beam counter {counter} of the telemetry job")
        metric.add_metric([], value)
        yield metric
    yield from families.values()
