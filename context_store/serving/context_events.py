"""Recent events of one entity for ``get_user_context``.

Serving reads the online store: the entity's recent-events list, filled at materialize time
(``compute.materialize.materialize_recent``) and appended by the stream. As-of replay reads the
offline event log and the source's batch history. Rows are dicts of the source's columns, newest
first, all with ``ts < before`` (strictly before the request time, like every window here), so
online and as-of replay agree.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ..errors import DefinitionError, NotFoundError
from ..vocab.time import datetime_to_us, parse_iso

if TYPE_CHECKING:
    from ..definitions import StreamSource
    from .store import ContextStore

__all__ = ["online_recent_events", "offline_recent_events", "offline_seen_ids", "offline_row_time", "history_latest"]


def _ts_us(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return datetime_to_us(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value)  # already int64 microseconds (the internal convention)
    if isinstance(value, str):
        try:
            return datetime_to_us(parse_iso(value))
        except ValueError:
            return None
    return None


def _newest_first(rows: list[dict[str, Any]], ts_field: str, n: int, before_us: int) -> list[dict[str, Any]]:
    keyed = [(ts, i, r) for i, r in enumerate(rows) if (ts := _ts_us(r.get(ts_field))) is not None and ts < before_us]
    keyed.sort(key=lambda x: (x[0], x[1]), reverse=True)
    return [r for _, _, r in keyed[:n]]


def history_latest(
    store: ContextStore, source: StreamSource, join_keys: dict[str, Any], n: int
) -> list[dict[str, Any]]:
    """The entity's newest ``n`` rows of the source's batch history (per-process index); [] if none."""
    index = _history_index(store, source) if getattr(source, "batch_source", None) is not None else None
    got = None if index is None else index.rows(_index_key(join_keys), n, None)
    return [] if got is None else unforgotten(store, join_keys, got, source.timestamp_field)


def unforgotten(
    store: ContextStore, join_keys: dict[str, Any], rows: list[dict[str, Any]], ts_field: str
) -> list[dict[str, Any]]:
    """``rows`` of the entity ``join_keys`` less those at or before its forget (docs/erasure.md):
    the history files and replays still hold a forgotten entity's events."""
    from ..compute import tombstones

    if not rows:
        return rows
    tombs = tombstones.load(store.offline)
    if not tombs:
        return rows
    at = [a for k, v in join_keys.items() if (a := tombs.forgotten_at(k, v)) is not None]
    if not at:
        return rows
    limit = max(at)
    return [r for r in rows if (t := _ts_us(r.get(ts_field))) is not None and t > limit]


def online_recent_events(
    store: ContextStore, source: StreamSource, join_keys: dict[str, Any], n: int, before: datetime
) -> list[dict[str, Any]] | None:
    """The serving path, from the entity's online list: ``materialize`` filled it with the newest
    history rows (and pushed events the list lacked), the stream appends what is pushed since.

    Only a list without a fill of the *current* history files (stream events arrived before
    materialize filled it, or new history files were dropped since) gets the history from a
    per-process index. None: the entity has nothing stored and the source has no history."""
    from ..compute.materialize import HIST_MARK, history_signature
    from ..state.codec import entity_key

    read = getattr(store.online, "read_recent", None)
    # A few extra: events stamped at/after ``before`` (clock skew, future timestamps) are skipped.
    rows = read(source.name, entity_key(list(join_keys), list(join_keys.values())), n + 8) if read else []
    out: list[dict[str, Any]] = []
    filled = False
    sig: Any = False
    for r in rows:
        mark = r.get(HIST_MARK)
        if mark is not None:
            if sig is False:
                sig = history_signature(source, store.config.repo)
            if mark != sig:
                continue  # filled from history files that were replaced since
            filled = True
            r = {k: v for k, v in r.items() if k != HIST_MARK}
        out.append(r)
    if not filled:
        if not out and getattr(source, "batch_source", None) is None:
            return None
        out += history_latest(store, source, join_keys, n)
    return _newest_first(out, source.timestamp_field, n, datetime_to_us(before))


def offline_recent_events(
    store: ContextStore, source: StreamSource, join_keys: dict[str, Any], n: int, before: datetime
) -> list[dict[str, Any]] | None:
    """As-of replay: pushed events from the offline event log ``src__{source}`` and the source's
    batch history, both strictly before ``before``. The history comes from the per-process index
    (every history row, by entity), else from the files."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from ..vocab.tables import source_table

    ts = source.timestamp_field
    before_us = datetime_to_us(before)
    cols = [f.name for f in source.schema or ()]
    expr = None
    for k, v in join_keys.items():
        e = pc.field(k) == v
        expr = e if expr is None else expr & e
    parts: list[pa.Table] = []
    name = source_table(source.name)
    if store.offline.exists(name):
        try:
            parts.append(store.offline.read(name, ts_column=ts, end_us=before_us, filter=expr))
        except NotFoundError:
            pass
    rows: list[dict[str, Any]] = []
    if getattr(source, "batch_source", None) is not None:
        exact = _history_before(store, source, join_keys, n, before_us)
        if exact is not None:
            rows += exact
        else:
            from ..compute.transform import read_source

            try:
                hist = read_source(source, store.config.repo, end_us=before_us)
            except DefinitionError:  # history files moved or unreadable: pushed events still count
                hist = None
            if hist is not None:
                parts.append(hist.filter(expr) if expr is not None else hist)
        if not parts and exact is None:
            return None
    elif not parts:
        return None
    for t in parts:
        if t.num_rows:
            keep = [c for c in cols if c in t.column_names] or t.column_names
            t = t.select(keep).sort_by([(ts, "descending")]).slice(0, n * 4 + 16)
            rows += t.to_pylist()
    return unforgotten(store, join_keys, _newest_first(rows, ts, n, before_us), ts)


def offline_seen_ids(
    store: ContextStore, source: StreamSource, join_keys: dict[str, Any], column: str, n: int, before: datetime
) -> list[Any] | None:
    """``[r[column] for r in offline_recent_events(...)]`` without building a dict per row (a seen
    set is thousands of rows: that and the datetime round trip were most of a replay's seen-set
    cost). Same rows, same order: pushed events and the history index, newest first (ties: the later
    row first), the entity's forget applied. None when the fast path does not apply (no history
    index, or a time column that is not an Arrow timestamp): the caller takes the general path."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from ..compute import tombstones
    from ..vocab.tables import source_table

    ts = source.timestamp_field
    if getattr(source, "batch_source", None) is None:
        return None
    index = _history_index(store, source)
    if index is None or sorted(join_keys) != _entity_keys_of(store, source):
        return None
    before_us = datetime_to_us(before)
    parts: list[pa.Table] = []
    got = index.slice(_index_key(join_keys), n, before_us)
    if got is not None:
        parts.append(got)
    name = source_table(source.name)
    if store.offline.exists(name):
        from .pushed_index import pushed_slices

        indexed = pushed_slices(store, source, join_keys, n, before_us)  # the log by entity, pushes folded in
        if indexed is not None:
            parts += indexed
        else:
            expr = None
            for k, v in join_keys.items():
                e = pc.field(k) == v
                expr = e if expr is None else expr & e
            try:
                pushed = store.offline.read(name, ts_column=ts, end_us=before_us, filter=expr)
            except NotFoundError:
                pushed = None
            if pushed is not None and pushed.num_rows:
                parts.append(pushed.sort_by([(ts, "descending")]).slice(0, n * 4 + 16))
    for t in parts:  # µs timestamps (stored UTC; naive = UTC), as _ts_us reads them
        typ = t.schema.field(ts).type if ts in t.column_names else None
        if column not in t.column_names or typ is None or not pa.types.is_timestamp(typ) or typ.unit != "us":
            return None
    if not parts:
        return []
    tsv = np.concatenate(
        [t[ts].cast(pa.int64()).fill_null(np.iinfo(np.int64).max).to_numpy(zero_copy_only=False) for t in parts]
    )
    ok = np.flatnonzero(tsv < before_us)  # null times are dropped, as by _newest_first
    order = ok[np.lexsort((ok, tsv[ok]))[::-1]][:n]  # (ts, position) descending
    tombs = tombstones.load(store.offline)
    if tombs:
        at = [a for k, v in join_keys.items() if (a := tombs.forgotten_at(k, v)) is not None]
        if at:
            order = order[tsv[order] > max(at)]
    col = pa.chunked_array([t[column] for t in parts]) if len(parts) > 1 else parts[0][column]
    return col.take(pa.array(order, type=pa.int64())).to_pylist()


def _history_before(
    store: ContextStore, source: StreamSource, join_keys: dict[str, Any], n: int, before_us: int
) -> list[dict[str, Any]] | None:
    """The entity's newest ``n`` history rows before ``before_us`` from the per-process index (every
    history row of every entity, so exact for any time); None when there is no index."""
    index = _history_index(store, source)
    if index is None or sorted(join_keys) != _entity_keys_of(store, source):
        return None
    return index.rows(_index_key(join_keys), n, before_us) or []


def _index_key(join_keys: dict[str, Any]) -> str:
    return "\x1f".join(str(join_keys.get(k)) for k in sorted(join_keys))


def offline_row_time(store: ContextStore, view: Any, join_keys: dict[str, Any], at: datetime) -> datetime | None:
    """Time of the entity's latest row of a (non-aggregate) feature view at ``at`` (ts <= at), from the
    offline log: the effective time of a replayed row feature. None for other views or no row."""
    import pyarrow.compute as pc

    from ..vocab.tables import view_table

    keys = getattr(view, "join_keys", None)
    ts_field = getattr(view, "timestamp_field", None)
    if not keys or not ts_field or not set(keys) <= set(join_keys):
        return None
    name = view_table(view.name)
    if not store.offline.exists(name):
        return None
    expr = None
    for k in keys:
        e = pc.field(k) == join_keys[k]
        expr = e if expr is None else expr & e
    try:
        table = store.offline.read(
            name, columns=[ts_field], ts_column=ts_field, end_us=datetime_to_us(at) + 1, filter=expr
        )
    except NotFoundError:
        return None
    if table.num_rows == 0:
        return None
    latest = pc.max(table[ts_field]).as_py()
    if isinstance(latest, datetime):
        return latest if latest.tzinfo else latest.replace(tzinfo=UTC)
    return None


class _HistoryIndex:
    """The batch history sorted by (entity, ts descending), with each entity's row range: an entity's
    newest rows before any time are a binary search and a slice, never a scan of the files."""

    def __init__(self, hist: Any, entity: list[str], ts: str) -> None:
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc

        key = pc.cast(hist[entity[0]], pa.string())
        for k in entity[1:]:  # several join keys: one string key per row (a separator no id holds)
            key = pc.binary_join_element_wise(key, pc.cast(hist[k], pa.string()), "\x1f")
        hist = hist.append_column("__key", key).sort_by([("__key", "ascending"), (ts, "descending")])
        keys = hist["__key"].to_pylist()
        self.table = hist.drop_columns(["__key"])
        self.neg_ts = -hist[ts].cast(pa.int64()).fill_null(np.iinfo(np.int64).min + 1).to_numpy()
        self.ranges: dict[str, tuple[int, int]] = {}
        start = 0
        for i in range(1, len(keys) + 1):
            if i == len(keys) or keys[i] != keys[start]:
                if keys[start] is not None:
                    self.ranges[keys[start]] = (start, i)
                start = i

    def slice(self, key: str, n: int, before_us: int) -> Any:
        """The rows of ``rows`` as an Arrow table (no per-row dicts); None: no row at all."""
        import numpy as np

        got = self.ranges.get(key)
        if got is None:
            return None
        lo, hi = got
        lo += int(np.searchsorted(self.neg_ts[lo:hi], -before_us, side="right"))
        return self.table.slice(lo, max(min(hi, lo + n) - lo, 0))

    def rows(self, key: str, n: int, before_us: int | None) -> list[dict[str, Any]] | None:
        """The entity's newest ``n`` rows (with ``ts < before_us``), newest first; None: no row at all."""
        import numpy as np

        got = self.ranges.get(key)
        if got is None:
            return None
        lo, hi = got
        if before_us is not None:  # ts descending = neg_ts ascending: first row with ts < before
            lo += int(np.searchsorted(self.neg_ts[lo:hi], -before_us, side="right"))
        return self.table.slice(lo, max(min(hi, lo + n) - lo, 0)).to_pylist()


# (repo, source, files signature) -> the history index. History files change only on a new batch
# drop, so a per-process index keeps replays and the fallback off the file system.
_HISTORY: dict[tuple[Any, ...], _HistoryIndex] = {}
_HISTORY_MAX_BYTES = 1 << 30  # beyond this, read per call rather than hold the history in memory
_history_lock = threading.Lock()


def _history_index(store: ContextStore, source: StreamSource) -> _HistoryIndex | None:
    import os

    from ..compute.transform import batch_source_of, read_source, source_files

    fs = batch_source_of(source)
    if fs is None or not _entity_keys_of(store, source):  # nothing to index by: never read the files
        return None
    files = source_files(fs, store.config.repo)
    try:
        sig = tuple((f, os.stat(f).st_mtime_ns, os.stat(f).st_size) for f in files)
    except OSError:
        return None
    key = (str(store.config.repo), source.name, sig)
    hit = _HISTORY.get(key)
    if hit is not None:
        return hit
    with _history_lock:
        if key in _HISTORY:
            return _HISTORY[key]
        try:
            hist = read_source(source, store.config.repo)
        except DefinitionError:
            return None
        if hist.nbytes > _HISTORY_MAX_BYTES:
            return None
        ts = source.timestamp_field
        entity = [k for k in _entity_keys_of(store, source) if k in hist.column_names]
        if not entity:
            return None
        out = _HistoryIndex(hist, entity, ts)
        for stale in [k for k in _HISTORY if k[:2] == key[:2]] + list(_HISTORY)[: max(len(_HISTORY) - 7, 0)]:
            _HISTORY.pop(stale, None)  # replaced files, and a bound on the number of indexes
        _HISTORY[key] = out
        return out


def _entity_keys_of(store: ContextStore, source: StreamSource) -> list[str]:
    """Join keys (sorted) of the context services whose recent events -- or seen items
    (``cs.Similar(seen_from=source)``) -- come from ``source``."""
    from ..definitions import StreamSource as Stream

    for svc in store.definitions.context_services.values():
        if svc.recent_events is not None and svc.recent_events[0].name == source.name:
            return sorted(svc.entity.join_keys)
        opts = svc.similar_options
        seen_from = opts.seen_from if opts is not None else None
        if isinstance(seen_from, Stream) and seen_from.name == source.name:
            return sorted(svc.entity.join_keys)
    return []
