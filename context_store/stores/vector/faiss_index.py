"""In-memory FAISS index keyed by string id, with attributes, updated incrementally.

Layout: every vector lives at a *position* (0, 1, 2, ... in insertion order) in one FAISS
storage. Flat mode is an ``IndexFlatIP``; HNSW mode an ``IndexHNSWFlat`` (M=32) whose flat
storage is read zero-copy for exact fallbacks; IVF mode an ``IndexIVFFlat`` plus a flat copy.
An update appends the new vector and tombstones the old position; a delete tombstones. Searches
skip tombstones through a FAISS ``IDSelectorBitmap``; when tombstones pass a quarter of the
positions the index is compacted (rebuilt from its own live vectors, never from disk).

``auto`` starts flat and moves to HNSW once ``flat_threshold`` live vectors exist: below that
size an exact scan is as fast as a graph walk and is exact.

After each (re)build the search breadth (HNSW ``efSearch`` / IVF ``nprobe``) is calibrated on the
data itself: 150 probe queries are searched exactly and approximately, and the smallest
breadth reaching ``target_recall`` (recall@10) is kept. Recall then holds on hard data too,
while easy data keeps the fast default.

Threads: bulk adds use every core (a backfill); searches run single-threaded, since an OpenMP
team on a 2-core box stalls for milliseconds whenever the other core is busy.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .base import AttributeColumns, Condition, compile_filter
from .calibration import probe_set, recall_at_k

__all__ = ["FaissIndex"]


def _faiss() -> Any:
    try:
        import faiss
    except ImportError:
        raise ImportError("vector search needs FAISS: pip install faiss-cpu") from None
    return faiss


def _build_threads() -> int:
    return max(1, int(os.environ.get("CONTEXT_STORE_INDEX_THREADS") or os.cpu_count() or 1))


class FaissIndex:
    def __init__(
        self,
        dim: int,
        kind: str = "auto",
        *,
        flat_threshold: int = 10_000,
        hnsw_m: int = 32,
        ef_construction: int = 128,
        ef_search: int = 64,
        ivf_nprobe: int | None = None,
        exact_limit: int = 20_000,
        compact_ratio: float = 0.25,
        target_recall: float | None = 0.97,
    ) -> None:
        if kind not in ("auto", "flat", "hnsw", "ivf"):
            raise ValueError(f"index kind must be auto, flat, hnsw or ivf, got {kind!r}")
        self.dim = int(dim)
        self.kind = kind
        self.flat_threshold = flat_threshold
        self.hnsw_m = hnsw_m
        self.ef_construction = ef_construction
        self.ef_search = ef_search
        self.ivf_nprobe = ivf_nprobe
        self.exact_limit = exact_limit  # filtered searches allowing fewer rows than this scan exactly
        self.compact_ratio = compact_ratio
        self.target_recall = target_recall
        self.calibrated_recall: float | None = None
        self._lock = threading.RLock()
        self._reset("flat")

    # -- state -------------------------------------------------------------------------
    def _reset(self, mode: str) -> None:
        faiss = _faiss()
        self.mode = mode
        self._ids: list[str] = []
        self._pos: dict[str, int] = {}
        self._alive = np.zeros(0, dtype=bool)
        self._dead = 0
        self._attrs = AttributeColumns()
        self._bits: np.ndarray | None = None  # packed alive bitmap, rebuilt lazily after changes
        self._flat: Any = None
        if mode == "hnsw":
            self._index = faiss.IndexHNSWFlat(self.dim, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            self._index.hnsw.efConstruction = self.ef_construction
            self._index.hnsw.efSearch = self.ef_search
            self._flat = faiss.downcast_index(self._index.storage)
        elif mode == "ivf":
            self._index = None  # created (and trained) by _rebuild, which knows the data
            self._flat = faiss.IndexFlatIP(self.dim)
        else:
            self._index = faiss.IndexFlatIP(self.dim)
            self._flat = self._index

    def _vectors(self) -> np.ndarray:
        """Zero-copy view of every stored vector, by position (valid until the next write)."""
        faiss = _faiss()
        n = self._flat.ntotal
        if n == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        return faiss.rev_swig_ptr(self._flat.get_xb(), n * self.dim).reshape(n, self.dim)

    def _target_mode(self, live: int) -> str:
        if self.kind == "flat":
            return "flat"
        if self.kind == "hnsw":
            return "hnsw"
        if live < self.flat_threshold:
            return "flat"
        return "ivf" if self.kind == "ivf" else "hnsw"

    def __len__(self) -> int:
        return len(self._pos)

    def __contains__(self, id: object) -> bool:
        return id in self._pos

    def ids(self) -> list[str]:
        with self._lock:
            return list(self._pos)

    @property
    def attribute_columns(self) -> list[str]:
        return self._attrs.columns

    def stats(self) -> dict[str, Any]:
        with self._lock:
            out = {
                "mode": self.mode,
                "live": len(self._pos),
                "positions": len(self._ids),
                "dead": self._dead,
                "dim": self.dim,
            }
            if self.mode == "hnsw":
                out["ef_search"] = self.ef_search
            elif self.mode == "ivf":
                out["nprobe"] = int(self._index.nprobe)
            if self.calibrated_recall is not None:
                out["calibrated_recall"] = round(self.calibrated_recall, 4)
            return out

    # -- snapshots (file I/O lives in .snapshot) -----------------------------------------
    def export_state(self) -> tuple[dict[str, Any], list[str], dict[str, np.ndarray]]:
        """(meta, id by position, arrays) restoring this index without a rebuild; attributes are
        not included (the collection re-reads them from Lance, which it reads anyway)."""
        faiss = _faiss()
        with self._lock:
            arrays = {"index": faiss.serialize_index(self._index), "alive": self._alive.copy()}
            if self.mode == "ivf":
                arrays["flat"] = faiss.serialize_index(self._flat)
            meta = {
                "dim": self.dim,
                "kind": self.kind,
                "mode": self.mode,
                "hnsw_m": self.hnsw_m,
                "ef_search": self.ef_search,
                "calibrated_recall": self.calibrated_recall,
            }
            return meta, list(self._ids), arrays

    def restore_state(
        self,
        meta: Mapping[str, Any],
        ids: Sequence[str],
        arrays: Mapping[str, np.ndarray],
        attributes: Mapping[str, Any],
    ) -> None:
        """Replace this index with an exported one; ``attributes``: column name -> value per
        position (None where unknown; or ``AttributeColumns.append_columns`` fast forms).
        Raises ValueError if the snapshot does not fit."""
        faiss = _faiss()
        mode = meta.get("mode")
        if mode not in ("flat", "hnsw", "ivf") or int(meta.get("dim", -1)) != self.dim:
            raise ValueError(f"snapshot index is {mode} dim {meta.get('dim')}, expected dim {self.dim}")
        alive = np.asarray(arrays["alive"], dtype=bool)
        index = faiss.deserialize_index(np.asarray(arrays["index"], dtype=np.uint8))  # already downcast
        want = {"flat": faiss.IndexFlatIP, "hnsw": faiss.IndexHNSWFlat, "ivf": faiss.IndexIVFFlat}[mode]
        if not isinstance(index, want) or index.d != self.dim or index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise ValueError(f"snapshot holds a {type(index).__name__}, expected {want.__name__}")
        if mode == "ivf":
            flat = faiss.deserialize_index(np.asarray(arrays["flat"], dtype=np.uint8))
            ok = isinstance(flat, faiss.IndexFlatIP) and flat.ntotal == len(ids) and index.ntotal == int(alive.sum())
        else:
            flat = index if mode == "flat" else faiss.downcast_index(index.storage)
            ok = index.ntotal == len(ids)
        if not ok or len(alive) != len(ids) or any(len(v) != len(ids) for v in attributes.values()):
            raise ValueError("snapshot index, ids and tombstones disagree in size")
        with self._lock:
            self._reset("flat")
            self.mode, self._index, self._flat = mode, index, flat
            self._ids = list(ids)
            self._pos = {i: p for p, i in enumerate(self._ids) if alive[p]}
            if len(self._pos) != int(alive.sum()):
                raise ValueError("snapshot has duplicate live ids")
            self._alive = alive.copy()
            self._dead = len(ids) - len(self._pos)
            self._attrs.append_columns(attributes, len(ids))
            if mode == "hnsw":
                self.ef_search = int(meta.get("ef_search") or self.ef_search)
                self._index.hnsw.efSearch = self.ef_search
            rec = meta.get("calibrated_recall")
            self.calibrated_recall = float(rec) if rec is not None else None

    # -- writes ------------------------------------------------------------------------
    def _check_vectors(self, vectors: Any, n: int) -> np.ndarray:
        x = np.asarray(vectors, dtype=np.float32)
        if x.ndim != 2 or x.shape != (n, self.dim):
            raise ValueError(f"vectors must have shape ({n}, {self.dim}), got {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError("vectors contain NaN or infinity")
        x = np.array(x, dtype=np.float32, order="C")  # own copy: normalised in place below
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        x /= np.maximum(norms, 1e-12)
        return x

    def upsert(
        self,
        ids: Sequence[str],
        vectors: Any,
        attributes: Sequence[Mapping[str, Any]] | None = None,
    ) -> None:
        """Insert or replace ``ids``; visible to the next search when this returns."""
        ids = [str(i) for i in ids]
        x = self._check_vectors(vectors, len(ids))
        if attributes is not None and len(attributes) != len(ids):
            raise ValueError("attributes must have one mapping per id")
        if len(set(ids)) != len(ids):  # last occurrence wins, as a sequence of upserts would
            last = {id_: i for i, id_ in enumerate(ids)}
            keep = sorted(last.values())
            ids = [ids[i] for i in keep]
            x = x[keep]
            attributes = [attributes[i] for i in keep] if attributes is not None else None
        if not ids:
            return
        with self._lock:
            self._tombstone([i for i in ids if i in self._pos])
            target = self._target_mode(len(self._pos) + len(ids))
            if target != self.mode:
                self._rebuild(target, extra=(ids, x, attributes))
                return
            self._append(ids, x, attributes)
            self._maybe_compact()

    def _append(self, ids: list[str], x: np.ndarray, attributes: Sequence[Mapping[str, Any]] | None) -> None:
        start = len(self._ids)
        positions = np.arange(start, start + len(ids), dtype=np.int64)
        faiss = _faiss()
        if len(ids) >= 1000:
            faiss.omp_set_num_threads(_build_threads())
        try:
            if self.mode == "ivf":
                self._flat.add(x)
                self._index.add_with_ids(x, positions)
            else:
                self._index.add(x)  # flat and HNSW number vectors by insertion order = position
        finally:
            faiss.omp_set_num_threads(1)
        self._ids.extend(ids)
        for i, p in zip(ids, positions.tolist()):
            self._pos[i] = p
        self._alive = np.concatenate([self._alive, np.ones(len(ids), dtype=bool)])
        self._attrs.append(list(attributes) if attributes is not None else None, len(ids))
        self._bits = None

    def _tombstone(self, ids: Sequence[str]) -> int:
        gone = [self._pos.pop(i) for i in ids if i in self._pos]
        if not gone:
            return 0
        arr = np.asarray(gone, dtype=np.int64)
        self._alive[arr] = False
        self._dead += len(gone)
        if self.mode == "ivf" and self._index is not None:
            self._index.remove_ids(arr)  # IVF supports real removal; tombstone kept for the flat copy
        self._bits = None
        return len(gone)

    def delete(self, ids: Sequence[str]) -> int:
        """Remove ``ids`` (unknown ids are ignored); returns how many were present."""
        with self._lock:
            n = self._tombstone([str(i) for i in ids])
            self._maybe_compact()
            return n

    def _maybe_compact(self) -> None:
        if self._dead > max(1000, self.compact_ratio * len(self._ids)):
            self._rebuild(self._target_mode(len(self._pos)))

    def _rebuild(self, mode: str, extra: tuple[list[str], np.ndarray, Any] | None = None) -> None:
        live = np.flatnonzero(self._alive)
        vecs = self._vectors()[live].copy() if len(live) else np.zeros((0, self.dim), dtype=np.float32)
        ids = [self._ids[p] for p in live.tolist()]
        attrs = self._attrs.take(live)
        if extra is not None:
            e_ids, e_x, e_attrs = extra
        self._reset(mode)
        if mode == "ivf":
            faiss = _faiss()
            total = np.concatenate([vecs, extra[1]]) if extra is not None else vecs
            nlist = int(min(max(16, round(math.sqrt(max(len(total), 1)))), 8192))
            quantizer = faiss.IndexFlatIP(self.dim)
            index = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
            rng = np.random.default_rng(0)
            sample = total if len(total) <= 64 * nlist else total[rng.choice(len(total), 64 * nlist, replace=False)]
            index.train(sample)
            # Calibration (below) raises nprobe from a small start until recall is met; without it,
            # a conservative 1/16 of the lists.
            index.nprobe = self.ivf_nprobe or (8 if self.target_recall else max(16, nlist // 16))
            # A hashtable id -> list slot makes remove_ids O(removed) instead of a scan of every list.
            index.set_direct_map_type(faiss.DirectMap.Hashtable)
            self._quantizer = quantizer  # keep alive: the IVF index does not own it from Python
            self._index = index
        if len(ids):
            self._append(ids, vecs, None)
            self._attrs = attrs
        if extra is not None:
            self._append(e_ids, e_x, e_attrs)
        if mode in ("hnsw", "ivf") and self.target_recall and len(self._ids) >= 2000:
            self._calibrate()

    def _calibrate(self, k: int = 10, samples: int = 150) -> None:
        """Smallest efSearch / nprobe whose recall@k on stored vectors reaches ``target_recall``."""
        faiss = _faiss()
        vecs = self._vectors()
        q, pick, truth = probe_set(vecs, self.dim, samples, k)
        if self.mode == "hnsw":
            floor = self.ef_search
            options = sorted({floor, *[c for c in (96, 128, 192, 256, 384, 512) if c > floor]})
        else:
            floor = self._index.nprobe
            options = sorted({min(floor * m, self._index.nlist) for m in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)})
        recall = 0.0
        faiss.omp_set_num_threads(_build_threads())  # a batch of queries: use the cores
        try:
            for c in options:
                if self.mode == "hnsw":
                    self._index.hnsw.efSearch = c
                else:
                    self._index.nprobe = c
                found = self._index.search(q, k + 1)[1]
                recall = recall_at_k(found, truth, pick, k)
                if recall >= (self.target_recall or 0):
                    break
        finally:
            faiss.omp_set_num_threads(1)
        if self.mode == "hnsw":
            self.ef_search = int(self._index.hnsw.efSearch)
        self.calibrated_recall = recall

    # -- reads -------------------------------------------------------------------------
    def get_vector(self, id: str) -> np.ndarray | None:
        with self._lock:
            p = self._pos.get(id)
            return None if p is None else self._vectors()[p].copy()

    def get_vectors(self, ids: Sequence[str]) -> list[tuple[str, np.ndarray]]:
        """``(id, get_vector(id))`` of the stored ``ids``, in order (one lock, one view of the storage)."""
        with self._lock:
            vecs, pos = self._vectors(), self._pos
            return [(i, vecs[p].copy()) for i in ids if (p := pos.get(i)) is not None]

    def get_attributes(self, id: str) -> dict[str, Any]:
        with self._lock:
            p = self._pos.get(id)
            return {} if p is None else self._attrs.get(p)

    def _exact(self, q: np.ndarray, positions: np.ndarray | None, k: int) -> tuple[np.ndarray, np.ndarray]:
        vecs = self._vectors()
        if positions is None:
            scores = vecs @ q
            cand = np.arange(len(vecs))
        else:
            scores = vecs[positions] @ q
            cand = positions
        k = min(k, len(scores))
        if k <= 0:
            return np.zeros(0, np.float32), np.zeros(0, np.int64)
        top = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
        top = top[np.argsort(-scores[top], kind="stable")]
        return scores[top], cand[top]

    def _selector(self, mask: np.ndarray) -> tuple[Any, np.ndarray]:
        faiss = _faiss()
        bits = np.packbits(mask, bitorder="little")
        return faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(bits)), bits

    def _ann(self, q: np.ndarray, k: int, mask: np.ndarray | None, fraction: float) -> tuple[np.ndarray, np.ndarray]:
        faiss = _faiss()
        faiss.omp_set_num_threads(1)  # per-thread setting: this query never waits for a second core
        if mask is None and (self.mode != "hnsw" or k <= self.ef_search):
            # The common case: the index's own efSearch / nprobe, no parameter object to build.
            D, labels = self._index.search(q.reshape(1, -1), k)
            ok = labels[0] >= 0
            return D[0][ok], labels[0][ok]
        sel = keep = None
        if mask is self._alive:  # the tombstone-only mask is packed once per change, not per query
            if self._bits is None:
                self._bits = np.packbits(self._alive, bitorder="little")
            keep = self._bits
            sel = faiss.IDSelectorBitmap(len(self._alive), faiss.swig_ptr(keep))
        elif mask is not None:
            sel, keep = self._selector(mask)
        if self.mode == "hnsw":
            params = faiss.SearchParametersHNSW()
            # A selective filter hides most graph neighbours: widen the beam to still find k.
            params.efSearch = int(min(max(self.ef_search, k, k / max(fraction, 1e-3)), 4096))
        else:
            params = faiss.SearchParametersIVF()
            params.nprobe = int(min(self._index.nprobe / max(fraction, 1e-3), self._index.nlist))
        if sel is not None:
            params.sel = sel
        D, labels = self._index.search(q.reshape(1, -1), k, params=params)
        del keep  # the bitmap had to outlive the search call
        ok = labels[0] >= 0
        return D[0][ok], labels[0][ok]

    def search(
        self,
        query: Any,
        k: int,
        filter: Mapping[str, Any] | None = None,
        exclude: Sequence[str] = (),
        ids: Sequence[Condition] = (),
    ) -> list[tuple[str, float]]:
        """Top ``k`` (id, cosine) for one query vector, best first; filters use attributes, ``ids``
        conditions (``base.split_id``: $eq $ne $in $nin) the ids themselves.

        Returns ``k`` results whenever ``k`` live rows pass the filter (falls back to an exact
        scan if the ANN search comes back short).
        """
        q = np.asarray(query, dtype=np.float32).reshape(-1)
        if q.shape[0] != self.dim:
            raise ValueError(f"query vector has dim {q.shape[0]}, index has dim {self.dim}")
        norm = float(np.linalg.norm(q))
        if not math.isfinite(norm) or norm == 0.0:
            raise ValueError("query vector must be finite and non-zero")
        q = np.ascontiguousarray(q / norm, dtype=np.float32)
        conds = compile_filter(filter, None) if filter else []
        with self._lock:
            n = len(self._ids)
            excl = {self._pos[e] for e in exclude if e in self._pos}
            mask: np.ndarray | None
            if conds or ids:
                mask = self._attrs.mask(conds) & self._alive[:n] if conds else self._alive[:n].copy()
                self._id_mask(mask, ids)
                allowed = int(mask.sum())
            else:
                # IVF removes deleted rows for real; flat/HNSW skip tombstones via the alive mask.
                mask = self._alive if self._dead and self.mode != "ivf" else None
                allowed = len(self._pos)
            want = min(k + len(excl), allowed)
            if want <= 0:
                return []
            if self.mode == "flat" or ((conds or ids) and allowed <= self.exact_limit):
                positions = None if mask is None else np.flatnonzero(mask)
                D, labels = self._exact(q, positions, want)
            else:
                D, labels = self._ann(q, want, mask, allowed / max(n, 1))
                if len(labels) < want:
                    live = mask if mask is not None else (self._alive if self._dead else None)
                    D, labels = self._exact(q, None if live is None else np.flatnonzero(live), want)
            out: list[tuple[str, float]] = []
            for score, p in zip(D.tolist(), labels.tolist()):
                if p in excl:
                    continue
                out.append((self._ids[p], float(min(max(score, -1.0), 1.0))))
                if len(out) == k:
                    break
            return out

    def _id_mask(self, mask: np.ndarray, ids: Sequence[Condition]) -> None:
        """Narrow ``mask`` (in place) to the positions whose id passes every condition."""
        for c in ids:
            vals = [c.value] if c.op in ("eq", "ne") else list(c.value)
            pos = [p for v in vals if v is not None and (p := self._pos.get(str(v))) is not None]
            if c.op in ("eq", "in"):
                keep = np.zeros(len(mask), dtype=bool)
                keep[pos] = True
                mask &= keep
            else:
                mask[pos] = False

    def search_attributes(self, hits: Sequence[tuple[str, float]]) -> list[dict[str, Any]]:
        with self._lock:
            pos = [self._pos.get(i, -1) for i, _ in hits]
            got = self._attrs.get_many([p for p in pos if p >= 0])
            it = iter(got)  # hits without a position (none in practice) get no attributes
            return got if len(got) == len(pos) else [next(it) if p >= 0 else {} for p in pos]
