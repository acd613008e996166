"""``Ingestor.push(source, rows)``: validate, make durable, make visible (read-after-write).

- Embedded (``online_store: sqlite``): applied in-process (``embedded.py``) -- each view's
  transform, the online state update and the offline appends (``fv__{view}``, ``src__{source}``)
  commit together (both or neither) before ``push`` returns.
- Redis: one ``XADD`` per touched partition in a single MULTI/EXEC (all or nothing; durable in
  Redis when it returns). Then ``push`` waits until the workers' applied offsets pass its entries,
  so the values are served when it returns (as Tecton's ingest API). When no worker is alive the
  pusher drains its partitions itself (same code as a worker), so push never silently waits on
  nobody; if a live worker is slower than ``timeout`` the events stay durable and
  ``PushResult.visible`` is False.

An ``Ingestor`` works on a ``StreamContext`` (typed parts: definitions, config, online and
offline stores, embedding sink) and owns what pushing opens: the embedded offline writer and a
``RedisPusher`` (``redis_push.py``: the stream log, the applied-offset waiter, the inline drain
worker). ``PushResult`` and the event-time decision shared by both paths: ``push_outcome.py``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from ...errors import InvalidInputError
from .. import tombstones
from ..transform import apply_transform
from .admission import embedded_admission
from .dedup import PushDedup, Replayed, check_idempotency_key, push_dedup
from .embedded import EmbeddedPusher
from .processor import SourcePlan, source_plan
from .push_outcome import PushResult, admit_rows, all_rejected, count_rejections, cutovers, replayed_result
from .redis_push import RedisPusher
from .stats import STATS
from .validate import validate_records

if TYPE_CHECKING:
    from ...registry.repo import RepoDefinitions
    from .context import StreamContext
    from .redis_streams import RedisStreamLog

__all__ = ["Ingestor", "PushResult"]


class Ingestor:
    """Push into the stream sources of one workspace (see the module docstring)."""

    def __init__(self, ctx: StreamContext) -> None:
        self.ctx = ctx
        self._embedded = EmbeddedPusher()
        self.redis = RedisPusher(ctx)  # opens nothing until a push goes through Redis

    @property
    def definitions(self) -> RepoDefinitions:
        return self.ctx.definitions

    def rebind(self, ctx: StreamContext) -> None:
        """Newly applied definitions: push with ``ctx`` from now on. The inline worker was built
        on the old ones: it hands its partitions back (a next drain takes them again)."""
        self.ctx = ctx
        self.redis.rebind(ctx)

    # -- push --------------------------------------------------------------------------
    def validate_push(self, source: str, rows: Any) -> tuple[SourcePlan, pa.Table]:
        plan = source_plan(self.ctx.definitions, source)
        try:
            table = validate_records(plan.source, rows, plan.required)
        except InvalidInputError:
            STATS.inc("rejected_pushes", source)
            raise
        return plan, table

    def push(
        self,
        source: str,
        rows: Any,
        dry_run: bool = False,
        timeout: float = 5.0,
        wait: bool = True,
        idempotency_key: str | None = None,
    ) -> PushResult:
        """Validate ``rows`` against the stream source's schema and ingest them (all or nothing).

        Redis mode: ``wait=False`` returns once the events are durable in the stream (bulk loads);
        ``timeout`` bounds the wait for the workers to apply them (read-after-write).
        ``idempotency_key``: a retry with the same key and rows returns the first result and writes
        nothing (409 with other rows); records with an already ingested event id are dropped.
        """
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 300:
            raise InvalidInputError(
                f"timeout must be a number of seconds in (0, 300], got {timeout!r}", field="timeout"
            )
        key = check_idempotency_key(idempotency_key) if idempotency_key is not None else None
        plan, table = self.validate_push(source, rows)
        dedup = push_dedup(plan.source, table, key)
        if dry_run:
            for view in plan.views:  # surface transform errors too, without writing anything
                apply_transform(view, table.slice(0, min(table.num_rows, 100)))
            return PushResult(source, 0, table.num_rows, dry_run=True)
        if self.ctx.claim is not None:  # another deployment took the namespace over: refuse (re-read once a second)
            self.ctx.claim.check()
        if table.num_rows == 0:
            return PushResult(source, 0, 0, visible=True)
        if self.ctx.config.is_redis:
            return self.push_redis(plan, table, timeout if wait else None, dedup)
        return self._push_embedded(plan, table, dedup)

    # -- embedded ----------------------------------------------------------------------
    def _push_embedded(self, plan: SourcePlan, table: pa.Table, dedup: PushDedup | None = None) -> PushResult:
        """Online and offline both or neither (``embedded.py``); 503 when a store cannot be written.
        Too-late records are decided first (``admission.py``) and written nowhere; then records whose
        event id was seen are dropped in the push's own SQLite transaction (``dedup.py``)."""
        src = plan.source.name
        validated = table.num_rows
        # [admission] The file lock orders every process's pushes (one watermark for all); it is
        # taken before the push lock, by every pusher, so the two never deadlock.
        cuts = cutovers(self.ctx)
        with embedded_admission(self.ctx.config.workspace_dir) as admitted:
            wm = admitted.watermark(src, 0)
            forgotten = tombstones.load(self.ctx.offline)
            adm = admit_rows(cuts, plan, table, np.zeros(validated, dtype=np.int64), {0: wm}, forgotten)
            kept = np.flatnonzero(adm.accepted)  # pushed-record index of each row still written
            if len(kept) < validated:
                table = table.take(pa.array(kept))  # too late: written nowhere, reported
                if dedup is not None and dedup.event_ids is not None:
                    dedup = replace(dedup, event_ids=[dedup.event_ids[i] for i in kept.tolist()])
            out = None
            if table.num_rows or (dedup is not None and dedup.key is not None):
                try:
                    out = self._embedded.push(self.ctx, plan, table, cuts, watermark=wm, dedup=dedup)
                except Replayed as r:
                    return replayed_result(src, r.result, visible=True)
            admitted.commit(src, adm.partitions[0])  # only once applied (an error commits nothing)
        count_rejections(src, adm)
        dups = [int(kept[i]) for i in out.duplicates] if out is not None else []
        written = out.written if out is not None else 0
        if written == 0 and not dups and adm.rejected:
            raise all_rejected(adm)
        STATS.inc("pushed_events", src, written)
        STATS.inc("deduplicated_events", src, len(dups))
        return PushResult(
            src,
            written,
            validated,
            visible=True,
            offsets={"0": out.last} if out is not None and written else {},
            rejected=adm.rejected,
            late=adm.late,
            duplicates=len(dups),
            duplicate_indices=tuple(dups),
        )

    # -- Redis (redis_push.py) ---------------------------------------------------------
    @property
    def stream_log(self) -> RedisStreamLog:
        """The Redis stream log pushes go to (opened on first use)."""
        return self.redis.stream_log

    def push_redis(
        self, plan: SourcePlan, table: pa.Table, timeout: float | None, dedup: PushDedup | None = None
    ) -> PushResult:
        """Validated rows into the streams; with ``timeout``, wait until applied (``RedisPusher.push``)."""
        return self.redis.push(plan, table, timeout, dedup)

    def close(self) -> None:
        """Release what pushing through Redis opened (inline leases, pub/sub, connection)."""
        self.redis.close()
