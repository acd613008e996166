"""Reading sources and running a feature view's row-wise transform (SQL or Python) over Arrow.

The same ``apply_transform`` runs on a whole backfill and on a stream micro-batch, so batch
and stream see identical input rows.
"""

from __future__ import annotations

import glob
import inspect
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from ..definitions import DType, FeatureView, FileSource, InterestVector, Source, StreamSource
from ..definitions.dtypes import from_arrow
from ..errors import DefinitionError, InvalidInputError

if TYPE_CHECKING:
    import duckdb  # imported where a query runs: reading a parquet file or a schema needs no DuckDB

__all__ = [
    "read_source",
    "prepare_rows",
    "apply_transform",
    "input_schema",
    "normalize_timestamp",
    "batch_source_of",
    "duckdb_connect",
    "source_files",
]

TS_TYPE = pa.timestamp("us", tz="UTC")
_local = threading.local()


def duckdb_connect() -> duckdb.DuckDBPyConnection:
    """A per-thread in-memory DuckDB connection pinned to UTC (connections are not thread-safe)."""
    con = getattr(_local, "con", None)
    if con is None:
        import duckdb

        con = duckdb.connect(":memory:")
        con.execute("SET TimeZone='UTC'")
        _local.con = con
    return con


def batch_source_of(source: Source) -> FileSource | None:
    """The file history of a source: itself for a FileSource, ``batch_source`` for a stream."""
    if isinstance(source, FileSource):
        return source
    if isinstance(source, StreamSource):
        return source.batch_source
    return None


def source_files(source: FileSource, repo_root: Path) -> list[str]:
    path = Path(source.path)
    pattern = str(path if path.is_absolute() else Path(repo_root) / path)
    files = (
        sorted(glob.glob(pattern, recursive=True))
        if glob.has_magic(pattern)
        else ([pattern] if Path(pattern).exists() else [])
    )
    files = [f for f in files if Path(f).is_file()]
    if not files:
        raise DefinitionError(
            f"no {source.file_format} file matches path {source.path!r} (resolved to {pattern})",
            location=source.location,
            obj=f"{source.kind} '{source.name}'",
        )
    return files


def normalize_timestamp(column: pa.ChunkedArray | pa.Array, field: str = "timestamp") -> pa.ChunkedArray | pa.Array:
    """Any timestamp-like column -> ``timestamp[us, UTC]``. Naive timestamps are taken as UTC;
    integers as epoch seconds/ms/us by magnitude; strings as ISO-8601."""
    t = column.type
    if t == TS_TYPE:
        return column
    try:
        if pa.types.is_timestamp(t):
            # safe=False: nanoseconds are truncated to microseconds rather than rejected
            if t.tz is None:
                return column.cast(pa.timestamp("us"), safe=False).cast(pa.int64()).cast(TS_TYPE)
            return column.cast(TS_TYPE, safe=False)
        if pa.types.is_date(t):
            return column.cast(pa.timestamp("us")).cast(TS_TYPE)
        if pa.types.is_integer(t):
            ints = column.cast(pa.int64())
            mx = pc.max(pc.abs(ints)).as_py() or 0
            scale = 1 if mx >= 10**14 else 1000 if mx >= 10**11 else 1_000_000
            return pc.multiply(ints, scale).cast(TS_TYPE)
        if pa.types.is_floating(t):
            return pc.multiply(column, 1_000_000.0).cast(pa.int64()).cast(TS_TYPE)
        if pa.types.is_string(t) or pa.types.is_large_string(t):
            import duckdb

            con = duckdb_connect()
            arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
            con.register("_ts_input", pa.table({"x": arr}))
            try:
                out = con.sql("SELECT CAST(x AS TIMESTAMPTZ) AS x FROM _ts_input").to_arrow_table()
            except duckdb.Error as e:
                raise InvalidInputError(f"column {field!r} is not a valid timestamp: {e}", field=field) from None
            finally:
                con.unregister("_ts_input")
            return out.column(0).cast(TS_TYPE)
    except pa.ArrowInvalid as e:
        raise InvalidInputError(f"column {field!r} is not a valid timestamp: {e}", field=field) from None
    raise InvalidInputError(f"column {field!r} has type {t}, not a timestamp", field=field)


def _set_column(table: pa.Table, name: str, col: Any) -> pa.Table:
    return table.set_column(table.schema.get_field_index(name), name, col)


def _cast_declared(table: pa.Table, source: Source) -> pa.Table:
    for f in source.schema or ():
        if f.name in table.column_names and f.name != source.timestamp_field:
            want = f.dtype.to_arrow()
            if table.schema.field(f.name).type != want:
                try:
                    table = _set_column(table, f.name, table.column(f.name).cast(want))
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                    raise DefinitionError(
                        f"column {f.name!r} cannot be read as {f.dtype!r}: {e}",
                        location=source.location,
                        obj=f"{source.kind} '{source.name}'",
                    ) from None
    return table


def read_source(
    source: FileSource | StreamSource,
    repo_root: Path,
    start_us: int | None = None,
    end_us: int | None = None,
    columns: list[str] | None = None,
    limit: int | None = None,
) -> pa.Table:
    """Rows of a file source (or a stream's ``batch_source``) with ``start_us <= ts < end_us``.

    The timestamp column comes back as ``timestamp[us, UTC]``; declared schema types are applied.
    """
    fs = batch_source_of(source)
    if fs is None:
        raise DefinitionError(
            "has no batch_source to read history from", location=source.location, obj=f"{source.kind} '{source.name}'"
        )
    files = source_files(fs, Path(repo_root))
    ts = fs.timestamp_field
    try:
        if fs.file_format == "parquet":
            import pyarrow.dataset as ds

            dataset = ds.dataset(files, format="parquet")
            if ts not in dataset.schema.names:
                raise DefinitionError(
                    f"timestamp_field {ts!r} is not a column of {fs.path!r}; columns: {dataset.schema.names}",
                    location=fs.location,
                    obj=f"{fs.kind} '{fs.name}'",
                )
            table = dataset.head(limit, columns=columns) if limit is not None else dataset.to_table(columns=columns)
        else:
            import pyarrow.csv as pcsv

            table = pa.concat_tables(
                [pcsv.read_csv(f) for f in (files[:1] if limit is not None else files)], promote_options="permissive"
            )
            if limit is not None:
                table = table.slice(0, limit)
            if columns is not None:
                table = table.select(columns)
    except (pa.ArrowInvalid, OSError) as e:
        raise DefinitionError(
            f"cannot read {fs.path!r}: {e}", location=fs.location, obj=f"{fs.kind} '{fs.name}'"
        ) from None
    return prepare_rows(source, table, start_us, end_us)


def prepare_rows(
    source: FileSource | StreamSource, table: pa.Table, start_us: int | None = None, end_us: int | None = None
) -> pa.Table:
    """Raw rows read from a source's files -> the timestamp as ``timestamp[us, UTC]``, declared types
    applied, only ``start_us <= ts < end_us`` (the Ray engine reads row groups itself, then this)."""
    fs = batch_source_of(source)
    assert fs is not None
    ts = fs.timestamp_field
    if ts not in table.column_names:
        raise DefinitionError(
            f"timestamp_field {ts!r} is not a column of {fs.path!r}; columns: {table.column_names}",
            location=fs.location,
            obj=f"{fs.kind} '{fs.name}'",
        )
    table = _set_column(table, ts, normalize_timestamp(table.column(ts), ts))
    table = _cast_declared(table, source)
    if start_us is not None or end_us is not None:
        tsi = table.column(ts).cast(pa.int64())
        mask = None
        if start_us is not None:
            mask = pc.greater_equal(tsi, start_us)
        if end_us is not None:
            m2 = pc.less(tsi, end_us)
            mask = m2 if mask is None else pc.and_(mask, m2)
        table = table.filter(mask)
    # Nested/dictionary chunks from parquet are fine; combine to keep downstream kernels fast.
    return table


def _wants_pandas(fn: Callable[..., Any]) -> bool:
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return False
    if not params:
        return False
    ann = params[0].annotation
    if ann is inspect.Parameter.empty:
        return False
    if isinstance(ann, str):
        return ann.replace("pandas.", "").replace("pd.", "") == "DataFrame"
    try:
        import pandas as pd

        return ann is pd.DataFrame
    except ImportError:  # pragma: no cover
        return False


def _to_arrow(result: Any, view: FeatureView) -> pa.Table:
    if isinstance(result, pa.Table):
        return result
    if isinstance(result, pa.RecordBatch):
        return pa.Table.from_batches([result])
    if isinstance(result, dict):
        return pa.table(result)
    try:
        import pandas as pd

        if isinstance(result, pd.DataFrame):
            return pa.Table.from_pandas(result, preserve_index=False)
    except ImportError:  # pragma: no cover
        pass
    view.fail(f"transform must return an Arrow table or a pandas DataFrame, got {type(result).__name__}")
    raise AssertionError  # unreachable


def apply_transform(view: FeatureView, table: pa.Table) -> pa.Table:
    """Run the view's transform (row-wise) over ``table``; the result keeps join keys and timestamp.

    SQL reads the input as table ``source`` (DuckDB dialect). A Python function gets a
    ``pa.Table``, or a DataFrame when its first parameter is annotated ``pd.DataFrame``.
    """
    tf = view.transform
    if tf is None:
        out = table
    elif isinstance(tf, str):
        import duckdb

        con = duckdb_connect()
        con.register("source", table)
        try:
            out = con.sql(tf).to_arrow_table()
        except duckdb.Error as e:
            view.fail(f"transform SQL failed: {str(e).splitlines()[0]}")
        finally:
            con.unregister("source")
    else:
        arg: Any = table
        if _wants_pandas(tf):
            arg = table.to_pandas()
        try:
            res = tf(arg)
        except Exception as e:  # the user's code: report it as a definition problem, not a traceback
            view.fail(f"transform {getattr(tf, '__name__', 'function')} raised {type(e).__name__}: {e}")
        out = _to_arrow(res, view)
    missing = [c for c in [*view.join_keys, view.timestamp_field] if c not in out.column_names]
    if missing:
        view.fail(
            f"the rows after the transform lack column {missing[0]!r} (join keys and the timestamp "
            f"field must be kept); columns: {out.column_names}"
        )
    ts = view.timestamp_field
    if out.schema.field(ts).type != TS_TYPE:
        out = _set_column(out, ts, normalize_timestamp(out.column(ts), ts))
    if isinstance(view, InterestVector):  # the stream and backfill join item vectors the same way
        from .interest import join_item_vectors

        out = join_item_vectors(view, out)
    return out


def _empty_from_schema(source: Source) -> pa.Table:
    fields = []
    for f in source.schema or ():
        t = TS_TYPE if f.name == source.timestamp_field else f.dtype.to_arrow()
        fields.append(pa.field(f.name, t))
    return pa.schema(fields).empty_table()


def _sample(source: Source, repo_root: Path, n: int = 100) -> pa.Table:
    """A few real rows when files exist, else an empty table of the declared schema."""
    try:
        if batch_source_of(source) is not None:
            return read_source(source, repo_root, limit=n)  # type: ignore[arg-type]
    except DefinitionError:
        if source.schema is None or isinstance(source, FileSource):
            raise
    if source.schema is None:
        raise DefinitionError(
            "has no schema and no files", location=source.location, obj=f"{source.kind} '{source.name}'"
        )
    return _empty_from_schema(source)


def input_schema(view: FeatureView, repo_root: Path) -> dict[str, DType]:
    """Columns and dtypes of the view's rows after its transform (used to validate definitions)."""
    sample = _sample(view.source, Path(repo_root))
    out = apply_transform(view, sample)
    result: dict[str, DType] = {}
    for f in out.schema:
        if pa.types.is_null(f.type):
            continue  # type unknown from an empty sample; validated again at backfill
        try:
            result[f.name] = from_arrow(f.type)
        except TypeError:
            view.fail(f"column {f.name!r} after the transform has unsupported type {f.type}")
    return result
