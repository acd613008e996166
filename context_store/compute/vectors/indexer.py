"""``VectorIndexer``: builds and updates the vector indexes (the compute side of ``serving.similar``)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from ...definitions.interactions import InteractionEmbeddingView
from ...definitions.memory import Memory
from ...errors import InvalidInputError
from ...stores.vector import VectorCollection, VectorCollections, view_columns
from ..embeddings import latest_rows
from .knowledge import index_knowledge_base
from .memories import index_memories
from .views import source_rows, write_rows

if TYPE_CHECKING:
    from ...definitions import EmbeddingView
    from ...stores.offline.base import OfflineStore

__all__ = ["VectorIndexer"]


class VectorIndexer:
    """Writes embedding views and knowledge into the collections of ``collections`` (shared with the
    reader, so what it writes is searchable when a call returns). ``offline``: the store whose
    pushed-event log (``src__``) a backfill of a stream-fed view also reads."""

    def __init__(self, collections: VectorCollections, offline: OfflineStore | None = None) -> None:
        self.collections = collections
        self.offline = offline

    # -- embedding views -------------------------------------------------------------------
    def backfill(
        self, views: Sequence[str] | None = None, progress: bool = False, end_us: int | None = None
    ) -> dict[str, dict[str, int]]:
        """Embed every named view's latest source rows (default: all views); only new or changed
        rows are embedded. A view that had no index is then built (``exists``), even if empty.
        An interaction-trained view trains a new model version on its interactions before
        ``end_us`` (all of them when None) and commits it (``vectors.interactions``)."""
        colls = self.collections
        names = list(views) if views is not None else list(colls.defs.embedding_views)
        out: dict[str, dict[str, int]] = {}
        for name in names:
            view = colls.view_def(name)
            if isinstance(view, InteractionEmbeddingView):
                out[name] = self._train(view, end_us)
                continue
            out[name] = self._backfill(view, colls.view(view), progress)
        return out

    def _train(self, view: InteractionEmbeddingView, end_us: int | None) -> dict[str, int]:
        from pathlib import Path

        from .interactions import commit_version, train_vectors

        text: dict[str, Any] | None = None
        if view.text_view is not None:
            tc = self.collections.view(view.text_view)
            text = {k: v for k in list(tc.hashes) if (v := tc.index.get_vector(k)) is not None}
        rows = source_rows(view, self.collections.config, self.offline)
        trained = train_vectors(view, rows, end_us, text)
        root = str(Path(self.collections.config.offline_path) / "vectors")
        meta = commit_version(view, self.collections.view(view), root, trained)
        return {"rows": int(meta["items"]), "interactions": int(meta["interactions"]), "projected": meta["projected"]}

    def _backfill(self, view: EmbeddingView, coll: VectorCollection, progress: bool) -> dict[str, int]:
        fresh = not coll.exists
        rows = latest_rows(
            view, source_rows(view, self.collections.config, self.offline), view.source.timestamp_field or None
        )
        stats = write_rows(view, coll, rows, progress)
        if fresh:
            coll.loaded_from = "backfill"
        coll.checkpoint()  # the next start loads this snapshot instead of rebuilding
        return stats

    def upsert_entities(self, view: str, rows: Iterable[Mapping[str, Any]] | pa.Table) -> int:
        """Insert or update entities (key, text, attributes) of one view; visible when this returns.
        A view without an index gets its source's history first."""
        v = self.collections.view_def(view)
        try:
            table = rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(list(rows))
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError) as e:
            raise InvalidInputError(
                f"rows must be a list of objects with consistent types: {e}", field="rows"
            ) from None
        for col in (v.join_key, v.text):
            if col not in table.column_names:
                raise InvalidInputError(f"rows need a {col!r} column", field=col)
        for col in view_columns(v):
            if col not in table.column_names:  # a partial update leaves the attribute null
                table = table.append_column(col, pa.nulls(table.num_rows))
        ts = v.source.timestamp_field if v.source.timestamp_field in table.column_names else None
        latest = latest_rows(v, table, ts)
        coll = self.collections.view(v)
        if not coll.exists:
            self._backfill(v, coll, progress=False)
        return write_rows(v, coll, latest)["updated"]

    def delete_entities(self, view: str, ids: Sequence[str]) -> int:
        return self.collections.view(self.collections.view_def(view)).delete([str(i) for i in ids])

    # -- the stream's embedding sink ----------------------------------------------------------
    def views_on_source(self, source: str) -> list[str]:
        """Embedding views fed by ``source`` (a stream's push should update them)."""
        return [
            v.name
            for v in self.collections.defs.embedding_views.values()
            if v.source.name == source and not isinstance(v, InteractionEmbeddingView)  # learned by backfill
        ]

    def ingest(self, source: str, rows: pa.Table | Iterable[Mapping[str, Any]]) -> dict[str, int]:
        """Route pushed rows of ``source`` to every embedding view on it: new or changed texts are
        embedded and visible to ``find_similar`` when this returns. Returns rows updated per view."""
        table = rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(list(rows))
        out: dict[str, int] = {}
        src = self.collections.defs.sources.get(source)
        if isinstance(src, Memory):  # a memory source: its texts into its own collection
            out[source] = index_memories(src, self.collections.memory(src), table)
        for name in self.views_on_source(source):
            v = self.collections.defs.embedding_views[name]
            if v.join_key in table.column_names and v.text in table.column_names:
                out[name] = self.upsert_entities(name, table)
        return out

    # -- knowledge ------------------------------------------------------------------------------
    def index_knowledge(self, names: Sequence[str] | None = None, progress: bool = False) -> dict[str, dict[str, int]]:
        """(Re)index knowledge files; a changed file's chunks are replaced, a deleted file's removed."""
        colls = self.collections
        repo = Path(colls.config.repo)
        out: dict[str, dict[str, int]] = {}
        for name in list(names) if names is not None else list(colls.defs.knowledge):
            kb = colls.kb_def(name)
            coll = colls.knowledge(kb)
            fresh = not coll.exists
            out[name] = index_knowledge_base(kb, coll, repo, progress)
            if fresh:
                coll.loaded_from = "backfill"
            coll.checkpoint()
        return out

    def close(self) -> None:
        """Snapshot what changed and release the shared collections (they reopen on next use)."""
        self.collections.close()
