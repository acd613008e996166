"""When each item of an embedding view first appeared in its source: the replay's catalogue
(``catalogue_after``: items not known yet at ``as_of``), ``Rerank.newness`` and the ``cs.TopItems``
item list.

Per process, keyed by the source's signature (its batch files' stats and, for a stream, the pushed
log's change token), so a push makes the next call see the new items. Rebuilding it reads every row
of the source (the MovieLens ratings: 100k rows, 50-80 ms), which used to happen on the first call
after every push. Now a push is folded in: only the pushed log's new fragments are read
(``stores/offline/appends.py``) and their first times merged with the index's (a min of mins: the
same result as the full read). A full read still happens on the first call, when the batch files
change, when a forget changed the tombstones, or when a fragment seen before changed (a delete,
a compaction).
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..definitions import EmbeddingView, StreamSource
from .scope import cache_scope

if TYPE_CHECKING:
    import pyarrow as pa

    from ..stores.offline.appends import Fragments
    from .store import ContextStore

__all__ = ["first_seen", "first_seen_us", "signature", "STATS"]

Index = tuple[list[str], np.ndarray]  # ids sorted by first-seen time (then id), those times in us

# (repo, view, source signature) -> index
_FIRST_SEEN: dict[tuple[Any, ...], Index] = {}
_first_seen_lock = threading.Lock()
STATS: Counter[str] = Counter()  # "full" reads and "appended" merges (tests, profiling)


@dataclass(frozen=True, slots=True)
class _Built:
    """What an index was built from: what a push's merge must find unchanged."""

    sig: tuple[Any, ...]
    tombstones: object  # the Tombstones object filtered with (cached until the forget table changes)
    fragments: Fragments | None  # the pushed log's fragments read (None: no incremental merge)
    ts_type: pa.DataType | None  # the timestamp column's type the times were cast from


_BUILT: dict[tuple[Any, ...], _Built] = {}  # (repo, view) -> the latest index's origin


def signature(store: ContextStore, view: EmbeddingView) -> tuple[Any, ...]:
    from ..compute.transform import batch_source_of, source_files
    from ..vocab.tables import source_table

    files: tuple[Any, ...] = ()
    fs = batch_source_of(view.source)
    if fs is not None:
        try:
            files = tuple((f, os.stat(f).st_mtime_ns, os.stat(f).st_size) for f in source_files(fs, store.config.repo))
        except OSError:
            files = ()
    pushed = (
        store.offline.change_token(source_table(view.source.name)) if isinstance(view.source, StreamSource) else None
    )
    return (cache_scope(store), view.name, files, pushed)


def first_seen(store: ContextStore, view: EmbeddingView, sig: tuple[Any, ...] | None = None) -> Index:
    """Every item of ``view`` by the time of its first source row (per process, until the source
    changes). ``sig``: ``signature(store, view)`` if the caller has it (one per call: file stats and a
    manifest listing)."""
    if sig is None:
        sig = signature(store, view)
    hit = _FIRST_SEEN.get(sig)
    if hit is not None:
        return hit
    with _first_seen_lock:
        hit = _FIRST_SEEN.get(sig)  # built by the call this one waited for
        if hit is not None:
            return hit
        out = _appended(store, view, sig)
        if out is None:
            out = _full(store, view, sig)
        for stale in [k for k in _FIRST_SEEN if k[:2] == sig[:2]]:
            _FIRST_SEEN.pop(stale, None)
        _FIRST_SEEN[sig] = out
        return out


def _pushed_table(view: EmbeddingView) -> str | None:
    from ..vocab.tables import source_table

    return source_table(view.source.name) if isinstance(view.source, StreamSource) else None


def _full(store: ContextStore, view: EmbeddingView, sig: tuple[Any, ...]) -> Index:
    from ..compute.tombstones import load
    from ..compute.vectors.views import source_rows
    from ..stores.offline.appends import fragments

    STATS["full"] += 1
    tombs = load(store.offline)
    # listed before the read: a push landing in between is read now and again by the next merge
    # (harmless: a min), never missed
    table = _pushed_table(view)
    frags = fragments(store.offline, table) if table is not None else None
    rows = source_rows(view, store.config, store.offline)
    ts = view.source.timestamp_field
    if not ts or ts not in rows.column_names or view.join_key not in rows.column_names or not rows.num_rows:
        _BUILT[sig[:2]] = _Built(sig, tombs, None, None)
        return [], np.zeros(0, np.int64)
    _BUILT[sig[:2]] = _Built(sig, tombs, frags, rows.schema.field(ts).type)
    return _first_times(rows.column(view.join_key), rows.column(ts), None)


def _appended(store: ContextStore, view: EmbeddingView, sig: tuple[Any, ...]) -> Index | None:
    """The index after a push: the previous one merged with the pushed log's new rows (None: read all)."""
    from ..compute.tombstones import load
    from ..stores.offline.appends import read_appended

    b = _BUILT.get(sig[:2])
    prev = _FIRST_SEEN.get(b.sig) if b is not None else None
    if b is None or prev is None or b.fragments is None or b.sig[2] != sig[2]:
        return None
    tombs = load(store.offline)
    if tombs is not b.tombstones:  # a forget: earlier rows of the index may be gone
        return None
    table = _pushed_table(view)
    got = read_appended(store.offline, table, b.fragments) if table is not None else None
    ts = view.source.timestamp_field
    if got is None or not ts:
        return None
    frags, new = got
    if new.num_rows and (
        ts not in new.column_names or view.join_key not in new.column_names or new.schema.field(ts).type != b.ts_type
    ):
        return None
    STATS["appended"] += 1
    _BUILT[sig[:2]] = _Built(sig, tombs, frags, b.ts_type)
    if not new.num_rows:
        return prev
    new = tombs.filter(new, ts)  # the same filter source_rows applies to the whole log
    return _merged(store, view, new.column(view.join_key), new.column(ts), prev)


_MERGE_MAX = 64  # more changed ids than this: regroup the whole index (one group_by)


def _merged(store: ContextStore, view: EmbeddingView, ids: Any, ts: Any, prev: Index) -> Index:
    """``_first_times(ids, ts, prev)`` without regrouping every known item: a push holds a few rows,
    mostly of items already known earlier (then ``prev`` itself is returned, and ``first_seen_us``'s
    map with it) or new ones; only the ids whose first time moved are taken out and put back in
    (time, id) order -- the order the group_by sort gives (strings compare by code point there too)."""
    import bisect

    known, times = prev
    small = _first_times(ids, ts, None)
    if ts.null_count or any(i is None for i in small[0]):  # null ids / times: the general merge
        return _first_times(ids, ts, prev)
    at = _first_at(store, view, prev)
    changed = [(int(t), i) for i, t in zip(small[0], small[1].tolist()) if (p := at.get(i)) is None or t < p]
    if not changed:
        return prev
    if len(changed) > _MERGE_MAX:
        return _first_times(ids, ts, prev)
    out_ids, out_t = list(known), times.tolist()
    drop = sorted((_position(out_ids, out_t, i, at[i]) for _, i in changed if i in at), reverse=True)
    for j in drop:
        del out_ids[j], out_t[j]
    for t, i in sorted(changed):
        j = bisect.bisect_left(out_t, t)
        while j < len(out_t) and out_t[j] == t and out_ids[j] < i:
            j += 1
        out_ids.insert(j, i)
        out_t.insert(j, t)
    got = out_ids, np.asarray(out_t, dtype=np.int64)
    _FIRST_AT[(cache_scope(store), view.name)] = (out_ids, {**at, **{i: t for t, i in changed}})
    return got


def _position(ids: list[str], times: list[int], item: str, t: int) -> int:
    import bisect

    j = bisect.bisect_left(times, t)
    while ids[j] != item:
        j += 1
    return j


def _first_times(ids: Any, ts: Any, prev: Index | None) -> Index:
    """Min time per id over (``ids``, ``ts``) and ``prev``'s, sorted by (time, id)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    t = pa.table({"id": pc.cast(ids, pa.string()), "ts": ts.cast(pa.int64())})
    if prev is not None:
        t = pa.concat_tables([pa.table({"id": pa.array(prev[0], pa.string()), "ts": pa.array(prev[1], pa.int64())}), t])
    g = t.group_by("id").aggregate([("ts", "min")]).sort_by([("ts_min", "ascending"), ("id", "ascending")])
    return g["id"].to_pylist(), g["ts_min"].to_numpy(zero_copy_only=False).astype(np.int64)


_FIRST_AT: dict[tuple[Any, ...], tuple[list[str], dict[str, int]]] = {}


def first_seen_us(
    store: ContextStore, view: EmbeddingView, ids: Sequence[str], sig: tuple[Any, ...] | None = None
) -> np.ndarray:
    """Each id's first-seen time in ``view``'s source (us; NaN: never seen), for ``Rerank.newness``.
    Point-in-time as is: a replay's candidates were all first seen before ``as_of``."""
    at = _first_at(store, view, first_seen(store, view, sig))
    return np.array([at.get(str(i), np.nan) for i in ids], dtype=np.float64)


def _first_at(store: ContextStore, view: EmbeddingView, index: Index) -> dict[str, int]:
    """``index`` as a map id -> first time (kept until the index is replaced)."""
    known, times = index
    key = (cache_scope(store), view.name)
    hit = _FIRST_AT.get(key)
    if hit is None or hit[0] is not known:  # the source changed: first_seen returned a new list
        hit = _FIRST_AT[key] = (known, dict(zip(known, times.tolist())))
    return hit[1]
