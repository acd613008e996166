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

__all__ = ["online_recent_events", "offline_recent_events", "offline_row_time", "history_latest"]


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
    index = _history_index(store, source, n) if getattr(source, "batch_source", None) is not None else None
    got = None if index is None else index.get(_index_key(join_keys))
    return [] if got is None else unforgotten(store, join_keys, got.to_pylist(), source.timestamp_field)


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
    when that is exact for ``before`` (it holds the entity's newest ``n`` rows), else from the files."""
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


def _history_before(
    store: ContextStore, source: StreamSource, join_keys: dict[str, Any], n: int, before_us: int
) -> list[dict[str, Any]] | None:
    """The entity's newest ``n`` history rows before ``before_us`` from the index, when it holds
    them all: the entity has fewer than ``n`` rows, or its newest ``n`` are all before. Else None."""
    index = _history_index(store, source, n)
    if index is None or sorted(join_keys) != _entity_keys_of(store, source):
        return None
    got = index.get(_index_key(join_keys))
    if got is None:
        return []  # the history has no row of this entity
    rows = got.to_pylist()
    ts = source.timestamp_field
    early = [r for r in rows if (t := _ts_us(r.get(ts))) is not None and t < before_us]
    return early if len(rows) < n or len(early) == n else None


def _index_key(join_keys: dict[str, Any]) -> tuple[str, ...]:
    return tuple(str(join_keys.get(k)) for k in sorted(join_keys))


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


# (repo, source, files signature, n) -> entity key tuple -> its newest n history rows. History files
# change only on a new batch drop, so a per-process index keeps the fallback off the file system.
_HISTORY: dict[tuple[Any, ...], dict[tuple[str, ...], Any]] = {}
_HISTORY_MAX_ROWS = 2_000_000  # beyond this, read per call rather than hold the index in memory
_history_lock = threading.Lock()


def _history_index(store: ContextStore, source: StreamSource, n: int) -> dict[tuple[str, ...], Any] | None:
    import os

    import pyarrow.compute as pc

    from ..compute.transform import batch_source_of, read_source, source_files

    fs = batch_source_of(source)
    if fs is None:
        return None
    files = source_files(fs, store.config.repo)
    try:
        sig = tuple((f, os.stat(f).st_mtime_ns, os.stat(f).st_size) for f in files)
    except OSError:
        return None
    key = (str(store.config.repo), source.name, sig, n)
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
        if hist.num_rows > _HISTORY_MAX_ROWS:
            return None
        ts = source.timestamp_field
        entity = [k for k in _entity_keys_of(store, source) if k in hist.column_names]
        if not entity:
            return None
        hist = hist.sort_by([(ts, "descending")])
        keys = list(zip(*(pc.cast(hist[k], "string").to_pylist() for k in entity)))
        index: dict[tuple[str, ...], list[int]] = {}
        for i, k in enumerate(keys):
            rows = index.setdefault(k, [])
            if len(rows) < n:
                rows.append(i)
        out = {k: hist.take(v) for k, v in index.items()}
        for stale in [k for k in _HISTORY if k[:2] == key[:2]] + list(_HISTORY)[: max(len(_HISTORY) - 7, 0)]:
            _HISTORY.pop(stale, None)  # replaced files, and a bound on the number of indexes
        _HISTORY[key] = out
        return out


def _entity_keys_of(store: ContextStore, source: StreamSource) -> list[str]:
    """Join keys (sorted) of the context services whose recent events come from ``source``."""
    for svc in store.definitions.context_services.values():
        if svc.recent_events is not None and svc.recent_events[0].name == source.name:
            return sorted(svc.entity.join_keys)
    return []
