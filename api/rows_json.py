"""A page of QuestDB rows as the API's JSON text, built column by column.

The JSON pages of ``/api/v1/telemetry`` hold up to 10,000 rows of 13 columns. Building a
dict per row (:func:`api.questdb._records`) and letting orjson print the list cost 18-23 of
the ~30 ms the API added to a dense raw page (decision 0006, "Fifth pass"). :func:`rows_json`
prints the same text without a dict per row: each column becomes a list of JSON snippets at
once with C-level string operations (one join, replace and split per timestamp or text
column, one orjson call for a number column, one dict lookup per row for each run of
columns whose values repeat, such as site_id ... sensor_type, their constant columns
printed once), and the rows are joined: 14 instead of 18 ms for a dense raw page, 10
instead of 13 for 10,000 buckets (measured in-process on the dev3 data).

The output is byte for byte ``orjson.dumps`` of the dicts of
:func:`api.questdb._records` (what the API sent before; property tests in
tests/unit/test_api_rows_json.py). A column whose values do not fit a fast path (a null
timestamp, a string that needs JSON escapes, a value that is not a number) is printed
value by value with the same conversion and orjson, so the fast paths never change the
text, only the time. Written by hand: orjson, the fastest JSON library here, has no
option to print rows of tuples as objects.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Any

import orjson
from flask.json.provider import DefaultJSONProvider

from api.params import format_timestamp

__all__ = ["CONVERTERS", "TIMESTAMP_COLUMNS", "gc_paused", "json_bytes", "json_timestamp",
           "json_value", "rows_json"]

# TIMESTAMP columns of the API's tables (QuestDB's text, see json_timestamp), DOUBLE
# columns (non-finite values print as null), and text columns whose values are (nearly)
# unique per row: each of these is printed on its own. Every other column is a run of
# values that repeat (symbols, site names): looked up per distinct value.
TIMESTAMP_COLUMNS = frozenset({"timestamp", "ingested_at"})
_NUMBER_COLUMNS = frozenset({"value", "threshold"})
_UNIQUE_TEXT_COLUMNS = frozenset({"event_id", "alarm_id", "reason"})


def json_timestamp(value: datetime | str | None) -> str | None:
    """A TIMESTAMP as the API prints it (:func:`api.params.format_timestamp`), from a
    datetime or from QuestDB's text ``YYYY-MM-DD HH:MM:SS.ffffff`` (always six digits)."""
    if isinstance(value, str):
        if len(value) == 26 and value[19] == ".":  # milliseconds unless finer is needed
            return (value[:23] if value.endswith("000") else value).replace(" ", "T") + "Z"
        value = datetime.fromisoformat(value)
    return format_timestamp(value)


def _finite(value: float | None) -> float | None:
    return value if value is None or math.isfinite(value) else None


# Per-column conversion to JSON values; columns not listed pass through unchanged.
CONVERTERS: dict[str, Callable[[Any], Any]] = {
    **{column: json_timestamp for column in TIMESTAMP_COLUMNS},
    **{column: _finite for column in _NUMBER_COLUMNS},
}

_DEFAULT = DefaultJSONProvider.default  # what api.json_provider.OrjsonProvider falls back to


def json_bytes(obj: Any) -> bytes:
    """``obj`` as JSON, as the API's responses print it
    (:class:`api.json_provider.OrjsonProvider`)."""
    return orjson.dumps(obj, default=_DEFAULT)


def json_value(column: str, value: Any) -> str:
    """One value of ``column`` as JSON text, exactly as in the dict of the row."""
    convert = CONVERTERS.get(column)
    return json_bytes(convert(value) if convert else value).decode()


# What a JSON string escapes besides the quote: control characters and the backslash. In
# UTF-8 they are single bytes that never occur inside a multi-byte character.
_ESCAPED_BYTES = bytes(range(0x20)) + b"\\"


def _joined(values: Sequence[Any]) -> str | None:
    """The values joined by ``"``, or None unless every one is a str that orjson prints
    as itself in quotes (no quote, backslash or control character in it). Three C-level
    scans of the column's text, no per-value Python."""
    try:
        text = '"'.join(values)
    except TypeError:  # a null or another type
        return None
    if text.count('"') != len(values) - 1:
        return None
    try:
        data = text.encode()
    except UnicodeEncodeError:  # a lone surrogate: orjson refuses it, one by one
        return None
    return text if len(data.translate(None, _ESCAPED_BYTES)) == len(data) else None


def _one_by_one(column: str, values: Sequence[Any], prefix: str) -> list[str]:
    return [prefix + json_value(column, v) for v in values]


_Encoder = Callable[[str, Sequence[Any], str], list[str]]


def _nulls_apart(encode: _Encoder, column: str, values: Sequence[Any],
                 prefix: str) -> list[str]:
    """A column that did not fit ``encode``'s fast path: if it holds nulls (a column of
    nulls, or a few), they print as ``null`` and the other values go through ``encode``;
    otherwise value by value."""
    nulls = values.count(None)  # type: ignore[attr-defined]
    if nulls == len(values):
        return [prefix + "null"] * nulls
    if not nulls:
        return _one_by_one(column, values, prefix)
    rest = iter(encode(column, [v for v in values if v is not None], prefix))
    null = prefix + "null"
    return [null if v is None else next(rest) for v in values]


def _timestamps(column: str, values: Sequence[Any], prefix: str) -> list[str]:
    """``prefix`` + the JSON string of each timestamp (:func:`json_timestamp`). QuestDB's
    text (``2026-11-24 00:00:01.005000``, 26 characters) is converted for the whole
    column at once: the space becomes ``T``, ``000`` at the end is cut (the milliseconds
    suffice), ``Z`` is appended."""
    text = _joined(values)
    if text is None:
        return _nulls_apart(_timestamps, column, values, prefix)
    # 26 characters each: the n-1 separators at every 27th place and nowhere else.
    n = len(values)
    if len(text) != 27 * n - 1 or set(text[26::27]) - {'"'} or set(text[19::27]) != {"."}:
        return _one_by_one(column, values, prefix)
    text = (text + '"').replace(" ", "T").replace('000"', '"')
    text = text.replace('"', f'Z"\n{prefix}"')[:-len(prefix) - 2]
    return f'{prefix}"{text}'.split("\n")


def _texts(column: str, values: Sequence[Any], prefix: str) -> list[str]:
    """``prefix`` + the JSON string of each value (the whole column at once when no value
    needs an escape)."""
    text = _joined(values)
    if text is None:
        return _nulls_apart(_texts, column, values, prefix)
    text = text.replace('"', f'"\n{prefix}"')
    return f'{prefix}"{text}"'.split("\n")


_NUMBER_TYPES = frozenset({float, int, type(None)})


def _numbers(column: str, values: Sequence[Any], prefix: str) -> list[str]:
    """``prefix`` + each number as orjson prints it (NaN and infinities as null, like the
    dicts' None): one orjson call for the column, split at its commas."""
    if not set(map(type, values)) <= _NUMBER_TYPES:  # bool, str...: one by one
        return _one_by_one(column, values, prefix)
    text = orjson.dumps(values if isinstance(values, list) else list(values)).decode()
    text = text[1:-1].replace(",", "\n" + prefix)
    return (prefix + text).split("\n")


def _constant(values: Sequence[Any]) -> bool:
    """Every value the same text, or every value null (a C-level count; numbers never
    count as constant: 1, 1.0 and True are equal but print differently)."""
    first = values[0]
    return (first is None or type(first) is str) and \
        values.count(first) == len(values)  # type: ignore[attr-defined]


def _repeating(columns: Sequence[str], values: Sequence[Sequence[Any]],
               lead: str) -> list[str]:
    """``lead`` + the ``"name":value`` pairs of a run of columns. The columns whose value
    is the same in every row are printed once; the combinations of the others are
    printed once each and looked up per row."""
    n = len(values[0])
    varying = [i for i, column in enumerate(values) if not _constant(column)]
    if not varying:
        return [lead + ",".join(f"{_key(name)}{json_value(name, column[0])}"
                                for name, column in zip(columns, values, strict=True))] * n
    if len(varying) == 1:
        keys: Sequence[Any] = values[varying[0]]
    else:
        keys = list(zip(*(values[i] for i in varying), strict=True))

    def snippet(key: Any) -> str:
        varied = dict(zip(varying, (key,) if len(varying) == 1 else key, strict=True))
        return lead + ",".join(
            f"{_key(name)}{json_value(name, varied[i] if i in varied else values[i][0])}"
            for i, name in enumerate(columns))

    try:
        distinct = set(keys)
    except TypeError:  # an unhashable value: one row at a time
        return [snippet(key) for key in keys]
    # Only text and nulls are looked up: equal numbers print differently (1, 1.0, True;
    # 0.0 and -0.0) and would share one entry.
    if not all(type(v) is str or v is None
               for key in distinct for v in (key if len(varying) > 1 else (key,))):
        return [snippet(key) for key in keys]
    cache = {key: snippet(key) for key in distinct}
    return list(map(cache.__getitem__, keys))


@functools.lru_cache(maxsize=64)
def _key(column: str) -> str:
    """``"column":``"""
    return orjson.dumps(column).decode() + ":"


_Segment = tuple[str, tuple[int, ...]]


@functools.lru_cache(maxsize=16)
def _plan(columns: tuple[str, ...]) -> tuple[_Segment, ...]:
    """The columns in segments printed together: ``(kind, column indexes)``; kind
    ``timestamp``, ``number`` or ``text`` (one column), ``repeating`` (a run)."""
    segments: list[tuple[str, list[int]]] = []
    for i, column in enumerate(columns):
        kind = ("timestamp" if column in TIMESTAMP_COLUMNS else
                "number" if column in _NUMBER_COLUMNS else
                "text" if column in _UNIQUE_TEXT_COLUMNS else "repeating")
        if kind == "repeating" and segments and segments[-1][0] == "repeating":
            segments[-1][1].append(i)
        else:
            segments.append((kind, [i]))
    return tuple((kind, tuple(indexes)) for kind, indexes in segments)


_ROW_SEPARATOR = "},{"


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """The cyclic garbage collector paused for a block that builds large lists and tuples
    without reference cycles (a page of rows, its columns and snippets).

    Every automatic collection while such a block runs walks all of its ~10,000-item
    containers again: measured, a page took 32 instead of 15 ms, most of it in the
    collector. The objects are freed by reference counting as usual; only collections
    wait (process-wide, so another thread's cyclic garbage waits for the next one, never
    longer). A collector that was off stays off.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def rows_json(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> bytes:
    """``rows`` (tuples in ``columns`` order, as QuestDB returns them) as a JSON array of
    objects: exactly ``orjson.dumps([{column: converted value, ...}, ...])`` of
    :func:`api.questdb._records`, keys in column order, values converted by
    :data:`CONVERTERS`."""
    if not rows:
        return b"[]"
    with gc_paused():
        return _rows_json(columns, rows)


def _rows_json(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> bytes:
    by_column = list(zip(*rows, strict=True))
    if len(by_column) != len(columns):
        raise ValueError(f"rows of {len(by_column)} columns for {len(columns)} names")
    pieces: list[list[str]] = []
    for n, (kind, indexes) in enumerate(_plan(tuple(columns))):
        lead = "" if n == 0 else ","  # the row's "{" is in the separator
        if kind == "repeating":
            pieces.append(_repeating([columns[i] for i in indexes],
                                     [by_column[i] for i in indexes], lead))
            continue
        i = indexes[0]
        encode = {"timestamp": _timestamps, "number": _numbers, "text": _texts}[kind]
        pieces.append(encode(columns[i], by_column[i], lead + _key(columns[i])))
    separators = itertools.repeat(_ROW_SEPARATOR)
    text = "".join(itertools.chain.from_iterable(zip(*pieces, separators, strict=False)))
    return ("[{" + text[:-len(_ROW_SEPARATOR)] + "}]").encode()
