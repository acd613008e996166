"""``VectorCollection``: one LanceDB table and its in-memory FAISS index, kept in sync.

Writes go to Lance first (durable), then to the index (visible), so an accepted change is never
only in memory. Rows written by another process (a stream worker, another server) are picked
up by ``refresh``: a cheap version check, then a read of rows newer than the newest one seen
(or a full reload when rows were deleted elsewhere).

Table layout: ``<key>`` string, ``vector`` fixed_size_list<float32>[dim], ``row_hash`` string
(identifies the row's content, so unchanged rows are skipped), ``updated_us`` int64, and one
``a__<name>`` column per attribute (prefixed so they never clash with ours). The schema
metadata records the embedder: vectors of another model are never mixed in.

Start-up: the index is restored from its snapshot (``snapshot.py``) when one exists and fits
(same format, dim, embedder, index kind, key and attributes); the table's ``(key, row_hash)``
columns are then compared with the snapshot's and only rows that differ are replayed. A missing,
corrupt or foreign snapshot means a full rebuild, after which a snapshot is written. Snapshots
are rewritten after ``snapshot_every`` changed rows or ``snapshot_interval`` seconds with
changes (in a background thread) and on ``close``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .base import EncodedColumn
from .faiss_index import FaissIndex
from .lance_vectors import LanceVectors, vector_array
from .snapshot import read_snapshot, write_snapshot

__all__ = ["VectorCollection", "ATTR_PREFIX"]

ATTR_PREFIX = "a__"
_LOOKBACK_US = 5_000_000  # re-read this much before the newest row seen (clock skew between writers)
_log = logging.getLogger(__name__)


def _vectors_of(col: pa.ChunkedArray | pa.Array, dim: int) -> np.ndarray:
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if len(arr) == 0:
        return np.zeros((0, dim), dtype=np.float32)
    return arr.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(len(arr), -1)


def _column(col: pa.ChunkedArray) -> Any:
    """An attribute column for ``AttributeColumns.append_columns``: numbers as float64 (NaN =
    null), strings dictionary-encoded, anything else as Python values."""
    t = col.type
    if pa.types.is_integer(t) or pa.types.is_floating(t):
        return pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        enc = col.combine_chunks().dictionary_encode()
        codes = pc.fill_null(enc.indices, -1).to_numpy(zero_copy_only=False).astype(np.int32)
        return EncodedColumn(codes, enc.dictionary.to_pylist())
    return col.to_pylist()


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
        snapshots: bool = True,
        snapshot_min_rows: int = 1000,
        snapshot_every: int = 10_000,
        snapshot_interval: float = 300.0,
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
        self.snapshots = snapshots
        self.snapshot_min_rows = snapshot_min_rows  # below this a rebuild is as fast as a load
        self.snapshot_every = snapshot_every
        self.snapshot_interval = snapshot_interval
        self._lock = threading.RLock()
        self._saver: threading.Thread | None = None
        self.loaded_from: str | None = None  # "snapshot" | "rebuild" | None (no table yet)
        self.replayed = 0  # rows replayed on top of the snapshot at the last open
        self._reset()

    def _reset(self) -> None:
        self.index = FaissIndex(self.dim, self.kind, flat_threshold=self.flat_threshold)
        self.hashes: dict[str, str] = {}  # id -> row hash
        self.version: int | None = None
        self.max_updated = 0
        self.checked_at = time.monotonic()
        self.changes = 0  # rows changed in the index since the last snapshot
        self.snapshot_at = time.monotonic()

    # -- loading -------------------------------------------------------------------------
    def open(self) -> VectorCollection:
        """Load from Lance; a table of another dim/embedder/attribute set is dropped (recompute)."""
        with self._lock:
            schema = self.lance.schema(self.table)
            if schema is not None and not self._schema_ok(schema):
                self.lance.drop(self.table)
            self._reset()
            self.version = self.lance.version(self.table)
            self.loaded_from, self.replayed = None, 0
            if self.version is None:
                return self
            if not (self.snapshots and self._load_snapshot()):
                data = self.lance.read(self.table)
                if data is not None and data.num_rows:
                    self._apply(data)
                self.loaded_from = "rebuild"
                if self.snapshots and len(self.index) >= self.snapshot_min_rows:
                    self.save_snapshot()
            self.changes = 0 if self.loaded_from == "rebuild" else self.changes
        return self

    # -- snapshots ---------------------------------------------------------------------------
    def _meta(self) -> dict[str, Any]:
        return {
            "embedder": self.embedder,
            "dim": self.dim,
            "kind": self.kind,
            "key": self.key,
            "attributes": self.attributes,
            "table": self.table,
        }

    def _base_columns(self) -> list[str]:
        return [self.key, "row_hash", "updated_us", *(ATTR_PREFIX + a for a in self.attributes)]

    def _load_snapshot(self) -> bool:
        """Restore the index from its snapshot and replay newer rows; False: rebuild instead."""
        path = self.lance.snapshot_path(self.table)
        try:
            snap = read_snapshot(path)
            if snap is None:
                return False
            want = self._meta()
            foreign = {k: snap.meta.get(k) for k, v in want.items() if snap.meta.get(k) != v}
            if foreign:
                _log.info("snapshot of %s does not fit (%s): rebuilding", self.table, foreign)
                return False
            cur = self.lance.read(self.table, columns=[c for c in self._base_columns() if c in self._names()])
            alive = np.asarray(snap.arrays["alive"], dtype=bool)
            # Vectorised (1M rows): the table row of each snapshot position, kept only where the row
            # is unchanged (same hash); changed rows get null attributes here and are replayed below.
            row = np.full(len(snap.ids), -1, dtype=np.int64)
            if cur is not None and cur.num_rows:
                found = pc.index_in(pa.array(snap.ids, pa.string()), value_set=cur.column(self.key).combine_chunks())
                row = pc.fill_null(found, -1).to_numpy(zero_copy_only=False).astype(np.int64)
                same = pc.equal(
                    cur.column("row_hash").combine_chunks().take(pc.fill_null(found, 0)),
                    pa.array(snap.hashes, pa.string()),
                )
                row[~(pc.fill_null(same, False).to_numpy(zero_copy_only=False) & alive)] = -1
            take = pa.array(row, mask=row < 0)
            cols = {
                a: _column(cur.column(ATTR_PREFIX + a).take(take))
                for a in self.attributes
                if cur is not None and ATTR_PREFIX + a in cur.column_names
            }
            hashes = {i: h for i, h, live in zip(snap.ids, snap.hashes, alive.tolist()) if live}
            index = FaissIndex(self.dim, self.kind, flat_threshold=self.flat_threshold)
            index.restore_state(snap.meta, snap.ids, snap.arrays, cols)
        except Exception as e:  # noqa: BLE001 - any unreadable snapshot (corrupt, foreign, torn) means rebuild
            _log.warning("snapshot of %s is unusable (%s): rebuilding from the table", self.table, e)
            return False
        self.index, self.hashes = index, hashes
        self.max_updated = int(snap.meta.get("max_updated") or 0)
        self.loaded_from = "snapshot"
        self.replayed = self._sync(cur)
        self.changes = self.replayed
        return True

    def _names(self) -> set[str]:
        schema = self.lance.schema(self.table)
        return set(schema.names) if schema is not None else set()

    def _sync(self, cur: pa.Table | None) -> int:
        """Make the index equal the table ``cur`` (key, row_hash, updated_us columns): delete the
        ids it lacks, re-read only the rows whose hash differs. Returns rows replayed."""
        ids = cur.column(self.key).to_pylist() if cur is not None else []
        current = dict(zip(ids, cur.column("row_hash").to_pylist())) if cur is not None else {}
        gone = [i for i in self.hashes if i not in current]
        if gone:
            self.index.delete(gone)
            for i in gone:
                del self.hashes[i]
        changed = [i for i, h in current.items() if self.hashes.get(i) != h]
        if changed:
            # Many changes: one scan (unchanged rows are skipped by hash); few: fetch them by key.
            data = (
                self.lance.read(self.table)
                if len(changed) > max(2000, len(current) // 10)
                else self.lance.read_keys(self.table, self.key, changed)
            )
            if data is not None and data.num_rows:
                self._apply(data)
        if cur is not None and cur.num_rows:
            self.max_updated = max(self.max_updated, int(max(cur.column("updated_us").to_pylist())))
        self.changes += len(gone)
        return len(gone) + len(changed)

    def save_snapshot(self) -> int:
        """Write the index's snapshot now (atomically); returns its size in bytes."""
        with self._lock:
            meta, ids, arrays = self.index.export_state()
            alive = arrays["alive"]
            hashes = [self.hashes.get(i, "") if alive[p] else "" for p, i in enumerate(ids)]
            meta.update(self._meta(), version=self.version, max_updated=self.max_updated, written_at=time.time())
            self.changes, self.snapshot_at = 0, time.monotonic()
        try:
            return write_snapshot(self.lance.snapshot_path(self.table), meta, ids, hashes, arrays)
        except BaseException:
            with self._lock:
                self.changes += 1  # not saved: try again later
            raise

    def _maybe_snapshot(self) -> None:
        """Start a background snapshot when enough has changed (called after every write)."""
        if not self.snapshots or not self.changes or len(self.index) < self.snapshot_min_rows:
            return
        due = self.changes >= self.snapshot_every or time.monotonic() - self.snapshot_at >= self.snapshot_interval
        if not due or (self._saver is not None and self._saver.is_alive()):
            return
        self._saver = threading.Thread(target=self._save_quietly, name=f"snapshot-{self.table}", daemon=True)
        self._saver.start()

    def _save_quietly(self) -> None:
        try:
            self.save_snapshot()
        except Exception as e:  # noqa: BLE001 - a snapshot is an optimisation: the table stays the truth
            _log.warning("snapshot of %s failed: %s", self.table, e)

    def checkpoint(self) -> None:
        """Save a snapshot now if rows changed since the last one (after a backfill, on close)."""
        saver = self._saver
        if saver is not None:
            saver.join()
        if self.snapshots and self.changes and self.exists and len(self.index) >= self.snapshot_min_rows:
            self._save_quietly()

    def close(self) -> None:
        self.checkpoint()

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
        have = {n[len(ATTR_PREFIX) :] for n in schema.names if n.startswith(ATTR_PREFIX)}
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
        cols = {
            a: data.column(ATTR_PREFIX + a).to_pylist() for a in self.attributes if ATTR_PREFIX + a in data.column_names
        }
        rows = [{a: cols[a][i] for a in cols} for i in range(len(ids))]
        self.index.upsert(ids, _vectors_of(data.column("vector"), self.dim), rows)
        self.hashes.update(zip(ids, hashes))
        self.changes += len(ids)
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
                # Rows were deleted elsewhere: diff ids and hashes against the table (no vectors read).
                self._sync(self.lance.read(self.table, columns=[self.key, "row_hash", "updated_us"]))
            self._maybe_snapshot()

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

    def create_empty(self, data: pa.Table) -> None:
        """Create the durable table with ``data``'s layout and no rows: the collection is built
        (``exists``), e.g. by a backfill of a source that has no rows yet."""
        with self._lock:
            if self.exists:
                return
            self.lance.create(self.table, data.schema)
            self.version = self.lance.version(self.table)

    def upsert(self, data: pa.Table) -> None:
        """Insert or replace rows by key: durable in Lance, then visible in the index."""
        if data.num_rows == 0:
            return
        with self._lock:
            self.lance.upsert(self.table, data, self.key)
            self._apply(data)
            self.version = self.lance.version(self.table)
            self._maybe_snapshot()

    def replace(self, data: pa.Table | None, scope: str, old_ids: Sequence[str]) -> None:
        """Make the rows matching SQL ``scope`` (whose ids are ``old_ids``) equal ``data``, atomically."""
        with self._lock:
            new_ids = set(data.column(self.key).to_pylist()) if data is not None else set()
            self.lance.replace_where(self.table, data if data is not None else pa.table({}), self.key, scope)
            stale = [i for i in old_ids if i not in new_ids]
            self.index.delete(stale)
            for i in stale:
                self.hashes.pop(i, None)
            self.changes += len(stale)
            if data is not None and data.num_rows:
                self._apply(data)
            self.version = self.lance.version(self.table)
            self._maybe_snapshot()

    def delete(self, ids: Sequence[str]) -> int:
        with self._lock:
            self.lance.delete(self.table, self.key, list(ids))
            n = self.index.delete(ids)
            for i in ids:
                self.hashes.pop(i, None)
            self.version = self.lance.version(self.table)
            self.changes += n
            self._maybe_snapshot()
            return n

    def erase_where(self, where: str) -> int:
        """Delete the rows matching SQL ``where`` for good (Lance, its old versions, the index and
        the snapshot, rewritten without them): right to erasure. Returns how many rows."""
        saver = self._saver
        if saver is not None:
            saver.join()  # a snapshot exported before the delete must not land after it
        with self._lock:
            got = self.lance.read(self.table, columns=[self.key], where=where)
            ids = [] if got is None else [str(v) for v in got.column(0).to_pylist()]
            n = self.lance.erase_where(self.table, where)
            self.index.delete(ids)
            for i in ids:
                self.hashes.pop(i, None)
            self.version = self.lance.version(self.table)
            if n and self.snapshots and len(self.index) >= self.snapshot_min_rows:
                self.save_snapshot()
            return n

    def read(self, columns: list[str]) -> pa.Table | None:
        return self.lance.read(self.table, columns=columns)
