"""Memories into their vector collection: one vector per memory, keyed by ``memory_id``.

Memories are immutable, so a row whose id the collection holds is skipped: a deduplicated or
replayed push never re-embeds a text or moves a memory's created time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pyarrow as pa

from ...state.columns import ts_to_us
from ...stores.vector import VectorCollection
from ..embeddings import text_hash
from .views import embed_rows

if TYPE_CHECKING:
    from ...definitions import Memory

__all__ = ["index_memories"]


def index_memories(mem: Memory, coll: VectorCollection, rows: pa.Table) -> int:
    """Embed and add the memories of ``rows`` (the source's columns) the collection lacks; returns how many.
    Durable in Lance, then searchable, when this returns."""
    ids = [str(i) if i is not None else "" for i in rows.column("memory_id").to_pylist()]
    seen: set[str] = set()
    todo: list[int] = []
    for i, id_ in enumerate(ids):
        if id_ and id_ not in seen and id_ not in coll.hashes:
            seen.add(id_)
            todo.append(i)
    if not todo:
        return 0
    sel = rows.take(pa.array(todo, type=pa.int64()))
    texts = ["" if t is None else str(t) for t in sel.column("text").to_pylist()]
    vecs = embed_rows(texts, mem.embedder)
    key = sel.column(mem.join_key).to_pylist()
    attrs = {
        mem.join_key: pa.array([None if v is None else str(v) for v in key], pa.string()),
        "text": pa.array(texts, pa.string()),
        "kind": sel.column("kind").cast(pa.string()),
        "metadata": sel.column("metadata").cast(pa.string()),
        "written_by": sel.column("written_by").cast(pa.string()),
        "created_us": pa.array(ts_to_us(sel.column("ts")), pa.int64()),
    }
    hashes = [text_hash(t, mem.embedder) for t in texts]
    coll.upsert(coll.rows([ids[i] for i in todo], vecs, hashes, attrs))
    return len(todo)
