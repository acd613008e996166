"""Embedded push (``online_store: sqlite``): events applied in-process, online (the SQLite file) and
offline (LanceDB ``fv__{view}``, ``src__{source}``) together -- both or neither.

Why this design: a failed push must leave nothing a reader or a retrying client can see. Once
SQLite commits, online state cannot be taken back (max, last, sketches have no inverse), while a
Lance append can be deleted by its ``_offset``. So the SQLite COMMIT is the one commit point, and
it comes last (a journal written with the online commit and replayed into offline later would show
online values for a push that answered an error):

1. Push lock (one embedded pusher per SQLite file at a time: threads, and processes via
   ``flock``). Undo what a pusher that died mid-push left offline (its journal entry, step 5).
2. ``begin_push`` commits a journal entry: offsets ``seq..last`` (unique across processes) and the
   tables the push may append to, with their versions.
3. Transforms (no side effects), then the embedding sink (idempotent upserts: a retry is a no-op).
4. One SQLite write transaction: every view's online writes and the recent-events appends, then
   the offline appends (rows tagged ``_offset``), then the journal entry's removal; COMMIT. A
   failure anywhere before COMMIT rolls SQLite back and deletes this push's offline rows (by
   ``_offset``; a ``fv__`` table a batch backfill wrote without offsets is reverted to its version
   from step 2 when nobody wrote it since), and the push answers 503 naming the store.
5. A pusher killed between its offline appends and its COMMIT leaves its journal entry: the next
   push deletes those rows (step 1), so an unacknowledged push is "neither" and a retry counts once.

Readers: online readers see the push at COMMIT; offline readers may see its rows the few ms before
(step 4), and never after a failure. Docs: docs/online-state.md, "Embedded push".
"""

from __future__ import annotations

import json
import logging
import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import pyarrow as pa

from ...errors import ContextStoreError, InvalidInputError, UnavailableError
from ...stores.online.sqlite import SqliteOnlineStore
from ...vocab.redact import redact_text
from ...vocab.tables import is_source_table, source_table, view_table
from ..quality_stream import stream_quality
from . import online_adapter
from .dedup import PushDedup, claim_embedded
from .freshness import note_embedded_applied
from .processor import (
    OFFSET,
    PARTITION,
    Batch,
    OfflineWriter,
    PartitionState,
    SourcePlan,
    append_recent,
    concat,
    process_batch,
    update_embeddings,
)
from .stats import STATS

if TYPE_CHECKING:
    from ...definitions import FeatureView
    from ...stores.offline.base import OfflineStore
    from .context import StreamContext

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: threads of one process are still serialized
    fcntl = None  # type: ignore[assignment]

__all__ = ["EmbeddedOutcome", "EmbeddedPusher", "push_timeout"]

log = logging.getLogger("context_store.stream")

DEFAULT_TIMEOUT_S = 10.0
_locks_guard = threading.Lock()
_locks: dict[str, threading.Lock] = {}
_states: dict[tuple[str, str, str], PartitionState] = {}


class EmbeddedOutcome(NamedTuple):
    written: int  # records applied online and offline
    last: int  # the last offset given to the push
    duplicates: tuple[int, ...]  # indices (in the pushed table) dropped as already ingested


class _Appended(NamedTuple):
    table: str
    tagged: bool  # rows carry _partition/_offset (else the table was written without them)
    before: int | None  # table version before the push (None: the push created it)


class _Failed(Exception):
    """Where an embedded push failed (``store``: online_store/offline_store, ``table``)."""

    def __init__(self, store: str, table: str | None, cause: BaseException, left: list[str] | None = None) -> None:
        super().__init__(str(cause))
        self.store, self.table, self.cause = store, table, cause
        self.left = left or []  # tables whose rows of this push could not be taken back


def push_timeout(extra: dict[str, object]) -> float:
    """``embedded_push_timeout`` (yaml, seconds): how long a push waits for another writer's lock."""
    v = extra.get("embedded_push_timeout")
    if v in (None, ""):
        return DEFAULT_TIMEOUT_S
    try:
        t = float(str(v))
    except ValueError:
        t = float("nan")
    if not 0 < t <= 300:
        raise InvalidInputError(
            f"embedded_push_timeout must be seconds in (0, 300], got {v!r}", field="embedded_push_timeout"
        )
    return t


def _reason(e: BaseException) -> str:
    """A short, secret-free cause: the OS error when there is one (Lance wraps it in source paths)."""
    msg = redact_text(str(e) or type(e).__name__)
    m = re.search(r"([A-Za-z][A-Za-z ]*\(os error \d+\))", msg)
    if m:
        return m.group(1).strip()
    first = msg.splitlines()[0] if msg else type(e).__name__
    return first[:200]


@contextmanager
def _push_lock(path: Path, timeout_s: float) -> Iterator[None]:
    with _locks_guard:
        lock = _locks.setdefault(str(path), threading.Lock())
    busy = UnavailableError(
        f"another embedded push into this workspace held the push lock for more than {timeout_s:g} s "
        "(embedded_push_timeout); nothing of this push was applied; retry",
        field="online_store",
    )
    if not lock.acquire(timeout=timeout_s):
        raise busy
    try:
        if fcntl is None:
            yield
            return
        fd = os.open(f"{path}.push-lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise busy from None
                    time.sleep(0.002)
            yield  # closing the descriptor releases the flock (also when the process dies)
        finally:
            os.close(fd)
    finally:
        lock.release()


class EmbeddedPusher:
    """Pushes of one ``Ingestor`` into the embedded store (see the module docstring)."""

    def __init__(self) -> None:
        self._writer: OfflineWriter | None = None

    def _writer_for(self, offline: OfflineStore) -> OfflineWriter:
        w = self._writer
        if w is None or w.offline is not offline:
            w = self._writer = OfflineWriter(offline)
        return w

    def push(
        self,
        ctx: StreamContext,
        plan: SourcePlan,
        table: pa.Table,
        cutovers: dict[str, int],
        watermark: int | None = None,
        dedup: PushDedup | None = None,
    ) -> EmbeddedOutcome:
        """Apply ``table`` (validated rows of ``plan``'s source, every one admitted against the
        event-time ``watermark`` by ``admission.py``) online and offline, all or nothing;
        ``dedup``: records whose event id was seen are dropped, in the same SQLite transaction
        (``dedup.py``; ``Replayed`` for a known Idempotency-Key). UnavailableError (503) when a store cannot be
        written: then neither store holds any of it."""
        online = ctx.online
        if not isinstance(online, SqliteOnlineStore):
            raise TypeError(f"embedded push needs the SQLite online store, not {type(online).__name__}")
        timeout = push_timeout(ctx.config.extra)
        writer = self._writer_for(ctx.offline)
        with _push_lock(online.path, timeout):
            try:
                self._recover(online, writer, timeout)
                names = [source_table(plan.source.name), *(view_table(v.name) for v in plan.views if v.offline)]
                try:
                    before = {n: ctx.offline.version(n) for n in names}
                except Exception as e:  # noqa: BLE001 - a broken table: nothing written yet
                    raise _Failed("offline_store", None, e) from None
                try:
                    seq = online.begin_push(table.num_rows, json.dumps(before), timeout)
                except sqlite3.Error as e:
                    raise _Failed("online_store", None, e) from None
                return self._apply(ctx, online, writer, plan, table, seq, cutovers, before, timeout, watermark, dedup)
            except _Failed as f:
                raise self._error(f, timeout) from None

    def _apply(
        self,
        ctx: StreamContext,
        online: SqliteOnlineStore,
        writer: OfflineWriter,
        plan: SourcePlan,
        table: pa.Table,
        seq: int,
        cutovers: dict[str, int],
        before: dict[str, int | None],
        timeout: float,
        admitted_wm: int | None,
        dedup: PushDedup | None,
    ) -> EmbeddedOutcome:
        src = plan.source.name
        last = seq + table.num_rows - 1
        events = table.append_column(OFFSET, pa.array(np.arange(seq, last + 1, dtype=np.int64)))
        state = _states.setdefault((str(ctx.config.workspace_dir), ctx.config.workspace, src), PartitionState())
        watermark = state.watermark_us
        applies: list[tuple[FeatureView, pa.Table]] = []
        appended: list[_Appended] = []
        stage, current = "online_store", None

        def run(events: pa.Table) -> Batch:  # transforms only: no side effects
            applies.clear()
            state.applied.clear()  # no replay in-process: fences only guard the Redis path
            state.offline.clear()
            state.watermark_us = admitted_wm
            return process_batch(
                plan,
                events,
                0,
                state,
                lambda v, r, _p, _o: applies.append((v, r)),
                cutovers,
                online_token=False,
                admitted=np.ones(events.num_rows, dtype=bool),  # the pusher admitted every row
                quality=stream_quality(ctx.config, ctx.offline).observe,  # sampled checks (quality_stream.py)
            )

        try:
            batch = run(events)
            raw = batch.offline.get(source_table(src), [])
            update_embeddings(ctx.embedding_sink, plan, raw)
            dups: list[int] = []
            with online.transaction(timeout):
                if dedup is not None:  # seen event ids dropped; the claims commit with this push
                    kept, dups = claim_embedded(online, src, events, dedup, last)
                    if dups:
                        events, batch = kept, run(kept)
                        raw = batch.offline.get(source_table(src), [])
                for view, rows in applies:  # guarded: another process may push into this file too
                    online_adapter.apply(online, ctx.states, view, rows, 0, None, guard=True)
                note_embedded_applied(online, ctx.definitions, plan, [v.name for v, _ in applies], state.watermark_us)
                if plan.recent:
                    append_recent(online, plan, raw)
                stage = "offline_store"
                # fv__ before src__: src__ holding an offset means every fv__ has it (completeness).
                for name, parts in sorted(batch.offline.items(), key=lambda kv: is_source_table(kv[0])):
                    current = name
                    writer.append(name, concat(parts))
                    appended.append(_Appended(name, writer.tagged(name), before.get(name)))
                stage, current = "online_store", None
                online.end_push(seq)
            # COMMIT happened: the push is in both stores.
        except BaseException as e:
            state.watermark_us = watermark  # a retry of these events must not find them late
            left = self._undo(ctx.offline, appended, seq, last)
            if not left:
                try:
                    online.end_push(seq, timeout)
                except sqlite3.Error:  # the entry stays; the next push finds nothing to undo
                    pass
            if isinstance(e, sqlite3.Error) or (stage == "offline_store" and isinstance(e, Exception)):
                if not isinstance(e, ContextStoreError):
                    raise _Failed(stage, current, e, left) from None
            raise
        for _view, rows in applies:
            STATS.inc("applied_events", src, rows.num_rows)
        return EmbeddedOutcome(events.num_rows, last, tuple(dups))
        for name, parts in batch.offline.items():
            if is_source_table(name):
                STATS.inc("offline_events", src, sum(p.num_rows for p in parts))

    @staticmethod
    def _undo(offline: OfflineStore, appended: list[_Appended], seq: int, last: int) -> list[str]:
        """Take back this push's appends; returns the tables where that failed."""
        left = []
        for a in reversed(appended):
            try:
                if a.tagged:
                    offline.delete_where(a.table, f"{PARTITION} = 0 AND {OFFSET} >= {seq} AND {OFFSET} <= {last}")
                elif a.before is None or not offline.revert(a.table, a.before, a.before + 1):
                    left.append(a.table)
            except Exception as e:  # noqa: BLE001 - the journal entry stays: the next push retries
                log.warning("could not take back the rows of a failed push from %s: %s", a.table, _reason(e))
                left.append(a.table)
        return left

    @staticmethod
    def _recover(online: SqliteOnlineStore, writer: OfflineWriter, timeout: float) -> None:
        """Undo the offline rows of pushes whose pusher died before its SQLite commit (we hold the
        push lock, so every journal entry is such a push)."""
        offline = writer.offline
        for p in online.pending_pushes():
            tables: dict[str, int | None] = json.loads(p.tables)
            for name, version in tables.items():
                try:
                    if not offline.exists(name):
                        continue
                    if writer.tagged(name):
                        offline.delete_where(name, f"{PARTITION} = 0 AND {OFFSET} >= {p.seq} AND {OFFSET} <= {p.last}")
                    elif offline.version(name) != version:
                        log.warning(
                            "an embedded push (offsets %d..%d) died mid-way; %s has no offsets to take its rows "
                            "back by: re-run the backfill of that view to repair it",
                            p.seq,
                            p.last,
                            name,
                        )
                except Exception as e:  # noqa: BLE001 - still broken: this push cannot be made atomic
                    raise _Failed("offline_store", name, e) from None
            try:
                online.end_push(p.seq, timeout)
            except sqlite3.Error as e:
                raise _Failed("online_store", None, e) from None
            log.warning("took back the offline rows of an unfinished embedded push (offsets %d..%d)", p.seq, p.last)

    @staticmethod
    def _error(f: _Failed, timeout: float) -> UnavailableError:
        left = f.left
        tail = "nothing of this push was applied (online and offline unchanged)"
        if left:
            tail = (
                f"nothing of this push was applied online; its rows in {', '.join(left)} could not be taken back "
                "yet (the next push removes them)"
            )
        cause = f.cause
        if f.store == "online_store":
            if isinstance(cause, sqlite3.OperationalError) and "locked" in str(cause):
                what = f"the online store (SQLite) is locked by another writer for more than {timeout:g} s"
            else:
                what = f"the online store (SQLite) cannot be written: {_reason(cause)}"
            return UnavailableError(f"{what}; {tail}; retry", field="online_store")
        where = f" (table {f.table!r})" if f.table else ""
        return UnavailableError(
            f"the offline store cannot be written{where}: {_reason(cause)}; {tail}; fix the offline store "
            "(its directory must be writable) and retry",
            field="offline_store",
        )
