"""LanceDB (Lance tables) as the offline store: one directory of tables per workspace.

Lance commits are atomic and optimistic, so a stream worker appending and a server reading
(or a second worker appending) in other processes are safe; readers always see the latest
committed version (``read_consistency_interval=0``).
"""

from __future__ import annotations

import os
import shutil
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from ...errors import InvalidInputError, NotFoundError

__all__ = ["LanceOfflineStore", "purge_dataset"]

_TS = pa.timestamp("us", tz="UTC")
_RETRIES = 5
_BATCH_ROWS = 1 << 16


def _import_lancedb() -> Any:
    # Lance logs "No existing dataset ... will be created" at WARN on every new table.
    os.environ.setdefault("LANCE_LOG", "error")
    try:
        import lancedb
    except ImportError as e:  # pragma: no cover - lancedb is a core dependency
        raise ImportError("the offline store needs LanceDB: pip install lancedb pylance") from e
    return lancedb


def _sql_ts(us: int) -> str:
    dt = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)
    return f"TIMESTAMP '{dt.strftime('%Y-%m-%d %H:%M:%S.%f')}'"


def _range_sql(ts_column: str, start_us: int | None, end_us: int | None) -> str:
    parts = []
    if start_us is not None:
        parts.append(f"`{ts_column}` >= {_sql_ts(start_us)}")
    if end_us is not None:
        parts.append(f"`{ts_column}` < {_sql_ts(end_us)}")
    return " AND ".join(parts) or "true"


def _range_expr(ts_column: str, start_us: int | None, end_us: int | None) -> pc.Expression | None:
    expr = None
    if start_us is not None:
        expr = pc.field(ts_column) >= pa.scalar(start_us, _TS)
    if end_us is not None:
        e2 = pc.field(ts_column) < pa.scalar(end_us, _TS)
        expr = e2 if expr is None else (expr & e2)
    return expr


def purge_dataset(ds: Any) -> None:
    """Rewrite every fragment with deleted rows, then remove versions older than now: deleted
    rows no longer exist in any file (Lance deletes only mark rows; old versions keep them)."""
    ds.optimize.compact_files(materialize_deletions=True, materialize_deletions_threshold=0.0)
    ds.cleanup_old_versions(older_than=timedelta(0))


class LanceOfflineStore:
    """``LanceOfflineStore(path)``: tables ``fv__{view}`` and ``src__{source}`` under ``path``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self._conn: Any = None  # connected on first table access: ``import lancedb`` costs seconds
        self._lock = threading.RLock()
        self._tables: dict[str, Any] = {}

    def connect(self) -> None:
        """Connect now (imports LanceDB): for processes that will write, so their first write is not slow."""
        _ = self._db

    @property
    def _db(self) -> Any:
        if self._conn is None:
            with self._lock:
                if self._conn is None:
                    lancedb = _import_lancedb()
                    self._conn = lancedb.connect(str(self.path), read_consistency_interval=timedelta(0))
        return self._conn

    # -- helpers -----------------------------------------------------------------------
    def _dir(self, name: str) -> Path:
        return self.path / f"{name}.lance"

    def exists(self, table_name: str) -> bool:
        # A table another process is creating has its directory before its first manifest.
        versions = self._dir(table_name) / "_versions"
        try:
            return any(versions.iterdir())
        except (FileNotFoundError, NotADirectoryError):
            return False

    def change_token(self, table_name: str) -> str | None:
        """Changes with every commit to the table (its manifests), read from the file system only."""
        versions = self._dir(table_name) / "_versions"
        try:
            names = sorted(p.name for p in versions.iterdir() if p.name.endswith(".manifest"))
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not names:
            return None
        # Newest first (V2 names count down) or last (V1 count up): stat both ends, so a table
        # dropped and recreated at the same version number still gets a new token.
        parts = [str(len(names))]
        for n in {names[0], names[-1]}:
            try:
                st = (versions / n).stat()
            except FileNotFoundError:
                return None  # cleaned up meanwhile: unknown
            parts.append(f"{n}:{st.st_mtime_ns}:{st.st_size}:{st.st_ino}")
        return "|".join(sorted(parts))

    def _open(self, name: str) -> Any:
        tbl = self._tables.get(name)
        if tbl is None:
            if not self.exists(name):
                raise NotFoundError(f"offline table {name!r} does not exist (run a backfill first)", field="table")
            with self._lock:
                try:
                    tbl = self._db.open_table(name)
                except (ValueError, FileNotFoundError) as e:  # dropped meanwhile, or not yet committed
                    raise NotFoundError(f"offline table {name!r} cannot be opened: {e}", field="table") from None
                self._tables[name] = tbl
        return tbl

    def _conform(self, tbl: Any, data: pa.Table) -> pa.Table:
        """Order/cast ``data`` to the table's schema; missing nullable columns become nulls."""
        schema: pa.Schema = tbl.schema
        if data.schema.equals(schema, check_metadata=False):
            return data
        extra = [c for c in data.column_names if schema.get_field_index(c) < 0]
        if extra:
            raise InvalidInputError(
                f"column {extra[0]!r} is not in offline table {tbl.name!r} (columns: {schema.names}); "
                "re-run a full backfill after changing a view's columns",
                field=extra[0],
            )
        cols = []
        for f in schema:
            if f.name in data.column_names:
                col = data.column(f.name)
                try:
                    cols.append(col if col.type == f.type else col.cast(f.type))
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                    raise InvalidInputError(f"column {f.name!r}: {e}", field=f.name) from None
            else:
                cols.append(pa.nulls(data.num_rows, f.type))
        return pa.Table.from_arrays(cols, schema=schema)

    def _create_empty(self, name: str, schema: pa.Schema) -> Any:
        # exist_ok: two processes creating the same table at once both end up with it.
        with self._lock:
            tbl = self._db.create_table(name, schema=schema, exist_ok=True)
            self._tables[name] = tbl
            return tbl

    @staticmethod
    def _retry(fn: Any) -> Any:
        last: Exception | None = None
        for _ in range(_RETRIES):
            try:
                return fn()
            except OSError as e:  # commit conflicts surface as IO errors; Lance retries most itself
                last = e
        assert last is not None
        raise last

    # -- writes ------------------------------------------------------------------------
    def append(self, table_name: str, data: pa.Table) -> int:
        if data.num_rows == 0 and self.exists(table_name):
            return 0
        tbl = self._open(table_name) if self.exists(table_name) else self._create_empty(table_name, data.schema)
        if data.num_rows == 0:
            return 0
        conformed = self._conform(tbl, data)
        if conformed.num_columns and conformed.column(0).num_chunks > 1:
            # Stream flushes are many one-event tables: Lance writes a contiguous batch ~4x faster.
            conformed = conformed.combine_chunks()
        self._retry(lambda: tbl.add(conformed))
        return data.num_rows

    def overwrite_range(
        self, table_name: str, data: pa.Table, ts_column: str, start_us: int | None, end_us: int | None
    ) -> int:
        if data.num_rows:
            ts = data.column(ts_column).cast(_TS).cast(pa.int64())
            lo, hi = pc.min(ts).as_py(), pc.max(ts).as_py()
            if (start_us is not None and lo < start_us) or (end_us is not None and hi >= end_us):
                raise InvalidInputError(
                    f"rows outside [{start_us}, {end_us}) given to overwrite_range", field=ts_column
                )
        if start_us is None and end_us is None:
            # Whole table: one atomic overwrite (also adopts a changed schema).
            with self._lock:
                mode = "overwrite" if self.exists(table_name) else "create"
                try:
                    self._tables[table_name] = self._db.create_table(table_name, data, mode=mode)
                except ValueError:  # created meanwhile by another process
                    self._tables[table_name] = self._db.create_table(table_name, data, mode="overwrite")
            return data.num_rows
        if not self.exists(table_name):
            return self.append(table_name, data)
        tbl = self._open(table_name)
        conformed = self._conform(tbl, data)
        # Not one commit: a reader between the two may briefly miss this range; rerunning repairs it.
        self._retry(lambda: tbl.delete(_range_sql(ts_column, start_us, end_us)))
        if conformed.num_rows:
            self._retry(lambda: tbl.add(conformed))
        return data.num_rows

    # -- undo (a failed embedded push takes back its appends) ----------------------------
    def version(self, table_name: str) -> int | None:
        """The table's latest committed version (None: no such table)."""
        if not self.exists(table_name):
            return None
        return int(self._open(table_name).version)

    def delete_where(self, table_name: str, predicate: str) -> int:
        """Delete the rows matching the SQL ``predicate``; returns how many (0: no such table)."""
        if not self.exists(table_name):
            return 0
        tbl = self._open(table_name)
        before = int(tbl.count_rows())
        self._retry(lambda: tbl.delete(predicate))
        return before - int(tbl.count_rows())

    def purge(self, table_name: str) -> None:
        if self.exists(table_name):
            purge_dataset(self._open(table_name).to_lance())

    def revert(self, table_name: str, to_version: int, latest: int) -> bool:
        """Make ``to_version``'s data current again (a new version), only if the table is still at
        ``latest`` (no other writer committed since): False otherwise, nothing changed."""
        if self.version(table_name) != latest:
            return False
        self._open(table_name).restore(to_version)
        return True

    # -- reads -------------------------------------------------------------------------
    def read(
        self,
        table_name: str,
        columns: list[str] | None = None,
        ts_column: str | None = None,
        start_us: int | None = None,
        end_us: int | None = None,
        filter: Any = None,
    ) -> pa.Table:
        tbl = self._open(table_name)
        ds = tbl.to_lance()
        if columns is not None:
            missing = [c for c in columns if ds.schema.get_field_index(c) < 0]
            if missing:
                raise InvalidInputError(f"offline table {table_name!r} has no column {missing[0]!r}", field=missing[0])
        flt: Any = None
        if ts_column is not None and (start_us is not None or end_us is not None):
            if isinstance(filter, str):
                flt = f"({_range_sql(ts_column, start_us, end_us)}) AND ({filter})"
            else:
                flt = _range_expr(ts_column, start_us, end_us)
                if filter is not None:
                    flt = flt & filter
        else:
            flt = filter
        # 64k-row batches: far fewer chunks than Lance's default 8k (cheaper to scan and to combine)
        return ds.to_table(columns=columns, filter=flt, batch_size=_BATCH_ROWS)

    def schema(self, table_name: str) -> pa.Schema:
        return self._open(table_name).schema

    def count(self, table_name: str) -> int:
        return int(self._open(table_name).count_rows())

    def tables(self) -> list[str]:
        return sorted(n for n in (p.name[: -len(".lance")] for p in self.path.glob("*.lance")) if self.exists(n))

    def drop(self, table_name: str) -> None:
        with self._lock:
            self._tables.pop(table_name, None)
            if self.exists(table_name):
                try:
                    self._db.drop_table(table_name)
                except (ValueError, FileNotFoundError, OSError):
                    shutil.rmtree(self._dir(table_name), ignore_errors=True)

    def compact(self, table_name: str) -> None:
        if self.exists(table_name):
            self._open(table_name).to_lance().optimize.compact_files()

    def close(self) -> None:
        with self._lock:
            self._tables.clear()

    def __repr__(self) -> str:
        return f"LanceOfflineStore({str(self.path)!r})"
