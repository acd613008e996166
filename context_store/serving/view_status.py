"""Per view: how fresh its online state is, against its ``expected_freshness``, and its stream's lag.

Freshness = now - the newest event time applied online: for a stream view what the workers (or
an embedded push) applied, recorded on the write path (``compute/stream/freshness.py``) and never
older than what ``materialize`` loaded; for a batch view the materialization watermark (the newest
event time ``materialize`` loaded). Read from the stores at call time, so every server process
answers the same and a stopped worker shows at once: nothing here samples requests.

Backs ``ContextStore.view_status``, ``GET /v1/status/views``, the ``context_store_view_*`` and
``context_store_stream_*`` gauges, ``/readyz``'s ``views_out_of_slo`` and ``context-store status``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ..definitions import StreamSource
from ..vocab.time import us_to_datetime

if TYPE_CHECKING:
    from ..registry.repo import RepoDefinitions
    from ..stores.online.base import OnlineStore
    from .stream_admin import StreamAdmin

__all__ = ["PartitionLag", "ViewStatus", "view_status"]


@dataclass(frozen=True)
class PartitionLag:
    source: str
    partition: int
    entries: int  # stream entries not yet applied and acknowledged
    seconds: float | None  # age of the oldest entry no worker has read (0: none waiting; None: unknown)
    late: int = 0  # admitted records older than the watermark (within allowed_lateness)
    rejected: int = 0  # records refused as too late or before a backfill cut-over

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "partition": self.partition, "entries": self.entries, "seconds": self.seconds}


@dataclass(frozen=True)
class ViewStatus:
    view: str
    kind: str  # "stream" | "batch" (the view's source)
    newest_event_time: datetime | None  # newest event time applied online (None: nothing yet)
    freshness_seconds: float | None  # now - newest_event_time (>= 0)
    expected_freshness_seconds: float | None  # the view's ``expected_freshness``
    slo_breached: bool  # staler than expected_freshness, or nothing applied at all
    lag: tuple[PartitionLag, ...] = ()
    late: int = 0
    rejected: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The ``GET /v1/status/views`` item (docs/observability.md)."""
        return {
            "view": self.view,
            "kind": self.kind,
            "freshness_seconds": self.freshness_seconds,
            "newest_event_time": self.newest_event_time.isoformat() if self.newest_event_time else None,
            "expected_freshness_seconds": self.expected_freshness_seconds,
            "slo_breached": self.slo_breached,
            "lag": [p.to_dict() for p in self.lag],
            "late": self.late,
            "rejected": self.rejected,
        }


def _views(defs: RepoDefinitions) -> list[Any]:
    """Views with online state: feature views served online, and embedding views."""
    fvs = [v for _, v in sorted(defs.feature_views.items()) if v.online]
    return fvs + [v for _, v in sorted(defs.embedding_views.items())]


def _source_lag(defs: RepoDefinitions, admin: StreamAdmin, now_ms: int) -> dict[str, list[PartitionLag]]:
    if not any(isinstance(s, StreamSource) for s in defs.sources.values()):
        return {}
    seconds = admin.lag_seconds(defs, now_ms)
    out: dict[str, list[PartitionLag]] = {}
    for w in admin.watermarks(defs):
        # Embedded pushes apply in the push: nothing ever waits (0 s).
        s = seconds.get((w.source, w.partition), 0.0 if not seconds else None)
        out.setdefault(w.source, []).append(PartitionLag(w.source, w.partition, w.lag, s, w.late, w.rejected))
    return out


def view_status(
    defs: RepoDefinitions, online: OnlineStore, admin: StreamAdmin, now: float | None = None
) -> list[ViewStatus]:
    """One row per view with online state, in name order (feature views, then embedding views)."""
    from ..compute.materialize import materialized_until

    now_s = time.time() if now is None else now
    views = _views(defs)
    applied = admin.applied_times(online, [v.name for v in views if isinstance(v.source, StreamSource)])
    lags = _source_lag(defs, admin, int(now_s * 1000))
    out = []
    for v in views:
        stream = isinstance(v.source, StreamSource)
        # Embedding views have no materialization watermark: the stream's record only.
        loaded = materialized_until(online, v.name) if v.kind == "feature_view" else None
        newest = max((t for t in (applied.get(v.name) if stream else None, loaded) if t is not None), default=None)
        fresh = None if newest is None else max(0.0, round(now_s - newest / 1e6, 3))
        slo_td = getattr(v, "expected_freshness", None)  # definitions registered before it existed
        slo = slo_td.total_seconds() if slo_td is not None else None
        lag = tuple(lags.get(v.source.name, ())) if stream else ()
        out.append(
            ViewStatus(
                v.name,
                "stream" if stream else "batch",
                None if newest is None else us_to_datetime(newest),
                fresh,
                slo,
                slo is not None and (fresh is None or fresh > slo),
                lag,
                sum(p.late for p in lag),
                sum(p.rejected for p in lag),
            )
        )
    return out
