"""``VectorService``: reads of embedding views and knowledge collections, served from FAISS.

Each view / knowledge base is a ``stores.vector.VectorCollection`` (a LanceDB table plus an
in-memory FAISS index), opened through a ``VectorCollections`` registry shared with the indexer
(``compute.vectors.VectorIndexer``), so its writes are visible here at once; writes of other
processes are picked up by a throttled refresh. Opening loads an index from its snapshot (only
rows changed since are replayed) or rebuilds it from the table; nothing here computes an index.
A view or knowledge base that was never built answers a clear error naming the command that
builds it. ``warm`` loads every index eagerly (a server calls it at start and reports ``ready``
on /readyz).
"""

from __future__ import annotations

import logging
import math
import numbers
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..access import Subject, subject_entity_id
from ..compute.embeddings import embed_checked
from ..definitions import EmbeddingView, InteractionEmbeddingView, Knowledge
from ..errors import InvalidInputError, NotFoundError
from ..limits import KNOWLEDGE_K, QUERY_TEXT_CHARS, SIMILAR_K, IntRange
from ..registry.repo import RepoDefinitions
from ..stores.vector import VectorCollection, VectorCollections, compile_filter, view_columns
from ..stores.vector.base import split_id
from ..types import KnowledgeChunk, KnowledgeResult, SimilarItem, SimilarResult

__all__ = ["VectorService", "MAX_K", "MAX_TEXT"]

MAX_K = SIMILAR_K.hi
MAX_TEXT = QUERY_TEXT_CHARS  # characters of a query text
_log = logging.getLogger(__name__)


def _check_k(k: Any, allowed: IntRange = SIMILAR_K) -> int:
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or int(k) not in allowed:
        raise InvalidInputError(f"k must be an integer in {allowed}, got {k!r}", field="k")
    return int(k)


def _check_text(text: Any, name: str) -> str:
    if not isinstance(text, str) or not text.strip():
        raise InvalidInputError(f"{name} must be a non-empty string", field=name)
    if len(text) > MAX_TEXT:
        raise InvalidInputError(f"{name} is longer than {MAX_TEXT} characters", field=name)
    return text


_WARM_TEXTS = ("warm-up", "a longer warm-up query, so the first real text query runs on a warm model")


def _warm_embedder(name: str) -> str:
    """Load embedder ``name`` and run it (the first runs of a model are slow), so the first text query
    after a server reports ready is as fast as later ones. A model that cannot load is reported, not
    raised: features and vector reads still serve, and a text query answers the load error itself."""
    try:
        for text in _WARM_TEXTS:
            embed_checked([text], name)
        embed_checked(list(_WARM_TEXTS), name)  # a batch as well: the indexer's path
    except Exception as e:  # noqa: BLE001 - reported by readiness()
        _log.warning("embedder %s could not be warmed: %s", name, e)
        return f"unavailable: {type(e).__name__}: {e}"
    return "ready"


class VectorService:
    def __init__(self, collections: VectorCollections) -> None:
        self.collections = collections
        self._warm_thread: threading.Thread | None = None
        self._warm_state: dict[str, Any] = {
            "state": "cold",
            "collections": {},
            "embedders": {},
            "error": None,
            "seconds": None,
        }

    @property
    def defs(self) -> RepoDefinitions:
        return self.collections.defs

    # -- opening (never building) ------------------------------------------------------------
    def _view_index(self, view: EmbeddingView) -> VectorCollection:
        coll = self.collections.view(view)
        if not coll.exists:
            raise NotFoundError(
                f"embedding view {view.name!r} has no index yet: run `context-store backfill --view {view.name}`",
                field="view",
            )
        return coll

    def _kb_index(self, kb: Knowledge) -> VectorCollection:
        coll = self.collections.knowledge(kb)
        if not coll.exists:
            raise NotFoundError(
                f"knowledge {kb.name!r} is not indexed yet: run `context-store knowledge index {kb.name}` "
                "(or `context-store backfill`)",
                field="knowledge",
            )
        return coll

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
        subject: Subject | None = None,
    ) -> SimilarResult:
        v = self.collections.view_def(view)
        if subject is not None and entity_id is not None:  # by entity: only the subject's own
            entity_id = subject_entity_id(subject, v.entities[0].join_keys[0], entity_id)
        k = _check_k(k)
        given = [n for n, x in (("text", text), ("entity_id", entity_id), ("vector", vector)) if x is not None]
        if len(given) != 1:
            raise InvalidInputError(
                "give exactly one of text, entity_id or vector" + (f" (got {', '.join(given)})" if given else ""),
                field="query",
            )
        # Validates names and ops up front; the view's key names the item id itself ($in/$nin on it).
        conds, ids = split_id(compile_filter(filter, [*view_columns(v), v.join_key]), v.join_key)
        attr_filter = {c: s for c, s in (filter or {}).items() if c != v.join_key} if conds else None
        state = self._view_index(v)
        exclude: tuple[str, ...] = ()
        if text is not None:
            q = embed_checked([_check_text(text, "text")], v.embedder)[0]
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
        hits = state.index.search(q, k, filter=attr_filter, exclude=exclude, ids=ids)
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
        coll = self._view_index(self.collections.view_def(view))
        return dict(coll.index.get_vectors([str(i) for i in ids]))

    def embed_query(self, view: str, text: str) -> np.ndarray:
        """The query vector ``find_similar(view, text=...)`` would use."""
        v = self.collections.view_def(view)
        return embed_checked([_check_text(text, "text")], v.embedder)[0]

    # -- knowledge ---------------------------------------------------------------------------
    def search_knowledge(
        self, name: str, query: str, k: int = 5, filter: Mapping[str, Any] | None = None
    ) -> KnowledgeResult:
        kb = self.collections.kb_def(name)
        k = _check_k(k, KNOWLEDGE_K)
        query = _check_text(query, "query")
        conds = compile_filter(filter, ["file", "source"])
        state = self._kb_index(kb)
        q = embed_checked([query], kb.embedder)[0]
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
        else by a rebuild from their tables. One never built is reported ``unbuilt`` (its reads
        answer an error until a backfill builds it); warm-up never builds an index.

        ``background=True`` returns at once and loads in a daemon thread; poll ``ready`` /
        ``readiness()`` (e.g. from /readyz) or block with ``wait_ready``; a failure there is
        reported by ``readiness()["error"]``, in the foreground it is raised. Unknown names raise
        NotFoundError up front.
        """
        colls = self.collections
        names = [colls.view_def(n).name for n in views] if views is not None else list(self.defs.embedding_views)
        kbs = [colls.kb_def(n).name for n in knowledge] if knowledge is not None else list(self.defs.knowledge)
        if self._warm_thread is not None:
            self._warm_thread.join()  # one warm-up at a time
        pending = {**{f"view:{n}": "pending" for n in names}, **{f"knowledge:{n}": "pending" for n in kbs}}
        # Learned (interaction) views have no model to load: their "embedder" only names the method.
        texts = [v.embedder for v in map(colls.view_def, names) if not isinstance(v, InteractionEmbeddingView)]
        embedders = dict.fromkeys(texts + [colls.kb_def(n).embedder for n in kbs], "pending")
        self._warm_state = {
            "state": "warming",
            "collections": pending,
            "embedders": embedders,
            "error": None,
            "seconds": None,
        }
        if not background:
            return self._warm(names, kbs, reraise=True)
        self._warm_thread = threading.Thread(target=self._warm, args=(names, kbs), name="vector-warm", daemon=True)
        self._warm_thread.start()

    def _warm(self, names: list[str], kbs: list[str], reraise: bool = False) -> None:
        t0, st, colls = time.perf_counter(), self._warm_state, self.collections
        try:
            for kind, n in [*(("view", n) for n in names), *(("knowledge", n) for n in kbs)]:
                key = f"{kind}:{n}"
                st["collections"][key] = "loading"
                coll = colls.view(colls.view_def(n)) if kind == "view" else colls.knowledge(colls.kb_def(n))
                st["collections"][key] = (coll.loaded_from or "empty") if coll.exists else "unbuilt"
            for emb in list(st["embedders"]):
                st["embedders"][emb] = _warm_embedder(emb)
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
        snapshot|rebuild|backfill|empty|unbuilt}, "embedders": {"<name>": pending|ready|unavailable: <why>},
        "error", "seconds"}`` — the body of a /readyz answer."""
        st = self._warm_state
        return {
            "ready": self.ready,
            "state": st["state"],
            "collections": dict(st["collections"]),
            "embedders": dict(st["embedders"]),
            "error": st["error"],
            "seconds": st["seconds"],
        }

    # -- lifecycle -----------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        def one(c: VectorCollection) -> dict[str, Any]:
            return {**c.index.stats(), "loaded_from": c.loaded_from, "replayed": c.replayed}

        return {
            "views": {n: one(c) for n, c in self.collections.views.items()},
            "knowledge": {n: one(c) for n, c in self.collections.kbs.items()},
        }

    def close(self) -> None:
        """Finish a running warm-up, then close the collections (snapshots indexes changed since
        their last snapshot; they reopen on next use)."""
        t = self._warm_thread
        if t is not None:
            t.join()
        self.collections.close()
