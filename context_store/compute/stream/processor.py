"""What happens to a micro-batch of stream events, shared by embedded push and Redis workers.

For each feature view on the source: drop events already applied (offset fence), events the
batch backfill owns (``ts < cut-over``) and, online only, events too late for the watermark;
run the view's transform (``compute.transform.apply_transform``, the batch code path); apply the
rows to online aggregation state through the online store's atomic ``apply_events`` (the same
partial/merge code batch materialization uses, ``state.aggregations``); and collect rows for
the offline log (``fv__{view}``, ``src__{source}``).
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ...definitions import FeatureView, StreamSource
from ...errors import NotFoundError
from ...state.columns import ts_to_us
from ...vocab.tables import source_table, view_table
from ..transform import apply_transform
from .stats import STATS

if TYPE_CHECKING:
    from ...stores.offline.base import OfflineStore
    from ...stores.online.base import OnlineStore
    from .sinks import EmbeddingSink

__all__ = [
    "SourcePlan",
    "source_plan",
    "partition_of",
    "PartitionState",
    "watermark_cap",
    "Batch",
    "process_batch",
    "OfflineWriter",
    "OFFSET",
    "PARTITION",
]

log = logging.getLogger("context_store.stream")

OFFSET = "_offset"
PARTITION = "_partition"


@dataclass(frozen=True)
class SourcePlan:
    source: StreamSource
    views: tuple[FeatureView, ...]  # feature views reading this source
    partition_keys: tuple[str, ...]  # columns hashed to pick a partition
    recent: tuple[tuple[tuple[str, ...], int], ...] = ()  # (entity join keys, n) of context services
    embeds: bool = False  # an embedding view reads this source
    # Views keyed by other columns than the partition key: several partitions (workers) write
    # the same entities, so their writes are guarded (optimistic concurrency).
    shared: frozenset[str] = frozenset()

    @property
    def required(self) -> set[str]:
        return {self.source.timestamp_field, *(k for v in self.views for k in v.join_keys)}


def source_plan(definitions: Any, source_name: str) -> SourcePlan:
    """The stream source and its views; NotFoundError for an unknown or non-stream source."""
    src = definitions.sources.get(source_name) if isinstance(source_name, str) else None
    if not isinstance(src, StreamSource):
        streams = sorted(n for n, s in definitions.sources.items() if isinstance(s, StreamSource))
        what = "is not a stream source" if src is not None else "is not a source"
        raise NotFoundError(
            f"{source_name!r} {what}; push to one of: {', '.join(streams) or 'none (apply a StreamSource first)'}",
            field="source",
        )
    views = tuple(
        sorted((v for v in definitions.feature_views.values() if v.source.name == source_name), key=lambda v: v.name)
    )
    schema = [f.name for f in src.schema or ()]
    common = [k for k in schema if views and all(k in v.join_keys for v in views)]
    keys = common or ([k for k in views[0].join_keys if k in schema] if views else [])
    recent: dict[tuple[str, ...], int] = {}
    for cs_ in getattr(definitions, "context_services", {}).values():
        re_ = getattr(cs_, "recent_events", None)
        if re_ and re_[0].name == source_name and all(k in schema for k in cs_.entity.join_keys):
            jk = tuple(cs_.entity.join_keys)
            recent[jk] = max(recent.get(jk, 0), int(re_[1]))
    for jk, n in getattr(src, "recent_lists", ()):  # a cs.Memory keeps each entity's recent memories online
        recent[jk] = max(recent.get(jk, 0), n)
    embeds = src.kind == "memory" or any(
        v.source.name == source_name for v in getattr(definitions, "embedding_views", {}).values()
    )
    shared = frozenset(v.name for v in views if src.partitions > 1 and keys and not set(keys) <= set(v.join_keys))
    return SourcePlan(src, views, tuple(keys), tuple(recent.items()), embeds, shared)


def append_recent(online: OnlineStore, plan: SourcePlan, raw: list[pa.Table]) -> None:
    """Newly applied raw events onto the per-entity recent-events lists (``get_user_context``)."""
    rows = [r for t in raw for r in t.drop_columns([c for c in (PARTITION, OFFSET) if c in t.column_names]).to_pylist()]
    for key, (items, n) in recent_lists(plan, rows).items():
        online.append_recent(plan.source.name, key, items, n)


def recent_lists(plan: SourcePlan, rows: list[dict[str, Any]]) -> dict[str, tuple[list[dict[str, Any]], int]]:
    """Per entity key of each context service on this source: its newest rows (oldest first), cap."""
    from ...state.codec import entity_key

    out: dict[str, tuple[list[dict[str, Any]], int]] = {}
    for keys, n in plan.recent:
        groups: dict[str, list[dict[str, Any]]] = {}
        for r in rows:
            vals = [r.get(k) for k in keys]
            if all(v is not None for v in vals):
                groups.setdefault(entity_key(list(keys), vals), []).append(r)
        for key, items in groups.items():
            out[key] = (items[-n:], n)
    return out


def update_embeddings(sink: Callable[[], EmbeddingSink], plan: SourcePlan, raw: list[pa.Table]) -> None:
    """New or changed texts of the applied events into the embedding views on this source
    (LanceDB first, then the FAISS index), so ``find_similar`` sees them. ``sink`` is opened
    only when this source feeds an embedding view."""
    if not plan.embeds or not raw:
        return
    table = concat(raw)
    table = table.drop_columns([c for c in (PARTITION, OFFSET) if c in table.column_names])
    if table.num_rows:
        sink().ingest(plan.source.name, table)


def partition_of(table: pa.Table, keys: tuple[str, ...], n: int) -> np.ndarray:
    """A stable partition per row (crc32 of the key values; Python's hash() is salted per process)."""
    if n <= 1 or not keys or table.num_rows == 0:
        return np.zeros(table.num_rows, dtype=np.int64)
    cols = [table.column(k).to_pylist() for k in keys]
    if len(cols) == 1:
        vals = [zlib.crc32(str(v).encode()) for v in cols[0]]
    else:
        vals = [zlib.crc32("\x1f".join(map(str, t)).encode()) for t in zip(*cols)]
    return np.asarray(vals, dtype=np.int64) % n


@dataclass
class PartitionState:
    """What the owner of one (source, partition) knows: fences and the event-time watermark."""

    applied: dict[str, int] = field(default_factory=dict)  # view -> online applied offset
    offline: dict[str, int] = field(default_factory=dict)  # offline table -> offset buffered/written
    watermark_us: int | None = None


@dataclass
class Batch:
    """Rows a processed batch produced for the offline log, by table."""

    offline: dict[str, list[pa.Table]] = field(default_factory=dict)
    applied_rows: int = 0

    def add(self, table: str, rows: pa.Table) -> None:
        if rows.num_rows:
            self.offline.setdefault(table, []).append(rows)


ApplyFn = Callable[[FeatureView, pa.Table, int, int | None], None]  # (view, rows, partition, offset)


def _late_masks(
    ts: np.ndarray, watermark: int | None, lateness_us: int, cap_us: int | None = None
) -> tuple[np.ndarray, np.ndarray, int | None]:
    """(late, too_late, new watermark): the watermark is the max event time seen before each row.

    ``cap_us`` (now + the source's max_future_skew): the watermark never moves past it, so one
    event from a wrong clock that got past validation cannot make every later event late."""
    if len(ts) == 0:
        return np.zeros(0, bool), np.zeros(0, bool), watermark
    if cap_us is not None and watermark is not None:
        watermark = min(watermark, cap_us)
    run = np.maximum.accumulate(ts)
    if cap_us is not None:
        run = np.minimum(run, cap_us)
    before = np.empty_like(run)
    before[0] = watermark if watermark is not None else ts[0]
    before[1:] = run[:-1]
    if watermark is not None:
        before = np.maximum(before, watermark)
    late = ts < before
    too_late = ts < before - lateness_us
    new_wm = int(run[-1]) if watermark is None else max(int(run[-1]), watermark)
    return late & ~too_late, too_late, new_wm


def watermark_cap(src: StreamSource) -> int:
    """The furthest a watermark of ``src`` may be: now + ``max_future_skew`` (µs)."""
    return time.time_ns() // 1000 + src.max_future_skew // timedelta(microseconds=1)


def process_batch(
    plan: SourcePlan,
    events: pa.Table,
    partition: int,
    state: PartitionState,
    apply: ApplyFn,
    cutovers: dict[str, int],
    online_token: bool = True,
    admitted: np.ndarray | None = None,
    quality: Callable[[FeatureView, pa.Table], None] | None = None,
) -> Batch:
    """Apply ``events`` (schema columns + ``_offset``, in stream order) of one partition.

    ``online_token``: pass each batch's last offset to ``apply`` (Redis workers); the embedded
    path passes None (its durability is the sqlite commit itself). ``admitted``: rows whose
    lateness the pusher already decided against the admitted watermark (``admission.py``): they
    are never dropped as too late here (an outside producer's rows still are). ``quality``: the
    sampled data quality check (``compute/quality_stream.py``), given each view's transformed rows.
    """
    src = plan.source
    out = Batch()
    if events.num_rows == 0:
        return out
    offsets = events.column(OFFSET).to_numpy()
    last = int(offsets[-1])
    ts = ts_to_us(events[src.timestamp_field])
    lateness = int(src.allowed_lateness.total_seconds() * 1_000_000)
    late, too_late, new_wm = _late_masks(ts, state.watermark_us, lateness, watermark_cap(src))
    if admitted is not None:  # late by this worker's watermark, on time by the admitted one
        late |= too_late & admitted
        too_late &= ~admitted
    # Only events newer than the fence count as late (replays don't count twice).
    fresh_src = offsets > state.offline.get("src", -1)
    raw = None
    if fresh_src.any():
        raw = take_rows(events, fresh_src).drop_columns([OFFSET])
        raw = raw.append_column(PARTITION, pa.array(np.full(raw.num_rows, partition, dtype=np.int64)))
        raw = raw.append_column(OFFSET, pa.array(offsets[fresh_src]))
    body = events.drop_columns([OFFSET])
    # Phase 1, no side effects: every view's rows (a transform that raises changes nothing).
    work: list[tuple[FeatureView, pa.Table | None, pa.Table | None, int, int]] = []
    for view in plan.views:
        cut = cutovers.get(view.name)
        keep = np.ones(len(ts), bool) if cut is None else ts >= cut
        on_fence = state.applied.get(view.name, -1)
        off_fence = state.offline.get(view.name, -1)
        on_mask = keep & ~too_late & (offsets > on_fence) if view.online else np.zeros(len(ts), bool)
        off_mask = keep & (offsets > off_fence) if view.offline else np.zeros(len(ts), bool)
        if cut is not None:
            STATS.inc("before_cutover_events", src.name, int((~keep & fresh_src).sum()))
        if view.online:
            STATS.inc("duplicate_events", src.name, int(((offsets <= on_fence) & keep).sum()))
        on_rows = apply_transform(view, take_rows(body, on_mask)) if on_mask.any() else None
        if on_rows is None and view.online and online_token and last > on_fence:
            on_rows = apply_transform(view, body.slice(0, 0))  # nothing new: still advance the fence
        off_rows = None
        if off_mask.any():
            if on_rows is not None and np.array_equal(on_mask, off_mask):
                off_rows = on_rows  # the common case: one transform serves both
            else:
                off_rows = apply_transform(view, take_rows(body, off_mask))
            # Tag with the batch's last offset: a transform may drop or reshape rows, but each
            # batch is appended whole, so max(_offset) per partition is the exact offline fence.
            n = off_rows.num_rows
            off_rows = off_rows.append_column(PARTITION, pa.array(np.full(n, partition, dtype=np.int64)))
            off_rows = off_rows.append_column(OFFSET, pa.array(np.full(n, last, dtype=np.int64)))
        work.append((view, on_rows if view.online else None, off_rows, on_fence, off_fence))
    # Phase 2: apply online (each view atomically with its fence) and hand rows to the offline log.
    state.watermark_us = new_wm
    if raw is not None:
        n_late, n_too = int((late & fresh_src).sum()), int((too_late & fresh_src).sum())
        STATS.inc("late_events", src.name, n_late)
        if n_too:
            STATS.inc("too_late_events", src.name, n_too)
            log.warning(
                "source %s partition %d: %d events of an outside producer older than watermark - "
                "allowed_lateness (%s); kept offline, not applied online until the next materialize",
                src.name,
                partition,
                n_too,
                src.allowed_lateness,
            )
        out.add(source_table(src.name), raw)
        state.offline["src"] = last
    for view, on_rows, off_rows, on_fence, off_fence in work:
        if on_rows is not None:
            apply(view, on_rows, partition, last if online_token else None)
            state.applied[view.name] = max(last, on_fence)
            out.applied_rows += on_rows.num_rows
        if off_rows is not None:
            out.add(view_table(view.name), off_rows)
        checked = off_rows if off_rows is not None else on_rows
        if quality is not None and checked is not None and checked.num_rows:
            quality(view, checked)
        if view.offline:
            state.offline[view.name] = max(last, off_fence)
    return out


class OfflineWriter:
    """Appends to the offline log. ``_partition``/``_offset`` columns make replays exact; when a
    ``fv__`` table was created without them (a batch backfill wrote it first) they are left out
    and the per-table marks kept in Redis fence replays instead."""

    def __init__(self, offline: OfflineStore) -> None:
        self.offline = offline
        self._tagged: dict[str, bool] = {}

    def tagged(self, table: str) -> bool:
        t = self._tagged.get(table)
        if t is None:
            t = not self.offline.exists(table) or OFFSET in self.offline.schema(table).names
            self._tagged[table] = t
        return t

    def append(self, table: str, rows: pa.Table) -> int:
        from ...errors import InvalidInputError

        for _ in range(2):
            data = (
                rows
                if self.tagged(table)
                else rows.drop_columns([c for c in (PARTITION, OFFSET) if c in rows.column_names])
            )
            try:
                return int(self.offline.append(table, data))
            except InvalidInputError as e:
                if e.field not in (PARTITION, OFFSET):
                    raise
                self._tagged.pop(table, None)  # the table was rewritten without them; re-check
        return int(self.offline.append(table, rows.drop_columns([PARTITION, OFFSET])))

    def mark(self, table: str, partition: int, above: int) -> int:
        """The highest offset of ``partition`` in ``table`` (>= ``above``), from the table itself."""
        if not self.offline.exists(table) or not self.tagged(table):
            return above
        try:
            t = self.offline.read(table, columns=[OFFSET], filter=f"{PARTITION} = {partition} AND {OFFSET} > {above}")
        except (NotFoundError, ValueError, OSError):
            return above
        if t.num_rows == 0:
            return above
        return max(above, int(pc.max(t.column(OFFSET)).as_py()))


def take_rows(table: pa.Table, mask: np.ndarray) -> pa.Table:
    """The rows where ``mask`` holds (no filter when all do: a no-op filter is the priciest step
    of a small stream batch)."""
    return table if mask.all() else table.filter(pa.array(mask))


def concat(tables: list[pa.Table]) -> pa.Table:
    if len(tables) == 1:
        return tables[0]
    return pa.concat_tables(tables, promote_options="permissive")


def ts_max(table: pa.Table, column: str) -> int | None:
    if table.num_rows == 0:
        return None
    v = pc.max(table.column(column).cast(pa.timestamp("us", tz="UTC")).cast(pa.int64())).as_py()
    return int(v) if v is not None else None
