"""Point-in-time training data: one output row per spine row, in spine order, never dropped.

Window aggregates at spine time ``t`` cover ``t - W <= ts < t`` (with ``aggregation_interval``
I the window ends at ``floor(t, I)``); batch (row) features are the latest row with
``ts <= t`` (ties: the last one in the offline log), null when ``t - ts > ttl``; realtime
features are computed per row from the spine's request columns and the other features.

Approximate functions: ``approx_count_distinct`` is an Apache DataSketches HLL (lg_k=12,
relative standard error 1.6%, exact for small windows); ``approx_percentile`` a DataSketches
KLL (k=200, normalized rank error 1.65%, exact -- the nearest-rank percentile -- below ~200 values).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import timedelta
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..definitions import (
    Aggregate,
    DType,
    FeatureSelection,
    FeatureView,
    FileSource,
    RealtimeFeatureView,
    RequestSource,
    StreamSource,
)
from ..definitions.dtypes import from_arrow
from ..errors import InvalidInputError, NotFoundError
from . import tombstones
from ._pit import EventIndex
from ._windows import ViewData, aggregate
from .transform import TS_TYPE, normalize_timestamp

if TYPE_CHECKING:
    import pandas as pd

    from ..config import Config
    from ..registry.repo import RepoDefinitions
    from ..stores.offline.base import OfflineStore

__all__ = ["get_training_data", "compute_view_features"]


def _td_us(td: timedelta) -> int:
    return td // timedelta(microseconds=1)


def _to_arrow_spine(spine: Any) -> tuple[pa.Table, bool]:
    if isinstance(spine, pa.Table):
        return spine, False
    if isinstance(spine, pa.RecordBatch):
        return pa.Table.from_batches([spine]), False
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover
        pd = None
    if pd is not None and isinstance(spine, pd.DataFrame):
        try:
            return pa.Table.from_pandas(spine, preserve_index=False), True
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise InvalidInputError(f"spine cannot be converted to Arrow: {e}", field="spine") from None
    raise InvalidInputError(
        f"spine must be a pyarrow.Table or a pandas.DataFrame, got {type(spine).__name__}", field="spine"
    )


def _spine_times(spine: pa.Table, field: str) -> np.ndarray:
    if field not in spine.column_names:
        raise InvalidInputError(
            f"spine has no timestamp column {field!r} (pass timestamp_field=...); columns: {spine.column_names}",
            field=field,
        )
    col = normalize_timestamp(spine.column(field), field)
    if col.null_count:
        raise InvalidInputError(f"spine column {field!r} has {col.null_count} null timestamps", field=field)
    return col.cast(pa.int64()).to_numpy().astype(np.int64, copy=False) if len(col) else np.zeros(0, np.int64)


def _empty_events(view: FeatureView, defs: RepoDefinitions, columns: list[str]) -> pa.Table:
    types = dict(defs.input_schemas.get(view.name, {}))
    for f in view.source.schema or ():
        types.setdefault(f.name, f.dtype)
    for f in view.join_key_fields:
        types.setdefault(f.name, f.dtype)
    fields = []
    for c in columns:
        if c == view.timestamp_field:
            fields.append(pa.field(c, TS_TYPE))
        elif c in types:
            fields.append(pa.field(c, types[c].to_arrow()))
        else:
            fields.append(pa.field(c, pa.null()))
    return pa.schema(fields).empty_table()


def _read_events(
    view: FeatureView,
    defs: RepoDefinitions,
    offline: OfflineStore,
    columns: list[str],
    start_us: int | None,
    end_us: int | None,
    entities: str | None = None,
) -> pa.Table:
    """``entities``: a SQL predicate on the join key (a spine of a few entities, e.g. an as_of
    replay): only their rows are read (a scan of the key column, or its index), not the whole log."""
    from ..vocab.tables import view_table

    name = view_table(view.name)
    if not view.offline:
        raise InvalidInputError(
            f"feature view {view.name!r} is online-only (offline=False): it has no training data",
            field="feature_service",
        )
    if not offline.exists(name):
        src = view.source
        has_history = isinstance(src, FileSource) or (isinstance(src, StreamSource) and src.batch_source is not None)
        if has_history:
            raise NotFoundError(
                f"feature view {view.name!r} has no offline data yet: run `context-store backfill` "
                "(or store.backfill()) first",
                field="feature_view",
            )
        return _empty_events(view, defs, columns)
    available = set(offline.schema(name).names)
    missing = [c for c in columns if c not in available]
    if missing:
        raise NotFoundError(
            f"offline data of feature view {view.name!r} has no column {missing[0]!r}: re-run the backfill "
            "after changing the view",
            field="feature_view",
        )
    if entities is not None:
        events = offline.read(
            name, columns=columns, ts_column=view.timestamp_field, start_us=start_us, end_us=end_us, filter=entities
        )
        return tombstones.load(offline).filter(events, view.timestamp_field)
    events = _whole_log(offline, name, columns)
    if (start_us is not None or end_us is not None) and events.num_rows:
        # One read, then drop the rows outside the spine's time range in memory when that skips a
        # good part of the log (a Lance filter re-reads and costs more when the spine spans it all).
        tsv = events.column(view.timestamp_field).cast(pa.int64())
        lo = start_us if start_us is not None else np.iinfo(np.int64).min
        hi = end_us if end_us is not None else np.iinfo(np.int64).max
        keep = pc.and_(pc.greater_equal(tsv, lo), pc.less(tsv, hi))
        if (pc.sum(keep).as_py() or 0) < 0.5 * events.num_rows:
            events = events.filter(keep)
    return tombstones.load(offline).filter(events, view.timestamp_field)  # rows a racing writer left


# (store, table, columns, change token) -> the table's rows: a whole-log read (a spine of many
# entities, e.g. a replay's re-rank candidates) is reused until the next commit to the table changes
# its token; bounded, small logs only.
_WHOLE: dict[tuple[str, str, tuple[str, ...], str], pa.Table] = {}
_WHOLE_MAX_BYTES = 256 << 20
_WHOLE_ENTRIES = 8
_whole_lock = threading.Lock()


def _whole_log(offline: OfflineStore, name: str, columns: list[str]) -> pa.Table:
    token = offline.change_token(name)
    if token is None:
        return offline.read(name, columns=columns)
    key = (repr(offline), name, tuple(columns), token)
    hit = _WHOLE.get(key)
    if hit is not None:
        return hit
    events = offline.read(name, columns=columns)
    if events.nbytes <= _WHOLE_MAX_BYTES // _WHOLE_ENTRIES:
        with _whole_lock:
            over = max(len(_WHOLE) - _WHOLE_ENTRIES + 1, 0)
            for stale in [k for k in _WHOLE if k[:3] == key[:3]] + list(_WHOLE)[:over]:
                _WHOLE.pop(stale, None)  # older versions of this read, and a bound on the entries
            _WHOLE[key] = events
    return events


# The event index (sort by entity and time) of a cached whole log, built once per log version.
_WHOLE_INDEX: dict[int, tuple[pa.Table, tuple[str, ...], EventIndex]] = {}


def _whole_index(events: pa.Table, view: FeatureView) -> EventIndex | None:
    hit = _WHOLE_INDEX.get(id(events))
    return hit[2] if hit is not None and hit[0] is events and hit[1] == tuple(view.join_keys) else None


def _keep_index(events: pa.Table, view: FeatureView, index: EventIndex) -> None:
    if not any(t is events for t in _WHOLE.values()):  # only the cached logs: others are one-offs
        return
    with _whole_lock:
        for k in [k for k, v in _WHOLE_INDEX.items() if not any(t is v[0] for t in _WHOLE.values())]:
            _WHOLE_INDEX.pop(k, None)  # logs no longer cached
        _WHOLE_INDEX[id(events)] = (events, tuple(view.join_keys), index)


def _bounds(view: FeatureView, t: np.ndarray) -> np.ndarray:
    if view.aggregation_interval is None:
        return t
    step = _td_us(view.aggregation_interval)
    return t - np.mod(t, step)


def compute_view_features(
    defs: RepoDefinitions,
    offline: OfflineStore,
    view: FeatureView,
    features: list[str],
    spine: pa.Table,
    t: np.ndarray,
) -> dict[str, pa.Array]:
    """Point-in-time values of ``features`` of one (non-realtime) feature view for every spine row."""
    for k in view.join_keys:
        if k not in spine.column_names:
            raise InvalidInputError(f"spine has no join key column {k!r} needed by feature view {view.name!r}", field=k)
    aggs = [a for a in view.aggregations if a.output_name in features]
    feats = [f for f in view.features_in if f.name in features]
    needed = [a.column for a in aggs] + [f.name for f in feats]
    columns = list(dict.fromkeys([*view.join_keys, view.timestamp_field, *needed]))
    end = _bounds(view, t) if view.is_aggregate else t
    start_us: int | None = None
    end_us: int | None = None
    if len(t):
        end_us = int(end.max()) + (1 if not view.is_aggregate else 0)
        if view.is_aggregate and aggs and all(a.window_td is not None for a in aggs):
            start_us = int(end.min()) - max(_td_us(a.window_td) for a in aggs)  # type: ignore[arg-type]
        elif not view.is_aggregate and view.ttl is not None:
            start_us = int(t.min()) - _td_us(view.ttl)
    events = _read_events(view, defs, offline, columns, start_us, end_us, _entity_predicate(view, offline, spine))
    vd = ViewData(view, events, [spine.column(k) for k in view.join_keys], end, _whole_index(events, view))
    if vd.events is events:
        _keep_index(events, view, vd.idx)
    in_types = defs.input_schemas.get(view.name, {})
    out: dict[str, pa.Array] = {}
    if view.is_aggregate:
        end_s = vd.end

        def hi_pos() -> np.ndarray:
            return vd.pos("end", end_s)

        def lo_pos(w: timedelta | None) -> np.ndarray:
            if w is None:
                return vd.pos("life", np.full(len(end_s), vd.idx.ts_min, dtype=np.int64))
            wu = _td_us(w)
            return vd.pos(("w", wu), end_s - wu)

        def one(a: Aggregate) -> pa.Array:
            in_type = in_types.get(a.column) or _arrow_dtype(vd.events, a.column)
            return vd.unsort(aggregate(vd, a, lo_pos(a.window_td), hi_pos(), in_type))

        # numpy releases the GIL on big arrays: two threads (2-core machines) run the binary
        # searches side by side, then build the per-column structures (prefix sums, block
        # extrema) and answer windows.
        if len(aggs) > 1 and vd.idx.n + len(end_s) >= _PARALLEL_MIN:
            searches = [hi_pos, *(partial(lo_pos, w) for w in dict.fromkeys(a.window_td for a in aggs))]
            with ThreadPoolExecutor(max_workers=_WORKERS, thread_name_prefix="cs-pit") as pool:
                list(pool.map(lambda f: f(), searches))
                results = list(pool.map(one, _interleave(aggs)))
            by_name = {a.output_name: r for a, r in zip(_interleave(aggs), results)}
            out = {a.output_name: by_name[a.output_name] for a in aggs}
        else:
            out = {a.output_name: one(a) for a in aggs}
    else:
        ts_ = vd.end  # batch views: end == t
        after = vd.pos("after", ts_ + 1)  # first event with ts > t
        j = after - 1
        ok = (vd.seg >= 0) & (j >= 0)
        jj = np.maximum(j, 0)
        if vd.idx.n:
            ok &= vd.idx.seg[jj] == vd.seg
            if view.ttl is not None:
                ok &= (ts_ - vd.idx.ts[jj]) <= _td_us(view.ttl)
        else:
            ok &= False
        take = pa.array(np.where(ok, jj, 0), mask=~ok)
        for f in feats:
            col = vd.column(f.name)
            vals = col.take(take) if vd.idx.n else pa.nulls(len(t), f.dtype.to_arrow())
            try:
                out[f.name] = vd.unsort(vals.cast(f.dtype.to_arrow()))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                raise InvalidInputError(f"feature {view.name}.{f.name}: {e}", field=f.name) from None
    return out


# A spine of at most this many entities reads only their rows (windows are per entity: exact).
ENTITY_PUSHDOWN_MAX = 64


def _entity_predicate(view: FeatureView, offline: OfflineStore, spine: pa.Table) -> str | None:
    """``key = v1 OR key = v2 ...`` for a spine of few entities of a one-key view; None (read the
    whole log) for large spines, several keys, null keys or values not of the log's key type."""
    from ..stores.offline.base import sql_equals
    from ..vocab.tables import view_table

    if len(view.join_keys) != 1 or spine.num_rows == 0 or spine.num_rows > 4 * ENTITY_PUSHDOWN_MAX:
        return None
    col = spine.column(view.join_keys[0])
    if col.null_count:
        return None
    values = list(dict.fromkeys(str(v) for v in col.to_pylist()))
    name = view_table(view.name)
    if len(values) > ENTITY_PUSHDOWN_MAX or not offline.exists(name):
        return None
    schema = offline.schema(name)
    if view.join_keys[0] not in schema.names or schema.field(view.join_keys[0]).type != col.type:
        return None  # a spine key of another type than the log's: leave the matching to the join
    preds = [sql_equals(schema, view.join_keys[0], v) for v in values]
    if any(p is None for p in preds):
        return None
    return " OR ".join(f"({p})" for p in preds)


_PARALLEL_MIN = 200_000
_WORKERS = 2


def _structure(a: Aggregate) -> tuple[str, str]:
    fn = a.function
    kind = "prefix" if fn in ("count", "sum", "mean") else "var" if fn.startswith(("var", "stddev")) else fn
    return (a.column, kind)


def _interleave(aggs: list[Aggregate]) -> list[Aggregate]:
    """Round-robin over the structures aggregations need, so two threads start on different ones."""
    groups: dict[tuple[str, str], list[Aggregate]] = {}
    for a in aggs:
        groups.setdefault(_structure(a), []).append(a)
    out: list[Aggregate] = []
    lists = list(groups.values())
    while any(lists):
        for g in lists:
            if g:
                out.append(g.pop(0))
    return out


def _arrow_dtype(events: pa.Table, column: str) -> DType:
    try:
        return from_arrow(events.schema.field(column).type)
    except (KeyError, TypeError):
        from ..definitions import Float64

        return Float64


def _realtime(
    rt: RealtimeFeatureView, spine: pa.Table, values: Mapping[str, Mapping[str, pa.Array]]
) -> dict[str, pa.Array]:
    n = spine.num_rows
    args: list[list[Any]] = []
    for src in rt.sources:
        if isinstance(src, RequestSource):
            cols = {}
            for f in src.schema or ():
                if f.name not in spine.column_names:
                    raise InvalidInputError(
                        f"spine has no request column {f.name!r} needed by realtime feature view {rt.name!r}",
                        field=f.name,
                    )
                cols[f.name] = spine.column(f.name).to_pylist()
            args.append([{k: v[i] for k, v in cols.items()} for i in range(n)])
        else:
            view = src.view if isinstance(src, FeatureSelection) else src
            names = list(src.features) if isinstance(src, FeatureSelection) else list(view.feature_names)
            vcols = {k: values[view.name][k].to_pylist() for k in names}
            args.append([{k: v[i] for k, v in vcols.items()} for i in range(n)])
    outs: dict[str, list[Any]] = {f.name: [] for f in rt.output}
    for i in range(n):
        try:
            res = rt.fn(*(a[i] for a in args))
        except Exception as e:  # the user's function: name it and the row
            rt.fail(f"raised {type(e).__name__} on spine row {i}: {e}")
        if not isinstance(res, Mapping):
            rt.fail(f"must return a dict of {list(outs)}, got {type(res).__name__}")
        for name, lst in outs.items():
            lst.append(res.get(name))
    result: dict[str, pa.Array] = {}
    for f in rt.output:
        try:
            result[f.name] = pa.array(outs[f.name], type=f.dtype.to_arrow())
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError) as e:
            rt.fail(f"output {f.name!r} is not {f.dtype!r}: {e}")
    return result


def _plan(service_views: list[FeatureSelection]) -> dict[str, tuple[Any, set[str]]]:
    """Every view to compute (realtime dependencies included) and which of its features."""
    need: dict[str, tuple[Any, set[str]]] = {}

    def add(view: Any, feats: list[str]) -> None:
        if view.name not in need:
            need[view.name] = (view, set())
        need[view.name][1].update(feats)
        if isinstance(view, RealtimeFeatureView):
            for src in view.sources:
                if isinstance(src, FeatureSelection):
                    add(src.view, list(src.features))
                elif isinstance(src, (FeatureView, RealtimeFeatureView)):
                    add(src, list(src.feature_names))

    for sel in service_views:
        add(sel.view, list(sel.features))
    return need


@contextmanager
def _small_pages() -> Iterator[None]:
    """Turn off numpy's MADV_HUGEPAGE on new arrays while building training data.

    With transparent huge pages in ``madvise`` mode the kernel compacts memory synchronously on
    first touch of every hinted region; this job allocates ~1 GB of short-lived arrays, and on a
    busy machine that doubled the CPU time of a cold call (10M events: 2.5-2.9s -> 1.6s). Process
    wide while it runs (numpy has one switch); restored afterwards; a no-op if numpy lacks it.
    """
    setter = getattr(getattr(getattr(np, "_core", None), "multiarray", None), "_set_madvise_hugepage", None)
    if setter is None:
        yield
        return
    global _pages_users, _pages_prev
    with _pages_lock:  # concurrent calls: the first one in saves the setting, the last one out restores it
        if _pages_users == 0:
            _pages_prev = bool(setter(False))
        _pages_users += 1
    try:
        yield
    finally:
        with _pages_lock:
            _pages_users -= 1
            if _pages_users == 0:
                setter(_pages_prev)


_pages_lock = threading.Lock()
_pages_users = 0
_pages_prev = True


def get_training_data(
    defs: RepoDefinitions,
    config: Config,
    offline: OfflineStore,
    spine: pa.Table | pd.DataFrame,
    feature_service: str,
    timestamp_field: str = "timestamp",
) -> pa.Table | pd.DataFrame:
    """The spine (Arrow or pandas, same type back) plus one column per feature, ``view__feature``."""
    del config  # paths are in ``offline``; kept for a uniform signature
    service = defs.feature_service(feature_service)
    table, was_pandas = _to_arrow_spine(spine)
    t = _spine_times(table, timestamp_field)
    clash = [c for c in service.column_names if c in table.column_names]
    if clash:
        raise InvalidInputError(f"spine already has a column named {clash[0]!r}", field=clash[0])
    need = _plan(list(service.selections))
    values: dict[str, dict[str, pa.Array]] = {}

    def compute(name: str) -> None:
        if name in values:
            return
        view, feats = need[name]
        if isinstance(view, RealtimeFeatureView):
            for dep in view.feature_view_sources:
                compute(dep.name)
            values[name] = _realtime(view, table, values)
        else:
            ordered = [f for f in view.feature_names if f in feats]
            values[name] = compute_view_features(defs, offline, view, ordered, table, t)

    with _small_pages():
        for name in need:
            compute(name)
    new_cols = {f"{sel.view.name}__{f}": values[sel.view.name][f] for sel in service.selections for f in sel.features}
    if was_pandas:
        out = spine.copy()
        for name, arr in new_cols.items():
            out[name] = arr.to_pandas().set_axis(out.index)
        return out
    for name, arr in new_cols.items():
        table = table.append_column(name, arr)
    return table
