"""Backfill of a stream-fed feature view: batch history plus the stream's own offline log.

A view added after events were pushed must see them, and a stream with no batch source has
nothing but its log. So backfilling a ``StreamSource`` view reads both and cuts them so that no
event counts twice:

- history rows (``batch_source`` files) are the batch's, as before;
- log rows (``src__{source}``) are deduplicated by ``(_partition, _offset)`` (embedded: one offset
  per event; Redis offsets are per entry, whose replays the workers' offline marks already fence)
  and, when the source declares one, by its event id;
- a log row that the history already holds is dropped. With an event id column in the history
  that is exact (same id). Without one, a log row counts as held by the history when its event
  time is not after the history's newest event AND it was pushed before the newest history file
  was written (a file cannot hold an event pushed after it was written; the lake catching up on
  pushed events is the usual case). Pushed events older than the history's newest are therefore
  counted when they were pushed after the files were written.

Hand-over with the stream (``compute.stream.cutover``): the cut-over ``C`` is recorded first,
from the history alone (as before), so the stream keeps every event it has not applied yet with
``ts >= C``. The log is then settled (Redis: the consumer group has acknowledged every entry,
i.e. flushed it offline) and read. Rows with ``ts < C`` are the backfill's: history + log. Rows
with ``ts >= C`` belong to the stream, but events pushed before the view existed never reached
it: the backfill adds the log rows the view's offline table lacks (a multiset union of the
table's rows and the log's transformed rows), so nothing applied twice and nothing missing.
With no history and no ``end`` there is no time the batch owns: ``C`` is recorded as
``NO_HISTORY`` (the stream skips nothing) only so that the next materialize reloads the view.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..definitions import FeatureView, StreamSource
from ..errors import NotFoundError
from ..vocab.tables import source_table, view_table
from . import tombstones
from .transform import apply_transform, batch_source_of, source_files

if TYPE_CHECKING:
    from ..config import Config
    from ..stores.offline.base import OfflineStore
    from ..stores.online import OnlineStore

__all__ = ["NO_HISTORY", "log_rows", "settle_log", "write_stream_view"]

log = logging.getLogger(__name__)

NO_HISTORY = -(1 << 62)  # cut-over of a view with no batch history: the stream owns every event time
_PARTITION, _OFFSET = "_partition", "_offset"
_SEQ_BITS = 12  # Redis offsets: (ms << 12) | seq (compute.stream.redis_streams.id_to_offset)


def _ts_us(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return np.asarray(col.cast(pa.timestamp("us", tz="UTC")).cast(pa.int64()).fill_null(0).to_numpy(), dtype=np.int64)


def settle_log(config: Config, source: StreamSource, timeout: float = 10.0) -> bool:
    """Wait (bounded) until every entry pushed so far is in ``src__{source}``: the consumer group
    has nothing pending nor undelivered (workers acknowledge only after the offline append).
    Embedded pushes write the log before they return: nothing to wait for."""
    if not config.is_redis:
        return True
    from .stream.redis_streams import RedisStreamLog

    rlog = RedisStreamLog(config.online_store, config.workspace)
    try:
        keys = [rlog.stream_key(source.name, p) for p in range(source.partitions)]
        deadline = time.monotonic() + timeout
        while True:
            behind = rlog.lag(keys)
            if behind == 0:
                return True
            if time.monotonic() >= deadline:
                log.warning(
                    "backfill: %d events of %s are not in its offline log yet (is a worker running?); "
                    "they reach views through the stream",
                    behind,
                    source.name,
                )
                return False
            time.sleep(0.05)
    finally:
        rlog.close()


def _history_mtime_us(source: StreamSource, repo: os.PathLike[str] | str) -> int | None:
    fs = batch_source_of(source)
    if fs is None:
        return None
    from pathlib import Path

    try:
        return max(os.stat(f).st_mtime_ns for f in source_files(fs, Path(repo))) // 1000
    except (OSError, ValueError):
        return None


def _push_time_us(offsets: np.ndarray, redis: bool) -> np.ndarray:
    """When each logged event was pushed: Redis offsets are stream ids (ms, seq), embedded ones
    µs-clock sequence numbers."""
    return (offsets >> _SEQ_BITS) * 1000 if redis else offsets


def _ids(col: pa.ChunkedArray) -> list[Hashable]:
    return [v if isinstance(v, Hashable) else repr(v) for v in col.to_pylist()]


def log_rows(
    config: Config,
    offline: OfflineStore,
    source: StreamSource,
    history: pa.Table | None,
    start_us: int | None,
    end_us: int | None,
) -> pa.Table | None:
    """The source's logged events in ``[start, end)`` that the history does not hold (source
    columns, no ``_partition``/``_offset``); None when there is no log."""
    name = source_table(source.name)
    if not offline.exists(name):
        return None
    try:
        table = offline.read(name, ts_column=source.timestamp_field, start_us=start_us, end_us=end_us)
    except NotFoundError:
        return None
    if table.num_rows == 0:
        return table.drop_columns([c for c in (_PARTITION, _OFFSET) if c in table.column_names])
    keep = np.ones(table.num_rows, dtype=bool)
    tagged = _PARTITION in table.column_names and _OFFSET in table.column_names
    if tagged and not config.is_redis:
        # A replayed append must not count twice. Embedded offsets are one per event; a Redis
        # offset is one per entry (a whole push), so there rows of one entry share it and a
        # replay is fenced at write time instead (the workers' offline marks).
        parts = table.column(_PARTITION).fill_null(-1).to_numpy()
        offs = table.column(_OFFSET).fill_null(-1).to_numpy()
        seen: set[tuple[int, int]] = set()
        for i, k in enumerate(zip(parts.tolist(), offs.tolist())):
            if k in seen:
                keep[i] = False
            seen.add(k)
    id_field = getattr(source, "event_id_field", None)
    by_id = bool(id_field) and id_field in table.column_names
    exact = by_id and history is not None and id_field in history.column_names
    if by_id:
        held: set[Hashable] = set()
        if exact:
            assert history is not None
            held = {v for v in _ids(history.column(id_field)) if v is not None}
        first: set[Hashable] = set()
        for i, v in enumerate(_ids(table.column(id_field))):
            if v is None:
                continue
            if v in held or v in first:
                keep[i] = False
            first.add(v)
    if not exact and history is not None and history.num_rows and tagged:
        # No ids to match: an event no newer than the history, pushed before its files were written,
        # is taken to be in them (the lake caught up on the stream).
        mtime = _history_mtime_us(source, config.repo)
        h_max = int(_ts_us(history.column(source.timestamp_field)).max())
        if mtime is not None:
            pushed = _push_time_us(table.column(_OFFSET).fill_null(0).to_numpy().astype(np.int64), config.is_redis)
            ts = _ts_us(table.column(source.timestamp_field))
            keep &= ~((ts <= h_max) & (pushed < mtime))
    if not keep.all():
        table = table.filter(pa.array(keep))
    table = table.drop_columns([c for c in (_PARTITION, _OFFSET) if c in table.column_names])
    if history is not None:
        table = _like(table, history)
    return table


def _like(table: pa.Table, history: pa.Table) -> pa.Table:
    """Cast the log's columns to the history's types where both have them (one concat later)."""
    for i, name in enumerate(table.column_names):
        j = history.schema.get_field_index(name)
        if j >= 0 and table.schema.field(i).type != history.schema.field(j).type:
            try:
                table = table.set_column(i, name, table.column(i).cast(history.schema.field(j).type))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                pass  # left as is: the permissive concat decides
    return table


def _split(rows: pa.Table, ts: str, cut: int) -> tuple[pa.Table, pa.Table]:
    t = rows.column(ts).cast(pa.timestamp("us", tz="UTC")).cast(pa.int64())
    return rows.filter(pc.less(t, cut)), rows.filter(pc.greater_equal(t, cut))


def _keys(col: pa.ChunkedArray) -> list[Any]:
    """A column's values as dict keys: list values (embeddings, arrays) as tuples."""
    vals = col.to_pylist()
    if pa.types.is_list(col.type) or pa.types.is_fixed_size_list(col.type) or pa.types.is_large_list(col.type):
        return [tuple(v) if v is not None else None for v in vals]
    return vals


def _union(new: pa.Table, existing: pa.Table) -> pa.Table:
    """``new`` plus each row of ``existing`` beyond its count in ``new`` (multiset union): the
    stream's rows already in the table that the log also holds are not doubled, and the rows
    the stream appended after the log was read are kept."""
    cols = [c for c in new.column_names if c in existing.column_names]
    if existing.num_rows == 0:
        return new
    existing = existing.select(cols)
    have = Counter(zip(*(_keys(new.column(c)) for c in cols)))
    extra = []
    for i, row in enumerate(zip(*(_keys(existing.column(c)) for c in cols))):
        if have[row] > 0:
            have[row] -= 1
        else:
            extra.append(i)
    if not extra:
        return new
    from .stream.processor import concat

    return concat([new, _like(existing.take(pa.array(extra)), new)])


def write_stream_view(
    config: Config,
    offline: OfflineStore,
    view: FeatureView,
    history: pa.Table | None,
    start_us: int | None,
    end_us: int | None,
    online: OnlineStore | None = None,
) -> tuple[int, int]:
    """Backfill one stream view from ``history`` (its source's batch rows in range, or None) and
    the source's offline log. Returns (rows written, log events read)."""
    from .batch import sort_for_pit
    from .stream.cutover import choose_cutover, get_cutover, record_cutover

    source = view.source
    assert isinstance(source, StreamSource)
    ts = view.timestamp_field
    hist_rows = apply_transform(view, history) if history is not None else None
    newest = None
    if hist_rows is not None and hist_rows.num_rows:
        newest = pc.max(hist_rows.column(ts).cast(pa.timestamp("us", tz="UTC")).cast(pa.int64())).as_py()
    cut = choose_cutover(newest, end_us)
    if cut is None:  # no history in range: the recorded hand-over stands (else the stream owns all)
        cut = get_cutover(config, view.name, online)
        if cut is None:
            cut = NO_HISTORY
    record_cutover(config, view.name, cut, online=online)  # FIRST: from now on the stream leaves ts < cut to us
    settle_log(config, source)
    logged = log_rows(config, offline, source, history, start_us, end_us)
    n_log = 0 if logged is None else logged.num_rows
    parts = [t for t in (hist_rows, apply_transform(view, logged) if logged is not None else None) if t is not None]
    if not parts:
        from .transform import _empty_from_schema

        parts = [apply_transform(view, _empty_from_schema(source))]
    from .stream.processor import concat

    rows = concat([parts[0], *(_like(p, parts[0]) for p in parts[1:])])
    table = view_table(view.name)
    hi = end_us
    kept = 0  # rows the stream had appended that the log does not hold (kept, not written by us)
    if end_us is None:
        # ts >= cut is the stream's: add only what the table lacks (events pushed before the view existed).
        before, after = _split(rows, ts, cut)
        lo = None if cut == NO_HISTORY else cut
        if start_us is not None:
            lo = start_us if lo is None else max(lo, start_us)
        existing = offline.read(table, ts_column=ts, start_us=lo) if offline.exists(table) else None
        if existing is not None:
            n = after.num_rows
            after = _union(after, existing)
            kept = after.num_rows - n
        rows = concat([before, _like(after, before)]) if after.num_rows else before
    rows = tombstones.load(offline).filter(rows, ts)  # forgotten entities (also rows kept from the table)
    rows = sort_for_pit(rows, view.join_keys, ts, stable=not view.is_aggregate)
    if start_us is None and hi is None and offline.exists(table):
        rows = _keep_tags(offline, table, rows)
    offline.overwrite_range(table, rows, ts, start_us, hi)
    return rows.num_rows - kept, n_log


def _keep_tags(offline: OfflineStore, table: str, rows: pa.Table) -> pa.Table:
    """A whole-table rewrite of a table the stream tags (``_partition``/``_offset``) keeps the
    columns (null here) so the stream's later appends stay tagged."""
    names = offline.schema(table).names
    for c in (_PARTITION, _OFFSET):
        if c in names and c not in rows.column_names:
            rows = rows.append_column(c, pa.nulls(rows.num_rows, pa.int64()))
    return rows
