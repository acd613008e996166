"""Interaction-trained item vectors: train (PMI-SVD or implicit ALS), version, commit.

Training reads the view's interactions strictly before ``end`` (point-in-time: a backfill with an
end never learns from later events). A version is written as ``<vectors>/cf/<view>/<id>.npz``, then
committed to the view's collection (one Lance write: readers see the old vectors until then), then
named current in ``versions.json``; the previous version's file is kept, older ones pruned.
A new version is rotated onto the previous one (orthogonal Procrustes on shared items) so interest
vectors built from the old one stay comparable until they are rebuilt.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ...definitions.interactions import InteractionEmbeddingView
from ...errors import InvalidInputError
from ...state.columns import ts_to_us
from ...stores.vector import VectorCollection

__all__ = ["TrainedVectors", "train_vectors", "commit_version", "read_versions", "load_version", "versions_dir"]

KEEP_VERSIONS = 2  # the current one and the one before it


@dataclass(frozen=True)
class TrainedVectors:
    ids: list[str]
    vectors: np.ndarray  # (n, dim) float32, unit rows
    counts: np.ndarray  # interactions per item (0: projected from its text vector)
    meta: dict[str, Any]


def _interaction_codes(
    view: InteractionEmbeddingView, rows: pa.Table, end_us: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """(user codes, item codes, weights, item ids) of the interactions before ``end_us``."""
    for c in (view.user, view.item, view.weight):
        if c is not None and c not in rows.column_names:
            raise InvalidInputError(f"interactions of {view.name!r} have no column {c!r}", field=c)
    ts_field = view.source.timestamp_field
    if end_us is not None and ts_field in rows.column_names and rows.num_rows:
        rows = rows.filter(pc.less(pa.array(ts_to_us(rows.column(ts_field)), pa.int64()), end_us))
    rows = rows.filter(pc.and_(pc.is_valid(rows.column(view.user)), pc.is_valid(rows.column(view.item))))
    w = (
        np.asarray(pc.fill_null(rows.column(view.weight).cast(pa.float64()), 0.0).to_numpy(zero_copy_only=False))
        if view.weight
        else np.ones(rows.num_rows)
    )
    keep = np.ones(rows.num_rows, bool) if view.min_weight is None else w >= view.min_weight
    users = pc.dictionary_encode(rows.column(view.user).cast(pa.string()).combine_chunks())
    items = pc.dictionary_encode(rows.column(view.item).cast(pa.string()).combine_chunks())
    u = users.indices.to_numpy(zero_copy_only=False)[keep]
    i = items.indices.to_numpy(zero_copy_only=False)[keep]
    return u.astype(np.int64), i.astype(np.int64), w[keep], items.dictionary.to_pylist()


def _pmi_svd(x: Any, dim: int, params: dict[str, float]) -> np.ndarray:
    """Item vectors from the shifted positive PMI of item co-occurrence, factorised by SVD.
    Users are down-weighted by ``deg ** -user_norm`` so a few heavy users do not dominate."""
    from scipy.sparse import diags
    from scipy.sparse.linalg import svds

    deg = np.asarray(x.sum(axis=1)).ravel()
    xn = diags(np.power(np.maximum(deg, 1.0), -float(params.get("user_norm", 0.5)))) @ x
    c = np.asarray((xn.T @ x).todense(), dtype=np.float64)  # item x item co-occurrence (dense: ~10k items)
    np.fill_diagonal(c, 0.0)
    total = c.sum()
    if total <= 0:
        return np.zeros((x.shape[1], dim), np.float32)
    row = c.sum(axis=1)
    col = c.sum(axis=0) ** float(params.get("alpha", 0.75))  # context smoothing (word2vec's 3/4)
    col = col / col.sum() * total
    with np.errstate(divide="ignore", invalid="ignore"):
        pmi = np.log(c * total / np.outer(np.maximum(row, 1e-12), np.maximum(col, 1e-12)))
    ppmi = np.nan_to_num(np.maximum(pmi - np.log(float(params.get("shift", 1.0))), 0.0), posinf=0.0, neginf=0.0)
    k = max(1, min(dim, min(ppmi.shape) - 1))
    u, s, _ = svds(ppmi, k=k, random_state=0)
    vec = u * np.power(s, float(params.get("eig_power", 0.5)))
    if k < dim:
        vec = np.hstack([vec, np.zeros((vec.shape[0], dim - k))])
    return vec.astype(np.float32)


def _als(x: Any, dim: int, params: dict[str, float]) -> np.ndarray:
    try:
        from implicit.cpu.als import AlternatingLeastSquares
    except ImportError:
        raise InvalidInputError(
            "method='als' needs the `implicit` package: pip install 'context-store[recs]'", field="method"
        ) from None
    from threadpoolctl import threadpool_limits

    # implicit's own threads do the work: a BLAS thread pool under them only slows it down.
    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(
            factors=dim,
            regularization=float(params.get("regularization", 0.05)),
            alpha=float(params.get("alpha", 2.0)),
            iterations=int(params.get("iterations", 15)),
            random_state=0,
        )
        model.fit(x.tocsr().astype(np.float32), show_progress=False)
    return np.asarray(model.item_factors, dtype=np.float32)[:, :dim]


def _unit(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v, axis=1, keepdims=True)
    return (v / np.where(n > 0, n, 1.0)).astype(np.float32)


def train_vectors(
    view: InteractionEmbeddingView,
    rows: pa.Table,
    end_us: int | None,
    text_vectors: dict[str, np.ndarray] | None = None,
) -> TrainedVectors:
    """Learn the view's item vectors from ``rows`` before ``end_us``. Items with fewer than
    ``min_interactions`` are left out, or, with ``text_vectors``, get their text vector projected
    into the learned space by a ridge map fitted on the items that have both."""
    from scipy.sparse import csr_matrix

    t0 = time.perf_counter()
    u, i, w, item_ids = _interaction_codes(view, rows, end_us)
    counts = np.bincount(i, minlength=len(item_ids)) if len(i) else np.zeros(len(item_ids), np.int64)
    kept = np.flatnonzero(counts >= view.min_interactions)
    remap = np.full(len(item_ids), -1, np.int64)
    remap[kept] = np.arange(len(kept))
    sel = remap[i] >= 0
    n_users = int(u.max()) + 1 if len(u) else 0
    vecs = np.zeros((0, view.dim), np.float32)
    if len(kept) >= 2 and n_users:
        # One cell per (user, item): repeated interactions count once (weights only filter, via min_weight).
        x = csr_matrix((np.ones(int(sel.sum())), (u[sel], remap[i[sel]])), shape=(n_users, len(kept)))
        x.data[:] = 1.0
        train = _pmi_svd if view.method == "pmi_svd" else _als
        vecs = _unit(train(x, view.dim, view.params))
    ids = [item_ids[j] for j in kept[: len(vecs)]]
    cnt = counts[kept[: len(vecs)]]
    projected = 0
    if text_vectors and len(ids) >= 10:
        have = [k for k, id_ in enumerate(ids) if id_ in text_vectors]
        cold = [t for t in text_vectors if t not in set(ids)]
        if len(have) >= 10 and cold:
            a = np.stack([text_vectors[ids[k]] for k in have]).astype(np.float64)
            b = vecs[have].astype(np.float64)
            lam = float(view.params.get("ridge", 1.0))
            proj = np.linalg.solve(a.T @ a + lam * np.eye(a.shape[1]), a.T @ b)
            extra = _unit(np.stack([text_vectors[t] for t in cold]).astype(np.float64) @ proj)
            vecs = np.vstack([vecs, extra])
            ids = ids + cold
            cnt = np.concatenate([cnt, [int(counts[item_ids.index(t)]) if t in item_ids else 0 for t in cold]])
            projected = len(cold)
    meta = {
        "method": view.method,
        "dim": view.dim,
        "params": view.params,
        "end_us": end_us,
        "interactions": int(sel.sum()),
        "users": n_users,
        "items": len(ids),
        "projected": projected,
        "train_seconds": round(time.perf_counter() - t0, 3),
    }
    return TrainedVectors(ids, vecs.astype(np.float32), np.asarray(cnt, np.int64), meta)


# -- versions ---------------------------------------------------------------------------------
def versions_dir(vectors_root: str | os.PathLike[str], view: str) -> Path:
    return Path(vectors_root) / "cf" / view


def read_versions(vectors_root: str | os.PathLike[str], view: str) -> dict[str, Any]:
    """``{"current": id | None, "versions": [meta, ...]}`` (oldest first)."""
    try:
        data: dict[str, Any] = json.loads((versions_dir(vectors_root, view) / "versions.json").read_text())
        return data
    except (OSError, ValueError):
        return {"current": None, "versions": []}


def load_version(vectors_root: str | os.PathLike[str], view: str, version: str) -> tuple[list[str], np.ndarray]:
    with np.load(versions_dir(vectors_root, view) / f"{version}.npz", allow_pickle=False) as z:
        return [str(x) for x in z["ids"].tolist()], np.asarray(z["vectors"], np.float32)


def _align(prev: tuple[list[str], np.ndarray] | None, ids: list[str], vecs: np.ndarray) -> np.ndarray:
    """Rotate ``vecs`` onto the previous version (orthogonal Procrustes over the shared items)."""
    if prev is None or prev[1].shape[1] != vecs.shape[1]:
        return vecs
    at = {k: j for j, k in enumerate(prev[0])}
    both = [(j, at[k]) for j, k in enumerate(ids) if k in at]
    if len(both) < vecs.shape[1]:
        return vecs
    a = vecs[[j for j, _ in both]].astype(np.float64)
    b = prev[1][[p for _, p in both]].astype(np.float64)
    u, _, vt = np.linalg.svd(a.T @ b)
    return (vecs.astype(np.float64) @ (u @ vt)).astype(np.float32)


def commit_version(
    view: InteractionEmbeddingView, coll: VectorCollection, vectors_root: str, trained: TrainedVectors
) -> dict[str, Any]:
    """Write ``trained`` as a new version, make it the collection's vectors, then name it current."""
    d = versions_dir(vectors_root, view.name)
    d.mkdir(parents=True, exist_ok=True)
    state = read_versions(vectors_root, view.name)
    prev = None
    if state.get("current"):
        try:
            prev = load_version(vectors_root, view.name, state["current"])
        except OSError:
            prev = None
    vecs = _align(prev, trained.ids, trained.vectors)
    version = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:6]
    tmp = d / f".{version}.npz"
    with open(tmp, "wb") as f:
        np.savez(f, ids=np.asarray(trained.ids, dtype=str), vectors=vecs)
    os.replace(tmp, d / f"{version}.npz")
    n = len(trained.ids)
    origin = ["cf" if c >= view.min_interactions else "text" for c in trained.counts.tolist()]
    data = coll.rows(
        trained.ids,
        vecs if n else np.zeros((0, coll.dim), np.float32),
        [f"{version}:{k}" for k in trained.ids],
        {
            "model_version": pa.array([version] * n, pa.string()),
            "origin": pa.array(origin, pa.string()),
            "interactions": pa.array(trained.counts.tolist(), pa.int64()),
        },
    )
    if not coll.exists:
        coll.create_empty(data.slice(0, 0))
    gone = [k for k in coll.hashes if k not in set(trained.ids)]
    coll.upsert(data)  # one Lance commit: readers switch from the old vectors to the new ones here
    if gone:
        coll.delete(gone)
    meta = {**trained.meta, "version": version, "committed_us": time.time_ns() // 1000}
    versions = [*state.get("versions", []), meta]
    for old in versions[:-KEEP_VERSIONS]:
        (d / f"{old['version']}.npz").unlink(missing_ok=True)
    state = {"current": version, "versions": versions[-KEEP_VERSIONS:]}
    tmpj = d / ".versions.json"
    tmpj.write_text(json.dumps(state, indent=1))
    os.replace(tmpj, d / "versions.json")
    coll.checkpoint()
    return meta
