"""Validate pushed records against a ``StreamSource`` schema and build one typed Arrow table.

All-or-nothing: the first bad record raises ``InvalidInputError`` naming its index and field
(``field="records[3].amount"``); nothing of the call is applied. Timestamps accept
``datetime`` (naive = UTC), ISO-8601 strings (``Z`` or an offset; naive = UTC) and epoch
numbers, whose unit is inferred from the magnitude (s < 1e11 <= ms < 1e14 <= us < 1e17 <= ns).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from ...definitions import DType, Embedding, StreamSource
from ...definitions.dtypes import Array
from ...definitions.windows import format_duration
from ...errors import InvalidInputError
from ...limits import PUSH_RECORDS, TIME_MAX, TIME_MIN
from ...vocab.time import MAX_US, MIN_US, datetime_to_us, epoch_number_to_us, parse_iso, us_to_datetime

__all__ = ["validate_records", "parse_timestamp_us", "required_fields", "event_time_bounds", "MAX_RECORDS"]

MAX_RECORDS = PUSH_RECORDS  # one call; larger loads belong in the batch source
TS_TYPE = pa.timestamp("us", tz="UTC")


def _bad(index: int, name: str, reason: str) -> InvalidInputError:
    return InvalidInputError(f"record {index}: field '{name}': {reason}", field=f"records[{index}].{name}")


def parse_timestamp_us(value: Any) -> int:
    """A timestamp as int64 microseconds since the epoch (UTC); ValueError when unparseable."""
    if isinstance(value, datetime):
        return datetime_to_us(value)
    if isinstance(value, bool):
        raise ValueError("a bool is not a timestamp")
    if isinstance(value, (int, float)):
        return epoch_number_to_us(value)
    if isinstance(value, str):
        try:
            return datetime_to_us(parse_iso(value))
        except ValueError:
            pass
        try:
            return epoch_number_to_us(float(value.strip()))
        except ValueError:
            raise ValueError(f"{value!r} is not an ISO-8601 timestamp or epoch number") from None
    if hasattr(value, "to_pydatetime"):  # pandas.Timestamp
        return parse_timestamp_us(value.to_pydatetime())
    raise ValueError(f"expected a timestamp (datetime, ISO string or epoch number), got {type(value).__name__}")


def required_fields(source: StreamSource, join_keys: Iterable[str]) -> set[str]:
    """The timestamp and every join key of a view on the source must be present and non-null."""
    return {source.timestamp_field, *join_keys}


def _coerce(dtype: DType, value: Any) -> Any:
    """The value as stored, or raise ValueError with a reason."""
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value) and dtype.name != "float64":
        return None  # pandas' missing value in object/int columns
    if dtype.name == "timestamp":
        return parse_timestamp_us(value)
    if isinstance(dtype, Embedding):
        if not dtype.accepts(value):
            raise ValueError(f"expected a list of {dtype.dim} numbers")
        return [float(v) for v in value]
    if isinstance(dtype, Array):
        if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
            value = value.tolist()
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"expected a list, got {type(value).__name__}")
        return [_coerce(dtype.element, v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()  # numpy scalar
    if not dtype.accepts(value):
        raise ValueError(f"expected {dtype.name}, got {type(value).__name__} {value!r:.60}")
    if dtype.name == "float64":
        return float(value)
    return value


def _arrow_type(dtype: DType) -> pa.DataType:
    return pa.int64() if dtype.name == "timestamp" else dtype.to_arrow()


def _from_rows(source: StreamSource, rows: Sequence[Any], required: set[str]) -> pa.Table:
    fields = source.schema or ()
    names = {f.name for f in fields}
    cols: dict[str, list[Any]] = {f.name: [] for f in fields}
    for i, row in enumerate(rows):
        if isinstance(row, Mapping) and "record" in row and len(row) == 1 and isinstance(row["record"], Mapping):
            row = row["record"]  # Tecton ingest shape: {"record": {...}}
        if not isinstance(row, Mapping):
            raise InvalidInputError(
                f"record {i}: expected an object of field values, got {type(row).__name__}", field=f"records[{i}]"
            )
        for key in row:
            if key not in names:
                raise _bad(i, str(key), f"not in the schema of source '{source.name}' ({', '.join(sorted(names))})")
        for f in fields:
            value = row.get(f.name)
            if value is None and f.name in required:
                raise _bad(i, f.name, "is required" + (" (missing)" if f.name not in row else " (null)"))
            try:
                cols[f.name].append(_coerce(f.dtype, value))
            except (ValueError, TypeError, OverflowError) as e:
                raise _bad(i, f.name, str(e)) from None
    arrays = []
    for f in fields:
        try:
            arr = pa.array(cols[f.name], type=_arrow_type(f.dtype))
        except (pa.ArrowInvalid, OverflowError) as e:
            raise InvalidInputError(f"field '{f.name}': {e}", field=f.name) from None
        if f.dtype.name == "timestamp":
            arr = arr.cast(TS_TYPE)
        arrays.append(arr)
    return pa.Table.from_arrays(arrays, names=[f.name for f in fields])


def _from_arrow(source: StreamSource, table: pa.Table, required: set[str]) -> pa.Table:
    fields = source.schema or ()
    names = {f.name for f in fields}
    for name in table.column_names:
        if name not in names:
            raise _bad(0, name, f"not in the schema of source '{source.name}' ({', '.join(sorted(names))})")
    arrays = []
    for f in fields:
        if f.name not in table.column_names:
            if f.name in required:
                raise _bad(0, f.name, "is required (missing column)")
            arrays.append(pa.nulls(table.num_rows, type=f.dtype.to_arrow()))
            continue
        col = table.column(f.name).combine_chunks()
        if f.name in required and col.null_count:
            raise _bad(int(pc.index(pc.is_null(col), True).as_py()), f.name, "is required (null)")
        arr = _cast_column(f.name, f.dtype, col)
        arrays.append(arr)
    return pa.Table.from_arrays(arrays, names=[f.name for f in fields])


def _cast_column(name: str, dtype: DType, col: pa.Array) -> pa.Array:
    """Vectorised cast when the Arrow type is compatible, else per-value (finds the bad index)."""
    t = col.type
    target = dtype.to_arrow()
    fast = (
        (dtype.name == "timestamp" and pa.types.is_timestamp(t))
        or (dtype.name == "int64" and pa.types.is_integer(t))
        or (dtype.name == "float64" and (pa.types.is_floating(t) or pa.types.is_integer(t)))
        or (dtype.name == "string" and (pa.types.is_string(t) or pa.types.is_large_string(t)))
        or (dtype.name == "bool" and pa.types.is_boolean(t))
        or t == target
    )
    if fast:
        if dtype.name == "timestamp" and t.tz is None:
            col = pc.assume_timezone(col.cast(pa.timestamp(t.unit)), "UTC")
        try:
            return col.cast(target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
    out: list[Any] = []
    for i, v in enumerate(col.to_pylist()):
        try:
            out.append(_coerce(dtype, v))
        except (ValueError, TypeError, OverflowError) as e:
            raise _bad(i, name, str(e)) from None
    arr = pa.array(out, type=_arrow_type(dtype))
    return arr.cast(TS_TYPE) if dtype.name == "timestamp" else arr


def validate_records(source: StreamSource, rows: Any, required: set[str] | None = None) -> pa.Table:
    """``rows`` (list of dicts, Arrow table or pandas DataFrame) as an Arrow table in schema order.

    Raises InvalidInputError on the first bad record; nothing is returned partially.
    """
    required = required if required is not None else {source.timestamp_field}
    if isinstance(rows, pa.RecordBatch):
        rows = pa.Table.from_batches([rows])
    if not isinstance(rows, pa.Table) and type(rows).__name__ == "DataFrame" and hasattr(rows, "to_dict"):
        try:
            rows = pa.Table.from_pandas(rows, preserve_index=False)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):
            rows = rows.to_dict(orient="records")  # mixed object columns: check value by value
    if isinstance(rows, pa.Table):
        if rows.num_rows > MAX_RECORDS:
            raise InvalidInputError(f"at most {MAX_RECORDS} records per push, got {rows.num_rows}", field="records")
        return _in_time_range(_from_arrow(source, rows, required), source)
    if isinstance(rows, Mapping) or isinstance(rows, (str, bytes)) or not isinstance(rows, Iterable):
        raise InvalidInputError(
            "records must be a list of objects, an Arrow table or a pandas DataFrame", field="records"
        )
    rows = list(rows)
    if len(rows) > MAX_RECORDS:
        raise InvalidInputError(f"at most {MAX_RECORDS} records per push, got {len(rows)}", field="records")
    return _in_time_range(_from_rows(source, rows, required), source)


def event_time_bounds(source: StreamSource, now_us: int | None = None) -> tuple[int, int]:
    """``[lo, hi]`` (µs) an event time of ``source`` must lie in: ``min_event_time`` (else the
    global floor) .. now + ``max_future_skew``."""
    now = time.time_ns() // 1000 if now_us is None else now_us
    lo = MIN_US if source.min_event_time is None else max(MIN_US, datetime_to_us(source.min_event_time))
    return lo, min(MAX_US - 1, now + source.max_future_skew // _US)


_US = timedelta(microseconds=1)


def _in_time_range(table: pa.Table, source: StreamSource) -> pa.Table:
    """Every timestamp lies in the supported range (``limits.TIME_MIN``..``TIME_MAX``): a far-off time
    would overflow a datetime when read back; the event time also within ``event_time_bounds``
    (a far-future event would move its partition's watermark past every real event). One
    vectorised pass per timestamp column."""
    for name, col in zip(table.column_names, table.columns, strict=True):
        if col.type != TS_TYPE or not len(col):
            continue
        us = col.cast(pa.int64())
        lo_hi = pc.min_max(us).as_py()
        if lo_hi["min"] is None:
            continue
        if lo_hi["min"] < MIN_US or lo_hi["max"] >= MAX_US:
            bad = pc.or_(pc.less(us, MIN_US), pc.greater_equal(us, MAX_US))
            i = int(pc.index(bad, True).as_py())
            raise _bad(i, name, f"outside the supported time range {TIME_MIN:%Y-%m-%d} .. {TIME_MAX:%Y-%m-%d} (UTC)")
        if name != source.timestamp_field:
            continue
        lo, hi = event_time_bounds(source)
        if lo_hi["max"] > hi:
            i = int(pc.index(pc.greater(us, hi), True).as_py())
            raise _bad(
                i,
                name,
                f"{_iso(us[i].as_py())} is later than now + max_future_skew "
                f"({format_duration(source.max_future_skew)}) of source '{source.name}': is the producer's "
                "clock or time zone wrong?",
            )
        if lo_hi["min"] < lo:
            i = int(pc.index(pc.less(us, lo), True).as_py())
            raise _bad(
                i,
                name,
                f"{_iso(us[i].as_py())} is before min_event_time {_iso(lo)} of source '{source.name}' "
                "(an unset time? history belongs in the batch source)",
            )
    return table


def _iso(us: int) -> str:
    return us_to_datetime(int(us)).isoformat().replace("+00:00", "Z")
