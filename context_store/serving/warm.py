"""Warm, at the end of a backfill, the per-process caches of an ``as_of`` replay that the backfill's
commits invalidated (``ContextStore.backfill(warm=True)``).

A replay's first ``get_user_context`` after a backfill otherwise rebuilds them on the call path
(~200-300 ms on the MovieLens recs repo: the re-rank's whole-log read and point-in-time index, the
``cs.TopItems`` ranking of the day, the opened Lance datasets, the seen-items history index). Every
cache stays keyed by the tables' change tokens / files as before, so a commit by another process is
still seen: warming only fills them earlier, in the process that just wrote. Replays at the
backfill's ``end`` (the usual backtest loop: backfill to a cut-off, replay at it) find them ready;
other times reuse the whole-log read and its index.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from ..definitions import EmbeddingView, FeatureView, Rerank, StreamSource
from ..errors import ContextStoreError

if TYPE_CHECKING:
    from .store import ContextStore

__all__ = ["warm_replay_caches", "index_entity_tables"]

_log = logging.getLogger("context_store.serving.warm")

# Below this many rows a scan of the key column is already ~1 ms: no index to build and keep.
ENTITY_INDEX_MIN_ROWS = 20_000


def index_entity_tables(store: ContextStore, views: Iterable[str] | None = None) -> list[str]:
    """Index the entity key of the backfilled views (all when None) that a context service reads for
    one entity (its features: an ``as_of`` replay reads that entity's rows). Returns the tables
    indexed. Best effort, like warming: the reads are correct without the index."""
    from ..vocab.tables import view_table

    wanted = None if views is None else set(views)
    out: list[str] = []
    for svc in store.definitions.context_services.values():
        fs = svc.feature_service
        for sel in fs.selections if fs is not None else ():
            view = sel.view
            if not isinstance(view, FeatureView) or not view.offline or len(view.join_keys) != 1:
                continue
            table = view_table(view.name)
            if (wanted is not None and view.name not in wanted) or table in out:
                continue
            try:
                if store.offline.index_key(table, view.join_keys[0], ENTITY_INDEX_MIN_ROWS):
                    out.append(table)
            except (ContextStoreError, OSError, ValueError, RuntimeError) as e:
                _log.warning("backfill: no entity index on %s (reads scan it): %s", table, e)
    return out


def warm_replay_caches(store: ContextStore, end: datetime | None, views: Iterable[str] | None = None) -> None:
    """Fill the replay caches of every context service whose similar items read the backfilled
    ``views`` (all when None), as of ``end`` (default: now). Best effort: a failure is logged, never
    raised (the backfill itself succeeded; the call would rebuild the cache and report the error)."""
    try:
        _warm(store, end, None if views is None else set(views))
    except (ContextStoreError, OSError, ValueError, RuntimeError) as e:
        _log.warning("backfill: warming the replay caches failed (the first call builds them): %s", e)


def _warm(store: ContextStore, end: datetime | None, views: set[str] | None) -> None:
    from ..compute.training import ENTITY_PUSHDOWN_MAX
    from ..vocab.tables import view_table
    from .retrieval import _feature_values, catalogue_known, top_items

    defs = store.definitions
    at = end if end is not None else datetime.now(UTC)
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    # The Lance datasets of the backfilled views, reopened once here (a replay reads them per entity).
    for name, fv in defs.feature_views.items():
        if (views is None or name in views) and isinstance(fv, FeatureView) and fv.offline:
            table = view_table(name)
            if store.offline.exists(table):
                store.offline.schema(table)
    done: set[tuple[str, ...]] = set()
    for svc in defs.context_services.values():
        opts = svc.similar_options
        if opts is None:
            continue
        view = opts.view
        if isinstance(opts.seen_from, StreamSource):
            from .context_events import _history_index

            _history_index(store, opts.seen_from)
        rr = opts.rerank
        if not isinstance(view, EmbeddingView) or not isinstance(rr, Rerank):
            continue
        read = {n.split(".", 1)[0] for n in [*rr.features, *(s.feature for s in rr.also)]}
        if views is not None and not (read & views):
            continue
        ranked: list[str] = []
        for src in rr.also:  # the day's ranking (and the whole log it reads, with its index)
            ranked = ranked or top_items(store, view, src, as_of=at, served_at=at)
        sig = (view.name, *sorted(rr.features))
        if not rr.features or sig in done:
            continue
        done.add(sig)
        # The re-rank's read: a spine of more than ENTITY_PUSHDOWN_MAX items takes the whole-log path,
        # whose read and point-in-time index are then cached until the next commit. The spine is the
        # whole catalogue known at ``at``: its values are remembered (``pit_memo``), so the replays at
        # the backfill's end compute none (a part of it made the first call compute the rest).
        spine = catalogue_known(store, view, at)
        if len(spine) > ENTITY_PUSHDOWN_MAX:
            _feature_values(store, list(rr.features), spine, as_of=at, served_at=at)
