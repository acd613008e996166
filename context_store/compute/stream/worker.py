"""Stream workers: consumer groups over the Redis Streams of every ``StreamSource``.

Each worker leases a fair share of the (source, partition) streams (``SET NX PX``, renewed),
so one partition is applied by one worker at a time, in stream order. On taking a partition it
first claims the previous owner's pending entries (``XAUTOCLAIM``), then reads new ones
(``XREADGROUP ... >``). Per batch: online state is updated through the online store's atomic
``apply_events(view, rows, token=(partition, offset))``, whose applied-offset fence makes a
replay after ``kill -9`` a no-op (exactly-once effect). Rows for the offline log are buffered and
appended about once a second; only then are entries acknowledged (``XACK``), so an entry is
never lost: until acked it stays pending and the next owner replays it (online skips it by the
fence, offline by the per-table marks).

A worker works on a ``StreamContext`` (typed parts: definitions, config, online and offline
stores, embedding sink). ``run_workers(ctx, n, stop_event)`` starts ``n`` workers as threads (``serve`` does this);
``context-store worker`` runs one per process.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from ...definitions import StreamSource
from ...errors import ContextStoreError, DefinitionError, DeploymentConflictError, NotFoundError
from ...vocab.tables import source_table
from .. import tombstones
from ..quality_stream import stream_quality
from . import online_adapter
from .admission import bound_watermarks
from .applied import applied_message
from .cutover import load_cutovers
from .entries import decode_entry, id_to_offset, replay_chunks
from .fences import load_partition, recent_appends
from .flusher import OfflineBuffer
from .freshness import AppliedTimes
from .pool import WorkerPool, run_workers
from .processor import (
    OFFSET,
    Batch,
    PartitionState,
    SourcePlan,
    concat,
    process_batch,
    source_plan,
    take_rows,
    update_embeddings,
)
from .redis_streams import RedisStreamLog
from .stats import STATS
from .validate import validate_records

if TYPE_CHECKING:
    from .context import StreamContext

__all__ = ["StreamWorker", "run_workers", "WorkerPool"]

log = logging.getLogger("context_store.stream.worker")
Part = tuple[str, int]
_VERSION_CHECK_S = 0.25  # how often an idle worker looks for a new apply


@dataclass
class _Step:
    """One partition's share of a worker round, between transform and commit."""

    part: Part
    state: PartitionState
    plan: SourcePlan
    ids: list[bytes]
    last: int  # offset of the last entry read
    applies: list[tuple[Any, pa.Table, int, int, int]] = field(default_factory=list)  # view, rows, p, offset, fence
    batch: Batch | None = None
    n: int = 0
    recent: Any = None  # RecentItem: this batch's recent-events appends


class StreamWorker:
    """One consumer. ``step()`` does one read/apply round; ``run(stop)`` loops until ``stop`` is set."""

    def __init__(
        self,
        ctx: StreamContext,
        name: str | None = None,
        sources: Iterable[str] | None = None,
        count: int = 2000,
        block_ms: int = 20,
        lease_ms: int = 3000,
        flush_interval: float = 1.0,
        flush_rows: int = 100_000,
        transient: bool = False,
    ) -> None:
        if not ctx.config.is_redis:
            raise ContextStoreError(
                "stream workers need a Redis online store (online_store: redis://...)", field="online_store"
            )
        self.ctx = ctx
        self.defs = ctx.definitions
        self.name = name or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.log = RedisStreamLog(ctx.config.online_store, ctx.config.workspace, timeouts=ctx.config.redis_timeouts)
        self.sources = None if sources is None else list(sources)
        streams = sorted(n for n, s in self.defs.sources.items() if isinstance(s, StreamSource))
        unknown = [n for n in self.sources or () if n not in streams]
        if unknown:
            raise NotFoundError(
                f"{unknown[0]!r} is not a stream source; stream sources: {', '.join(streams) or 'none'}", field="source"
            )
        # The registry version of the definitions this worker runs (stamped on its announcements).
        self._version = ctx.definitions_version if ctx.definitions_version >= 0 else self._applied_version()
        self.plans = self._plans()
        self.count, self.block_ms, self.lease_ms = count, block_ms, lease_ms
        self.flush_interval, self.flush_rows = flush_interval, flush_rows
        self.transient = transient
        self.owned: dict[Part, PartitionState] = {}
        self._keys: dict[Part, bytes] = {}
        self._by_key: dict[bytes, Part] = {}
        self._last_balance = 0.0
        self._last_version_check = time.monotonic()
        self._short = True
        self.processed = 0
        self.buffer = OfflineBuffer(ctx.offline, self.log)  # rows for the offline log, acks (flusher.py)
        self.writer = self.buffer.writer  # also reads the marks of partitions this worker takes
        self.applied_times = AppliedTimes(self.log)  # newest applied event time per view (freshness.py)
        self.stopped_by: DeploymentConflictError | None = None  # another deployment took the namespace over

    def _plans(self) -> dict[str, SourcePlan]:
        return {
            n: source_plan(self.defs, n)
            for n, s in self.defs.sources.items()
            if isinstance(s, StreamSource) and (self.sources is None or n in self.sources)
        }

    def _applied_version(self) -> int:
        if self.ctx.version is None:
            return -1
        try:
            return int(self.ctx.version())
        except ContextStoreError:
            return -1

    def _reload_if_applied(self) -> bool:
        """A new ``apply`` (maybe by another process): hand back partitions, reload definitions."""
        v = self._applied_version()
        if v == self._version or v <= 0 or self.ctx.reload is None:
            return False
        log.info("worker %s: registry version %d -> %d, reloading definitions", self.name, self._version, v)
        for part in list(self.owned):
            self.release(part)
        self.ctx = self.ctx.reload()
        self.defs = self.ctx.definitions
        self.plans = self._plans()
        self._version = self.ctx.definitions_version if self.ctx.definitions_version >= 0 else v
        return True

    # -- partitions ----------------------------------------------------------------------
    @property
    def all_parts(self) -> list[Part]:
        return [(s, p) for s, plan in sorted(self.plans.items()) for p in range(plan.source.partitions)]

    def key(self, part: Part) -> bytes:
        k = self._keys.get(part)
        if k is None:
            k = self._keys[part] = self.log.stream_key(*part)
            self._by_key[k] = part
        return k

    def rebalance(self) -> None:
        """Renew owned leases, give up extras beyond a fair share, take free ones up to it."""
        self._last_balance = time.monotonic()
        if not self.transient:
            self._reload_if_applied()
            if self.ctx.claim is not None:  # taken over by another deployment: stop before reading another entry
                self.ctx.claim.verify()
            self.log.heartbeat(self.name)
        for part in list(self.owned):
            if not self.log.renew_lease(*part, self.name, self.lease_ms):
                log.warning("worker %s lost the lease of %s/%d; dropping its unflushed state", self.name, *part)
                self._drop(part)
        for source, plan in self.plans.items():  # an operator's reset of a watermark reaches its owner here
            bound_watermarks(self.log, plan.source, {p: st for (s, p), st in self.owned.items() if s == source})
        live = max(1, len(self.log.live_workers(self.lease_ms)))
        parts = self.all_parts
        share = math.ceil(len(parts) / live)
        while len(self.owned) > share:
            self.release(max(self.owned))
        # Start at a per-worker offset so concurrent workers don't contend for the same leases.
        start = int(uuid.UUID(int=hash(self.name) & ((1 << 128) - 1)).int % max(1, len(parts)))
        for part in parts[start:] + parts[:start]:
            if len(self.owned) >= share:
                break
            if part not in self.owned and self.log.try_lease(*part, self.name, self.lease_ms):
                self.acquire(part)
        # Short of a fair share (just joined: others release theirs at their next rebalance):
        # look again soon, so a moved partition is unowned for ~0.1 s rather than a second.
        self._short = len(self.owned) < share

    def acquire(self, part: Part) -> None:
        """Take a partition: load fences, replay the previous owner's pending entries first."""
        source, p = part
        state, cut = load_partition(self.ctx.online, self.log, self.writer, self.plans[source], source, p)
        self.owned[part] = state
        pending = self.log.claim_pending(self.key(part), self.name)
        if pending:
            STATS.inc("claimed_events", source, len(pending))
            log.info("worker %s took %s/%d with %d pending entries", self.name, source, p, len(pending))
            if cut >= 0:
                log.info("worker %s: %s/%d replays up to the in-flight offset %d first", self.name, source, p, cut)
            for chunk in replay_chunks(pending, cut, self.count):
                self._process([(part, chunk)])

    def release(self, part: Part) -> None:
        self.flush()
        self.owned.pop(part, None)
        self.log.release_lease(*part, self.name)

    def _drop(self, part: Part) -> None:
        self.owned.pop(part, None)
        self.buffer.drop(part)

    def _reset(self) -> None:
        """Forget everything in memory after a failure mid-batch; the partitions are re-acquired
        on the next rebalance and their pending entries replayed through the fences."""
        try:
            self.buffer.wait()
        except Exception as e:  # noqa: BLE001 - that write is retried by the replay
            log.warning("stream worker %s: offline flush failed: %s", self.name, e)
        for part in list(self.owned):
            self._drop(part)
            try:
                self.log.release_lease(*part, self.name)
            except Exception:  # noqa: BLE001 - Redis down: the lease expires by itself
                pass
        self.buffer.clear()
        self._last_balance = 0.0

    # -- processing ----------------------------------------------------------------------
    def _decode(self, plan: SourcePlan, entries: list[Any]) -> tuple[pa.Table, np.ndarray] | None:
        """The entries' rows, and which of them a pusher admitted (Arrow entries: see admission.py)."""
        tables, admitted = [], []
        for entry_id, fields in entries:
            off = id_to_offset(entry_id)
            try:
                data = decode_entry(fields)
                if not (pushed := isinstance(data, pa.Table)):
                    data = validate_records(plan.source, data, plan.required)
            except (ContextStoreError, pa.ArrowInvalid, ValueError) as e:
                # An outside producer's bad record: it cannot be applied anywhere; keep it visible.
                STATS.inc("rejected_pushes", plan.source.name)
                log.error("source %s entry %s rejected: %s", plan.source.name, entry_id, e)
                continue
            tables.append(data.append_column(OFFSET, pa.array(np.full(data.num_rows, off, dtype=np.int64))))
            admitted.append(np.full(data.num_rows, pushed, dtype=bool))
        if not tables:
            return None
        return concat(tables), np.concatenate(admitted)

    def _prepare(self, part: Part, entries: list[Any], cutovers: dict[str, int]) -> _Step | None:
        """Decode and transform one partition's entries; collect (not yet apply) its online rows."""
        state = self.owned.get(part)
        if state is None:
            return None
        plan = self.plans[part[0]]
        step = _Step(part, state, plan, [e[0] for e in entries], id_to_offset(entries[-1][0]))
        decoded = self._decode(plan, entries)
        if decoded is not None:
            decoded = self._unforgotten(plan, *decoded)
        if decoded is not None:
            events, admitted = decoded
            before = dict(state.applied)

            def collect(view: Any, rows: pa.Table, partition: int, offset: int | None) -> None:
                step.applies.append(
                    (view, rows, partition, int(offset if offset is not None else -1), before.get(view.name, -1))
                )

            step.batch = process_batch(
                plan,
                events,
                part[1],
                state,
                collect,
                cutovers,
                admitted=admitted,
                quality=stream_quality(self.ctx.config, self.ctx.offline).observe,
            )
            step.n = events.num_rows
            if plan.recent:
                step.recent = recent_appends(plan, part[1], state, events, step.last)
        return step

    def _unforgotten(
        self, plan: SourcePlan, events: pa.Table, admitted: np.ndarray
    ) -> tuple[pa.Table, np.ndarray] | None:
        """Drop events of entities forgotten after their time: ones in the stream before the forget,
        or an outside producer's (pushes reject them at admission). Cheap when nothing changed."""
        gone = tombstones.load(self.ctx.offline).mask(events, plan.source.timestamp_field)
        if gone is None:
            return events, admitted
        STATS.inc("forgotten_events", plan.source.name, int(gone.sum()))
        if gone.all():
            return None
        return take_rows(events, ~gone), admitted[~gone]

    def _commit(self, steps: list[_Step]) -> None:
        """Every partition's online rows of this round in one atomic commit (per view: its rows
        from all partitions, CAS'd against each partition's fence), which also announces the
        applied offsets to waiting pushers. If a fence moved meanwhile (another owner, a
        cut-over), fall back to one ``apply_events`` per view and partition (re-reads offsets)."""
        by_view: dict[str, tuple[Any, list[pa.Table], list[tuple[int, int, int]], bool]] = {}
        for st in steps:
            for view, rows, p, off, before in st.applies:
                b = by_view.setdefault(view.name, (view, [], [], view.name in st.plan.shared))
                b[1].append(rows)
                b[2].append((p, off, before))
        applied = {st.part: st.last for st in steps}
        batches = [(v, concat(rows), toks, guard) for v, rows, toks, guard in by_view.values()]
        recent = [st.recent for st in steps if st.recent is not None]
        version = self.ctx.definitions_version  # what the announcement proves: see applied.py
        if not batches and not recent:
            self.log.announce(applied, version)
            return
        notify = (self.log.applied_channel, applied_message(applied, version))
        online, states = self.ctx.online, self.ctx.states
        if not online_adapter.apply_many(online, states, batches, notify, recent):
            for st in steps:
                for view, rows, p, off, _ in st.applies:
                    online_adapter.apply(online, states, view, rows, p, off, guard=view.name in st.plan.shared)
            for item in recent:
                online_adapter.append_recent_once(online, item)
            self.log.announce(applied, version)
        for st in steps:
            for view, rows, *_ in st.applies:
                STATS.inc("applied_events", view.source.name, rows.num_rows)
        self._note_applied(steps)

    def _note_applied(self, steps: list[_Step]) -> None:
        """After the commit: the partitions' watermarks as their views' newest applied event time."""
        for st in steps:
            views = [view.name for view, *_ in st.applies]
            if st.batch is not None and st.plan.embeds:  # embedding views are updated in this round too
                views += [n for n, e in self.defs.embedding_views.items() if e.source.name == st.part[0]]
            self.applied_times.note(views, st.part[1], st.state.watermark_us)
        self.applied_times.write()

    def _finish(self, st: _Step) -> None:
        """After the commit: embeddings, rows for the offline log, acks."""
        if st.batch is not None:
            update_embeddings(
                self.ctx.embedding_sink, st.plan, st.batch.offline.get(source_table(st.plan.source.name), [])
            )
            if self.owned.get(st.part) is not st.state:
                return  # dropped meanwhile (lease lost / reset): the successor replays these entries
            self.buffer.add(st.part, st.batch.offline, st.ids)
            self.processed += st.n
        else:
            self.buffer.ack_later(st.part, st.ids)

    def _process(self, work: list[tuple[Part, list[Any]]]) -> None:
        cutovers = self._cutovers
        steps = [st for part, entries in work if (st := self._prepare(part, entries, cutovers)) is not None]
        if steps:
            self._commit(steps)
            for st in steps:
                self._finish(st)

    @property
    def _cutovers(self) -> dict[str, int]:
        return {v: c.ts_us for v, c in load_cutovers(self.ctx.config, self.ctx.online).items()}

    def flush(self) -> None:
        """Append buffered rows offline, record the marks, then acknowledge the entries (waits)."""
        self.buffer.flush(self.owned, self.key)

    def step(self) -> int:
        """One round: rebalance when due, read, apply, flush when due. Returns entries read."""
        now = time.monotonic()
        if not self.transient and now - self._last_version_check >= _VERSION_CHECK_S:
            # An apply is picked up within this, whatever the lease cadence (one small file read).
            self._last_version_check = now
            if self._reload_if_applied():
                self._last_balance = 0.0
        if now - self._last_balance > (0.1 if self._short else self.lease_ms / 3000):
            self.rebalance()
        keys = [self.key(p) for p in sorted(self.owned)]
        res = self.log.read(self.name, keys, self.count, self.block_ms)
        work = [(self._by_key[k if isinstance(k, bytes) else k.encode()], entries) for k, entries in res if entries]
        n = sum(len(e) for _, e in work)
        if work and not self.transient and self._reload_if_applied():
            # Entries read after an apply may come from pushers on the new definitions (they push once
            # it is written): never apply them on the old ones. They stay pending; re-taking the
            # partitions replays them on the new definitions.
            self.rebalance()
            return n
        if work:
            self._process(work)
        else:
            self.applied_times.write()  # what a busy spell noted within the last interval
        buf = self.buffer
        if buf.buffered_rows >= 4 * self.flush_rows:
            self.flush()  # the flusher cannot keep up: wait for it
        elif buf.buffered_rows >= self.flush_rows or time.monotonic() - buf.last_flush >= self.flush_interval:
            buf.flush_background(self.owned, self.key)
        return n

    def run(self, stop: threading.Event) -> None:
        log.info(
            "stream worker %s started (%d partitions in %d sources)", self.name, len(self.all_parts), len(self.plans)
        )
        try:
            while not stop.is_set():
                try:
                    self.step()
                except DefinitionError:
                    # A transform that fails on these events: stop rather than skip them (they stay
                    # pending and are applied once the definition is fixed and applied).
                    log.exception("stream worker %s: a feature view cannot process its events", self.name)
                    raise
                except DeploymentConflictError as e:  # flushes what it applied, releases its partitions
                    log.error("stream worker %s stops: %s", self.name, e)
                    self.stopped_by = e
                    return
                except Exception:  # noqa: BLE001 - Redis/Lance hiccup: back off, keep the entries pending
                    log.exception("stream worker %s: step failed; replaying its partitions", self.name)
                    self._reset()
                    stop.wait(0.5)
        finally:
            self.close()

    def drain(self, parts: Iterable[Part]) -> bool:
        """Apply everything currently in ``parts`` inline (a push with no live worker). Keeps the
        leases for the next push; returns False when another owner holds one."""
        ok = True
        for part in parts:
            if part in self.owned and not self.log.renew_lease(*part, self.name, self.lease_ms):
                self._drop(part)
            if part not in self.owned:
                if not self.log.try_lease(*part, self.name, self.lease_ms):
                    ok = False
                    continue
                self.acquire(part)
            while True:
                res = self.log.read(self.name, [self.key(part)], self.count, 0)
                if not res or not res[0][1]:
                    break
                self._process([(part, res[0][1])])
        self.applied_times.write(force=True)
        self.flush()
        return ok

    def close(self) -> None:
        try:
            try:
                self.applied_times.write(force=True)
            except Exception:  # noqa: BLE001 - Redis down: freshness reads older until the next owner commits
                pass
            self.flush()
        finally:
            self.buffer.close()
            for part in list(self.owned):
                self.log.release_lease(*part, self.name)
            self.owned.clear()
            self.log.leave(self.name)
