"""``VectorCollection``: one LanceDB table and its in-memory FAISS index, kept in sync.

Writes go to Lance first (durable), then to the index (visible), so an accepted change is never
only in memory. Rows written by another process (a stream worker, another server) are picked
up by ``refresh``: a cheap version check, then a read of rows newer than the newest one seen
(or a full reload when rows were deleted elsewhere).

Table layout: ``<key>`` string, ``vector`` fixed_size_list<float32>[dim], ``row_hash`` string
(identifies the row's content, so unchanged rows are skipped), ``updated_us`` int64, and one
``a__<name>`` column per attribute (prefixed so they never clash with ours). The schema
metadata records the embedder: vectors of another model are never mixed in.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from .faiss_index import FaissIndex
from .lance_vectors import LanceVectors, vector_array

__all__ = ["VectorCollection", "ATTR_PREFIX"]

ATTR_PREFIX = "a__"
_LOOKBACK_US = 5_000_000  # re-read this much before the newest row seen (clock skew between writers)


def _vectors_of(col: pa.ChunkedArray | pa.Array, dim: int) -> np.ndarray:
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if len(arr) == 0:
        return np.zeros((0, dim), dtype=np.float32)
    return arr.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(len(arr), -1)


class VectorCollection:
    def __init__(
        self,
        lance: LanceVectors,
        table: str,
        *,
        dim: int,
        key: str,
        attributes: Sequence[str],
        embedder: str,
        kind: str = "auto",
        flat_threshold: int = 10_000,
        refresh_interval: float = 1.0,
    ) -> None:
        self.lance = lance
        self.table = table
        self.dim = dim
        self.key = key
        self.attributes = list(attributes)
        self.embedder = embedder
        self.kind = kind
        self.flat_threshold = flat_threshold
        self.refresh_interval = refresh_interval
        self._lock = threading.RLock()
        self._reset()

    def _reset(self) -> None:
        self.index = FaissIndex(self.dim, self.kind, flat_threshold=self.flat_threshold)
        self.hashes: dict[str, str] = {}  # id -> row hash
        self.version: int | None = None
        self.max_updated = 0
        self.checked_at = time.monotonic()

    # -- loading -------------------------------------------------------------------------
    def open(self) -> VectorCollection:
        """Load from Lance; a table of another dim/embedder/attribute set is dropped (recompute)."""
        with self._lock:
            schema = self.lance.schema(self.table)
            if schema is not None and not self._schema_ok(schema):
                self.lance.drop(self.table)
            self._reset()
            self.version = self.lance.version(self.table)
            data = self.lance.read(self.table)
            if data is not None and data.num_rows:
                self._apply(data)
        return self

    @property
    def exists(self) -> bool:
        """Whether the durable table exists (False: never written, e.g. not backfilled yet)."""
        return self.version is not None

    def _schema_ok(self, schema: pa.Schema) -> bool:
        vt = schema.field("vector").type if "vector" in schema.names else None
        if not isinstance(vt, pa.FixedSizeListType) or vt.list_size != self.dim or self.key not in schema.names:
            return False
        stored = (schema.metadata or {}).get(b"embedder")
        if stored is not None and stored.decode() != self.embedder:
            return False  # same dim, other model: the old vectors are not comparable
        have = {n[len(ATTR_PREFIX):] for n in schema.names if n.startswith(ATTR_PREFIX)}
        return have == set(self.attributes)

    def _apply(self, data: pa.Table) -> None:
        """Upsert Lance rows into the index, skipping rows it already holds unchanged."""
        ids = data.column(self.key).to_pylist()
        hashes = data.column("row_hash").to_pylist()
        fresh = [i for i, (id_, h) in enumerate(zip(ids, hashes)) if self.hashes.get(id_) != h]
        if not fresh:
            return
        if len(fresh) < len(ids):
            data = data.take(pa.array(fresh, type=pa.int64()))
            ids = [ids[i] for i in fresh]
            hashes = [hashes[i] for i in fresh]
        cols = {a: data.column(ATTR_PREFIX + a).to_pylist() for a in self.attributes if ATTR_PREFIX + a in data.column_names}
        rows = [{a: cols[a][i] for a in cols} for i in range(len(ids))]
        self.index.upsert(ids, _vectors_of(data.column("vector"), self.dim), rows)
        self.hashes.update(zip(ids, hashes))
        self.max_updated = max(self.max_updated, int(max(data.column("updated_us").to_pylist())))

    def refresh(self) -> None:
        """Pick up rows other processes wrote since we last looked (throttled by ``refresh_interval``)."""
        now = time.monotonic()
        if now - self.checked_at < self.refresh_interval:
            return
        self.checked_at = now
        version = self.lance.version(self.table)
        if version == self.version:
            return
        with self._lock:
            delta = self.lance.read_since(self.table, self.max_updated - _LOOKBACK_US)
            if delta is not None and delta.num_rows:
                self._apply(delta)
            self.version = version
            if self.lance.count(self.table) != len(self.index):
                self.open()  # rows were deleted elsewhere: rebuild from the durable table

    # -- writes --------------------------------------------------------------------------
    def rows(
        self,
        ids: Sequence[str],
        vectors: np.ndarray,
        row_hashes: Sequence[str],
        attributes: Mapping[str, Any],
        extra: Mapping[str, Any] | None = None,
    ) -> pa.Table:
        """An Arrow table in this collection's layout (``attributes``: name -> column values)."""
        now = self.lance.now_us()
        n = len(ids)
        cols: dict[str, Any] = {
            self.key: pa.array(list(ids), pa.string()),
            "vector": vector_array(vectors) if n else pa.array([], pa.list_(pa.float32(), self.dim)),
            "row_hash": pa.array(list(row_hashes), pa.string()),
            "updated_us": pa.array([now] * n, pa.int64()),
        }
        for a in self.attributes:
            cols[ATTR_PREFIX + a] = attributes[a]
        cols.update(extra or {})
        return pa.table(cols).replace_schema_metadata({"embedder": self.embedder})

    def upsert(self, data: pa.Table) -> None:
        """Insert or replace rows by key: durable in Lance, then visible in the index."""
        if data.num_rows == 0:
            return
        with self._lock:
            self.lance.upsert(self.table, data, self.key)
            self._apply(data)
            self.version = self.lance.version(self.table)

    def replace(self, data: pa.Table | None, scope: str, old_ids: Sequence[str]) -> None:
        """Make the rows matching SQL ``scope`` (whose ids are ``old_ids``) equal ``data``, atomically."""
        with self._lock:
            new_ids = set(data.column(self.key).to_pylist()) if data is not None else set()
            self.lance.replace_where(self.table, data if data is not None else pa.table({}), self.key, scope)
            stale = [i for i in old_ids if i not in new_ids]
            self.index.delete(stale)
            for i in stale:
                self.hashes.pop(i, None)
            if data is not None and data.num_rows:
                self._apply(data)
            self.version = self.lance.version(self.table)

    def delete(self, ids: Sequence[str]) -> int:
        with self._lock:
            self.lance.delete(self.table, self.key, list(ids))
            n = self.index.delete(ids)
            for i in ids:
                self.hashes.pop(i, None)
            self.version = self.lance.version(self.table)
            return n

    def read(self, columns: list[str]) -> pa.Table | None:
        return self.lance.read(self.table, columns=columns)
