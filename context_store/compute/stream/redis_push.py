"""The Redis push path of ``Ingestor`` (``ingestor.py``): the push script, then read-after-write.

One script call writes one entry per touched partition (all or nothing; durable in Redis when it
returns), with the records' event-time admission (``admission.py``) and dedup (``dedup.py``) decided
in the same script. Then ``push`` waits until the workers' applied offsets pass its entries, so the
values are served when it returns. Workers announce applied offsets over pub/sub (``applied.py``);
with no live worker the pusher drains its partitions itself (same code as a worker), so a push never
silently waits on nobody.

A ``RedisPusher`` owns what pushing through Redis opens: the stream log, the applied-offset waiter and
the inline drain worker.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from ...errors import InvalidInputError, RateLimitedError, UnavailableError
from ...vocab.redact import redact_text
from .. import tombstones
from . import online_adapter
from .admission import Admission
from .dedup import PushDedup, decode_stored, encode_stored, first_occurrences
from .processor import SourcePlan, partition_of, update_embeddings
from .push_outcome import PushResult, admit_rows, all_rejected, count_rejections, cutovers, replayed_result
from .stats import STATS

if TYPE_CHECKING:
    from .applied import AppliedWaiter
    from .context import StreamContext
    from .push_script import AddDedup, AddOutcome
    from .redis_streams import RedisStreamLog
    from .worker import StreamWorker

__all__ = ["RedisPusher"]

log = logging.getLogger("context_store.stream")

_LIVE_TTL_S = 1.0
_ADMIT_TRIES = 50  # push-script conflicts in a row (each one means another push made progress)
_INLINE_LEASE_MS = 1000


class RedisPusher:
    """Pushes of one workspace into its Redis streams (see the module docstring)."""

    def __init__(self, ctx: StreamContext) -> None:
        self.ctx = ctx
        self._lock = threading.Lock()  # creation of the log and the waiter
        self._log: RedisStreamLog | None = None
        self._waiter: AppliedWaiter | None = None
        self._inline_lock = threading.Lock()
        self._inline: StreamWorker | None = None
        self._live: tuple[float, bool] | None = None  # (when checked, any live worker)
        self._wms: dict[tuple[str, int], int | None] = {}  # (source, partition) -> admitted watermark seen

    def rebind(self, ctx: StreamContext) -> None:
        """Newly applied definitions: the inline worker was built on the old ones, so it hands its
        partitions back (a next drain takes them again)."""
        self.ctx = ctx
        self._retire_inline_quietly()

    @property
    def inline_worker(self) -> StreamWorker | None:
        """The worker this process drains its pushes with while no worker is alive (None: none now)."""
        return self._inline

    @property
    def stream_log(self) -> RedisStreamLog:
        """The Redis stream log pushes go to (opened on first use)."""
        log_ = self._log
        if log_ is None:
            from .redis_streams import RedisStreamLog

            with self._lock:
                log_ = self._log
                if log_ is None:
                    c = self.ctx.config
                    log_ = self._log = RedisStreamLog(
                        c.online_store, c.workspace, timeouts=c.redis_timeouts, wait=c.redis_wait
                    )
        return log_

    def push(
        self, plan: SourcePlan, table: pa.Table, timeout: float | None, dedup: PushDedup | None = None
    ) -> PushResult:
        """Validated rows into the streams (one script: all or nothing), minus the records too late to
        count (decided with the script, ``admission.py``) and those whose event id was seen
        (``dedup.py``; a known Idempotency-Key replays the first result); with ``timeout``, wait
        until applied."""
        src = plan.source
        log_ = self.stream_log
        n_in = table.num_rows
        index = np.arange(n_in)  # pushed-record index of each row still to write
        dups: list[int] = []
        seen_at: dict[int, int] = {}  # partition -> offset of entries that carried duplicates
        if dedup is not None and dedup.event_ids is not None:
            index = first_occurrences(dedup.event_ids)
            dups = sorted(set(range(n_in)) - set(index.tolist()))
        from .push_script import WatermarkConflict

        cuts = cutovers(self.ctx)
        for _ in range(_ADMIT_TRIES):
            rows = table if len(index) == n_in else table.take(pa.array(index))
            part = partition_of(rows, plan.partition_keys, src.partitions)
            uniq = [int(p) for p in np.unique(part).tolist()]
            wms = self._assumed_watermarks(log_, src.name, uniq)
            adm = admit_rows(cuts, plan, rows, part, wms, tombstones.load(self.ctx.offline))
            keep = adm.accepted
            if keep.all() and len(uniq) == 1:
                parts = {uniq[0]: rows}
            else:
                parts = {int(p): rows.filter(pa.array((part == p) & keep)) for p in np.unique(part[keep]).tolist()}
            by_part = {p: index[(part == p) & keep] for p in sorted(parts)}  # the script's event-id order
            if not parts and not adm.rejected and (dedup is None or dedup.key is None):
                offsets: dict[int, int] = {}
                break
            try:
                out = self._add(plan, parts, self._add_dedup(dedup, by_part, int(keep.sum()), n_in, dups), adm)
            except WatermarkConflict as e:  # another push moved a watermark: decide again
                self._wms.update(((src.name, p), w) for p, w in e.current.items())
                continue
            if out.replay is not None and dedup is not None and dedup.key is not None:
                got = decode_stored(out.replay, dedup.fingerprint, dedup.key, src.name)
                visible = False if timeout is None else self.wait_visible(plan, got.offsets, timeout)
                return replayed_result(src.name, got, visible)
            if not out.seen:
                offsets = out.offsets
                break
            flat = np.concatenate([by_part[p] for p in sorted(by_part)])
            for pos, (p, off) in out.seen.items():
                dups.append(int(flat[pos]))
                seen_at[p] = max(off, seen_at.get(p, -1))
            index = np.setdiff1d(index, flat[list(out.seen)])
            dups.sort()
        else:
            raise UnavailableError(
                f"concurrent pushes to {src.name!r} kept moving its watermarks or claiming the same event ids; "
                "nothing of this push was written, retry",
                field="source",
            )
        for a in adm.partitions:
            if a.watermark is not None:
                old = self._wms.get((src.name, a.partition))
                self._wms[(src.name, a.partition)] = a.watermark if old is None else max(old, a.watermark)
        rejected = tuple(replace(r, index=int(index[r.index])) for r in adm.rejected)  # pushed-record indices
        count_rejections(src.name, adm)
        n = sum(t.num_rows for t in parts.values())
        if n == 0 and not dups and rejected:
            raise all_rejected(replace(adm, rejected=rejected))
        STATS.inc("pushed_events", src.name, n)
        STATS.inc("deduplicated_events", src.name, len(dups))
        # Embedding views track no stream offsets: update them here for read-after-write (the worker's
        # own update of the same rows is then a no-op: unchanged texts are not re-embedded).
        if n:
            update_embeddings(self.ctx.embedding_sink, plan, list(parts.values()))
        wait_for = dict(offsets)  # duplicates too: their first push may not be applied yet
        for p, off in seen_at.items():
            wait_for[p] = max(off, offsets.get(p, -1))
        visible = True if not wait_for else False if timeout is None else self.wait_visible(plan, wait_for, timeout)
        return PushResult(
            src.name,
            n,
            n_in,
            visible=visible,
            offsets={str(p): o for p, o in offsets.items()},
            rejected=rejected,
            late=adm.late,
            duplicates=len(dups),
            duplicate_indices=tuple(dups),
        )

    @staticmethod
    def _add_dedup(
        dedup: PushDedup | None, by_part: dict[int, np.ndarray], accepted: int, n_in: int, dups: list[int]
    ) -> AddDedup | None:
        if dedup is None:
            return None
        from .push_script import AddDedup

        ids = dedup.event_ids
        stored = b""
        if dedup.key is not None:
            stored = encode_stored(dedup.fingerprint, accepted, n_in, dups, partitions=sorted(by_part))
        return AddDedup(
            {p: [ids[i] for i in idx.tolist()] for p, idx in by_part.items()} if ids is not None else {},
            dedup.ttl_ms,
            dedup.key,
            stored,
        )

    def _add(self, plan: SourcePlan, parts: dict[int, pa.Table], dedup: AddDedup | None, adm: Admission) -> AddOutcome:
        """One push script; its failures as our errors (nothing was written: one script)."""
        from .push_script import BacklogFullError, WatermarkConflict

        src = plan.source
        try:
            return self.stream_log.add_once(
                src.name, parts, max_len=self._max_len(), dedup=dedup, admission=adm.partitions
            )
        except BacklogFullError as e:
            raise RateLimitedError(
                f"{e}; the stream workers are behind (is `context-store worker` running?). Nothing of this push "
                "was written; retry later",
                field="source",
            ) from None
        except WatermarkConflict:
            raise
        except Exception as e:  # noqa: BLE001 - redis.ConnectionError, TimeoutError, ...
            # A timeout leaves it unknown whether Redis ran the script (it may once it resumes): a retry
            # is safe with event ids or an Idempotency-Key, else it may count the records twice.
            raise UnavailableError(
                f"cannot write to the Redis stream of {src.name!r}: {type(e).__name__}: {redact_text(str(e))}",
                field="online_store",
            ) from None

    def _assumed_watermarks(self, log_: RedisStreamLog, source: str, parts: list[int]) -> dict[int, int | None]:
        """The admitted watermarks this pusher last saw (read once; the push script corrects them)."""
        missing = [p for p in parts if (source, p) not in self._wms]
        if missing:
            try:
                got = log_.admitted_watermarks(source, missing)
            except Exception as e:  # noqa: BLE001 - redis.ConnectionError, ... (Redis down, a failover)
                raise UnavailableError(
                    f"cannot read the stream of {source!r}: {type(e).__name__}: {redact_text(str(e))}",
                    field="online_store",
                ) from None
            self._wms.update(((source, p), w) for p, w in got.items())
        return {p: self._wms[(source, p)] for p in parts}

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
            from .applied import AppliedWaiter

            with self._lock:
                w = self._waiter
                if w is None:
                    w = self._waiter = AppliedWaiter(log_)
        return w

    def wait_visible(self, plan: SourcePlan, offsets: dict[int, int], timeout: float) -> bool:
        """Until every online view has applied ``offsets``. Workers announce applied offsets over
        pub/sub (an announcement is sent after the commit, so it is proof enough when the worker ran
        definitions at least as new as ours: an older one knows nothing of views added since); the
        applied offsets themselves are re-read every 50 ms in case an announcement was missed."""
        log_ = self.stream_log
        version = self.ctx.definitions_version
        if not any(v.online for v in plan.views):
            # Nothing to show online, but the offline log must still get the events soon: with
            # no worker alive nobody else would drain them.
            if not self._live_workers(log_):
                self._inline_drain(plan, offsets)
            return True
        waiter = self._applied_waiter(log_)
        deadline = time.monotonic() + timeout
        if self._live_workers(log_) and waiter.wait(plan.source.name, offsets, min(timeout, 0.05), version):
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
            if waiter.wait(plan.source.name, offsets, min(left, 0.05), version):
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
