"""The pipeline and bridge parts of ``dcmms-telemetry status``, and ``dcmms-telemetry replay``.

``status`` prints, under the services table, the Flink job's state and uptime, the
last completed checkpoint and its age, the main Beam counters with their average
rate per minute since the job started, and the job's consumer lag on raw_telemetry
(the console's Overview has the last-minute rates and the last hour). Then the MQTT
bridge's counters and queues, read from its Prometheus endpoint ([mqtt] metrics_port).

``replay`` re-publishes dead letters to raw_telemetry (the same code as
``POST /api/v1/dead-letters/replay`` and the console's Replay; idempotent):

    dcmms-telemetry replay --list [--stage enrich] [--reason TEXT]   what would be replayed
    dcmms-telemetry replay --id 3:1045 --id 3:1046
    dcmms-telemetry replay --all --stage enrich [--reason TEXT] [--source kafka]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from config.settings import Settings

__all__ = ["add_replay_parser", "bridge_lines", "pipeline_lines", "replay_main"]

# Counters shown by status, in order: (label, counter names summed).
_STATUS_COUNTERS = (
    ("read", ("read",)), ("valid", ("valid",)), ("invalid", ("invalid",)),
    ("duplicates dropped", ("duplicates_dropped",)), ("dead-lettered", ("dead_letters",)),
    ("alarms raised", ("alarms_raised",)), ("alarms cleared", ("alarms_cleared",)),
)


def _rest_url(settings: Settings) -> str:
    host = settings.stack.bind_host
    host = "127.0.0.1" if host in ("", "0.0.0.0", "::") else host
    return f"http://{host}:{settings.flink.web_ui_port}"


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    return f"{s} s" if s < 120 else f"{s // 60} min {s % 60:02d} s"


def pipeline_lines(settings: Settings) -> list[str]:
    """The pipeline section of ``status`` (never raises: what cannot be read says so)."""
    from io_connectors.flink_rest import FlinkRest, FlinkUnavailable
    from io_connectors.kafka_inspect import KafkaInspector, KafkaUnavailable

    job_name = settings.pipeline.job_name
    lines = ["", "pipeline:"]
    flink = FlinkRest(_rest_url(settings), timeout_s=2.0)
    try:
        job = flink.job_summary(job_name)
    except FlinkUnavailable as exc:
        job = None
        lines.append(f"  Flink job      not reachable: {exc}")
    else:
        if job is None:
            lines.append(f"  Flink job      no job named {job_name!r} on {flink.rest_url}")
    if job is not None:
        lines.append(f"  Flink job      {job.state}  (id {job.jid}, "
                     f"up {_age(job.duration_ms / 1000)})")
        cp = (f"#{job.last_checkpoint_id}, {_age(job.checkpoint_age_s())} ago"
              if job.last_checkpoint_id is not None else "none completed yet")
        lines.append(f"  checkpoint     {cp}  ({job.checkpoints_completed} completed, "
                     f"{job.checkpoints_failed} failed)")
        if job.state == "RUNNING":
            try:
                counters = flink.beam_counters(job.jid)
            except FlinkUnavailable as exc:
                counters = None
                lines.append(f"  counters       not readable: {exc}")
            if counters is not None:
                minutes = max(job.duration_ms / 60_000, 1 / 60)
                parts = []
                for label, names in _STATUS_COUNTERS:
                    total = sum(counters.get(n, 0.0) for n in names)
                    parts.append(f"{label} {total:,.0f} ({total / minutes:,.1f}/min)")
                lines.append("  counters       " + ", ".join(parts[:4]))
                lines.append("                 " + ", ".join(parts[4:]))
                lines.append("                 (totals since the job started, average per "
                             "minute over its uptime)")
    try:
        parts = KafkaInspector(settings.kafka.bootstrap_servers, timeout_s=3.0) \
            .partitions(settings.kafka.topic_raw,
                        settings.pipeline.consumer_group)
    except KafkaUnavailable as exc:
        lines.append(f"  consumer lag   not readable: {exc}")
    else:
        lags = [p.lag for p in parts]
        if all(lag is None for lag in lags):
            lines.append("  consumer lag   - (the job's group has committed no offset yet)")
        else:
            per = " ".join(f"p{p.partition}={p.lag if p.lag is not None else '-'}"
                           for p in parts)
            lines.append(f"  consumer lag   {sum(lag or 0 for lag in lags):,} records "
                         f"({per})")
    return lines


def bridge_lines(settings: Settings) -> list[str]:
    """The bridge section of ``status``, from its ``/metrics`` (never raises)."""
    import requests
    from prometheus_client.parser import text_string_to_metric_families

    from runners.mqtt_bridge import metrics_url

    lines = ["", "bridge:"]
    url = metrics_url(settings)
    if url is None:
        return [*lines, "  metrics        none ([mqtt] metrics_port = 0)"]
    try:
        resp = requests.get(url, timeout=2.0)
        resp.raise_for_status()
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for family in text_string_to_metric_families(resp.text)
                   for s in family.samples}
    except (requests.RequestException, ValueError) as exc:
        return [*lines, f"  metrics        not readable at {url}: {str(exc)[:160]}"]

    def value(name: str, **labels: str) -> int:
        return int(samples.get((name, tuple(sorted(labels.items()))), 0))

    rejected = {dict(labels)["reason"]: int(v) for (name, labels), v in samples.items()
                if name == "dcmms_bridge_messages_rejected_total"}
    state = ("connected" if value("dcmms_bridge_mqtt_connected") else "NOT connected") + (
        ", subscribed" if value("dcmms_bridge_mqtt_subscribed") else ", NOT subscribed")
    reasons = ", ".join(f"{r} {n:,}" for r, n in sorted(rejected.items(), key=lambda kv: -kv[1]))
    records = ", ".join(f"{kind} {value('dcmms_edge_kafka_delivery_seconds_count', record=kind):,}"
                        for kind in ("batch", "event", "dead_letter"))
    failures = sum(int(v) for (name, _labels), v in samples.items()
                   if name == "dcmms_edge_kafka_delivery_failures_total")
    lines += [
        f"  MQTT           {state} (reconnects {value('dcmms_bridge_mqtt_reconnects_total')})",
        f"  messages       received {value('dcmms_bridge_messages_received_total'):,}, "
        f"accepted {value('dcmms_bridge_messages_accepted_total'):,}, "
        f"rejected {sum(rejected.values()):,}" + (f" ({reasons})" if reasons else ""),
        f"  to Kafka       events {value('dcmms_bridge_events_produced_total'):,}, dead letters "
        f"{value('dcmms_bridge_dead_letters_produced_total'):,}; records {records}; "
        f"failed records {failures:,}",
        f"  queues now     inbox {value('dcmms_bridge_inbox_messages'):,}, in flight "
        f"{value('dcmms_bridge_in_flight_messages'):,}, retrying "
        f"{value('dcmms_bridge_retry_messages'):,}  (metrics: {url})",
    ]
    return lines


def add_replay_parser(sub: Any) -> argparse.ArgumentParser:
    replay = sub.add_parser("replay", help="re-publish dead letters to raw_telemetry "
                                           "(idempotent; docs/console.md)")
    what = replay.add_mutually_exclusive_group(required=True)
    what.add_argument("--id", action="append", dest="ids", metavar="PARTITION:OFFSET",
                      help="a dead letter of telemetry_dlq (repeatable)")
    what.add_argument("--all", action="store_true", help="every dead letter matching the "
                                                         "filters among the newest --scan")
    what.add_argument("--list", action="store_true", help="only list the matching dead letters")
    replay.add_argument("--stage")
    replay.add_argument("--source")
    replay.add_argument("--reason", help="a reason class or text contained in a reason")
    replay.add_argument("--event-id")
    replay.add_argument("--scan", type=int, default=500,
                        help="newest records read per partition (default 500)")
    replay.add_argument("--json", action="store_true", help="print the result as JSON")
    replay.set_defaults(profile=None)  # the stack topology (runners.cli): whatever `up` recorded
    return replay


def _store(settings: Settings) -> Any:
    from io_connectors.dead_letter_store import DeadLetterStore
    from io_connectors.kafka_inspect import KafkaInspector
    from io_connectors.raw_producer import EdgeTarget, build_raw_producer
    from io_connectors.schema_registry import RegistrySchemas
    from schemas.validation import load_sensor_rules

    target = EdgeTarget.from_settings(settings)
    rules_file = settings.pipeline.sensor_rules_file
    return DeadLetterStore(KafkaInspector(target.bootstrap_servers), target.dlq_topic,
                           RegistrySchemas(target.registry_url),
                           lambda: build_raw_producer(target, client_id="dcmms-replay-cli"),
                           lambda: load_sensor_rules(rules_file))


def replay_main(settings: Settings, args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Run ``replay``; 0 when something was replayed or listed, 1 when nothing matched."""
    from schemas.dead_letter_query import (
        DeadLetterFilter,
        filter_dead_letters,
        parse_record_id,
    )

    out = out or sys.stdout
    if not 1 <= args.scan <= 5000:
        print("replay: --scan must be from 1 to 5000", file=sys.stderr)
        return 2
    try:
        flt = DeadLetterFilter(stage=args.stage, source=args.source, reason=args.reason,
                               event_id=args.event_id)
        ids = [parse_record_id(i) for i in args.ids or ()]
    except ValueError as exc:
        print(f"replay: {exc}", file=sys.stderr)
        return 2
    if ids and not flt.empty:
        print("replay: filters apply to --all and --list only", file=sys.stderr)
        return 2
    store = _store(settings)
    if ids:
        items = store.by_ids(ids)
        found = {i["id"] for i in items}
        missing = [f"{p}:{o}" for p, o in ids if f"{p}:{o}" not in found]
    else:
        print(f"reading the newest {args.scan} dead letters of each partition of "
              f"{store.dlq_topic} ...", file=sys.stderr)
        items = [dict(i) for i in filter_dead_letters(store.recent(args.scan, True), flt)]
        missing = []
    if args.list:
        for item in items:
            reasons = "; ".join(item.get("reasons") or [])
            print(f"{item['id']:>10}  {item.get('stage', '-'):8s} {item.get('event_id') or '-'}"
                  f"  {reasons}", file=out)
        print(f"{len(items)} dead letter(s)", file=out)
        return 0 if items else 1
    result = store.replay(items, requested=len(ids) if ids else len(items))
    result.not_found = missing
    if args.json:
        json.dump(result.as_dict(), out, indent=1)
        out.write("\n")
    else:
        print(f"replayed {len(result.replayed)} of {result.requested} dead letter(s): "
              f"{result.events_published} event(s) re-published to "
              f"{settings.kafka.topic_raw}", file=out)
        for skipped in result.skipped:
            print(f"  skipped {skipped['id']}: {skipped['reason']}", file=out)
        for failed in result.failed:
            print(f"  FAILED {failed['id']}: {failed['reason']}", file=out)
        for missing_id in result.not_found:
            print(f"  not found: {missing_id}", file=out)
    return 0 if result.replayed else 1


def main(argv: Sequence[str] | None = None) -> int:  # pragma: no cover - manual use
    from config.settings import load_settings

    parser = argparse.ArgumentParser(prog="python -m runners.pipeline_report")
    add_replay_parser(parser.add_subparsers(dest="command", required=True))
    return replay_main(load_settings(), parser.parse_args(argv))
