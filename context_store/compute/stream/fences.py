"""A partition's fences: loading them on takeover, fencing recent-events appends (apart from the worker loop)."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from ...vocab.tables import source_table, view_table
from . import online_adapter
from .admission import bound_watermarks
from .processor import OFFSET, OfflineWriter, PartitionState, SourcePlan, recent_lists, take_rows
from .redis_streams import RedisStreamLog

RECENT_KEY = "~recent"  # PartitionState.applied key of the recent-events fence


def load_partition(
    online: Any, log: RedisStreamLog, writer: OfflineWriter, plan: SourcePlan, source: str, p: int
) -> tuple[PartitionState, int]:
    """Partition ``p``'s fences, offline marks and watermark, plus the offset a previous owner's
    commit was cut short at (-1: none; Redis Cluster), which the new owner replays up to first."""
    state = PartitionState()
    cut = -1  # a previous owner's commit cut short mid-way (Redis Cluster): replay exactly up to it
    for view in plan.views:
        if view.online:
            state.applied[view.name] = online_adapter.applied_offset(online, view, p)
            cut = max(cut, online_adapter.inflight_offset(online, view, p))
        if view.offline:
            table = view_table(view.name)
            state.offline[view.name] = writer.mark(table, p, log.offline_marks(table, p))
    if plan.recent:
        state.applied[RECENT_KEY] = online_adapter.recent_applied(online, source, p)
        cut = max(cut, online_adapter.recent_inflight(online, source, p))
    table = source_table(source)
    state.offline["src"] = writer.mark(table, p, log.offline_marks(table, p))
    state.watermark_us = int(wm) if (wm := log.r.hget(log.watermark_key, f"{source}|{p}")) else None
    bound_watermarks(log, plan.source, {p: state})
    return state, cut


def recent_appends(plan: SourcePlan, p: int, state: PartitionState, events: pa.Table, last: int) -> Any:
    """This batch's recent-events appends, fenced by their own applied offset (committed with
    the round, so a replay after a crash appends nothing twice)."""
    fence = state.applied.get(RECENT_KEY, -1)
    if last <= fence:
        return None
    new = take_rows(events, events.column(OFFSET).to_numpy() > fence).drop_columns([OFFSET])
    state.applied[RECENT_KEY] = last
    return online_adapter.recent_item(plan.source.name, p, last, fence, recent_lists(plan, new.to_pylist()))
