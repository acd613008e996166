"""The components a ``ContextStore`` opens lazily: registry, definitions, online and offline stores,
the compiled read path, vector collections, the indexer and the stream context.

Split from the verbs (``store.py``) so each file stays small: this is what a store *has*, that is
what it *does*. Components open on first use (a CLI ``plan`` never opens Redis; a server opens it once).
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING

from ..config import Config, load_config
from .deployment import Deployment
from .stream_admin import StreamAdmin

if TYPE_CHECKING:
    from ..compute.coverage import ApplyCoverage
    from ..compute.stream.context import StreamContext
    from ..compute.stream.ingestor import Ingestor
    from ..compute.vectors import VectorIndexer
    from ..registry.registry import Registry
    from ..registry.repo import RepoDefinitions
    from ..stores.offline.base import OfflineStore
    from ..stores.online.base import OnlineStore
    from ..stores.vector import VectorCollections
    from .feature_log import FeatureLogWriter
    from .features import FeatureServer
    from .similar import VectorService

__all__ = ["StoreComponents"]


_CLOSE_WAIT_S = 10.0  # at most this long for a background refresh to finish before closing


class StoreComponents:
    """The lazily opened parts of a store; ``ContextStore`` adds the verbs."""

    def __init__(
        self,
        repo: str | os.PathLike[str] = ".",
        *,
        workspace: str | None = None,
        online_store: str | None = None,
        config: Config | None = None,
    ) -> None:
        self.config: Config = config or load_config(repo, workspace=workspace, online_store=online_store)
        self._lock = threading.RLock()
        # Components, each opened on first use (a CLI ``plan`` never opens Redis).
        self._registry: Registry | None = None
        self._definitions: RepoDefinitions | None = None
        self._definitions_version = -1  # the registry version ``_definitions`` was loaded from
        self._online: OnlineStore | None = None
        self._offline: OfflineStore | None = None
        self._features: FeatureServer | None = None
        self._feature_log: FeatureLogWriter | None = None  # outlives refreshes: its queue is never dropped
        self._vector_collections: VectorCollections | None = None
        self._vectors: VectorService | None = None
        self._indexer: VectorIndexer | None = None
        self._ingestor: Ingestor | None = None
        self.stream_admin = StreamAdmin(self.config)  # lag, watermarks, counters (its own stream log)
        self.applied_coverage: ApplyCoverage | None = None  # the last apply's: views still to materialize
        # This deployment's claim on the online namespace.
        self.deployment = Deployment(
            lambda: self.registry, self._open_online, str(self.config.repo), self.workspace, self._forget_features
        )

    # -- components --------------------------------------------------------------------
    @property
    def workspace(self) -> str:
        return self.config.workspace

    @property
    def registry(self) -> Registry:
        if self._registry is None:
            from ..compute.schema_probe import TransformSchemaProbe
            from ..registry.registry import Registry

            with self._lock:
                if self._registry is None:
                    self._registry = Registry(self.config, TransformSchemaProbe())
        return self._registry

    @property
    def definitions(self) -> RepoDefinitions:
        """The applied definitions of this workspace (what serving uses)."""
        if self._definitions is None:
            with self._lock:
                if self._definitions is None:
                    self._definitions_version, self._definitions = self.registry.applied_with_version()
        return self._definitions

    def refresh(self) -> None:
        """Reload the applied definitions (after an apply by another process)."""
        with self._lock:
            self._definitions = None
            self._features = None
            # the vector reader, the indexer and their collections are built on the old definitions
            vectors, self._vectors = self._vectors, None
            self._indexer = None
            collections, self._vector_collections = self._vector_collections, None
        if vectors is not None:
            vectors.close()  # joins a running warm-up
        if collections is not None:
            collections.close()

    @property
    def online(self) -> OnlineStore:
        """The online store, once this deployment's claim on its namespace is checked (then no more checks
        here: a worker, a pusher and the server re-check on their own cadence; see ``stores/online/claim.py``)."""
        online = self._online
        if online is None or not self.deployment.ok:
            online = self._open_online()
            self.deployment.ensure()
        return online

    def _open_online(self) -> OnlineStore:
        if self._online is None:
            from ..stores.online import open_online_store

            with self._lock:
                if self._online is None:
                    self._online = open_online_store(self.config)
        return self._online

    def _forget_features(self) -> None:
        self._features = None  # requests go through ``_open_features`` again, which re-checks the claim

    @property
    def offline(self) -> OfflineStore:
        if self._offline is None:
            from ..stores.offline import open_offline_store

            with self._lock:
                if self._offline is None:
                    self._offline = open_offline_store(self.config)
        return self._offline

    @property
    def features(self) -> FeatureServer:
        """The compiled online read path."""
        return self._features or self._open_features()

    def _open_features(self) -> FeatureServer:
        from .feature_log import log_writer
        from .features import FeatureServer

        with self._lock:
            if self._features is None:
                defs = self.definitions
                self._feature_log = log_writer(
                    self._feature_log, defs.feature_services, self.workspace, self._log_sink, on_exit=self.close
                )
                self._features = FeatureServer(defs, self.online, self._feature_log)
            return self._features

    def _log_sink(self) -> OfflineStore:
        return self.offline

    # Vector indexes: one registry of open collections, shared by the indexer (compute, writes)
    # and the reader (serving), so a stream ingest is searchable as soon as it returns.
    @property
    def vector_collections(self) -> VectorCollections:
        if self._vector_collections is None:
            from ..stores.vector import VectorCollections

            with self._lock:
                if self._vector_collections is None:
                    self._vector_collections = VectorCollections(self.definitions, self.config)
        return self._vector_collections

    @property
    def vectors(self) -> VectorService:
        """Reads of embedding views and knowledge."""
        if self._vectors is None:
            from .similar import VectorService

            collections = self.vector_collections
            with self._lock:
                if self._vectors is None:
                    self._vectors = VectorService(collections)
        return self._vectors

    @property
    def indexer(self) -> VectorIndexer:
        """Builds the vector indexes: backfill, the stream's embedding sink, knowledge indexing."""
        if self._indexer is None:
            from ..compute.vectors import VectorIndexer

            collections, offline = self.vector_collections, self.offline
            with self._lock:
                if self._indexer is None:
                    self._indexer = VectorIndexer(collections, offline)
        return self._indexer

    @property
    def opened_vectors(self) -> VectorService | None:
        """The vector service if something opened it already (never opens it)."""
        return self._vectors

    def stream_context(self) -> StreamContext:
        """The typed parts the stream path (pushes, workers) works on."""
        from ..compute.stream.context import StreamContext

        online = self.online  # checks the claim: a worker or pusher of another deployment stops here
        with self._lock:  # the definitions and their version as one pair
            defs, version = self.definitions, self._definitions_version
        offline = self.offline
        connect = getattr(offline, "connect", None)
        if connect is not None:
            connect()  # the stream path writes it: import LanceDB now, not in the first offline flush
        return StreamContext(
            self.config,
            defs,
            online,
            offline,
            embedding_sink=lambda: self.indexer,  # opened only for sources with embedding views
            version=self.registry.applied_version,
            reload=self._reloaded_stream_context,
            claim=self.deployment.claim,
            definitions_version=version,
        )

    def _reloaded_stream_context(self) -> StreamContext:
        self.refresh()
        return self.stream_context()

    @property
    def ingestor(self) -> Ingestor:
        """Stream ingest (``push``), on the current definitions."""
        ing = self._ingestor
        defs = self.definitions
        if ing is None or ing.definitions is not defs:
            from ..compute.stream.ingestor import Ingestor

            with self._lock:
                ing = self._ingestor
                if ing is None:
                    ing = self._ingestor = Ingestor(self.stream_context())
                elif ing.definitions is not self.definitions:
                    ing.rebind(self.stream_context())
        return ing

    def close(self) -> None:
        from .scope import cache_scope
        from .top_refresh import wait_refreshes

        # A TopItems refresh still ranking this workspace would read closed stores (and log that it failed).
        wait_refreshes(_CLOSE_WAIT_S, scope=cache_scope(self))
        writer, self._feature_log = self._feature_log, None
        if writer is not None:
            writer.close()  # first: it writes the logged vectors through the offline store closed below
        with self._lock:
            ingestor, self._ingestor = self._ingestor, None
            online, self._online = self._online, None
            offline, self._offline = self._offline, None
            vectors, self._vectors = self._vectors, None
            collections, self._vector_collections = self._vector_collections, None
            self.deployment.reset()
            self._indexer = None
            self._features = None
        self.stream_admin.close()
        if ingestor is not None:  # pushed: inline leases, pub/sub, the stream connection
            ingestor.close()
        for comp in (online, offline, vectors, collections, self._registry):
            if comp is not None and hasattr(comp, "close"):
                comp.close()
