"""Read the dead-letter topic and replay dead letters to ``raw_telemetry``.

:class:`DeadLetterStore` is what the console, the REST API
(``/api/v1/dead-letters``) and ``dcmms-telemetry replay`` use:

* :meth:`DeadLetterStore.recent` — the newest dead letters (up to
  ``per_partition`` of each partition of ``telemetry_dlq``), decoded with the
  schema registry, newest first, each named by ``"<partition>:<offset>"``;
* :meth:`DeadLetterStore.replay` — re-publish what those dead letters hold, as
  :func:`schemas.replay.plan_replay` decides, through the edge's
  :class:`io_connectors.raw_producer.RawProducer` (acknowledged by Kafka before
  it returns). Replaying is idempotent: see :mod:`schemas.replay`.

The dead letters themselves stay in the topic (a Kafka log is append-only); a
replayed one that is rejected again becomes a new dead letter with its reason.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from io_connectors.kafka_inspect import KafkaInspector, decode_record, printable
from schemas.dead_letter_query import reason_class
from schemas.replay import plan_replay
from schemas.validation import SensorRules
from schemas.wire import decode

__all__ = ["DeadLetterStore", "ReplayResult"]

_LOGGER = logging.getLogger(__name__)


@dataclass
class ReplayResult:
    """What one replay did: ids asked for, events published, and what was skipped or failed."""

    requested: int = 0
    replayed: list[str] = field(default_factory=list)
    events_published: int = 0
    event_ids: list[str] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)
    not_found: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"requested": self.requested, "replayed": self.replayed,
                "events_published": self.events_published, "event_ids": self.event_ids,
                "skipped": self.skipped, "failed": self.failed, "not_found": self.not_found}


class DeadLetterStore:
    """The dead letters of ``dlq_topic``; replays through ``producer()`` (made on first use)."""

    def __init__(self, inspector: KafkaInspector, dlq_topic: str,
                 schema_lookup: Callable[[int], Any],
                 producer: Callable[[], Any], rules: Callable[[], SensorRules],
                 ack_timeout_s: float = 10.0) -> None:
        self.inspector = inspector
        self.dlq_topic = dlq_topic
        self._lookup = schema_lookup
        self._producer = producer
        self._rules = rules
        self.ack_timeout_s = ack_timeout_s

    def _decoded(self, records: Sequence[Any], with_original: bool) -> list[dict[str, Any]]:
        out = []
        for rec in records:
            _sid, value, error = decode_record(rec.value, self._lookup)
            item: dict[str, Any] = {"id": rec.record_id, "partition": rec.partition,
                                    "offset": rec.offset, "kafka_timestamp": rec.timestamp_ms}
            if value is None:
                item.update({"stage": "unknown", "reasons": [f"undecodable dead letter: {error}"],
                             "source": None, "failed_at": rec.timestamp_ms})
            else:
                item.update({k: value.get(k) for k in (
                    "stage", "reasons", "source", "original_format", "topic", "event_id",
                    "failed_at")})
                item["origin"] = {"partition": value.get("partition"),
                                  "offset": value.get("offset")}
                item["original_bytes"] = value.get("original")
                item["payload"] = printable(value.get("original"))
                item["key"] = printable(value.get("key"), 256)
            reasons = item.get("reasons") or ["no reason given"]
            item["reason"] = reason_class(str(reasons[0]))
            out.append(item)
        if not with_original:
            for item in out:
                item.pop("original_bytes", None)
        return out

    def recent(self, per_partition: int = 500, with_original: bool = False
               ) -> list[dict[str, Any]]:
        records = self.inspector.read_tail(self.dlq_topic, per_partition)
        return self._decoded(records, with_original)

    def by_ids(self, ids: Sequence[tuple[int, int]]) -> list[dict[str, Any]]:
        return self._decoded(self.inspector.read_records(self.dlq_topic, ids), True)

    def replay(self, items: Sequence[dict[str, Any]], requested: int | None = None,
               now_ms: int | None = None) -> ReplayResult:
        """Re-publish the events of ``items`` (decoded dead letters ``with_original``)."""
        now = int(time.time() * 1000) if now_ms is None else now_ms
        rules = self._rules()
        result = ReplayResult(requested=len(items) if requested is None else requested)

        def decode_avro(data: bytes) -> dict[str, Any]:
            return decode(data, self._lookup)[1]

        events: list[dict[str, Any]] = []
        owners: list[str] = []
        seen: set[str] = set()  # a dead letter replayed and rejected again is in the topic twice
        for item in items:
            dead = {"stage": item.get("stage"), "original_format": item.get("original_format"),
                    "original": item.get("original_bytes"), "source": item.get("source"),
                    "topic": item.get("topic")}
            plan = plan_replay(dead, now_ms=now, rules=rules, decode_avro=decode_avro)
            if not plan.ok:
                result.skipped.append({"id": item["id"], "reason": plan.skipped or "nothing"})
                continue
            for event in plan.events:
                if event["event_id"] in seen:
                    continue
                seen.add(event["event_id"])
                events.append(event)
                owners.append(item["id"])
        if events:
            outcome = self._producer().send_batch(events, timeout_s=self.ack_timeout_s)
            failed_ids: dict[str, str] = {}
            for index, error in outcome.failures.items():
                failed_ids.setdefault(owners[index], error)
            for index, event in enumerate(events):
                if index not in outcome.failures:
                    result.events_published += 1
                    result.event_ids.append(str(event["event_id"]))
            result.failed = [{"id": i, "reason": e} for i, e in failed_ids.items()]
            result.replayed = list(dict.fromkeys(o for o in owners if o not in failed_ids))
        _LOGGER.info("replay: %d dead letters, %d events published, %d skipped, %d failed",
                     result.requested, result.events_published, len(result.skipped),
                     len(result.failed))
        return result
