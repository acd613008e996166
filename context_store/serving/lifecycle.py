"""``apply`` and ``backfill`` of ``ContextStore``: the lifecycle verbs that span several components
(registry, deployment claim, online markers, offline store, vector indexes). ``ContextStore`` keeps
the public methods and delegates here, as it does to ``context.py`` for ``get_user_context``."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from ..definitions import InteractionEmbeddingView
from ..errors import ContextStoreError, NotFoundError, UnavailableError

if TYPE_CHECKING:
    from ..compute.batch import BackfillReport
    from ..compute.coverage import ApplyCoverage
    from ..registry.registry import Plan
    from .store import ContextStore

__all__ = ["apply", "backfill"]


def apply(store: ContextStore, force: bool = False, take_over: bool = False) -> Plan:
    """Apply the repo's definitions (``ContextStore.apply``); records ``store.applied_coverage``."""
    reachable = True
    try:
        if take_over:
            store.take_over()
        else:
            store.check_deployment()
    except UnavailableError:
        if take_over:
            raise
        reachable = False
    plan = store.registry.apply(force=force)
    if reachable:
        store.deployment.ensure(recheck=True)  # the first apply writes the claim
    store.refresh()
    store.applied_coverage = _mark_after_apply(store)
    return plan


def _mark_after_apply(store: ContextStore) -> ApplyCoverage | None:
    """Views with no history are complete as they are; the others wait for a materialize."""
    from ..compute.coverage import mark_after_apply

    try:
        return mark_after_apply(store.definitions, store.config, store.offline, store.online)
    except ContextStoreError as e:  # the online store is down: its views stay NOT_MATERIALIZED
        logging.getLogger("context_store.serving.store").warning("apply: cannot record online state markers: %s", e)
        return None


def backfill(
    store: ContextStore,
    start: datetime | str | None = None,
    end: datetime | str | None = None,
    views: Sequence[str] | None = None,
    progress: bool = False,
    engine: str = "local",
    ray_address: str | None = None,
    warm: bool = True,
) -> BackfillReport | None:
    """Feature views into the offline store; embedding views and knowledge into their indexes
    (``ContextStore.backfill``)."""
    from ..compute.batch import backfill as backfill_views

    defs = store.definitions
    wanted = set(views) if views is not None else None
    unknown = sorted((wanted or set()) - set(defs.feature_views) - set(defs.embedding_views) - set(defs.knowledge))
    if unknown:
        known = sorted(defs.feature_views) + sorted(defs.embedding_views) + sorted(defs.knowledge)
        raise NotFoundError(
            f"unknown view {unknown[0]!r} to backfill; known: {', '.join(known) or 'none'}", field="views"
        )
    fv = None if wanted is None else [v for v in wanted if v in defs.feature_views]
    report = None
    # Interaction-trained item vectors first (on interactions before ``end``): interest vectors
    # computed by the feature views below join them (docs/recommendations.md).
    learned = [
        n
        for n, v in defs.embedding_views.items()
        if isinstance(v, InteractionEmbeddingView) and (wanted is None or n in wanted)
    ]
    if learned:
        from ..compute.batch import to_us

        store.indexer.backfill(learned, progress=progress, end_us=to_us(end, "end"))
    if wanted is None or fv:
        report = backfill_views(
            defs,
            store.config,
            store.offline,
            start=start,
            end=end,
            views=fv,
            progress=progress,
            engine=engine,
            ray_address=ray_address,
            online=lambda: store.online,  # the cut-overs of stream views (Redis): after the claim check
        )
    emb = [v for v in defs.embedding_views if (wanted is None or v in wanted) and v not in learned]
    if emb:
        store.indexer.backfill(emb, progress=progress)
    kb = [k for k in defs.knowledge if wanted is None or k in wanted]
    if kb:
        store.indexer.index_knowledge(None if wanted is None else kb, progress=progress)
    if wanted is None or fv:
        from .warm import index_entity_tables

        index_entity_tables(store, fv)
    if warm:
        from ..compute.batch import to_us
        from ..vocab.time import us_to_datetime
        from .warm import warm_replay_caches

        end_us = to_us(end, "end")
        warm_replay_caches(store, None if end_us is None else us_to_datetime(end_us), wanted)
    return report
