"""The pure-Python cost of one event through the job's stages, without Beam or services.

``python -m bench.python_floor [-n 20000]``: builds N fleet events as the edge writes
them (TelemetryBatch records of 125), then times each stage's pure function over all of
them in this process: decode, validate, enrich, thresholds, the shuffle's pickling, dedup,
alarms, the Avro encode of ``validated_telemetry`` and the QuestDB row and ILP buffer.
Prints microseconds per event per stage. Compare the total with the SDK workers' CPU per
event in ``python -m bench.drain``: the difference is what Beam itself costs per event
(docs/decisions/0004-throughput.md).
"""

from __future__ import annotations

import argparse
import pickle
import time
from collections.abc import Callable
from typing import Any

from bench.loadgen import fleet_item

__all__ = ["measure", "main"]


class _Value:
    """A stand-in for Beam's value state."""

    def __init__(self) -> None:
        self.value: Any = None

    def read(self) -> Any:
        return self.value

    def write(self, value: Any) -> None:
        self.value = value


def measure(n: int) -> dict[str, float]:
    """Microseconds per event of each stage (best of two passes)."""
    import warnings

    from questdb import TimestampNanos
    with warnings.catch_warnings():
        # The client's standalone Buffer lives only in its deprecated module (the sink gets
        # its buffers from a connected Sender, which needs a server).
        warnings.simplefilter("ignore", DeprecationWarning)
        from questdb.ingress import Buffer

    from io_connectors.questdb_sink import reading_row
    from schemas.assets import load_asset_catalog
    from schemas.avro import SENSOR_READING, TELEMETRY_BATCH, TELEMETRY_EVENT, load_schema
    from schemas.edge import event_from_item
    from schemas.validation import load_sensor_rules
    from schemas.wire import InMemorySchemaLookup, encode
    from transforms.alarms import advance_alarms, attach_thresholds
    from transforms.buckets import bucket_of
    from transforms.decode import decode_source_record
    from transforms.dedup import dedup_step
    from transforms.enrich import enrich
    from transforms.validate import validate_envelope

    rules, catalog = load_sensor_rules(), load_asset_catalog()
    now = int(time.time() * 1000)
    events = [event_from_item(fleet_item(f"floor{i}", i, now - n + i), now_ms=now,
                              rules=rules).event for i in range(n)]
    lookup = InMemorySchemaLookup()
    batch_id = lookup.register(load_schema(TELEMETRY_BATCH))
    records = [encode({"events": events[i:i + 125]}, batch_id, load_schema(TELEMETRY_BATCH))
               for i in range(0, n, 125)]
    reader, reading_schema = load_schema(TELEMETRY_EVENT), load_schema(SENSOR_READING)
    best: dict[str, float] = {}

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        out = fn()
        us = (time.perf_counter() - t0) / n * 1e6
        best[name] = min(best.get(name, us), us)
        return out

    for _ in range(2):
        # Every event is valid and known: each stage returns its result, never a Rejected.
        envs = timed("decode", lambda: [e for r in records
                                        for e in decode_source_record(r, lookup, reader)])
        envs = timed("validate", lambda e=envs: [
            validate_envelope(x, now_ms=now, rules=rules) for x in e])
        rows = timed("enrich", lambda e=envs: [
            enrich(x[0], catalog, ingested_at_ms=now) for x in e])
        keyed = timed("thresholds", lambda r=rows: attach_thresholds(r, catalog))

        def shuffle(k=keyed) -> dict[int, bytes]:
            buckets: dict[int, list[Any]] = {}
            for key, value in k:
                buckets.setdefault(bucket_of(key, 64), []).append((key, now, value))
            return {b: pickle.dumps(v, protocol=pickle.HIGHEST_PROTOCOL)
                    for b, v in buckets.items()}
        payloads = timed("shuffle pickle", shuffle)
        items = timed("shuffle unpickle", lambda p=payloads: [pickle.loads(v)
                                                              for v in p.values()])

        def dedup(i=items) -> None:
            seen: dict[str, int] = {}
            for batch in i:
                for _key, ts, (row, _t) in batch:
                    keep, expiry = dedup_step(seen.get(row["event_id"]), ts, 60_000)
                    if keep and expiry is not None:
                        seen[row["event_id"]] = expiry
        timed("dedup", dedup)
        timed("alarms", lambda i=items: [advance_alarms(batch, _Value()) for batch in i])
        timed("kafka avro encode", lambda r=rows: [encode(x, 1, reading_schema) for x in r])
        ilp = timed("questdb row", lambda r=rows: [reading_row(x) for x in r])

        def buffer(rs=ilp) -> None:
            buf = Buffer(protocol_version=2)
            for r in rs:
                buf.row(r.table, symbols=r.symbols, columns=r.columns,
                        at=TimestampNanos(r.at_ns))
        timed("questdb buffer", buffer)
    best["total"] = sum(best.values())
    return {k: round(v, 2) for k, v in best.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=20_000, help="events")
    args = parser.parse_args(argv)
    for name, us in measure(args.n).items():
        print(f"{name:20s} {us:7.2f} us/event")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
