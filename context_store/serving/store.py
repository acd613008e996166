"""``ContextStore``: the in-process SDK and the one serving layer that REST and MCP sit on.

A thin facade: every verb delegates to the module that owns it, so this file stays small.
Components are created lazily (a CLI ``plan`` never opens Redis; a server opens it once).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any

from ..config import Config, load_config
from ..types import FeatureVector, JoinKeys, KnowledgeResult, SimilarResult

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

    from ..registry.registry import Plan, Registry
    from ..registry.repo import RepoDefinitions
    from ..stores.offline.base import OfflineStore
    from ..stores.online.base import OnlineStore
    from .context import UserContext

__all__ = ["ContextStore"]


class ContextStore:
    """``cs.ContextStore(repo=".")`` -- embedded default, or configured by yaml/env/kwargs."""

    def __init__(
        self,
        repo: str | os.PathLike[str] = ".",
        *,
        workspace: str | None = None,
        online_store: str | None = None,
        config: Config | None = None,
    ) -> None:
        self.config = config or load_config(repo, workspace=workspace, online_store=online_store)
        self._lock = threading.RLock()
        self._definitions: RepoDefinitions | None = None

    # -- components --------------------------------------------------------------------
    @property
    def workspace(self) -> str:
        return self.config.workspace

    @cached_property
    def registry(self) -> Registry:
        from ..registry.registry import Registry

        return Registry(self.config)

    @property
    def definitions(self) -> RepoDefinitions:
        """The applied definitions of this workspace (what serving uses)."""
        if self._definitions is None:
            with self._lock:
                if self._definitions is None:
                    self._definitions = self.registry.applied()
        return self._definitions

    def refresh(self) -> None:
        """Reload the applied definitions (after an apply by another process)."""
        with self._lock:
            self._definitions = None
            self.__dict__.pop("features", None)
            vectors = self.__dict__.pop("vectors", None)  # built on the old definitions
            if vectors is not None:
                vectors.close()

    @cached_property
    def online(self) -> OnlineStore:
        from ..stores.online import open_online_store

        return open_online_store(self.config)

    @cached_property
    def offline(self) -> OfflineStore:
        from ..stores.offline import open_offline_store

        return open_offline_store(self.config)

    @cached_property
    def features(self) -> Any:
        """The compiled online read path (``serving.features.FeatureServer``)."""
        from .features import FeatureServer

        return FeatureServer(self.definitions, self.online)

    # -- lifecycle (the CLI verbs) -------------------------------------------------------
    def plan(self) -> Plan:
        return self.registry.plan()

    def apply(self, force: bool = False) -> Plan:
        plan = self.registry.apply(force=force)
        self.refresh()
        return plan

    def backfill(
        self,
        start: datetime | str | None = None,
        end: datetime | str | None = None,
        views: Sequence[str] | None = None,
        progress: bool = False,
        engine: str = "local",
    ) -> Any:
        """Feature views into the offline store; embedding views and knowledge into their indexes.

        ``views`` names feature views and/or embedding views; knowledge is (re)indexed on a full run.
        ``engine="ray"`` computes the feature views as Ray tasks (same rows as ``"local"``).
        """
        from ..compute.batch import backfill

        defs = self.definitions
        wanted = set(views) if views is not None else None
        unknown = sorted((wanted or set()) - set(defs.feature_views) - set(defs.embedding_views))
        if unknown:
            from ..errors import NotFoundError

            raise NotFoundError(f"unknown view {unknown[0]!r} to backfill", field="views")
        fv = None if wanted is None else [v for v in wanted if v in defs.feature_views]
        report = None
        if wanted is None or fv:
            report = backfill(
                defs, self.config, self.offline, start=start, end=end, views=fv, progress=progress, engine=engine
            )
        emb = [v for v in defs.embedding_views if wanted is None or v in wanted]
        if emb:
            self.vectors.backfill(emb, progress=progress)
        if wanted is None and defs.knowledge:
            self.vectors.index_knowledge(progress=progress)
        return report

    def materialize(self, views: Sequence[str] | None = None, progress: bool = False) -> Any:
        from ..compute.materialize import materialize

        return materialize(self.definitions, self.config, self.offline, self.online, views=views, progress=progress)

    # -- reads -------------------------------------------------------------------------
    def get_features(
        self,
        feature_service: str,
        join_keys: JoinKeys,
        request_context: Mapping[str, Any] | None = None,
        request_time: datetime | None = None,
    ) -> FeatureVector:
        return self.features.get_features(feature_service, join_keys, request_context, request_time)

    async def get_features_async(
        self,
        feature_service: str,
        join_keys: JoinKeys,
        request_context: Mapping[str, Any] | None = None,
        request_time: datetime | None = None,
    ) -> FeatureVector:
        return await self.features.get_features_async(feature_service, join_keys, request_context, request_time)

    def get_features_batch(
        self,
        feature_service: str,
        join_keys: Sequence[JoinKeys],
        request_context: Sequence[Mapping[str, Any]] | Mapping[str, Any] | None = None,
        request_time: datetime | None = None,
    ) -> list[FeatureVector]:
        return self.features.get_features_batch(feature_service, join_keys, request_context, request_time)

    def get_training_data(
        self,
        spine: pa.Table | pd.DataFrame,
        feature_service: str,
        timestamp_field: str = "timestamp",
    ) -> pa.Table | pd.DataFrame:
        from ..compute.training import get_training_data

        return get_training_data(self.definitions, self.config, self.offline, spine, feature_service, timestamp_field)

    # -- stream ingest -----------------------------------------------------------------
    def push(
        self,
        source: str,
        rows: Iterable[Mapping[str, Any]] | pa.Table | pd.DataFrame,
        dry_run: bool = False,
        *,
        wait: bool = True,
        timeout: float = 5.0,
    ) -> Any:
        """Validate and ingest ``rows`` (all or nothing). Returns when durable and, with ``wait``
        (the default), visible online (read-after-write, up to ``timeout`` s; ``.visible`` says
        which). ``wait=False`` returns once durable in the stream: for bulk loads."""
        from ..compute.stream.ingest import push

        return push(self, source, rows, dry_run=dry_run, timeout=timeout, wait=wait)

    # -- embeddings, similarity, knowledge, agent context --------------------------------
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
        return self.vectors.find_similar(view, text=text, entity_id=entity_id, vector=vector, k=k, filter=filter)

    def search_knowledge(
        self, knowledge: str, query: str, k: int = 5, filter: Mapping[str, Any] | None = None
    ) -> KnowledgeResult:
        return self.vectors.search_knowledge(knowledge, query, k=k, filter=filter)

    @cached_property
    def vectors(self) -> Any:
        """Embedding views and knowledge (``serving.similar.VectorService``)."""
        from .similar import VectorService

        return VectorService(self.definitions, self.config, self.offline)

    # -- entry points for REST, MCP and the CLI: they call only these methods ------------------------
    def get_user_context(
        self,
        entity_id: str,
        context_service: str | None = None,
        max_tokens: int | None = None,
        as_of: datetime | str | None = None,
        query: str | None = None,
    ) -> UserContext:
        """Features, recent events, similar items and (for a ``query``) knowledge of one entity, with
        provenance and a prompt-ready ``text``; ``as_of`` replays it at a past time."""
        from .context import get_user_context

        return get_user_context(
            self, entity_id, context_service=context_service, max_tokens=max_tokens, as_of=as_of, query=query
        )

    def index_knowledge(self, names: Sequence[str] | None = None, progress: bool = False) -> dict[str, dict[str, int]]:
        """(Re)index knowledge collections (default: all); unchanged files are skipped. Counts per collection."""
        return self.vectors.index_knowledge(names, progress=progress)  # type: ignore[no-any-return]

    def warm(self) -> None:
        """Compile the online read path now and load vector indexes in the background (server start-up)."""
        _ = self.features
        defs = self.definitions
        if defs.embedding_views or defs.knowledge:
            self.vectors.warm(background=True)

    def ping(self) -> bool:
        """The online store answers (raises or returns False when it does not)."""
        return self.online.ping() is not False

    def vectors_loading(self) -> dict[str, Any] | None:
        """Readiness of the vector indexes while they load; None when ready or never opened here."""
        vectors = self.__dict__.get("vectors")  # only once warmed or used: never opens them
        return None if vectors is None or vectors.ready else vectors.readiness()  # type: ignore[no-any-return]

    # -- end of entry points ---------------------------------------------------------------------------

    def close(self) -> None:
        if "_cs_stream_log" in self.__dict__:  # pushed through Redis: inline leases, pub/sub
            from ..compute.stream.ingest import close_stream

            close_stream(self)
        for name in ("online", "offline", "vectors"):
            comp = self.__dict__.pop(name, None)
            if comp is not None and hasattr(comp, "close"):
                comp.close()

    def __enter__(self) -> ContextStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
