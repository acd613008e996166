"""Item vectors joined into an interest vector's rows (``cs.InterestVector``).

``apply_transform`` calls ``join_item_vectors`` after a view's own transform, so the stream and
backfill run the same join: each row gets ``weight * 2 ** ((t - origin) / half_life) * v(item)``
in ``ITEM_VECTOR_COLUMN`` (null when the item has no vector), which the view's ``mean`` aggregates.

Item vectors are the item view's current ones: an interaction-trained view's current model
version (``vectors/cf/<view>/``), or a text view's Lance table. They are cached per process and
reloaded when the version (or the table version) changes, checked at most once a second.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..definitions.interactions import ITEM_VECTOR_COLUMN, InteractionEmbeddingView, InterestVector
from ..state.columns import ts_to_us

__all__ = ["join_item_vectors", "item_vectors", "item_dim", "MAX_EXPONENT"]

MAX_EXPONENT = 50.0  # |(t - origin) / half_life| is clipped here: squares of the sums must fit float32
_CHECK_S = 1.0
_log = logging.getLogger(__name__)
_lock = threading.Lock()
_cache: dict[tuple[str, str], tuple[float, object, dict[str, int], np.ndarray]] = {}


def item_dim(view: InterestVector) -> int:
    iv = view.item_vectors
    if isinstance(iv, InteractionEmbeddingView):
        return iv.dim
    from ..embedders import embedder_dim

    return embedder_dim(iv.embedder) or 384


def _load(root: str, iv: object) -> tuple[object, dict[str, int], np.ndarray] | None:
    """(version token, id -> row, vectors) of the item view, or None when it has none yet."""
    name = getattr(iv, "name", "")
    if isinstance(iv, InteractionEmbeddingView):
        from .vectors.interactions import load_version, read_versions

        cur = read_versions(root, name).get("current")
        if not cur:
            return None
        ids, vecs = load_version(root, name, cur)
        return cur, {k: j for j, k in enumerate(ids)}, vecs
    from ..stores.vector import LanceVectors, embedding_table

    lance = LanceVectors(Path(root))
    try:
        table = embedding_table(name)
        version = lance.version(table)
        if version is None:
            return None
        data = lance.read(table, columns=["entity_id", "vector"])
    finally:
        lance.close()
    if data is None:
        return None
    ids = [str(x) for x in data.column("entity_id").to_pylist()]
    arr = data.column("vector").combine_chunks()
    vecs = arr.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(ids), -1)
    return version, {k: j for j, k in enumerate(ids)}, vecs


def _token(root: str, iv: object) -> object:
    name = getattr(iv, "name", "")
    if isinstance(iv, InteractionEmbeddingView):
        from .vectors.interactions import read_versions

        return read_versions(root, name).get("current")
    from ..stores.vector import LanceVectors, embedding_table

    lance = LanceVectors(Path(root))
    try:
        return lance.version(embedding_table(name))
    finally:
        lance.close()


def item_vectors(view: InterestVector) -> tuple[dict[str, int], np.ndarray] | None:
    """The current vectors of ``view``'s item view (cached; None: none built yet, or no workspace)."""
    root = view.vectors_root
    if root is None:
        return None
    key = (root, view.item_vectors.name)
    now = time.monotonic()
    with _lock:
        hit = _cache.get(key)
        if hit is not None and now - hit[0] < _CHECK_S:
            return hit[2], hit[3]
        if hit is not None and _token(root, view.item_vectors) == hit[1]:
            _cache[key] = (now, hit[1], hit[2], hit[3])
            return hit[2], hit[3]
        got = _load(root, view.item_vectors)
        if got is None:
            _cache.pop(key, None)
            return None
        _cache[key] = (now, *got)
        return got[1], got[2]


def join_item_vectors(view: InterestVector, rows: pa.Table) -> pa.Table:
    """``rows`` plus ``ITEM_VECTOR_COLUMN``: each row's item vector, weighted and decayed."""
    dim = item_dim(view)
    n = rows.num_rows
    out = np.zeros((n, dim), np.float32)
    valid = np.zeros(n, bool)
    found = item_vectors(view) if n else None
    if found is not None and view.item in rows.column_names:
        at, vecs = found
        if vecs.shape[1] == dim:
            items = rows.column(view.item).cast(pa.string()).to_pylist()
            idx = np.array([at.get(i, -1) if i is not None else -1 for i in items], np.int64)
            valid = idx >= 0
            scale = np.ones(n, np.float64)
            if view.weight is not None and view.weight in rows.column_names:
                w = rows.column(view.weight).cast(pa.float64())
                scale *= np.asarray(pc.fill_null(w, 0.0).to_numpy(zero_copy_only=False), np.float64)
            if view.half_life is not None:
                ts = ts_to_us(rows.column(view.timestamp_field)).astype(np.float64)
                origin = view.origin.timestamp() * 1e6
                e = (ts - origin) / (view.half_life.total_seconds() * 1e6)
                if np.abs(e).max(initial=0.0) > MAX_EXPONENT:
                    _log.warning("%s: events beyond %g half-lives of origin: decay clipped", view.name, MAX_EXPONENT)
                scale *= np.exp2(np.clip(e, -MAX_EXPONENT, MAX_EXPONENT))
            valid &= scale != 0.0
            out[valid] = (vecs[idx[valid]].astype(np.float64) * scale[valid, None]).astype(np.float32)
    col = pa.FixedSizeListArray.from_arrays(pa.array(out.reshape(-1), pa.float32()), dim, mask=pa.array(~valid))
    if ITEM_VECTOR_COLUMN in rows.column_names:
        rows = rows.drop_columns([ITEM_VECTOR_COLUMN])
    return rows.append_column(ITEM_VECTOR_COLUMN, col)
