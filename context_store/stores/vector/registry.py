"""``VectorCollections``: the open collections of a workspace's embedding views and knowledge bases.

One registry is shared by the indexer (``compute.vectors``, which writes) and the reader
(``serving.similar``, which searches), so a write is visible to the next read at once: both work
on the same in-memory FAISS index. Opening a collection loads its index (snapshot, else a
rebuild from the table); it never computes vectors. A collection whose table does not exist yet
was never built (no backfill ran): ``VectorCollection.exists`` says so.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ...errors import InvalidInputError, NotFoundError
from ..offline.base import sql_equals
from .collection import ATTR_PREFIX, VectorCollection
from .lance_vectors import LanceVectors, embedding_table, knowledge_table

if TYPE_CHECKING:
    from ...config import Config
    from ...definitions import EmbeddingView, Knowledge, Memory
    from ...registry.repo import RepoDefinitions

__all__ = [
    "VectorCollections",
    "CollectionOptions",
    "ENTITY_KEY",
    "KB_KEY",
    "KB_ATTRS",
    "MEMORY_KEY",
    "memory_columns",
    "memory_table",
    "view_columns",
]

ENTITY_KEY = "entity_id"  # the key column of emb__ tables (the view's join key values, as strings)
KB_KEY = "chunk_id"
KB_ATTRS = ["file", "source", "start", "end", "text"]
MEMORY_KEY = "memory_id"


@dataclass(frozen=True, slots=True)
class CollectionOptions:
    """How every collection of a registry keeps its FAISS index (see ``VectorCollection``)."""

    refresh_interval: float = 1.0
    flat_threshold: int = 10_000
    snapshots: bool = True
    snapshot_min_rows: int = 1000
    snapshot_every: int = 10_000
    snapshot_interval: float = 300.0


def view_columns(view: EmbeddingView) -> list[str]:
    """Attributes stored beside each vector: the text column, then the declared attributes."""
    return list(dict.fromkeys([view.text, *[a for a in view.attributes if a != view.join_key]]))


def memory_columns(mem: Memory) -> list[str]:
    """Attributes beside each memory's vector: the entity's join key (named as such, so per-entity
    filters and erasure by ``join_key == value`` work like on any collection), then its columns."""
    return [mem.join_key, "text", "kind", "metadata", "written_by", "created_us"]


def memory_table(name: str) -> str:
    return f"mem__{name}"


def embedder_dim(embedder: str) -> int:
    """The dimension of ``embedder``'s vectors (a probe embedding when the registry does not know it)."""
    from ...embedders import embedder_dim as known_dim
    from ...embedders import get_embedder

    dim = known_dim(embedder)
    if dim is not None:
        return dim
    try:
        return int(get_embedder(embedder).embed(["dim probe"]).shape[1])
    except KeyError as e:
        raise InvalidInputError(str(e.args[0] if e.args else e), field="embedder") from None


class VectorCollections:
    def __init__(self, defs: RepoDefinitions, config: Config, options: CollectionOptions | None = None) -> None:
        self.defs = defs
        self.config = config
        self.options = options or CollectionOptions()
        self._lock = threading.RLock()
        self.views: dict[str, VectorCollection] = {}
        self.kbs: dict[str, VectorCollection] = {}
        self.memories: dict[str, VectorCollection] = {}
        self._lance: LanceVectors | None = None

    @property
    def lance(self) -> LanceVectors:
        if self._lance is None:
            with self._lock:
                if self._lance is None:
                    self._lance = LanceVectors(Path(self.config.offline_path) / "vectors")
        return self._lance

    # -- definitions -----------------------------------------------------------------------
    def view_def(self, name: object) -> EmbeddingView:
        if not isinstance(name, str) or name not in self.defs.embedding_views:
            known = ", ".join(sorted(self.defs.embedding_views)) or "none"
            raise NotFoundError(f"unknown embedding view {name!r}; known: {known}", field="view")
        return self.defs.embedding_views[name]

    def kb_def(self, name: object) -> Knowledge:
        if not isinstance(name, str) or name not in self.defs.knowledge:
            known = ", ".join(sorted(self.defs.knowledge)) or "none"
            raise NotFoundError(f"unknown knowledge {name!r}; known: {known}", field="knowledge")
        return self.defs.knowledge[name]

    # -- opening -----------------------------------------------------------------------------
    def view(self, view: EmbeddingView) -> VectorCollection:
        """The view's collection, opened on first use and refreshed with other processes' writes."""
        return self._get(
            self.views,
            view.name,
            lambda: self._open(
                embedding_table(view.name),
                view.embedder,
                ENTITY_KEY,
                view_columns(view),
                view.index,
                dim=getattr(view, "dim", None),  # an interaction-trained view declares its dim
            ),
        )

    def knowledge(self, kb: Knowledge) -> VectorCollection:
        return self._get(
            self.kbs, kb.name, lambda: self._open(knowledge_table(kb.name), kb.embedder, KB_KEY, KB_ATTRS, "auto")
        )

    def memory(self, mem: Memory) -> VectorCollection:
        """The memory source's collection (one vector per memory, keyed by ``memory_id``)."""
        return self._get(
            self.memories,
            mem.name,
            lambda: self._open(memory_table(mem.name), mem.embedder, MEMORY_KEY, memory_columns(mem), "auto"),
        )

    def _get(
        self, cache: dict[str, VectorCollection], name: str, open_: Callable[[], VectorCollection]
    ) -> VectorCollection:
        coll = cache.get(name)
        if coll is None:
            with self._lock:
                coll = cache.get(name)
                if coll is None:
                    coll = cache[name] = open_()
            return coll
        coll.refresh()
        return coll

    def _open(
        self, table: str, embedder: str, key: str, attrs: list[str], kind: str, dim: int | None = None
    ) -> VectorCollection:
        o = self.options
        return VectorCollection(
            self.lance,
            table,
            dim=dim or embedder_dim(embedder),
            key=key,
            attributes=attrs,
            embedder=embedder,
            kind=kind,
            flat_threshold=o.flat_threshold,
            refresh_interval=o.refresh_interval,
            snapshots=o.snapshots,
            snapshot_min_rows=o.snapshot_min_rows,
            snapshot_every=o.snapshot_every,
            snapshot_interval=o.snapshot_interval,
        ).open()

    # -- right to erasure ----------------------------------------------------------------------
    def forget_entity(self, join_key: str, value: str) -> dict[str, int]:
        """Erase every vector item of ``join_key=value``: items of embedding views keyed by it, and
        items of any table under the vectors directory (memories too) whose attribute ``join_key``
        equals ``value``. Returns rows erased per table (tables with none left out)."""
        lance = self.lance
        keyed = {embedding_table(v.name) for v in self.defs.embedding_views.values() if v.join_key == join_key}
        opened = {c.table: c for c in [*self.views.values(), *self.kbs.values(), *self.memories.values()]}
        out: dict[str, int] = {}
        for name in lance.tables():
            schema = lance.schema(name)
            if schema is None:
                continue
            cols = [ATTR_PREFIX + join_key, join_key] + ([ENTITY_KEY] if name in keyed else [])
            conds = [c for c in (sql_equals(schema, col, value) for col in cols) if c is not None]
            if not conds:
                continue
            where = " OR ".join(f"({c})" for c in conds)
            coll = opened.get(name)
            n = coll.erase_where(where) if coll is not None else lance.erase_where(name, where)
            if n:
                out[name] = n
        return out

    # -- lifecycle -----------------------------------------------------------------------------
    def close(self) -> None:
        """Snapshot indexes changed since their last snapshot and release; reopens lazily on next use."""
        with self._lock:
            for c in [*self.views.values(), *self.kbs.values(), *self.memories.values()]:
                c.close()
            self.views.clear()
            self.kbs.clear()
            self.memories.clear()
            if self._lance is not None:
                self._lance.close()
                self._lance = None
