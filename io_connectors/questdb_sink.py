"""Beam sink writing readings and alarm transitions to QuestDB over ILP/HTTP.

``WriteToQuestDB(table, conf)`` is a PTransform whose output is the
PCollection of dead letters (``schemas/dead_letter.py`` dicts, stage "sink")
for rows QuestDB permanently refused. Layers:

- pure row mapping (:func:`reading_row`, :func:`alarm_row`): a pipeline dict
  becomes an :class:`IlpRow` (symbols, columns, designated timestamp), with
  symbol columns taken from the column spec in ``io_connectors/questdb_schema.py``;
- :class:`QuestDBWriter`, a small client wrapper: builds explicit buffers from
  rows and flushes them (``auto_flush=off``; ``sender.flush(buf)`` keeps the
  buffer on failure, so nothing is lost). :func:`classify_error` sorts a
  failure into a :class:`WriteFailure` from the client's error code and
  QuestDB's error document (:class:`ServerError`). Transient failures
  (connection refused, timeouts, server errors) are retried with exponential
  backoff until ``retry_deadline_s`` and then raised, so the runner retries
  the bundle; permanent rejections (rows at fault) are narrowed down by
  re-sending the batch in halves until the offending rows are alone, and
  those are returned;
- ``_WriteToQuestDBFn``: buffers rows per bundle, flushes every
  ``batch_rows`` and in ``finish_bundle``.

Re-sending rows is safe: both tables have DEDUP UPSERT KEYS, so a row
written twice is stored once.
"""

from __future__ import annotations

import enum
import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.utils.windowed_value import WindowedValue
from questdb import QuestDBError, QuestDBErrorCode, TimestampMicros

from io_connectors.questdb_schema import (
    ALARM_COLUMNS,
    ALARMS,
    SENSOR_READING_COLUMNS,
    SENSOR_READINGS,
    SYMBOL_COLUMNS,
)
from schemas.dead_letter import make_dead_letter
from transforms.flush import NEVER, EarlyFlush, monotonic_ms

__all__ = [
    "IlpRow",
    "QuestDBConfigError",
    "QuestDBUnavailableError",
    "QuestDBWriter",
    "RowMappingError",
    "ServerError",
    "WriteFailure",
    "WriteToQuestDB",
    "alarm_row",
    "classify_error",
    "questdb_conf",
    "reading_row",
    "server_error",
    "symbol_columns",
]

_LOGGER = logging.getLogger(__name__)
_METRICS_NAMESPACE = "dcmms.questdb_sink"


class RowMappingError(ValueError):
    """A pipeline dict cannot become a QuestDB row (missing or mistyped field)."""


class QuestDBUnavailableError(RuntimeError):
    """QuestDB stayed unreachable (or kept failing transiently) past the retry deadline."""


class QuestDBConfigError(RuntimeError):
    """QuestDB refused the request for a reason no retry or row fix can cure (e.g. auth)."""


# --- pure row mapping ---------------------------------------------------------------

def symbol_columns(table: str) -> frozenset[str]:
    """Names of the SYMBOL columns of ``table``, from its column spec in
    io_connectors/questdb_schema.py (the single definition its DDL is rendered from)."""
    try:
        return SYMBOL_COLUMNS[table]
    except KeyError:
        raise KeyError(f"no QuestDB table {table!r} in io_connectors/questdb_schema.py "
                       f"TABLE_COLUMNS") from None


# Not frozen: a frozen dataclass sets each field through object.__setattr__, which cost more
# than the rest of the mapping of a row (one is made per stored row). Treat it as read-only.
@dataclass(slots=True)
class IlpRow:
    """One ILP line: table, symbols, other columns and the designated timestamp (epoch ns)."""

    table: str
    symbols: dict[str, str]
    columns: dict[str, Any]
    at_ns: int
    source: Mapping[str, Any] = field(default_factory=dict, compare=False)


_TIMESTAMP_COLUMNS = frozenset({"ingested_at"})


# 2262-04-11, the last instant a signed 64-bit nanosecond timestamp can hold.
_MAX_EPOCH_MS = 9_223_372_036_854
_SYMBOLS: dict[str, frozenset[str]] = {}


def _symbols_of(table: str) -> frozenset[str]:
    if table not in _SYMBOLS:
        _SYMBOLS[table] = symbol_columns(table)
    return _SYMBOLS[table]


def _epoch_ms(record: Mapping[str, Any], name: str) -> int:
    value = record.get(name)
    if type(value) is int and 0 <= value <= _MAX_EPOCH_MS:
        return value   # the common case, checked first: this runs twice per stored row
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RowMappingError(f"field {name!r} must be epoch milliseconds, got {value!r}")
    # QuestDB timestamps are signed 64-bit microseconds/nanoseconds: bound the input so
    # the conversion can never overflow inside the client.
    if not math.isfinite(value) or not 0 <= value <= _MAX_EPOCH_MS:
        raise RowMappingError(
            f"field {name!r} must be an epoch ms between 0 and {_MAX_EPOCH_MS}, got {value!r}")
    return int(value)


_SYMBOL, _TIMESTAMP, _OTHER = 0, 1, 2
# (table, column names) -> ((name, kind), ...) without the designated timestamp: the
# per-row loop then does one dict lookup per column (this runs for every stored row).
_PLANS: dict[tuple[str, tuple[str, ...]], tuple[tuple[str, int], ...]] = {}


def _plan(table: str, column_names: Sequence[str]) -> tuple[tuple[str, int], ...]:
    key = (table, tuple(column_names))
    plan = _PLANS.get(key)
    if plan is None:
        symbols_of_table = _symbols_of(table)
        plan = _PLANS[key] = tuple(
            (name, _TIMESTAMP if name in _TIMESTAMP_COLUMNS else
             _SYMBOL if name in symbols_of_table else _OTHER)
            for name in column_names if name != "timestamp")
    return plan


def _to_row(table: str, record: Mapping[str, Any], column_names: Sequence[str],
            required: Sequence[str]) -> IlpRow:
    if not isinstance(record, Mapping):
        raise RowMappingError(f"expected a dict, got {type(record).__name__}")
    get = record.get
    for name in required:
        if get(name) is None:
            raise RowMappingError(
                f"missing required field(s) {[n for n in required if get(n) is None]}")
    at_ns = _epoch_ms(record, "timestamp") * 1_000_000
    symbols: dict[str, str] = {}
    columns: dict[str, Any] = {}
    for name, kind in _plan(table, column_names):
        value = get(name)
        if value is None:
            continue  # QuestDB stores NULL for an absent column
        if kind == _SYMBOL:
            symbols[name] = value if type(value) is str else str(value)
        elif kind == _OTHER:
            columns[name] = value
        else:
            columns[name] = TimestampMicros(_epoch_ms(record, name) * 1000)
    return IlpRow(table, symbols, columns, at_ns, record)


def reading_row(reading: Mapping[str, Any], table: str = SENSOR_READINGS) -> IlpRow:
    """A validated, enriched reading (sensor-reading.avsc dict) as a ``sensor_readings`` row."""
    row = _to_row(table, reading, SENSOR_READING_COLUMNS,
                  ("timestamp", "event_id", "asset_id", "sensor_id"))
    value = row.columns.get("value")
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise RowMappingError(f"field 'value' must be a number, got {value!r}")
    if "value" in row.columns:
        row.columns["value"] = float(value)  # an int would be sent as LONG and refused
    return row


def alarm_row(alarm: Mapping[str, Any], table: str = ALARMS) -> IlpRow:
    """An alarm transition (alarm.avsc dict) as an ``alarms`` row."""
    row = _to_row(table, alarm, ALARM_COLUMNS, ("timestamp", "alarm_id", "state"))
    for name in ("value", "threshold"):
        v = row.columns.get(name)
        if isinstance(v, int) and not isinstance(v, bool):
            row.columns[name] = float(v)
    return row


_ROW_MAPPERS: dict[str, Callable[[Mapping[str, Any]], IlpRow]] = {
    SENSOR_READINGS: reading_row,
    ALARMS: alarm_row,
}


# --- error classification -------------------------------------------------------------

class WriteFailure(enum.Enum):
    """What a failed write means for the rows in it."""

    TRANSIENT = "transient"   # QuestDB down, slow or failing: retry the same rows later
    REJECTED = "rejected"     # the data is at fault: isolate the rows, dead-letter them
    FATAL = "fatal"           # the configuration is at fault (auth, endpoint): fail


_TRANSIENT_CODES = frozenset({QuestDBErrorCode.SocketError,
                              QuestDBErrorCode.CouldNotResolveAddr,
                              QuestDBErrorCode.ConnectTimeout})
# Raised by the client for a row (bad name, UTF-8, timestamp), never by a flush.
_REJECTED_CODES = frozenset({QuestDBErrorCode.InvalidUtf8, QuestDBErrorCode.InvalidName,
                             QuestDBErrorCode.InvalidTimestamp, QuestDBErrorCode.BadDataFrame})


@dataclass(frozen=True)
class ServerError:
    """QuestDB's ILP/HTTP error document: ``{"code", "message", "line", "errorId"}``.

    ``code`` is QuestDB's error class: ``invalid`` (HTTP 400: a line of the request is at
    fault), ``internal error`` (500), ``request too large`` (413), ``not accepting writes``
    (421), ``not supported`` (415/400); ``line`` is set when QuestDB names the line at fault.
    """

    code: str
    message: str
    line: int | None = None
    error_id: str | None = None


_FLUSH_PREFIX = "Could not flush buffer: "


def server_error(exc: BaseException) -> ServerError | None:
    """The error document QuestDB answered a flush with, or None (no answer, not QuestDB's).

    The client (questdb 6.0) exposes no HTTP status, only the code ``ServerFlushError`` and
    a text holding QuestDB's answer, in one of two forms: the JSON body as sent (QuestDB 9.3
    answers ``application/json; charset=utf-8``, which the client does not take for JSON),
    or, for a plain ``application/json`` answer, the client's own rendering
    ``<message> [id: <errorId>, code: <code>, line: <line>]``. Both are read here.
    """
    if not isinstance(exc, QuestDBError) or exc.code is not QuestDBErrorCode.ServerFlushError:
        return None
    text = str(exc).removeprefix(_FLUSH_PREFIX)
    if text.startswith("{"):
        try:
            doc = json.loads(text)
        except ValueError:
            return None
        if not (isinstance(doc, dict) and isinstance(doc.get("code"), str)
                and isinstance(doc.get("message"), str)):
            return None
        line = doc.get("line")
        error_id = doc.get("errorId")
        return ServerError(doc["code"], doc["message"],
                           line if type(line) is int else None,
                           error_id if isinstance(error_id, str) else None)
    message, bracket, fields = text.rpartition(" [")
    if not bracket or not fields.endswith("]"):
        return None
    parts = dict(f.partition(": ")[::2] for f in fields[:-1].split(", "))
    if "code" not in parts:
        return None
    line = parts.get("line", "")
    return ServerError(parts["code"], message, int(line) if line.isdigit() else None,
                       parts.get("id"))


def classify_error(exc: Exception) -> WriteFailure:
    """What a failed flush (or buffer build) means: retry, dead-letter the rows, or fail.

    By the client's error code: transport errors are transient, authentication and a
    missing ILP endpoint fatal. A ``ServerFlushError`` is QuestDB's answer: the rows are
    at fault when its error document (:func:`server_error`) says ``invalid``; anything else
    it answers (an internal error, even one naming a line, request too large, not accepting
    writes, a proxy's page) is retried.
    """
    if not isinstance(exc, QuestDBError):
        return WriteFailure.FATAL
    code = exc.code
    if code in _TRANSIENT_CODES:
        return WriteFailure.TRANSIENT
    if code is QuestDBErrorCode.ServerFlushError:
        answer = server_error(exc)
        # Only "invalid" puts the rows at fault. An internal error QuestDB pins on a line
        # (a write error such as errno 28, disk full) is QuestDB's trouble: retry, so good
        # rows never go to the dead-letter topic because a disk filled up.
        if answer is not None and answer.code == "invalid":
            return WriteFailure.REJECTED
        return WriteFailure.TRANSIENT
    if code in _REJECTED_CODES:
        return WriteFailure.REJECTED
    return WriteFailure.FATAL


# --- client wrapper -----------------------------------------------------------------

def questdb_conf(host: str, http_port: int, request_timeout_ms: int = 30_000) -> str:
    """ILP/HTTP configuration string with the settings this sink relies on."""
    # protocol_version=2 avoids a server round trip at connect time, so a sender can be
    # made while QuestDB is still down; retry_timeout=0 leaves retries to QuestDBWriter
    # (it counts them and bounds them by its own deadline).
    return (f"http::addr={host}:{http_port};auto_flush=off;protocol_version=2;"
            f"retry_timeout=0;request_timeout={request_timeout_ms};")


_FORCED_CONF = {"auto_flush": "off"}


def _check_conf(conf: str) -> str:
    if not conf.startswith(("http::", "https::")):
        raise ValueError(f"QuestDB sink needs an ILP/HTTP conf string (http::addr=...;), "
                         f"got {conf!r}")
    pairs = dict(p.split("=", 1) for p in conf.split("::", 1)[1].split(";") if "=" in p)
    for key, value in _FORCED_CONF.items():
        if pairs.get(key, value) != value:
            raise ValueError(f"QuestDB sink conf must have {key}={value}: with auto-flush a "
                             "failed flush loses the rows")
    if "auto_flush" not in pairs:
        conf = conf.rstrip(";") + ";auto_flush=off;"
    return conf


class QuestDBWriter:
    """Writes rows with explicit buffers; retries transient errors, isolates rejected rows.

    ``write(rows)`` returns ``[(row, reason)]`` for rows QuestDB refused; it
    raises :class:`QuestDBUnavailableError` when transient errors outlast
    ``retry_deadline_s`` and :class:`QuestDBConfigError` for fatal ones.
    """

    def __init__(self, conf: str, retry_deadline_s: float = 300.0,
                 initial_backoff_s: float = 0.1, max_backoff_s: float = 5.0,
                 on_retry: Callable[[str], None] | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.conf = _check_conf(conf)
        self.retry_deadline_s = retry_deadline_s
        self.initial_backoff_s = initial_backoff_s
        self.max_backoff_s = max_backoff_s
        self.on_retry = on_retry
        self._sleep = sleep
        self._sender: Any = None
        self.requests = 0

    def _ensure_sender(self) -> Any:
        if self._sender is None:
            from questdb import Sender

            sender = Sender.from_conf(self.conf)
            sender.establish()
            self._sender = sender
        return self._sender

    def close(self) -> None:
        if self._sender is not None:
            try:
                self._sender.close()
            except Exception as exc:  # closing a broken connection is not worth failing for
                _LOGGER.warning("closing QuestDB sender: %s", exc)
            self._sender = None

    def build_buffer(self, rows: Sequence[IlpRow]) -> tuple[Any, list[IlpRow],
                                                            list[tuple[IlpRow, str]]]:
        """A buffer of the rows the client accepts; rows it refuses locally are returned."""
        from questdb import TimestampNanos

        sender = self._ensure_sender()
        buf = sender.new_buffer()
        kept: list[IlpRow] = []
        refused: list[tuple[IlpRow, str]] = []
        for row in rows:
            try:
                buf.row(row.table, symbols=row.symbols, columns=row.columns,
                        at=TimestampNanos(row.at_ns))
            except Exception as exc:  # the client rejects bad names, UTF-8, types: per row
                refused.append((row, f"QuestDB client refused the row: {exc}"))
                continue
            kept.append(row)
        return buf, kept, refused

    def write(self, rows: Sequence[IlpRow]) -> list[tuple[IlpRow, str]]:
        if not rows:
            return []
        deadline = time.monotonic() + self.retry_deadline_s
        return self._write(list(rows), deadline)

    def _write(self, rows: list[IlpRow], deadline: float) -> list[tuple[IlpRow, str]]:
        attempt = 0
        while True:
            try:
                buf, kept, refused = self.build_buffer(rows)
                if not kept:
                    return refused
                self.requests += 1
                self._sender.flush(buf)
                return refused
            except Exception as exc:
                kind = classify_error(exc)
                if kind is WriteFailure.FATAL:
                    raise QuestDBConfigError(f"QuestDB refused the write ({self.conf}): "
                                             f"{exc}") from exc
                if kind is WriteFailure.REJECTED:
                    rejection = exc
                    break
                # Transient: reconnect and back off, until the deadline.
                self.close()
                if time.monotonic() >= deadline:
                    raise QuestDBUnavailableError(
                        f"QuestDB unavailable for {self.retry_deadline_s:.0f}s "
                        f"(setting [questdb] host/http_port, conf {self.conf}): {exc}") from exc
                delay = min(self.max_backoff_s, self.initial_backoff_s * 2 ** attempt)
                attempt += 1
                _LOGGER.warning("QuestDB write failed (%s), retry %d in %.2fs", exc, attempt,
                                delay)
                if self.on_retry is not None:
                    self.on_retry(str(exc))
                self._sleep(max(0.0, min(delay, deadline - time.monotonic())))
        # Permanent rejection: narrow it down. Good rows re-sent are deduplicated.
        if len(kept) == 1:
            return refused + [(kept[0], f"QuestDB rejected the row: {_short(rejection)}")]
        middle = len(kept) // 2
        return (refused + self._write(kept[:middle], deadline)
                + self._write(kept[middle:], deadline))


def _short(exc: Exception) -> str:
    """QuestDB's message for a rejection, on one line (else the client's text)."""
    answer = server_error(exc)
    return answer.message.replace("\n", " ") if answer is not None else str(exc)


# --- Beam ------------------------------------------------------------------------------

def _dead_letter(record: Any, reason: str, table: str) -> dict[str, Any]:
    try:
        original = json.dumps(record, default=repr, sort_keys=True).encode()
    except (TypeError, ValueError):
        original = repr(record).encode("utf-8", "backslashreplace")
    event_id = record.get("event_id") if isinstance(record, Mapping) else None
    return make_dead_letter("sink", [f"questdb table {table}: {reason}"], original,
                            source="pipeline", original_format="json",
                            event_id=event_id if isinstance(event_id, str) else None)


class _WriteToQuestDBFn(beam.DoFn):
    def __init__(self, table: str, conf: str, to_row: Callable[[Mapping[str, Any]], IlpRow],
                 batch_rows: int, retry_deadline_s: float,
                 early: EarlyFlush = NEVER) -> None:
        self.table = table
        self.early = early
        self._oldest_ms = 0.0
        self.conf = conf
        self.to_row = to_row
        self.batch_rows = batch_rows
        self.retry_deadline_s = retry_deadline_s
        self.rows_written = Metrics.counter(_METRICS_NAMESPACE, f"{table}_rows_written")
        self.retries = Metrics.counter(_METRICS_NAMESPACE, f"{table}_retries")
        self.dead_lettered = Metrics.counter(_METRICS_NAMESPACE, f"{table}_dead_lettered")
        self._writer: QuestDBWriter | None = None
        self._pending: list[tuple[IlpRow, Any, Any]] = []

    def setup(self) -> None:
        self._writer = QuestDBWriter(self.conf, retry_deadline_s=self.retry_deadline_s,
                                     on_retry=lambda _reason: self.retries.inc())

    def start_bundle(self) -> None:
        self._pending = []  # a retried bundle starts clean

    def process(self, element: Any, timestamp: Any = beam.DoFn.TimestampParam,
                window: Any = beam.DoFn.WindowParam) -> Iterator[WindowedValue]:
        # A list is a batch of records (e.g. DeduplicateByEventId's output): one call for all.
        for record in element if isinstance(element, list) else (element,):
            try:
                row = self.to_row(record)
            except RowMappingError as exc:
                self.dead_lettered.inc()
                yield WindowedValue(_dead_letter(record, str(exc), self.table), timestamp,
                                    [window])
                continue
            if not self._pending:
                self._oldest_ms = monotonic_ms()
            self._pending.append((row, timestamp, window))
        if len(self._pending) >= self.batch_rows or (
                self.early.enabled
                and self.early.due(self._oldest_ms, len(self._pending), monotonic_ms())):
            # A commit within the bundle is safe: a retried bundle writes the rows again
            # and the table's DEDUP keys absorb the copies.
            yield from self._flush()

    def finish_bundle(self) -> Iterator[WindowedValue]:
        yield from self._flush()

    def _flush(self) -> Iterator[WindowedValue]:
        pending, self._pending = self._pending, []
        if not pending:
            return
        assert self._writer is not None
        # Rows are frozen dataclasses compared by value; map each back to its element.
        where = {id(row): (ts, win) for row, ts, win in pending}
        rejected = self._writer.write([row for row, _ts, _win in pending])
        self.rows_written.inc(len(pending) - len(rejected))
        for row, reason in rejected:
            self.dead_lettered.inc()
            ts, win = where[id(row)]
            yield WindowedValue(_dead_letter(dict(row.source), reason, self.table), ts, [win])

    def teardown(self) -> None:
        if self._writer is not None:
            self._writer.close()


class WriteToQuestDB(beam.PTransform):
    """Write dicts to a QuestDB table; the output is the dead letters of refused rows.

    ``table`` is ``sensor_readings`` or ``alarms`` (or any table when ``to_row``
    is given); ``conf`` an ILP/HTTP conf string (see :func:`questdb_conf`).
    ``batch_rows`` bounds the rows held per flush; ``retry_deadline_s`` how
    long transient failures are retried before the bundle fails; ``early`` lets a
    low rate commit before the bundle ends (transforms.flush.EarlyFlush).
    """

    def __init__(self, table: str, conf: str, *, batch_rows: int = 5000,
                 retry_deadline_s: float = 300.0,
                 to_row: Callable[[Mapping[str, Any]], IlpRow] | None = None,
                 early: EarlyFlush = NEVER,
                 label: str | None = None) -> None:
        super().__init__(label)
        if to_row is None:
            if table not in _ROW_MAPPERS:
                raise ValueError(f"no row mapping for QuestDB table {table!r}; pass to_row "
                                 f"(known: {sorted(_ROW_MAPPERS)})")
            to_row = _ROW_MAPPERS[table]
        if batch_rows < 1:
            raise ValueError(f"batch_rows must be >= 1, got {batch_rows}")
        if retry_deadline_s <= 0:
            raise ValueError(f"retry_deadline_s must be > 0, got {retry_deadline_s}")
        self.table = table
        self.conf = _check_conf(conf)
        self.to_row = to_row
        self.batch_rows = batch_rows
        self.retry_deadline_s = retry_deadline_s
        self.early = early

    def expand(self, pcoll: beam.PCollection) -> beam.PCollection:
        return pcoll | f"Write{self.table}" >> beam.ParDo(_WriteToQuestDBFn(
            self.table, self.conf, self.to_row, self.batch_rows, self.retry_deadline_s,
            self.early))

