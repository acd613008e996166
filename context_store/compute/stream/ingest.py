"""``push(store, source, rows)``: validate, make durable, make visible (read-after-write).

- Embedded (``online_store: sqlite``): applied in-process -- each view's transform, the online
  state update (sqlite commit) and the offline appends (``fv__{view}``, ``src__{source}``)
  all happen before ``push`` returns.
- Redis: one ``XADD`` per touched partition in a single MULTI/EXEC (all or nothing; durable in
  Redis when it returns). Then ``push`` waits until the workers' applied offsets pass its entries,
  so the values are served when it returns (as Tecton's ingest API). When no worker is alive the
  pusher drains its partitions itself (same code as a worker), so push never silently waits on
  nobody; if a live worker is slower than ``timeout`` the events stay durable and
  ``PushResult.visible`` is False.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

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

__all__ = ["push", "PushResult", "validate_push", "close_stream"]

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


def validate_push(store: Any, source: str, rows: Any) -> tuple[SourcePlan, pa.Table]:
    plan = source_plan(store.definitions, source)
    try:
        table = validate_records(plan.source, rows, plan.required)
    except InvalidInputError:
        STATS.inc("rejected_pushes", source)
        raise
    return plan, table


def push(
    store: Any, source: str, rows: Any, dry_run: bool = False, timeout: float = 5.0, wait: bool = True
) -> PushResult:
    """Validate ``rows`` against the stream source's schema and ingest them (all or nothing).

    Redis mode: ``wait=False`` returns once the events are durable in the stream (bulk loads);
    ``timeout`` bounds the wait for the workers to apply them (read-after-write).
    """
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 300:
        raise InvalidInputError(f"timeout must be a number of seconds in (0, 300], got {timeout!r}", field="timeout")
    plan, table = validate_push(store, source, rows)
    if dry_run:
        for view in plan.views:  # surface transform errors too, without writing anything
            apply_transform(view, table.slice(0, min(table.num_rows, 100)))
        return PushResult(source, 0, table.num_rows, dry_run=True)
    if table.num_rows == 0:
        return PushResult(source, 0, 0, visible=True)
    if store.config.is_redis:
        return _push_redis(store, plan, table, timeout if wait else None)
    return _push_embedded(store, plan, table)


def _apply_embedded(store: Any):  # type: ignore[no-untyped-def]
    def apply(view: Any, rows: pa.Table, partition: int, offset: int | None) -> None:
        # Guarded: another process may push into the same embedded store.
        online_adapter.apply(store, view, rows, partition, offset, guard=True)
        STATS.inc("applied_events", view.source.name, rows.num_rows)

    return apply


def _push_embedded(store: Any, plan: SourcePlan, table: pa.Table) -> PushResult:
    src = plan.source.name
    seq = _next_seq(table.num_rows)
    events = table.append_column(OFFSET, pa.array(np.arange(seq, seq + table.num_rows, dtype=np.int64)))
    key = (str(store.config.workspace_dir), store.config.workspace, src)
    with _embedded_lock:
        state = _embedded_states.setdefault(key, PartitionState())
        state.applied.clear()  # no replay in-process: fences only guard the Redis path
        state.offline.clear()
        batch = process_batch(plan, events, 0, state, _apply_embedded(store), _cutovers(store), online_token=False)
        if plan.recent:
            append_recent(store, plan, batch.offline.get(source_table(src), []))
        update_embeddings(store, plan, batch.offline.get(source_table(src), []))
        writer = store.__dict__.get("_cs_offline_writer")
        if writer is None:
            writer = store.__dict__["_cs_offline_writer"] = OfflineWriter(store.offline)
        for name, parts in sorted(batch.offline.items(), key=lambda kv: is_source_table(kv[0])):
            rows = concat(parts)
            writer.append(name, rows)
            if is_source_table(name):
                STATS.inc("offline_events", src, rows.num_rows)
    STATS.inc("pushed_events", src, table.num_rows)
    return PushResult(src, table.num_rows, table.num_rows, visible=True, offsets={"0": seq + table.num_rows - 1})


def _cutovers(store: Any) -> dict[str, int]:
    return {v: c.ts_us for v, c in load_cutovers(store.config).items()}


# -- Redis --------------------------------------------------------------------------------
_LIVE_TTL_S = 1.0


def _stream_log(store: Any) -> Any:
    log = store.__dict__.get("_cs_stream_log")
    if log is None:
        from .redis_streams import RedisStreamLog

        with _embedded_lock:
            log = store.__dict__.get("_cs_stream_log")
            if log is None:
                log = RedisStreamLog(store.config.online_store, store.config.workspace)
                store.__dict__["_cs_stream_log"] = log
    return log


def _push_redis(store: Any, plan: SourcePlan, table: pa.Table, timeout: float | None) -> PushResult:
    src = plan.source
    log = _stream_log(store)
    part = partition_of(table, plan.partition_keys, src.partitions)
    uniq = np.unique(part).tolist()
    parts = {int(uniq[0]): table} if len(uniq) == 1 else {int(p): table.filter(pa.array(part == p)) for p in uniq}
    from .redis_streams import BacklogFullError

    try:
        offsets = log.add(src.name, parts, max_len=_max_len(store))
    except BacklogFullError as e:
        raise RateLimitedError(
            f"{e}; the stream workers are behind (is `context-store worker` running?). Nothing of this push "
            "was written; retry later",
            field="source",
        ) from None
    except Exception as e:  # noqa: BLE001 - redis.ConnectionError etc.: nothing was added (one script)
        raise UnavailableError(f"cannot write to the Redis stream of {src.name!r}: {e}", field="online_store") from None
    STATS.inc("pushed_events", src.name, table.num_rows)
    # Embedding views track no stream offsets: update them here for read-after-write (the worker's
    # own update of the same rows is then a no-op: unchanged texts are not re-embedded).
    update_embeddings(store, plan, [table])
    visible = False if timeout is None else _wait_visible(store, plan, offsets, timeout)
    return PushResult(
        src.name, table.num_rows, table.num_rows, visible=visible, offsets={str(p): o for p, o in offsets.items()}
    )


def _max_len(store: Any) -> int:
    """``redis_stream_maxlen`` (yaml/env): unprocessed entries per partition before pushes get 429."""
    v = store.config.extra.get("redis_stream_maxlen")
    try:
        return max(0, int(v)) if v not in (None, "") else 0
    except (TypeError, ValueError):
        raise InvalidInputError(
            f"redis_stream_maxlen must be an integer, got {v!r}", field="redis_stream_maxlen"
        ) from None


def _live_workers(store: Any, log: Any) -> bool:
    cached = store.__dict__.get("_cs_live")
    now = time.monotonic()
    if cached is not None and now - cached[0] < _LIVE_TTL_S and cached[1]:
        return True
    live = bool(log.live_workers(3000))
    store.__dict__["_cs_live"] = (now, live)
    return live


def _applied(store: Any, plan: SourcePlan, offsets: dict[int, int]) -> bool:
    for view in plan.views:
        if view.online:
            for p, off in offsets.items():
                if online_adapter.applied_offset(store, view, p) < off:
                    return False
    return True


def _inline_drain(store: Any, plan: SourcePlan, offsets: dict[int, int]) -> bool:
    from .worker import StreamWorker

    lock = store.__dict__.setdefault("_cs_inline_lock", threading.Lock())
    with lock:
        w = store.__dict__.get("_cs_inline_worker")
        if w is None:
            w = StreamWorker(store, name=f"push-{os.getpid()}-{time.time_ns()}", transient=True)
            store.__dict__["_cs_inline_worker"] = w
        return w.drain([(plan.source.name, p) for p in sorted(offsets)])


def _retire_inline(store: Any) -> None:
    """A real worker is up: hand it the partitions this process drained inline."""
    lock = store.__dict__.setdefault("_cs_inline_lock", threading.Lock())
    with lock:
        w = store.__dict__.pop("_cs_inline_worker", None)
        if w is not None:
            w.close()


def _waiter(store: Any, log: Any) -> Any:
    w = store.__dict__.get("_cs_applied_waiter")
    if w is None:
        from .redis_streams import AppliedWaiter

        with _embedded_lock:
            w = store.__dict__.get("_cs_applied_waiter")
            if w is None:
                w = store.__dict__["_cs_applied_waiter"] = AppliedWaiter(log)
    return w


def _wait_visible(store: Any, plan: SourcePlan, offsets: dict[int, int], timeout: float) -> bool:
    """Until every online view has applied ``offsets``. Workers announce applied offsets over
    pub/sub (an announcement is sent after the commit, so it is proof enough); the applied offsets
    themselves are re-read every 50 ms in case an announcement was missed."""
    if not any(v.online for v in plan.views):
        return True
    log = _stream_log(store)
    waiter = _waiter(store, log)
    deadline = time.monotonic() + timeout
    if _live_workers(store, log) and waiter.wait(plan.source.name, offsets, min(timeout, 0.05)):
        return True
    while True:
        if _applied(store, plan, offsets):
            return True
        if not _live_workers(store, log):
            _inline_drain(store, plan, offsets)
            if _applied(store, plan, offsets):
                return True
        elif "_cs_inline_worker" in store.__dict__:
            _retire_inline(store)
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        if waiter.wait(plan.source.name, offsets, min(left, 0.05)):
            return True


def close_stream(store: Any) -> None:
    """Release what pushing through Redis opened on ``store`` (inline leases, pub/sub, connection)."""
    if "_cs_inline_worker" in store.__dict__:
        try:
            _retire_inline(store)
        except Exception as e:  # noqa: BLE001 - Redis gone: the leases expire, entries stay pending
            logging.getLogger("context_store.stream").warning("could not hand over inline partitions: %s", e)
    waiter = store.__dict__.pop("_cs_applied_waiter", None)
    if waiter is not None:
        waiter.close()
    log = store.__dict__.pop("_cs_stream_log", None)
    if log is not None:
        log.close()
