"""``ContextStore``: the in-process SDK and the one serving layer that REST and MCP sit on.

A thin facade: every verb delegates to the module that owns it, so this file stays small. What a
store opens (registry, stores, read path, vectors, stream context) is ``components.py``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ..access import Subject, check_join_keys
from ..types import FeatureVector, JoinKeys, KnowledgeResult, SimilarResult
from .components import StoreComponents
from .stream_admin import StreamAdmin

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

    from ..compute.batch import BackfillReport
    from ..compute.materialize import MaterializeReport
    from ..compute.quality import QualityRun
    from ..compute.stream.ingestor import PushResult
    from ..compute.stream.watermarks import WatermarkStatus
    from ..definitions import Rerank
    from ..memory_types import MemoryRecord, MemoryResult
    from ..registry.registry import Plan
    from ..stores.online.claim import Claim
    from .catalog import CatalogHit, CatalogItem
    from .context import UserContext
    from .feature_log import LogContext
    from .feature_log_read import SkewReport
    from .forget import ForgetResult
    from .quality import DriftReport, QualityMetrics, ValidationReport
    from .record import RecordedEvent
    from .view_status import ViewStatus

__all__ = ["ContextStore"]


class ContextStore(StoreComponents):
    """``cs.ContextStore(repo=".")`` -- embedded default, or configured by yaml/env/kwargs."""

    # Deployment verbs (``deployment.py``): thin over the store's ``Deployment``.
    def check_deployment(self) -> None:
        """Raise ``DeploymentConflictError`` if another deployment holds this online namespace (writes nothing)."""
        self.deployment.check()

    def take_over(self) -> Claim | None:
        """Move the online namespace's claim to this deployment (deliberately: ``apply --take-over``). Returns the
        previous holder when it was another deployment, after waiting for its workers to stop consuming."""
        return self.deployment.take_over()

    def recheck_deployment(self) -> None:
        """Re-read the claim of an opened store (the server's refresh loop); raises when another deployment
        holds it -- requests then answer the conflict (409) until it is ours again."""
        if self._online is not None:
            self.deployment.recheck()

    # -- lifecycle (the CLI verbs) -------------------------------------------------------
    def plan(self) -> Plan:
        return self.registry.plan()

    def apply(self, force: bool = False, take_over: bool = False) -> Plan:
        """Apply the repo's definitions. Refused (``DeploymentConflictError``, before writing anything) when another
        deployment holds the online namespace, unless ``take_over`` moves it here. An unreachable online store
        does not stop an apply: serve, worker and push claim the namespace when they open it. Sets
        ``applied_coverage`` (``lifecycle.py``)."""
        from .lifecycle import apply

        return apply(self, force=force, take_over=take_over)

    def backfill(
        self,
        start: datetime | str | None = None,
        end: datetime | str | None = None,
        views: Sequence[str] | None = None,
        progress: bool = False,
        engine: str = "local",
        ray_address: str | None = None,
        warm: bool = True,
    ) -> BackfillReport | None:
        """Feature views into the offline store; embedding views and knowledge into their indexes.

        ``views`` names feature views, embedding views and/or knowledge (default: all of them).
        ``engine="ray"`` computes the feature views as Ray tasks (same rows as ``"local"``), on the
        cluster at ``ray_address`` (``ray.init(address=...)``; default: ``CONTEXT_STORE_RAY_ADDRESS``,
        else a local Ray).
        ``warm``: then fill this process's replay caches as of ``end`` (``serving/warm.py``), so the
        next ``get_user_context(as_of=...)`` does not rebuild them (a CLI backfill, which exits, skips it).
        """
        from .lifecycle import backfill

        return backfill(
            self,
            start=start,
            end=end,
            views=views,
            progress=progress,
            engine=engine,
            ray_address=ray_address,
            warm=warm,
        )

    def materialize(
        self, views: Sequence[str] | None = None, progress: bool = False, full: bool = False
    ) -> MaterializeReport:
        """Load online state from the offline store; ``full`` reloads every view's whole history
        (within its windows), e.g. after the online store lost its state."""
        from ..compute.materialize import materialize

        try:
            return materialize(
                self.definitions, self.config, self.offline, self.online, views=views, progress=progress, full=full
            )
        finally:
            if self._features is not None:
                self._features.coverage.invalidate()  # serve what was just loaded at once

    def missing_online_state(self) -> list[str]:
        """Online views whose state the online store does not hold (never materialized, or lost)."""
        return self.features.coverage.missing_views(fresh=True)

    # -- reads (``subject=``: the one entity the caller may touch, ``context_store.access``) ------------
    def get_features(
        self,
        feature_service: str,
        join_keys: JoinKeys,
        request_context: Mapping[str, Any] | None = None,
        request_time: datetime | None = None,
        *,
        subject: Subject | None = None,
        log_context: LogContext | None = None,
    ) -> FeatureVector:
        if subject is not None:
            self._check_subject(subject, feature_service, [join_keys], single=True)
        # No property call on the read path: the opened server, else open it.
        return (self._features or self._open_features()).get_features(
            feature_service, join_keys, request_context, request_time, log_context=log_context
        )

    async def get_features_async(
        self,
        feature_service: str,
        join_keys: JoinKeys,
        request_context: Mapping[str, Any] | None = None,
        request_time: datetime | None = None,
        *,
        subject: Subject | None = None,
        log_context: LogContext | None = None,
    ) -> FeatureVector:
        if subject is not None:
            self._check_subject(subject, feature_service, [join_keys], single=True)
        return await (self._features or self._open_features()).get_features_async(
            feature_service, join_keys, request_context, request_time, log_context=log_context
        )

    def get_features_batch(
        self,
        feature_service: str,
        join_keys: Sequence[JoinKeys],
        request_context: Sequence[Mapping[str, Any]] | Mapping[str, Any] | None = None,
        request_time: datetime | None = None,
        *,
        subject: Subject | None = None,
        log_context: LogContext | None = None,
    ) -> list[FeatureVector]:
        if subject is not None:  # every row: one foreign entity refuses the whole batch
            self._check_subject(subject, feature_service, join_keys, single=False)
        return (self._features or self._open_features()).get_features_batch(
            feature_service, join_keys, request_context, request_time, log_context=log_context
        )

    def _check_subject(self, subject: Subject, service: str, rows: Sequence[JoinKeys], single: bool) -> None:
        keyed_by = (self._features or self._open_features()).plan(service).join_keys
        for i, keys in enumerate(rows):
            field = "join_keys" if single else f"join_keys[{i}]"
            check_join_keys(subject, keys if isinstance(keys, Mapping) else {}, field, keyed_by=keyed_by)

    def get_training_data(
        self,
        spine: pa.Table | pd.DataFrame,
        feature_service: str,
        timestamp_field: str = "timestamp",
    ) -> pa.Table | pd.DataFrame:
        from ..compute.training import get_training_data

        return get_training_data(self.definitions, self.config, self.offline, spine, feature_service, timestamp_field)

    # Feature logging (``feature_log.py``, ``feature_log_read.py``).
    def get_logged_features(
        self,
        feature_service: str,
        start: datetime | str | None = None,
        end: datetime | str | None = None,
        join_keys: JoinKeys | None = None,
    ) -> pa.Table:
        """The vectors this workspace served for ``feature_service`` (``start <= request_time < end``)."""
        from .feature_log_read import get_logged_features

        return get_logged_features(self, feature_service, start=start, end=end, join_keys=join_keys)

    def logged_feature_skew(
        self, feature_service: str, start: datetime | str | None = None, end: datetime | str | None = None
    ) -> SkewReport:
        """Logged (served) values against a point-in-time recomputation at the same keys and times."""
        from .feature_log_read import logged_feature_skew

        return logged_feature_skew(self, feature_service, start=start, end=end)

    def flush_feature_log(self) -> dict[str, int]:
        """Write the queued logged vectors now; the writer's counters (empty when nothing logs)."""
        writer = self._feature_log
        if writer is not None:
            writer.flush()
        return writer.stats() if writer is not None else {}

    def feature_log_stats(self) -> dict[str, int]:
        """accepted / logged / dropped / failed / queued logged vectors of this process (empty: nothing logs)."""
        return self._feature_log.stats() if self._feature_log is not None else {}

    # -- stream ingest -----------------------------------------------------------------
    def push(
        self,
        source: str,
        rows: Iterable[Mapping[str, Any]] | pa.Table | pd.DataFrame,
        dry_run: bool = False,
        *,
        wait: bool = True,
        timeout: float = 5.0,
        idempotency_key: str | None = None,
        subject: Subject | None = None,
    ) -> PushResult:
        """Validate and ingest ``rows`` (all or nothing). Returns when durable and, with ``wait``
        (the default), visible online (read-after-write, up to ``timeout`` s; ``.visible`` says
        which). ``wait=False`` returns once durable in the stream: for bulk loads.

        Retries are safe with ``idempotency_key`` (the same key and rows: the first result,
        ``.replayed``; nothing written) and/or a source ``event_id_field`` (records whose id was
        ingested are dropped, ``.duplicates``). ``subject``: only rows about that entity (``access.py``)."""
        if subject is not None:
            from .record import subject_rows

            rows = subject_rows(subject, rows)
        return self.ingestor.push(
            source, rows, dry_run=dry_run, timeout=timeout, wait=wait, idempotency_key=idempotency_key
        )

    def record_event(
        self,
        source: str,
        record: Mapping[str, Any],
        *,
        subject: Subject | None = None,
        idempotency_key: str | None = None,
    ) -> RecordedEvent:
        """One event pushed like ``push``, answered with the online values it changed (``record.py``)."""
        from .record import record_event

        return record_event(self, source, record, subject=subject, idempotency_key=idempotency_key)

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
        subject: Subject | None = None,
    ) -> SimilarResult:
        return self.vectors.find_similar(
            view, text=text, entity_id=entity_id, vector=vector, k=k, filter=filter, subject=subject
        )

    def search_knowledge(
        self, knowledge: str, query: str, k: int = 5, filter: Mapping[str, Any] | None = None
    ) -> KnowledgeResult:
        return self.vectors.search_knowledge(knowledge, query, k=k, filter=filter)

    # -- agent memories (memory.py) --------------------------------------------------------------------
    def remember(
        self,
        text: str,
        entity_id: str | int | None = None,
        kind: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        *,
        subject: Subject | None = None,
        written_by: str | None = None,
    ) -> MemoryRecord:
        """Store a memory of one entity (searchable when this returns); the same text within the dedup
        window returns the existing memory (``deduplicated``)."""
        from .memory import remember

        return remember(self, text, entity_id, kind, metadata, subject=subject, written_by=written_by)

    def search_memories(
        self, query: str, entity_id: str | int | None = None, k: int = 5, *, subject: Subject | None = None
    ) -> MemoryResult:
        """The entity's top-``k`` memories for ``query`` (similarity plus recency)."""
        from .memory import search_memories

        return search_memories(self, query, entity_id, k, subject=subject)

    def forget_memory(self, memory_id: str, *, subject: Subject | None = None) -> bool:
        """Remove a memory from search, the online state and the offline log (404 when unknown)."""
        from .memory import forget_memory

        return forget_memory(self, memory_id, subject=subject)

    # -- entry points for REST, MCP and the CLI: they call only these methods ------------------------
    def get_user_context(
        self,
        entity_id: str | None,
        context_service: str | None = None,
        max_tokens: int | None = None,
        as_of: datetime | str | None = None,
        query: str | None = None,
        *,
        subject: Subject | None = None,
        k: int | None = None,
        filter: Mapping[str, Any] | None = None,
        rerank: Rerank | None = None,
    ) -> UserContext:
        """Features, recent events, similar items and (for a ``query``) knowledge of one entity, with
        provenance and a prompt-ready ``text``; ``as_of`` replays it at a past time; ``subject``: see access.py;
        ``k``, ``filter`` (attributes and the item id) and ``rerank`` (a ``cs.Rerank``): this call's similar items."""
        from .context import get_user_context

        return get_user_context(
            self,
            entity_id,
            context_service=context_service,
            max_tokens=max_tokens,
            as_of=as_of,
            query=query,
            subject=subject,
            k=k,
            filter=filter,
            rerank=rerank,
        )

    # -- the catalog (catalog.py): what the workspace defines, who owns it, what feeds what ----------------
    def catalog(self, kind: str | None = None, tag: str | None = None) -> list[CatalogItem]:
        """Every applied definition (or those of ``kind`` / carrying ``tag``, ``KEY`` or ``KEY=VALUE``)."""
        from .catalog import catalog_of

        return catalog_of(self.definitions).items(kind=kind, tag=tag)

    def describe(self, name: str, kind: str | None = None) -> CatalogItem:
        """One definition with its spec, features and full lineage (404 when unknown)."""
        from .catalog import catalog_of

        return catalog_of(self.definitions).get(name, kind=kind)

    def search_catalog(self, query: str, k: int = 10) -> list[CatalogHit]:
        """Definitions matching ``query``: names, descriptions, tags, features; semantic with the workspace's
        embedder (lexical only when it declares none)."""
        from .catalog import catalog_of

        return catalog_of(self.definitions).search(query, k)

    def index_knowledge(self, names: Sequence[str] | None = None, progress: bool = False) -> dict[str, dict[str, int]]:
        """(Re)index knowledge collections (default: all); unchanged files are skipped. Counts per collection."""
        return self.indexer.index_knowledge(names, progress=progress)

    def forget(self, join_keys: Mapping[str, str], *, actor: str | None = None) -> ForgetResult:
        """Erase an entity (one join key) from every store, for good; audited (docs/erasure.md)."""
        from .forget import forget

        return forget(self, join_keys, actor)

    def forget_entity(self, entity: str, entity_id: str, *, actor: str | None = None) -> ForgetResult:
        """``forget`` by entity definition name (REST): 404 for an unknown entity."""
        from .forget import forget_entity

        return forget_entity(self, entity, entity_id, actor)

    def forget_audit(self, join_keys: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
        """The audit of forgets (no entity data: a salted hash of the value), oldest first."""
        from .forget import forget_audit

        return forget_audit(self, join_keys)

    def warm(self) -> None:
        """Compile the online read path now and load vector indexes in the background (server start-up).
        In-process serving: follow it with ``gc.collect(); gc.freeze()`` as ``serve`` does (a full
        collection otherwise rescans the ~120k objects LanceDB's import leaves: ~100 ms on one call)."""
        _ = self.features
        defs = self.definitions
        if defs.embedding_views or defs.knowledge:
            self.vectors.warm(background=True)
        self._warm_push()

    def _warm_push(self) -> None:
        """Build the push path now, when the definitions have stream sources. Measured: a server's first push
        imported ~720 modules (lancedb and its pydantic models, pandas) in 3.3 s on an idle host and over 10 s
        on a starved one, while every other push on that server waited for it (the ingestor's lock): clients
        with a 2 s timeout saw both servers of tests/test_multihost.py time out at once."""
        from ..compute import tombstones
        from ..compute.stream.processor import source_plan
        from ..definitions import StreamSource

        defs = self.definitions
        streams = [name for name, s in defs.sources.items() if isinstance(s, StreamSource)]
        if not streams:
            return
        _ = self.ingestor
        tombstones.load(self.offline)  # opens the offline store (lancedb): every push's admission reads it
        for name in streams:
            source_plan(defs, name)

    def ping(self) -> bool:
        """The online store answers and this deployment holds its namespace (raises or returns False when not)."""
        online = self._open_online()
        if online.ping() is False:
            return False
        self.deployment.ensure(recheck=True)
        return True

    def vectors_loading(self) -> dict[str, Any] | None:
        """Readiness of the vector indexes while they load; None when ready or never opened here."""
        vectors = self._vectors  # only once warmed or used: never opens them
        return None if vectors is None or vectors.ready else vectors.readiness()

    def stream_lag(self) -> dict[str, int]:
        """Entries each stream source's workers have not applied yet (Redis only; empty embedded)."""
        return self.stream_admin.lag(self.definitions)

    def stream_watermarks(self) -> list[WatermarkStatus]:
        """Per stream source and partition: admitted watermark, lag, late and rejected counts."""
        return self.stream_admin.watermarks(self.definitions)

    def reset_stream_watermark(self, target: str, to: datetime | str | None = None) -> list[WatermarkStatus]:
        """Set the watermark of ``SOURCE`` (every partition) or ``SOURCE:PARTITION`` to ``to`` (default now)."""
        return self.stream_admin.reset_watermark(self.definitions, target, to)

    def view_status(self, now: float | None = None) -> list[ViewStatus]:
        """Per view with online state: freshness (now - newest applied event time), its SLO, stream lag
        per partition, late/rejected counts (``view_status.py``; docs/observability.md)."""
        from .view_status import view_status

        return view_status(self.definitions, self.online, self.stream_admin, now)

    @staticmethod
    def stream_counters() -> tuple[dict[str, str], dict[str, dict[str, int]]]:
        """The stream layer's process-wide counters: (name -> description, name -> source -> value)."""
        return StreamAdmin.counters()

    # -- data quality (quality.py; docs/data-quality.md) ------------------------------------------------
    def quality_runs(self, view: str | None = None, stage: str | None = None, limit: int = 50) -> list[QualityRun]:
        """Stored expectation runs (backfill, materialize, sampled stream), newest first."""
        from .quality import quality_runs

        return quality_runs(self, view=view, stage=stage, limit=limit)

    def validate(self, views: Sequence[str] | None = None) -> ValidationReport:
        """Every expectation against the offline tables ``fv__{view}`` (read-only; ``.passed``, ``.lines()``)."""
        from .quality import validate

        return validate(self, views)

    def drift_report(
        self,
        name: str,
        reference: pa.Table | pd.DataFrame | None = None,
        start: datetime | str | None = None,
        end: datetime | str | None = None,
    ) -> DriftReport:
        """PSI per feature of a view or service: training data (``reference`` or ``fv__`` in [start, end))
        against what is served (``log__{service}`` when logged, else the latest materialization's statistics)."""
        from .quality import drift_report

        return drift_report(self, name, reference=reference, start=start, end=end)

    def quality_metrics(self) -> QualityMetrics:
        """Failed checks per (view, expectation) and the last run's outcome per (view, stage), for ``/metrics``."""
        from .quality import quality_metrics

        return quality_metrics(self)

    # -- end of entry points ---------------------------------------------------------------------------

    def __enter__(self) -> ContextStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
