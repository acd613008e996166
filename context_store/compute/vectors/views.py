"""Embedding-view rows into a collection: read the view's source, embed new or changed texts only."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from ...errors import NotFoundError
from ...stores.vector import VectorCollection, view_columns
from ..embeddings import bulk_embedder, text_hash

if TYPE_CHECKING:
    from ...config import Config
    from ...definitions import EmbeddingView
    from ...stores.offline.base import OfflineStore

__all__ = ["source_rows", "write_rows", "embed_rows"]

# Texts per encode call: big enough that per-call overhead vanishes (the model batches by 64 inside,
# length-sorted), small enough that the progress bar moves every second or so on one core.
EMBED_BATCH = 256


def source_rows(view: EmbeddingView, config: Config, offline: OfflineStore | None) -> pa.Table:
    """Every row of the view's source: its batch files and, for a stream, the pushed-event log."""
    from ...definitions import StreamSource
    from ..transform import batch_source_of, read_source

    src = view.source
    parts: list[pa.Table] = []
    if batch_source_of(src) is not None:
        parts.append(read_source(src, config.repo))
    if isinstance(src, StreamSource) and offline is not None:
        try:
            from ...vocab.tables import source_table

            name = source_table(src.name)
            if offline.exists(name):
                parts.append(offline.read(name))
        except NotFoundError:
            pass
    if not parts:
        return pa.table({c: pa.array([], pa.string()) for c in [view.join_key, *view_columns(view)]})
    rows = pa.concat_tables(parts, promote_options="permissive") if len(parts) > 1 else parts[0]
    if offline is not None:  # forgotten entities: the history files still hold them
        from ..tombstones import load

        rows = load(offline).filter(rows, src.timestamp_field)
    return rows


def write_rows(view: EmbeddingView, coll: VectorCollection, rows: pa.Table, progress: bool = False) -> dict[str, int]:
    """Upsert ``rows`` (one per entity) into ``coll``: unchanged rows are skipped, rows whose text is
    unchanged keep their vector, the others are embedded. Visible to readers when this returns."""
    key, attrs = view.join_key, view_columns(view)
    ids = rows.column(key).cast(pa.string()).to_pylist()
    texts = ["" if t is None else str(t) for t in rows.column(view.text).to_pylist()]
    cols = {a: rows.column(a) for a in attrs}
    thash = [text_hash(t, view.embedder) for t in texts]
    pyattrs = {a: c.to_pylist() for a, c in cols.items()}
    # Row hash = text hash + attributes hash, so "text unchanged" is a prefix test.
    full = [th + text_hash(repr([pyattrs[a][i] for a in attrs]), "row") for i, th in enumerate(thash)]
    todo = [i for i, id_ in enumerate(ids) if coll.hashes.get(id_) != full[i]]
    stats = {"rows": len(ids), "unchanged": len(ids) - len(todo), "embedded": 0, "updated": len(todo)}
    if not todo:
        if progress:
            _summary(view.name, stats)
        if not coll.exists:  # a source without rows yet: the view is built, and empty
            empty = pa.array([], pa.int64())
            coll.create_empty(
                coll.rows([], np.zeros((0, coll.dim), np.float32), [], {a: cols[a].take(empty) for a in attrs})
            )
        return stats
    vecs = np.zeros((len(todo), coll.index.dim), dtype=np.float32)
    need: list[int] = []
    for j, i in enumerate(todo):
        old = coll.index.get_vector(ids[i]) if coll.hashes.get(ids[i], "").startswith(thash[i]) else None
        if old is not None:
            vecs[j] = old  # only attributes changed: keep the vector
        else:
            need.append(j)
    stats["embedded"] = len(need)
    if need:
        vecs[need] = embed_rows([texts[todo[j]] for j in need], view.embedder, f"embed {view.name}", progress)
    if progress:
        _summary(view.name, stats)
    sel = pa.array(todo, type=pa.int64())
    data = coll.rows([ids[i] for i in todo], vecs, [full[i] for i in todo], {a: cols[a].take(sel) for a in attrs})
    coll.upsert(data)  # durable first, then visible
    return stats


def embed_rows(texts: list[str], embedder: str, desc: str = "embed", progress: bool = False) -> np.ndarray:
    """``(len(texts), dim)`` vectors: the model is loaded once (before the progress bar starts, so the
    bar's rate is the encode rate), each distinct text is encoded once, in ``EMBED_BATCH`` batches."""
    bar: Any = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(texts), desc=desc, unit="row")
        bar.set_postfix_str(f"loading {embedder}")
    try:
        emb = bulk_embedder(embedder)
        uniq = list(dict.fromkeys(texts))
        if bar is not None:
            bar.reset(total=len(uniq))  # restarts the clock: loading the model is not encoding
            bar.set_postfix_str(f"{len(texts) - len(uniq)} duplicate texts" if len(uniq) < len(texts) else "")
        out = np.empty((len(uniq), emb.dim), dtype=np.float32)
        for s in range(0, len(uniq), EMBED_BATCH):
            part = uniq[s : s + EMBED_BATCH]
            out[s : s + len(part)] = emb.embed(part)
            if bar is not None:
                bar.update(len(part))
    finally:
        if bar is not None:
            bar.close()
    if len(uniq) == len(texts):
        return out
    at = {t: k for k, t in enumerate(uniq)}
    return out[[at[t] for t in texts]]


def _summary(view: str, stats: dict[str, int]) -> None:
    # On the progress stream (stderr), so a rerun that embeds nothing still says why it was quick.
    print(
        f"{view}: {stats['rows']} rows, {stats['embedded']} embedded, {stats['unchanged']} unchanged",
        file=sys.stderr,
        flush=True,
    )
