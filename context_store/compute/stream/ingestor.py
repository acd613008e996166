"""``Ingestor.push(source, rows)``: validate, make durable, make visible (read-after-write).

- Embedded (``online_store: sqlite``): applied in-process -- each view's transform, the online
  state update (sqlite commit) and the offline appends (``fv__{view}``, ``src__{source}``)
  all happen before ``push`` returns.
- Redis: one ``XADD`` per touched partition in a single MULTI/EXEC (all or nothing; durable in
  Redis when it returns). Then ``push`` waits until the workers' applied offsets pass its entries,
  so the values are served when it returns (as Tecton's ingest API). When no worker is alive the
  pusher drains its partitions itself (same code as a worker), so push never silently waits on
  nobody; if a live worker is slower than ``timeout`` the events stay durable and
  ``PushResult.visible`` is False.

An ``Ingestor`` works on a ``StreamContext`` (typed parts: definitions, config, online and
offline stores, embedding sink) and owns what pushing opens: the Redis stream log, the
applied-offset waiter, the inline drain worker, the embedded offline writer.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from ...errors import InvalidInputError, RateLimitedError, UnavailableError
from ...vocab.tables import is_source_table, source_table
from ..transform import apply_transform
from . import online_adapter
from .cutover import load_cutovers
from .processor import (
    OFFSET,
    OfflineWriter,
    PartitionState,
    SourcePlan,
    append_recent,
    concat,
    partition_of,
    process_batch,
    source_plan,
    update_embeddings,
)
from .stats import STATS
from .validate import validate_records

if TYPE_CHECKING:
    from ...definitions import FeatureView
    from ...registry.repo import RepoDefinitions
    from .context import StreamContext
    from .redis_streams import AppliedWaiter, RedisStreamLog
    from .worker import StreamWorker

__all__ = ["Ingestor", "PushResult"]

log = logging.getLogger("context_store.stream")

_embedded_lock = threading.Lock()
_embedded_states: dict[tuple[str, str, str], PartitionState] = {}
_seq_lock = threading.Lock()
_last_seq = 0


@dataclass(frozen=True)
class PushResult:
    source: str
    accepted: int  # records written (0 on a dry run)
    validated: int  # records that passed validation
    dry_run: bool = False
    visible: bool = False  # online state includes the records when push returned
    offsets: dict[str, int] = field(default_factory=dict)  # partition -> last offset written (JSON-able)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "accepted": self.accepted,
            "validated": self.validated,
            "dry_run": self.dry_run,
            "visible": self.visible,
            "offsets": dict(self.offsets),
        }


def _next_seq(n: int) -> int:
    """Embedded ingest order: a per-process increasing sequence (µs clock based)."""
    global _last_seq
    with _seq_lock:
        start = max(_last_seq + 1, time.time_ns() // 1000)
        _last_seq = start + n - 1
        return start


_LIVE_TTL_S = 1.0
_INLINE_LEASE_MS = 1000


class Ingestor:
    """Push into the stream sources of one workspace (see the module docstring)."""

    def __init__(self, ctx: StreamContext) -> None:
        self.ctx = ctx
        self._lock = threading.Lock()  # creation of the log and the waiter
        self._log: RedisStreamLog | None = None
        self._waiter: AppliedWaiter | None = None
        self._inline_lock = threading.Lock()
        self._inline: StreamWorker | None = None
        self._writer: OfflineWriter | None = None
        self._live: tuple[float, bool] | None = None  # (when checked, any live worker)

    @property
    def definitions(self) -> RepoDefinitions:
        return self.ctx.definitions

    def rebind(self, ctx: StreamContext) -> None:
        """Newly applied definitions: push with ``ctx`` from now on. The inline worker was built
        on the old ones: it hands its partitions back (a next drain takes them again)."""
        self.ctx = ctx
        self._retire_inline_quietly()

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
        self, source: str, rows: Any, dry_run: bool = False, timeout: float = 5.0, wait: bool = True
    ) -> PushResult:
        """Validate ``rows`` against the stream source's schema and ingest them (all or nothing).

        Redis mode: ``wait=False`` returns once the events are durable in the stream (bulk loads);
        ``timeout`` bounds the wait for the workers to apply them (read-after-write).
        """
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 300:
            raise InvalidInputError(
                f"timeout must be a number of seconds in (0, 300], got {timeout!r}", field="timeout"
            )
        plan, table = self.validate_push(source, rows)
        if dry_run:
            for view in plan.views:  # surface transform errors too, without writing anything
                apply_transform(view, table.slice(0, min(table.num_rows, 100)))
            return PushResult(source, 0, table.num_rows, dry_run=True)
        if table.num_rows == 0:
            return PushResult(source, 0, 0, visible=True)
        if self.ctx.config.is_redis:
            return self.push_redis(plan, table, timeout if wait else None)
        return self._push_embedded(plan, table)

    # -- embedded ----------------------------------------------------------------------
    def _push_embedded(self, plan: SourcePlan, table: pa.Table) -> PushResult:
        ctx = self.ctx
        src = plan.source.name
        seq = _next_seq(table.num_rows)
        events = table.append_column(OFFSET, pa.array(np.arange(seq, seq + table.num_rows, dtype=np.int64)))
        key = (str(ctx.config.workspace_dir), ctx.config.workspace, src)

        def apply(view: FeatureView, rows: pa.Table, partition: int, offset: int | None) -> None:
            # Guarded: another process may push into the same embedded store.
            online_adapter.apply(ctx.online, ctx.states, view, rows, partition, offset, guard=True)
            STATS.inc("applied_events", view.source.name, rows.num_rows)

        with _embedded_lock:
            state = _embedded_states.setdefault(key, PartitionState())
            state.applied.clear()  # no replay in-process: fences only guard the Redis path
            state.offline.clear()
            batch = process_batch(plan, events, 0, state, apply, self._cutovers(), online_token=False)
            if plan.recent:
                append_recent(ctx.online, plan, batch.offline.get(source_table(src), []))
            update_embeddings(ctx.embedding_sink, plan, batch.offline.get(source_table(src), []))
            writer = self._writer
            if writer is None or writer.offline is not ctx.offline:
                writer = self._writer = OfflineWriter(ctx.offline)
            for name, parts in sorted(batch.offline.items(), key=lambda kv: is_source_table(kv[0])):
                rows = concat(parts)
                writer.append(name, rows)
                if is_source_table(name):
                    STATS.inc("offline_events", src, rows.num_rows)
        STATS.inc("pushed_events", src, table.num_rows)
        return PushResult(src, table.num_rows, table.num_rows, visible=True, offsets={"0": seq + table.num_rows - 1})

    def _cutovers(self) -> dict[str, int]:
        return {v: c.ts_us for v, c in load_cutovers(self.ctx.config).items()}

    # -- Redis -------------------------------------------------------------------------
    @property
    def stream_log(self) -> RedisStreamLog:
        """The Redis stream log pushes go to (opened on first use)."""
        log_ = self._log
        if log_ is None:
            from .redis_streams import RedisStreamLog

            with self._lock:
                log_ = self._log
                if log_ is None:
                    log_ = self._log = RedisStreamLog(self.ctx.config.online_store, self.ctx.config.workspace)
        return log_

    def push_redis(self, plan: SourcePlan, table: pa.Table, timeout: float | None) -> PushResult:
        """Validated rows into the streams (one MULTI/EXEC); with ``timeout``, wait until applied."""
        src = plan.source
        log_ = self.stream_log
        part = partition_of(table, plan.partition_keys, src.partitions)
        uniq = np.unique(part).tolist()
        parts = {int(uniq[0]): table} if len(uniq) == 1 else {int(p): table.filter(pa.array(part == p)) for p in uniq}
        from .redis_streams import BacklogFullError

        try:
            offsets = log_.add(src.name, parts, max_len=self._max_len())
        except BacklogFullError as e:
            raise RateLimitedError(
                f"{e}; the stream workers are behind (is `context-store worker` running?). Nothing of this push "
                "was written; retry later",
                field="source",
            ) from None
        except Exception as e:  # noqa: BLE001 - redis.ConnectionError etc.: nothing was added (one script)
            raise UnavailableError(
                f"cannot write to the Redis stream of {src.name!r}: {e}", field="online_store"
            ) from None
        STATS.inc("pushed_events", src.name, table.num_rows)
        # Embedding views track no stream offsets: update them here for read-after-write (the worker's
        # own update of the same rows is then a no-op: unchanged texts are not re-embedded).
        update_embeddings(self.ctx.embedding_sink, plan, [table])
        visible = False if timeout is None else self._wait_visible(plan, offsets, timeout)
        return PushResult(
            src.name, table.num_rows, table.num_rows, visible=visible, offsets={str(p): o for p, o in offsets.items()}
        )

    def _max_len(self) -> int:
        """``redis_stream_maxlen`` (yaml/env): unprocessed entries per partition before pushes get 429."""
        v = self.ctx.config.extra.get("redis_stream_maxlen")
        try:
            return max(0, int(v)) if v not in (None, "") else 0
        except (TypeError, ValueError):
            raise InvalidInputError(
                f"redis_stream_maxlen must be an integer, got {v!r}", field="redis_stream_maxlen"
            ) from None

    def _live_workers(self, log_: RedisStreamLog) -> bool:
        cached = self._live
        now = time.monotonic()
        if cached is not None and now - cached[0] < _LIVE_TTL_S and cached[1]:
            return True
        live = bool(log_.live_workers(3000))
        self._live = (now, live)
        return live

    def _applied(self, plan: SourcePlan, offsets: dict[int, int]) -> bool:
        online = self.ctx.online
        for view in plan.views:
            if view.online:
                for p, off in offsets.items():
                    if online_adapter.applied_offset(online, view, p) < off:
                        return False
        return True

    def _inline_drain(self, plan: SourcePlan, offsets: dict[int, int]) -> bool:
        from .worker import StreamWorker

        with self._inline_lock:
            w = self._inline
            if w is None:
                # A short lease: another process pushing with no worker alive takes the partitions
                # (and drains its events) within about a second after this one stops pushing.
                w = self._inline = StreamWorker(
                    self.ctx, name=f"push-{os.getpid()}-{time.time_ns()}", transient=True, lease_ms=_INLINE_LEASE_MS
                )
            return w.drain([(plan.source.name, p) for p in sorted(offsets)])

    def _retire_inline(self) -> None:
        """A real worker is up: hand it the partitions this process drained inline."""
        with self._inline_lock:
            w, self._inline = self._inline, None
            if w is not None:
                w.close()

    def _retire_inline_quietly(self) -> None:
        if self._inline is not None:
            try:
                self._retire_inline()
            except Exception as e:  # noqa: BLE001 - Redis gone: the leases expire, entries stay pending
                log.warning("could not hand over inline partitions: %s", e)

    def _applied_waiter(self, log_: RedisStreamLog) -> AppliedWaiter:
        w = self._waiter
        if w is None:
            from .redis_streams import AppliedWaiter

            with self._lock:
                w = self._waiter
                if w is None:
                    w = self._waiter = AppliedWaiter(log_)
        return w

    def _wait_visible(self, plan: SourcePlan, offsets: dict[int, int], timeout: float) -> bool:
        """Until every online view has applied ``offsets``. Workers announce applied offsets over
        pub/sub (an announcement is sent after the commit, so it is proof enough); the applied offsets
        themselves are re-read every 50 ms in case an announcement was missed."""
        log_ = self.stream_log
        if not any(v.online for v in plan.views):
            # Nothing to show online, but the offline log must still get the events soon: with
            # no worker alive nobody else would drain them.
            if not self._live_workers(log_):
                self._inline_drain(plan, offsets)
            return True
        waiter = self._applied_waiter(log_)
        deadline = time.monotonic() + timeout
        if self._live_workers(log_) and waiter.wait(plan.source.name, offsets, min(timeout, 0.05)):
            return True
        while True:
            if self._applied(plan, offsets):
                return True
            if not self._live_workers(log_):
                self._inline_drain(plan, offsets)
                if self._applied(plan, offsets):
                    return True
            elif self._inline is not None:
                self._retire_inline()
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if waiter.wait(plan.source.name, offsets, min(left, 0.05)):
                return True

    def close(self) -> None:
        """Release what pushing through Redis opened (inline leases, pub/sub, connection)."""
        self._retire_inline_quietly()
        with self._lock:
            waiter, self._waiter = self._waiter, None
            log_, self._log = self._log, None
        if waiter is not None:
            waiter.close()
        if log_ is not None:
            log_.close()
