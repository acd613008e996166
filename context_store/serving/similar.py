"""``VectorService``: embedding views and knowledge collections, served from FAISS.

Each view / knowledge base is a ``stores.vector.VectorCollection``: a LanceDB table under
``<offline_path>/vectors`` (durable) plus an in-memory FAISS index built from it on first use,
kept in sync on every write and refreshed from other processes' writes. The index is restored
from its snapshot beside the table when there is one (only rows changed since are replayed),
so a restart does not rebuild it; ``warm`` loads every index eagerly (a server calls it at start
and reports ``ready`` on /readyz). A view that was never backfilled is backfilled from its
source on first use; a knowledge base is indexed likewise.
This module owns the definitions side: validation, embedding, change detection, chunking.
"""

from __future__ import annotations

import logging
import math
import numbers
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ..compute.embeddings import (
    embed_texts,
    file_digest,
    knowledge_files,
    latest_rows,
    read_chunks,
    text_hash,
)
from ..config import Config
from ..definitions import EmbeddingView, Knowledge, StreamSource
from ..errors import InvalidInputError, NotFoundError
from ..registry.repo import RepoDefinitions
from ..stores.vector import LanceVectors, VectorCollection, compile_filter, embedding_table, knowledge_table
from ..types import KnowledgeChunk, KnowledgeResult, SimilarItem, SimilarResult

__all__ = ["VectorService", "MAX_K", "MAX_TEXT"]

MAX_K = 100
MAX_TEXT = 10_000  # characters of a query text
_KEY = "entity_id"  # the key column of emb__ tables (the view's join key values, as strings)
_KB_ATTRS = ["file", "source", "start", "end", "text"]
_log = logging.getLogger(__name__)


def _check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 1 <= int(k) <= MAX_K:
        raise InvalidInputError(f"k must be an integer in 1..{MAX_K}, got {k!r}", field="k")
    return int(k)


def _check_text(text: Any, name: str) -> str:
    if not isinstance(text, str) or not text.strip():
        raise InvalidInputError(f"{name} must be a non-empty string", field=name)
    if len(text) > MAX_TEXT:
        raise InvalidInputError(f"{name} is longer than {MAX_TEXT} characters", field=name)
    return text


class VectorService:
    def __init__(
        self,
        defs: RepoDefinitions,
        config: Config,
        offline: Any = None,
        *,
        refresh_interval: float = 1.0,
        flat_threshold: int = 10_000,
        snapshots: bool = True,
        snapshot_min_rows: int = 1000,
        snapshot_every: int = 10_000,
        snapshot_interval: float = 300.0,
    ) -> None:
        self.defs = defs
        self.config = config
        self.offline = offline
        self.refresh_interval = refresh_interval
        self.flat_threshold = flat_threshold
        self._snapshot_opts = {
            "snapshots": snapshots,
            "snapshot_min_rows": snapshot_min_rows,
            "snapshot_every": snapshot_every,
            "snapshot_interval": snapshot_interval,
        }
        self._warm_thread: threading.Thread | None = None
        self._warm_state: dict[str, Any] = {"state": "cold", "collections": {}, "error": None, "seconds": None}
        self._lock = threading.RLock()
        self._views: dict[str, VectorCollection] = {}
        self._kbs: dict[str, VectorCollection] = {}
        self._lance: LanceVectors | None = None

    @property
    def lance(self) -> LanceVectors:
        if self._lance is None:
            with self._lock:
                if self._lance is None:
                    self._lance = LanceVectors(Path(self.config.offline_path) / "vectors")
        return self._lance

    # -- definitions -----------------------------------------------------------------------
    def _view(self, name: Any) -> EmbeddingView:
        if not isinstance(name, str) or name not in self.defs.embedding_views:
            known = ", ".join(sorted(self.defs.embedding_views)) or "none"
            raise NotFoundError(f"unknown embedding view {name!r}; known: {known}", field="view")
        return self.defs.embedding_views[name]

    def _kb(self, name: Any) -> Knowledge:
        if not isinstance(name, str) or name not in self.defs.knowledge:
            known = ", ".join(sorted(self.defs.knowledge)) or "none"
            raise NotFoundError(f"unknown knowledge {name!r}; known: {known}", field="knowledge")
        return self.defs.knowledge[name]

    @staticmethod
    def _embed(texts: Sequence[str], embedder: str) -> np.ndarray:
        try:
            return embed_texts(texts, embedder)
        except KeyError as e:
            raise InvalidInputError(str(e.args[0] if e.args else e), field="embedder") from None

    @staticmethod
    def _columns(view: EmbeddingView) -> list[str]:
        """Attributes stored beside each vector: the text column, then the declared attributes."""
        return list(dict.fromkeys([view.text, *[a for a in view.attributes if a != view.join_key]]))

    # -- loading ---------------------------------------------------------------------------
    def _collection(self, table: str, embedder: str, key: str, attrs: list[str], kind: str) -> VectorCollection:
        return VectorCollection(
            self.lance,
            table,
            dim=self._dim(embedder),
            key=key,
            attributes=attrs,
            embedder=embedder,
            kind=kind,
            flat_threshold=self.flat_threshold,
            refresh_interval=self.refresh_interval,
            **self._snapshot_opts,
        ).open()

    def _view_state(self, view: EmbeddingView, auto_backfill: bool = True) -> VectorCollection:
        coll = self._views.get(view.name)
        if coll is None:
            with self._lock:
                coll = self._views.get(view.name)
                if coll is None:
                    coll = self._collection(
                        embedding_table(view.name), view.embedder, _KEY, self._columns(view), view.index
                    )
                    self._views[view.name] = coll
                    if auto_backfill and not coll.exists:
                        self._backfill_view(view, coll, progress=False)
                        coll.loaded_from = "backfill"
                        coll.checkpoint()
            return coll
        coll.refresh()
        return coll

    def _dim(self, embedder: str) -> int:
        from context_store.embedders import embedder_dim

        dim = embedder_dim(embedder)
        return dim if dim is not None else int(self._embed(["dim probe"], embedder).shape[1])

    # -- embedding views: writes -------------------------------------------------------------
    def _source_rows(self, view: EmbeddingView) -> pa.Table:
        from ..compute.transform import batch_source_of, read_source

        src = view.source
        parts: list[pa.Table] = []
        if batch_source_of(src) is not None:
            parts.append(read_source(src, self.config.repo))
        if isinstance(src, StreamSource) and self.offline is not None:
            try:
                from ..stores.offline import source_table

                name = source_table(src.name)
                if self.offline.exists(name):
                    parts.append(self.offline.read(name))
            except NotFoundError:
                pass
        if not parts:
            return pa.table({view.join_key: pa.array([], pa.string()), view.text: pa.array([], pa.string())})
        return pa.concat_tables(parts, promote_options="permissive") if len(parts) > 1 else parts[0]

    def _backfill_view(self, view: EmbeddingView, state: VectorCollection, progress: bool) -> dict[str, int]:
        rows = latest_rows(view, self._source_rows(view), view.source.timestamp_field or None)
        return self._write_rows(view, state, rows, progress)

    def _write_rows(
        self, view: EmbeddingView, state: VectorCollection, rows: pa.Table, progress: bool = False
    ) -> dict[str, int]:
        key, attrs = view.join_key, self._columns(view)
        ids = rows.column(key).cast(pa.string()).to_pylist()
        texts = ["" if t is None else str(t) for t in rows.column(view.text).to_pylist()]
        cols = {a: rows.column(a) for a in attrs}
        thash = [text_hash(t, view.embedder) for t in texts]
        pyattrs = {a: c.to_pylist() for a, c in cols.items()}
        # Row hash = text hash + attributes hash, so "text unchanged" is a prefix test.
        full = [th + text_hash(repr([pyattrs[a][i] for a in attrs]), "row") for i, th in enumerate(thash)]
        todo = [i for i, id_ in enumerate(ids) if state.hashes.get(id_) != full[i]]
        stats = {"rows": len(ids), "unchanged": len(ids) - len(todo), "embedded": 0, "updated": len(todo)}
        if not todo:
            return stats
        vecs = np.zeros((len(todo), state.index.dim), dtype=np.float32)
        need: list[int] = []
        for j, i in enumerate(todo):
            old = state.index.get_vector(ids[i]) if state.hashes.get(ids[i], "").startswith(thash[i]) else None
            if old is not None:
                vecs[j] = old  # only attributes changed: keep the vector
            else:
                need.append(j)
        stats["embedded"] = len(need)
        bar = None
        if progress and need:
            from tqdm import tqdm

            bar = tqdm(total=len(need), desc=f"embed {view.name}", unit="row")
        step = 512
        for s in range(0, len(need), step):
            part = need[s : s + step]
            vecs[part] = self._embed([texts[todo[j]] for j in part], view.embedder)
            if bar is not None:
                bar.update(len(part))
        if bar is not None:
            bar.close()
        sel = pa.array(todo, type=pa.int64())
        data = state.rows([ids[i] for i in todo], vecs, [full[i] for i in todo], {a: cols[a].take(sel) for a in attrs})
        state.upsert(data)  # durable first, then visible
        return stats

    def backfill(self, views: Sequence[str] | None = None, progress: bool = False) -> dict[str, dict[str, int]]:
        """Embed every embedding view's latest source rows; only new or changed rows are embedded."""
        names = list(views) if views is not None else list(self.defs.embedding_views)
        out: dict[str, dict[str, int]] = {}
        for name in names:
            view = self._view(name)
            state = self._view_state(view, auto_backfill=False)
            out[name] = self._backfill_view(view, state, progress)
            state.checkpoint()  # the next start loads this instead of rebuilding
        return out

    def upsert_entities(self, view: str, rows: Iterable[Mapping[str, Any]] | pa.Table) -> int:
        """Insert or update entities (key, text, attributes) of one view; visible when this returns."""
        v = self._view(view)
        try:
            table = rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(list(rows))
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError) as e:
            raise InvalidInputError(
                f"rows must be a list of objects with consistent types: {e}", field="rows"
            ) from None
        for col in (v.join_key, v.text):
            if col not in table.column_names:
                raise InvalidInputError(f"rows need a {col!r} column", field=col)
        for col in self._columns(v):
            if col not in table.column_names:  # a partial update leaves the attribute null
                table = table.append_column(col, pa.nulls(table.num_rows))
        ts = v.source.timestamp_field if v.source.timestamp_field in table.column_names else None
        latest = latest_rows(v, table, ts)
        state = self._view_state(v)  # a never-backfilled view gets its history first
        return self._write_rows(v, state, latest)["updated"]

    def views_on_source(self, source: str) -> list[str]:
        """Embedding views fed by ``source`` (a stream's push should update them)."""
        return [v.name for v in self.defs.embedding_views.values() if v.source.name == source]

    def ingest(self, source: str, rows: Iterable[Mapping[str, Any]] | pa.Table) -> dict[str, int]:
        """Route pushed rows of ``source`` to every embedding view on it (the stream ingest hook):
        new or changed texts are embedded and visible to ``find_similar`` when this returns."""
        table = rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(list(rows))
        out: dict[str, int] = {}
        for name in self.views_on_source(source):
            v = self.defs.embedding_views[name]
            if v.join_key in table.column_names and v.text in table.column_names:
                out[name] = self.upsert_entities(name, table)
        return out

    def delete_entities(self, view: str, ids: Sequence[str]) -> int:
        v = self._view(view)
        return self._view_state(v).delete([str(i) for i in ids])

    # -- embedding views: reads --------------------------------------------------------------
    def find_similar(
        self,
        view: str,
        *,
        text: str | None = None,
        entity_id: str | None = None,
        vector: Sequence[float] | None = None,
        k: int = 10,
        filter: Mapping[str, Any] | None = None,
    ) -> SimilarResult:
        v = self._view(view)
        k = _check_k(k)
        given = [n for n, x in (("text", text), ("entity_id", entity_id), ("vector", vector)) if x is not None]
        if len(given) != 1:
            raise InvalidInputError(
                "give exactly one of text, entity_id or vector" + (f" (got {', '.join(given)})" if given else ""),
                field="query",
            )
        conds = compile_filter(filter, self._columns(v))  # validates names and ops up front
        state = self._view_state(v)
        exclude: tuple[str, ...] = ()
        if text is not None:
            q = self._embed([_check_text(text, "text")], v.embedder)[0]
        elif entity_id is not None:
            if not isinstance(entity_id, (str, int)) or isinstance(entity_id, bool):
                raise InvalidInputError("entity_id must be a string", field="entity_id")
            eid = str(entity_id)
            found = state.index.get_vector(eid)
            if found is None:
                raise NotFoundError(f"entity {eid!r} has no embedding in view {v.name!r}", field="entity_id")
            q, exclude = found, (eid,)
        else:
            q = self._check_vector(vector, state.index.dim)
        hits = state.index.search(q, k, filter=filter if conds else None, exclude=exclude)
        attrs = state.index.search_attributes(hits)
        return SimilarResult(view=v.name, items=[SimilarItem(i, s, a) for (i, s), a in zip(hits, attrs)])

    @staticmethod
    def _check_vector(vector: Any, dim: int) -> np.ndarray:
        try:
            q = np.asarray(vector, dtype=np.float32).reshape(-1) if not isinstance(vector, (str, bytes)) else None
        except (TypeError, ValueError):
            q = None
        if q is None or q.ndim != 1:
            raise InvalidInputError("vector must be a list of numbers", field="vector")
        if q.shape[0] != dim:
            raise InvalidInputError(
                f"vector has dimension {q.shape[0]}, the view's embeddings have {dim}", field="vector"
            )
        n = float(np.linalg.norm(q))
        if not math.isfinite(n) or n == 0.0:
            raise InvalidInputError("vector must be finite and non-zero", field="vector")
        return q

    def get_vectors(self, view: str, ids: Sequence[str]) -> dict[str, np.ndarray]:
        """Stored unit vectors of ``ids`` (missing ids are left out), e.g. to average the items
        of a user's events into an interest vector without re-embedding their text."""
        coll = self._view_state(self._view(view))
        out: dict[str, np.ndarray] = {}
        for i in ids:
            v = coll.index.get_vector(str(i))
            if v is not None:
                out[str(i)] = v
        return out

    def embed_query(self, view: str, text: str) -> np.ndarray:
        """The query vector ``find_similar(view, text=...)`` would use."""
        v = self._view(view)
        return self._embed([_check_text(text, "text")], v.embedder)[0]

    # -- knowledge ---------------------------------------------------------------------------
    def _kb_state(self, kb: Knowledge, auto_index: bool = True) -> VectorCollection:
        coll = self._kbs.get(kb.name)
        if coll is None:
            with self._lock:
                coll = self._kbs.get(kb.name)
                if coll is None:
                    coll = self._collection(knowledge_table(kb.name), kb.embedder, "chunk_id", _KB_ATTRS, "auto")
                    self._kbs[kb.name] = coll
                    if auto_index and not coll.exists:
                        self._index_kb(kb, coll)
                        coll.loaded_from = "backfill"
                        coll.checkpoint()
            return coll
        coll.refresh()
        return coll

    def _index_kb(self, kb: Knowledge, state: VectorCollection, progress: bool = False) -> dict[str, int]:
        repo = Path(self.config.repo)
        files = knowledge_files(kb, repo)
        digests: dict[str, str] = {}
        known = state.read(["file", "row_hash"])
        if known is not None:
            for f, h in zip(known.column("file").to_pylist(), known.column("row_hash").to_pylist()):
                digests[f] = h.split(":", 1)[0]
        stats = {"files": len(files), "reindexed": 0, "removed": 0, "chunks": 0}
        seen: set[str] = set()
        it: Iterable[Path] = files
        if progress:
            from tqdm import tqdm

            it = tqdm(files, desc=f"index {kb.name}", unit="file")
        for path in it:
            rel = _rel_or(path, repo, path.as_posix())
            seen.add(rel)
            digest = file_digest(path, kb)
            if digests.get(rel) == digest:
                continue
            chunks = read_chunks(kb, path, repo)
            texts = [f"{c.context}\n{c.text}" if c.context else c.text for c in chunks]
            vecs = self._embed(texts, kb.embedder) if chunks else np.zeros((0, state.index.dim), np.float32)
            data = state.rows(
                [c.chunk_id for c in chunks],
                vecs,
                # digest first: a file is unchanged when its chunks' hashes start with it
                [f"{digest}:{text_hash(c.text, kb.embedder)}" for c in chunks],
                {
                    "file": pa.array([c.file for c in chunks], pa.string()),
                    "source": pa.array([c.source for c in chunks], pa.string()),
                    "start": pa.array([c.start for c in chunks], pa.int64()),
                    "end": pa.array([c.end for c in chunks], pa.int64()),
                    "text": pa.array([c.text for c in chunks], pa.string()),
                },
                extra={"file": pa.array([c.file for c in chunks], pa.string())},  # plain column for the scope
            )
            self._replace_file(state, rel, data)
            stats["reindexed"] += 1
            stats["chunks"] += len(chunks)
        for gone in sorted(set(digests) - seen):  # files deleted from disk
            self._replace_file(state, gone, None)
            stats["removed"] += 1
        return stats

    @staticmethod
    def _replace_file(state: VectorCollection, rel: str, data: pa.Table | None) -> None:
        # chunk ids are "<file>@<start>" or "<file>#<line>@<start>"
        old = [i for i in list(state.hashes) if i.startswith((rel + "@", rel + "#"))]
        state.replace(data, "file = '" + rel.replace("'", "''") + "'", old)

    def index_knowledge(self, names: Sequence[str] | None = None, progress: bool = False) -> dict[str, dict[str, int]]:
        """(Re)index knowledge files; a changed file's chunks are replaced, a deleted file's removed."""
        out: dict[str, dict[str, int]] = {}
        for name in list(names) if names is not None else list(self.defs.knowledge):
            kb = self._kb(name)
            state = self._kb_state(kb, auto_index=False)
            out[name] = self._index_kb(kb, state, progress)
            state.checkpoint()
        return out

    def search_knowledge(
        self, name: str, query: str, k: int = 5, filter: Mapping[str, Any] | None = None
    ) -> KnowledgeResult:
        kb = self._kb(name)
        k = _check_k(k)
        query = _check_text(query, "query")
        conds = compile_filter(filter, ["file", "source"])
        state = self._kb_state(kb)
        q = self._embed([query], kb.embedder)[0]
        hits = state.index.search(q, k, filter=filter if conds else None)
        chunks = [
            KnowledgeChunk(
                text=a["text"], score=s, source=a["source"], start=int(a["start"]), end=int(a["end"]), chunk_id=i
            )
            for (i, s), a in zip(hits, state.index.search_attributes(hits))
        ]
        return KnowledgeResult(knowledge=kb.name, query=query, chunks=chunks)

    # -- warm-up / readiness ---------------------------------------------------------------------
    def warm(
        self, views: Sequence[str] | None = None, knowledge: Sequence[str] | None = None, *, background: bool = False
    ) -> None:
        """Load the indexes of ``views`` and ``knowledge`` (default: all) now: from their snapshots,
        else by a rebuild (a never-backfilled view is backfilled, as on first use).

        ``background=True`` returns at once and loads in a daemon thread; poll ``ready`` /
        ``readiness()`` (e.g. from /readyz) or block with ``wait_ready``; a failure there is
        reported by ``readiness()["error"]``, in the foreground it is raised. Unknown names raise
        NotFoundError up front.
        """
        names = [self._view(n).name for n in views] if views is not None else list(self.defs.embedding_views)
        kbs = [self._kb(n).name for n in knowledge] if knowledge is not None else list(self.defs.knowledge)
        if self._warm_thread is not None:
            self._warm_thread.join()  # one warm-up at a time
        pending = {**{f"view:{n}": "pending" for n in names}, **{f"knowledge:{n}": "pending" for n in kbs}}
        self._warm_state = {"state": "warming", "collections": pending, "error": None, "seconds": None}
        if not background:
            return self._warm(names, kbs, reraise=True)
        self._warm_thread = threading.Thread(target=self._warm, args=(names, kbs), name="vector-warm", daemon=True)
        self._warm_thread.start()

    def _warm(self, names: list[str], kbs: list[str], reraise: bool = False) -> None:
        t0, st = time.perf_counter(), self._warm_state
        try:
            for key, load in [
                *((f"view:{n}", lambda n=n: self._view_state(self._view(n))) for n in names),
                *((f"knowledge:{n}", lambda n=n: self._kb_state(self._kb(n))) for n in kbs),
            ]:
                st["collections"][key] = "loading"
                st["collections"][key] = load().loaded_from or "empty"
            st["state"] = "ready"
        except Exception as e:  # reported through readiness(), never an unhandled thread error
            _log.exception("vector warm-up failed")
            st["state"], st["error"] = "failed", f"{type(e).__name__}: {e}"
            if reraise:
                raise
        finally:
            st["seconds"] = round(time.perf_counter() - t0, 3)

    @property
    def ready(self) -> bool:
        """False while a ``warm`` is loading or after it failed; True otherwise (also if never warmed:
        indexes then load lazily on first use)."""
        return self._warm_state["state"] in ("cold", "ready")

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until a background ``warm`` finishes (or ``timeout`` seconds); returns ``ready``."""
        t = self._warm_thread
        if t is not None:
            t.join(timeout)
        return self.ready

    def readiness(self) -> dict[str, Any]:
        """``{"ready", "state": cold|warming|ready|failed, "collections": {"view:<n>": pending|loading|
        snapshot|rebuild|backfill|empty}, "error", "seconds"}`` — the body of a /readyz answer."""
        st = self._warm_state
        return {
            "ready": self.ready,
            "state": st["state"],
            "collections": dict(st["collections"]),
            "error": st["error"],
            "seconds": st["seconds"],
        }

    def save_snapshots(self) -> dict[str, int]:
        """Snapshot every loaded index now; returns bytes written per ``view:<n>`` / ``knowledge:<n>``."""
        out: dict[str, int] = {}
        for prefix, colls in (("view", self._views), ("knowledge", self._kbs)):
            for n, c in list(colls.items()):
                if c.exists:
                    out[f"{prefix}:{n}"] = c.save_snapshot()
        return out

    # -- lifecycle -----------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        def one(c: VectorCollection) -> dict[str, Any]:
            return {**c.index.stats(), "loaded_from": c.loaded_from, "replayed": c.replayed}

        return {
            "views": {n: one(c) for n, c in self._views.items()},
            "knowledge": {n: one(c) for n, c in self._kbs.items()},
        }

    def close(self) -> None:
        """Finish a running warm-up, snapshot indexes changed since their last snapshot, release."""
        t = self._warm_thread
        if t is not None:
            t.join()
        with self._lock:
            for c in [*self._views.values(), *self._kbs.values()]:
                c.close()
            self._views.clear()
            self._kbs.clear()
            if self._lance is not None:
                self._lance.close()
                self._lance = None


def _rel_or(path: Path, repo: Path, default: str) -> str:
    try:
        return path.resolve().relative_to(repo.resolve()).as_posix()
    except ValueError:
        return default
