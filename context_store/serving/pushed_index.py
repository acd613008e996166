"""The pushed events of a stream source (its offline log ``src__{source}``) by entity, for the seen
set of a similar-items call (``context_events.offline_seen_ids``).

Without it every call read the log with an entity filter (a Lance scan of every fragment: ~2.5 ms
a call with a few hundred pushed rows, growing with each push's fragment). Here the log is indexed
once per process like the batch history (``context_events._HistoryIndex``: rows by (entity, time
descending), each entity's row range) and a push is folded in: only the log's new fragments are
read (``stores/offline/appends.py``, as ``first_seen.py`` does) and indexed as one more segment.
A full read happens on the first call, or when a fragment read before changed or went away (a
forget's delete, a compaction) or a new fragment's schema differs. Segments are merged by a
stable sort once there are more than ``_MAX_SEGMENTS``: the same rows in the same order as indexing
the whole log (every row of a segment came after every row of the segments before it).
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .context_events import _HISTORY_MAX_BYTES, _entity_keys_of, _HistoryIndex, _index_key
from .scope import cache_scope

if TYPE_CHECKING:
    import pyarrow as pa

    from ..definitions import StreamSource
    from ..stores.offline.appends import Fragments
    from .store import ContextStore

__all__ = ["pushed_slices", "STATS"]

_MAX_SEGMENTS = 8
_MAX_ENTRIES = 8  # indexes held (each up to _HISTORY_MAX_BYTES): a server of many workspaces holds the latest
STATS: Counter[str] = Counter()  # "full" reads and "folded" pushes (tests, profiling)


@dataclass(slots=True)
class _Pushed:
    token: str | None  # the log's change token when this was last brought up to date
    fragments: Fragments
    schema: pa.Schema | None  # the rows' schema (None: no row yet)
    entity: list[str]
    segments: list[_HistoryIndex]
    nbytes: int


# ((repo, workspace), source) -> index (None: not indexable)
_PUSHED: dict[tuple[tuple[str, str], str], _Pushed | None] = {}
_lock = threading.Lock()


def pushed_slices(
    store: ContextStore, source: StreamSource, join_keys: dict[str, Any], n: int, before_us: int
) -> list[pa.Table] | None:
    """The entity's newest ``n`` pushed rows with ``ts < before_us`` (rows with a null time may
    follow), one Arrow table per segment in log order; None: no index (not a local Lance store, the
    log is too large to hold, or its rows lack the entity keys) -- the caller reads the log."""
    from ..vocab.tables import source_table

    table = source_table(source.name)
    token = store.offline.change_token(table)
    key = (cache_scope(store), source.name)
    got = _PUSHED.get(key)
    if got is None or got.token != token:
        with _lock:
            got = _PUSHED.get(key)
            if got is None or got.token != token:
                got = _update(store, source, table, token, got)
                _PUSHED.pop(key, None)  # re-inserted last: the oldest entries go first below
                _PUSHED[key] = got
                for stale in list(_PUSHED)[: max(len(_PUSHED) - _MAX_ENTRIES, 0)]:
                    _PUSHED.pop(stale, None)  # a bound on memory, as the batch history's (one per workspace)
    if got is None or sorted(join_keys) != got.entity:
        return None
    k = _index_key(join_keys)
    return [t for seg in got.segments if (t := seg.slice(k, n, before_us)) is not None and t.num_rows]


def _update(
    store: ContextStore, source: StreamSource, table: str, token: str | None, prev: _Pushed | None
) -> _Pushed | None:
    from ..stores.offline.appends import read_all, read_appended

    entity = _entity_keys_of(store, source)
    if not entity:
        return None
    if prev is not None and prev.entity == entity:
        appended = read_appended(store.offline, table, prev.fragments)
        if appended is not None:
            frags, new = appended
            if not new.num_rows:
                return _Pushed(token, frags, prev.schema, entity, prev.segments, prev.nbytes)
            if prev.schema is None or new.schema == prev.schema:
                STATS["folded"] += 1
                return _index(token, frags, new, entity, source.timestamp_field, list(prev.segments), prev.nbytes)
    got = read_all(store.offline, table)
    if got is None:
        return None
    STATS["full"] += 1
    frags, rows = got
    return _index(token, frags, rows, entity, source.timestamp_field, [], 0)


def _index(
    token: str | None,
    frags: Fragments,
    rows: pa.Table,
    entity: list[str],
    ts: str,
    segments: list[_HistoryIndex],
    nbytes: int,
) -> _Pushed | None:
    import pyarrow as pa

    if not rows.num_rows:
        return _Pushed(token, frags, None, entity, segments, nbytes)
    if ts not in rows.column_names or any(k not in rows.column_names for k in entity):
        return None
    if not pa.types.is_timestamp(rows.schema.field(ts).type):  # offline_seen_ids reads other times per call
        return None
    nbytes += rows.nbytes
    if nbytes > _HISTORY_MAX_BYTES:
        return None
    segments.append(_HistoryIndex(rows, entity, ts))
    if len(segments) > _MAX_SEGMENTS:
        # each segment is sorted by (entity, ts desc) with ties in log order; a stable sort of them
        # concatenated in log order gives what indexing the whole log gives
        segments = [_HistoryIndex(pa.concat_tables([s.table for s in segments]), entity, ts)]
    return _Pushed(token, frags, rows.schema, entity, segments, nbytes)
