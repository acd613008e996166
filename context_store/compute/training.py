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
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..definitions import (
    Aggregate,
    DType,
    Embedding,
    FeatureSelection,
    FeatureView,
    FileSource,
    RealtimeFeatureView,
    RequestSource,
    StreamSource,
    aggregate_dtype,
)
from ..definitions.dtypes import from_arrow
from ..errors import InvalidInputError, NotFoundError
from . import _pit
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
    view: FeatureView, defs: RepoDefinitions, offline: OfflineStore, columns: list[str],
    start_us: int | None, end_us: int | None,
) -> pa.Table:
    from ..stores.offline.base import view_table

    name = view_table(view.name)
    if not offline.exists(name):
        src = view.source
        has_history = isinstance(src, FileSource) or (isinstance(src, StreamSource) and src.batch_source is not None)
        if has_history and view.offline:
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
    return offline.read(name, columns=columns, ts_column=view.timestamp_field, start_us=start_us, end_us=end_us)


class _ViewData:
    """One view's events, indexed, with per-column caches shared by its aggregations."""

    def __init__(self, view: FeatureView, events: pa.Table, spine_keys: list[Any], end: np.ndarray) -> None:
        ts_col = events.column(view.timestamp_field)
        if ts_col.null_count:
            events = events.filter(pc.is_valid(ts_col))
            ts_col = events.column(view.timestamp_field)
        self.events = events
        ts = ts_col.cast(pa.int64()).to_numpy() if events.num_rows else np.zeros(0, np.int64)
        self.idx = _pit.build_index([events.column(k) for k in view.join_keys], ts.astype(np.int64, copy=False))
        seg = _pit.lookup_segments(self.idx, spine_keys, view.join_keys)
        # Work on the spine sorted by (entity, end): binary searches and prefix lookups then walk
        # memory forward. ``unsort`` puts results back in spine order at the end.
        qkey = seg * self.idx.span + self.idx._tb(end)
        if len(qkey) < 2 or bool(np.all(qkey[1:] >= qkey[:-1])):
            self.order: np.ndarray | None = None
        else:
            self.order = np.argsort(qkey, kind="stable")
        self.seg = seg if self.order is None else seg[self.order]
        self.end = end if self.order is None else end[self.order]
        self._cache: dict[Any, Any] = {}
        self._locks: dict[Any, threading.Lock] = {}
        self._guard = threading.Lock()

    def pos(self, bound_key: Any, bound: np.ndarray) -> np.ndarray:
        return self.cached(("pos", bound_key), lambda: self.idx.positions(self.seg, bound))

    def sort(self, a: np.ndarray) -> np.ndarray:
        """A spine-ordered array in the working (sorted) order."""
        return a if self.order is None else a[self.order]

    def unsort(self, arr: pa.Array) -> pa.Array:
        """A result in working order back to spine order."""
        if self.order is None:
            return arr
        inv = np.empty_like(self.order)
        inv[self.order] = np.arange(len(self.order), dtype=self.order.dtype)
        return arr.take(pa.array(inv))

    def cached(self, key: Any, fn: Any) -> Any:
        """Build once per key, also when aggregations run on two threads (a lock per key)."""
        try:
            return self._cache[key]
        except KeyError:
            pass
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            if key not in self._cache:
                self._cache[key] = fn()
        return self._cache[key]

    def column(self, name: str) -> pa.Array:
        return self.cached(("col", name), lambda: self.idx.take(self.events.column(name)))

    def valid(self, name: str) -> np.ndarray:
        def f() -> np.ndarray:
            col = self.column(name)
            if col.null_count == 0:
                return np.ones(len(col), dtype=bool)
            return col.is_valid().to_numpy(zero_copy_only=False)

        return self.cached(("valid", name), f)

    def numeric(self, name: str) -> np.ndarray:
        def f() -> np.ndarray:
            col = self.column(name)
            t = col.type
            if pa.types.is_integer(t) or pa.types.is_boolean(t):
                return col.cast(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False)
            if pa.types.is_floating(t) or pa.types.is_decimal(t):
                return col.cast(pa.float64()).fill_null(0.0).to_numpy(zero_copy_only=False)
            raise InvalidInputError(f"column {name!r} of type {t} is not numeric", field=name)

        return self.cached(("num", name), f)

    def nn_prefix(self, name: str) -> np.ndarray:
        return self.cached(("nnp", name), lambda: _pit.prefix(self.valid(name).astype(np.int64), np.int64))

    def ordered(self, name: str) -> pa.Array:
        """The column with equal-timestamp events of an entity ordered by value (ascending)."""

        def f() -> pa.Array:
            col = self.column(name)
            if not self.idx.has_ties:
                return col
            rank = _pit.value_order(col)
            if rank is None:
                return col
            return col.take(pa.array(_pit.tie_order(self.idx.key, rank)))

        return self.cached(("ord", name), f)


def _aggregate(vd: _ViewData, agg: Aggregate, lo: np.ndarray, hi: np.ndarray, in_type: DType) -> pa.Array:
    fn, col = agg.function, agg.column
    out_type = aggregate_dtype(fn, in_type).to_arrow()
    if fn == "count":
        return pa.array(hi - lo, pa.int64())
    if fn == "last":
        vals = vd.ordered(col)
        lv = vd.cached(("lastnn", col), lambda: _pit.last_valid(vals.is_valid().to_numpy(zero_copy_only=False)))
        j = np.where(hi > lo, lv[np.maximum(hi - 1, 0)] if len(lv) else -1, -1)
        ok = (j >= lo) & (hi > lo)
        return vals.take(pa.array(np.where(ok, j, 0), mask=~ok)).cast(out_type)
    if fn in ("last_distinct_n", "first_distinct_n"):
        pyvals = vd.cached(("py", col), lambda: vd.ordered(col).to_pylist())
        lists = _pit.distinct_n(pyvals, lo, hi, int(agg.n or 1), last=fn == "last_distinct_n")
        return pa.array(lists, type=out_type)
    valid = vd.valid(col)
    nnp = vd.nn_prefix(col)
    n = nnp[hi] - nnp[lo]
    empty = n == 0
    if fn == "approx_count_distinct":
        pyvals = vd.cached(("py", col), lambda: vd.ordered(col).to_pylist())
        return pa.array(_pit.approx_count_distinct(pyvals, lo, hi), pa.int64(), mask=empty)
    if isinstance(in_type, Embedding) and fn == "mean":
        return _embedding_mean(vd, col, lo, hi, n, in_type.dim)
    x = vd.numeric(col)
    is_int = x.dtype.kind == "i"
    if fn in ("sum", "mean"):
        if is_int:
            p = vd.cached(("sum", col), lambda: _pit.prefix(np.where(valid, x, 0), np.int64))
            s = p[hi] - p[lo]
        else:
            cp = vd.cached(("sum", col), lambda: _pit.CompensatedPrefix(x if valid.all() else np.where(valid, x, 0.0)))
            s = vd.cached(("sumw", col, id(lo)), lambda: cp.window(lo, hi))
        if fn == "sum":
            return pa.array(s.astype(np.int64 if is_int else np.float64)).cast(out_type)
        with np.errstate(invalid="ignore", divide="ignore"):
            m = (s.astype(np.longdouble) / np.maximum(n, 1)).astype(np.float64)
        return pa.array(m, mask=empty)
    if fn in ("min", "max"):
        rx = vd.cached((fn, col), lambda: _pit.RangeExtrema(x, valid, fn))
        return pa.array(rx.query(lo, hi), mask=empty).cast(out_type)
    if fn in ("var_samp", "var_pop", "stddev_samp", "stddev_pop"):
        p1, p2 = vd.cached(("var", col), lambda: _shifted_prefixes(vd, x, valid))
        s1 = p1.window(lo, hi)
        s2 = p2.window(lo, hi)
        nl = np.maximum(n, 1).astype(np.longdouble)
        m2 = np.maximum(s2 - s1 * s1 / nl, 0)
        samp = fn.endswith("samp")
        denom = np.maximum(n - 1, 1) if samp else np.maximum(n, 1)
        var = (m2 / denom).astype(np.float64)
        out = np.sqrt(var) if fn.startswith("stddev") else var
        return pa.array(out, mask=(n < 2) if samp else empty)
    if fn == "approx_percentile":
        return pa.array(_pit.approx_percentile(x, valid, lo, hi, float(agg.percentile or 0.5)), pa.float64())
    raise InvalidInputError(f"unknown aggregation function {fn!r}", field="function")  # pragma: no cover


def _shifted_prefixes(vd: _ViewData, x: np.ndarray, valid: np.ndarray) -> tuple[Any, Any]:
    """Prefix sums of (x - c) and (x - c)^2 with c the entity's first valid value (keeps sums small)."""
    seg = vd.idx.seg
    xf = x.astype(np.float64)
    shift = np.zeros(len(x), dtype=np.float64)
    if len(x):
        starts = np.r_[0, np.nonzero(seg[1:] != seg[:-1])[0] + 1]
        seg_first = np.full(len(starts), -1, dtype=np.int64)
        vidx = np.nonzero(valid)[0]
        pos = np.searchsorted(vidx, starts)
        ends = np.r_[starts[1:], len(x)]
        ok = pos < len(vidx)
        seg_first[ok] = vidx[np.minimum(pos[ok], len(vidx) - 1)]
        ok &= seg_first < ends
        vals = np.where(ok, xf[np.maximum(seg_first, 0)], 0.0)
        shift = np.repeat(vals, ends - starts)
    y = np.where(valid, xf - shift, 0.0)
    return _pit.CompensatedPrefix(y), _pit.CompensatedPrefix(y * y)


def _embedding_mean(vd: _ViewData, col: str, lo: np.ndarray, hi: np.ndarray, n: np.ndarray, dim: int) -> pa.Array:
    def prep() -> np.ndarray:
        arr = vd.column(col)
        flat = arr.values.slice(arr.offset * dim, len(arr) * dim).to_numpy(zero_copy_only=False)
        m = np.nan_to_num(flat.reshape(len(arr), dim).astype(np.float64))
        m[~vd.valid(col)] = 0.0
        out = np.zeros((len(arr) + 1, dim), dtype=np.float64)
        np.cumsum(m, axis=0, out=out[1:])
        return out

    p = vd.cached(("emb", col), prep)
    s = (p[hi] - p[lo]) / np.maximum(n, 1)[:, None]
    flat = pa.array(s.astype(np.float32).ravel(), pa.float32())
    return pa.FixedSizeListArray.from_arrays(flat, dim, mask=pa.array(n == 0))


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
            raise InvalidInputError(
                f"spine has no join key column {k!r} needed by feature view {view.name!r}", field=k
            )
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
    events = _read_events(view, defs, offline, columns, start_us, end_us)
    vd = _ViewData(view, events, [spine.column(k) for k in view.join_keys], end)
    in_types = defs.input_schemas.get(view.name, {})
    out: dict[str, pa.Array] = {}
    if view.is_aggregate:
        end_s = vd.end

        def one(a: Aggregate) -> pa.Array:
            hi = vd.pos("end", end_s)
            w = a.window_td
            if w is None:
                lo = vd.pos("life", np.full(len(end_s), vd.idx.ts_min, dtype=np.int64))
            else:
                wu = _td_us(w)
                lo = vd.pos(("w", wu), end_s - wu)
            in_type = in_types.get(a.column) or _arrow_dtype(vd.events, a.column)
            return vd.unsort(_aggregate(vd, a, lo, hi, in_type))

        # numpy releases the GIL on big arrays: two threads (2-core machines) build the per-column
        # structures (prefix sums, block extrema) and answer windows side by side.
        if len(aggs) > 1 and vd.idx.n + len(end_s) >= _PARALLEL_MIN:
            with ThreadPoolExecutor(max_workers=_WORKERS, thread_name_prefix="cs-pit") as pool:
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

    for name in need:
        compute(name)
    new_cols = {
        f"{sel.view.name}__{f}": values[sel.view.name][f] for sel in service.selections for f in sel.features
    }
    if was_pandas:
        out = spine.copy()  # type: ignore[union-attr]
        for name, arr in new_cols.items():
            out[name] = arr.to_pandas().set_axis(out.index)
        return out
    for name, arr in new_cols.items():
        table = table.append_column(name, arr)
    return table
