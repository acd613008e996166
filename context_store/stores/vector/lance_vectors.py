"""Durable vectors in LanceDB: ``emb__{view}`` (one row per entity) and ``kn__{name}`` (chunks).

This is the source of truth; the FAISS index is a cache loaded at startup from its snapshot
(``<table>.faiss-snapshot``, see ``snapshot.py``) plus the rows changed since, or rebuilt from it.
Rows carry ``updated_us`` (microseconds, monotonically assigned per write) so that a serving
process can pick up rows written by another process (a stream worker) without a full reload.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ..offline.lance import purge_dataset

__all__ = ["LanceVectors", "embedding_table", "knowledge_table", "sql_str", "vector_array"]

_RETRIES = 5
_log = logging.getLogger(__name__)
_OPTIMIZE_EVERY = 200  # writes per table between compactions (stream upserts make many small fragments)


def embedding_table(view: str) -> str:
    return f"emb__{view}"


def knowledge_table(name: str) -> str:
    return f"kn__{name}"


def vector_array(vectors: np.ndarray) -> pa.FixedSizeListArray:
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1])


def sql_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _in_list(column: str, values: Sequence[str]) -> str:
    return f"{column} IN ({', '.join(sql_str(v) for v in values)})"


class LanceVectors:
    """``LanceVectors(path)``; every method takes a table name and Arrow data, nothing Lance leaks."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self._conn: Any = None  # LanceDB, for writes only: its import costs seconds, reads need none of it
        self._lock = threading.RLock()
        self._tables: dict[str, Any] = {}
        self._last_us = 0
        self._writes: dict[str, int] = {}

    @property
    def _db(self) -> Any:
        if self._conn is None:
            with self._lock:
                if self._conn is None:
                    try:
                        import lancedb
                    except ImportError:
                        raise ImportError("durable vectors need LanceDB: pip install lancedb") from None
                    # interval 0: always read the latest version, so writes of other processes are visible.
                    self._conn = lancedb.connect(str(self.path), read_consistency_interval=timedelta(0))
        return self._conn

    def _dataset(self, name: str) -> Any | None:
        """The table's latest committed version, for reading (the Lance format library: a fraction of
        LanceDB's import time; opened per read, so other processes' writes are seen as with LanceDB)."""
        if not self.exists(name):
            return None
        import lance

        return lance.dataset(str(self._dir(name)))

    def _dir(self, name: str) -> Path:
        return self.path / f"{name}.lance"

    def exists(self, name: str) -> bool:
        return self._dir(name).is_dir()

    def _open(self, name: str) -> Any | None:
        tbl = self._tables.get(name)
        if tbl is None and self.exists(name):
            with self._lock:
                tbl = self._db.open_table(name)
                self._tables[name] = tbl
        return tbl

    def now_us(self) -> int:
        """A strictly increasing microsecond clock (two writes never share an ``updated_us``)."""
        with self._lock:
            self._last_us = max(self._last_us + 1, time.time_ns() // 1000)
            return self._last_us

    def schema(self, name: str) -> pa.Schema | None:
        ds = self._dataset(name)
        return None if ds is None else ds.schema

    def version(self, name: str) -> int | None:
        ds = self._dataset(name)
        return None if ds is None else int(ds.version)

    def count(self, name: str) -> int:
        ds = self._dataset(name)
        return 0 if ds is None else int(ds.count_rows())

    def read(self, name: str, columns: list[str] | None = None, where: str | None = None) -> pa.Table | None:
        ds = self._dataset(name)
        if ds is None:
            return None
        # A projected scan reads only the named columns (not the vectors) from disk.
        table: pa.Table = ds.to_table(columns=columns or None, filter=where)
        return table

    def read_since(self, name: str, updated_us: int, columns: list[str] | None = None) -> pa.Table | None:
        return self.read(name, columns, where=f"updated_us > {int(updated_us)}")

    def read_keys(
        self, name: str, key: str, values: Sequence[str], columns: list[str] | None = None
    ) -> pa.Table | None:
        """Rows whose ``key`` is one of ``values`` (read in chunks of 500 ids)."""
        parts = [
            self.read(name, columns, where=_in_list(key, list(values[i : i + 500]))) for i in range(0, len(values), 500)
        ]
        got = [p for p in parts if p is not None]
        if not got:
            return None
        return pa.concat_tables(got) if len(got) > 1 else got[0]

    def snapshot_path(self, name: str) -> Path:
        """Where the serving index of table ``name`` is snapshotted (beside the table)."""
        return self.path / f"{name}.faiss-snapshot"

    def upsert(self, name: str, data: pa.Table, key: str) -> None:
        """Insert or replace rows by ``key``; creates the table on first use."""
        if data.num_rows == 0:
            return
        with self._lock:
            tbl = self._open(name)
            if tbl is None:
                tbl = self._db.create_table(name, schema=data.schema, exist_ok=True)
                self._tables[name] = tbl
            data = self._conform(tbl, data)
            self._retry(
                lambda: tbl.merge_insert(key).when_matched_update_all().when_not_matched_insert_all().execute(data)
            )
            self._wrote(name, tbl)

    def create(self, name: str, schema: pa.Schema) -> None:
        """Create ``name`` empty (a built collection with no rows yet); a no-op when it exists."""
        with self._lock:
            if self._open(name) is None:
                self._tables[name] = self._db.create_table(name, schema=schema, exist_ok=True)

    def _wrote(self, name: str, tbl: Any) -> None:
        n = self._writes[name] = self._writes.get(name, 0) + 1
        if n % _OPTIMIZE_EVERY == 0:
            try:
                tbl.optimize()  # compaction only rewrites files; readers keep their snapshot
            except Exception as e:  # an optimisation, never a reason to fail a write
                _log.warning("compacting %s failed: %s", name, e)

    def replace_where(self, name: str, data: pa.Table, key: str, scope: str) -> None:
        """Atomically make the rows matching SQL ``scope`` equal ``data`` (one commit)."""
        with self._lock:
            tbl = self._open(name)
            if tbl is None:
                if data.num_rows:
                    self.upsert(name, data, key)
                return
            if data.num_rows == 0:
                self._retry(lambda: tbl.delete(scope))
                return
            data = self._conform(tbl, data)
            self._retry(
                lambda: (
                    tbl.merge_insert(key)
                    .when_matched_update_all()
                    .when_not_matched_insert_all()
                    .when_not_matched_by_source_delete(scope)
                    .execute(data)
                )
            )

    def delete(self, name: str, column: str, values: Sequence[str]) -> None:
        tbl = self._open(name)
        if tbl is None or not values:
            return
        with self._lock:
            for i in range(0, len(values), 1000):
                chunk = list(values[i : i + 1000])
                self._retry(lambda chunk=chunk: tbl.delete(_in_list(column, chunk)))

    def tables(self) -> list[str]:
        """Every table under this directory (collections of any kind, also ones no definition names)."""
        return sorted(p.name[: -len(".lance")] for p in self.path.glob("*.lance") if p.is_dir())

    def erase_where(self, name: str, where: str) -> int:
        """Delete the rows matching SQL ``where`` for good (right to erasure): their old versions
        and the table's snapshot go too (a snapshot holds vectors). Returns how many rows."""
        ds = self._dataset(name)
        if ds is None:
            return 0
        n = int(ds.count_rows(filter=where))
        if not n:
            return 0
        with self._lock:
            tbl = self._db.open_table(name)  # fresh: a cached handle may trail other processes' writes
            self._retry(lambda: tbl.delete(where))
            purge_dataset(tbl.to_lance())
            self._tables.pop(name, None)
        self.snapshot_path(name).unlink(missing_ok=True)
        return n

    def drop(self, name: str) -> None:
        with self._lock:
            self._tables.pop(name, None)
            self.snapshot_path(name).unlink(missing_ok=True)  # an index of the dropped rows
            if self.exists(name):
                try:
                    self._db.drop_table(name)
                except (ValueError, FileNotFoundError, OSError):
                    shutil.rmtree(self._dir(name), ignore_errors=True)

    def close(self) -> None:
        with self._lock:
            self._tables.clear()

    @staticmethod
    def _conform(tbl: Any, data: pa.Table) -> pa.Table:
        schema: pa.Schema = tbl.schema
        if data.schema.equals(schema, check_metadata=False):
            return data
        cols = []
        for f in schema:
            if f.name in data.column_names:
                col = data.column(f.name)
                cols.append(col if col.type == f.type else col.cast(f.type))
            else:
                cols.append(pa.nulls(data.num_rows, f.type))
        return pa.Table.from_arrays(cols, schema=schema)

    @staticmethod
    def _retry(fn: Any) -> Any:
        last: Exception | None = None
        for attempt in range(_RETRIES):
            try:
                return fn()
            except OSError as e:  # a concurrent commit from another process; Lance retries most itself
                last = e
                time.sleep(0.01 * (attempt + 1))
        assert last is not None
        raise last
