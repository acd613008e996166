"""Window answers for one feature view: its event log indexed once, aggregations over ``[lo, hi)``.

``ViewData`` holds the sorted log and per-column structures (built lazily, shared by the view's
aggregations, safe to build from two threads); ``aggregate`` turns index ranges into one output
column per aggregation, with SPEC's empty-window and null rules.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..definitions import Aggregate, DType, Embedding, FeatureView, aggregate_dtype
from ..errors import InvalidInputError
from . import _pit

__all__ = ["ViewData", "aggregate"]


class ViewData:
    """One view's events, indexed, with per-column caches shared by its aggregations."""

    def __init__(self, view: FeatureView, events: pa.Table, spine_keys: list[Any], end: np.ndarray) -> None:
        # Rows with a null timestamp or join key belong to no entity's history: leave them out.
        needed = [view.timestamp_field, *view.join_keys]
        if any(events.column(c).null_count for c in needed):
            mask = None
            for c in needed:
                m = pc.is_valid(events.column(c))
                mask = m if mask is None else pc.and_(mask, m)
            events = events.filter(mask)
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

    def unsort(self, arr: pa.Array) -> pa.Array:
        """A result in working order back to spine order."""
        order = self.order
        if order is None:
            return arr

        def inverse() -> pa.Array:
            inv = np.empty_like(order)
            inv[order] = np.arange(len(order), dtype=order.dtype)
            return pa.array(inv)

        return arr.take(self.cached("inverse", inverse))

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


def aggregate(vd: ViewData, agg: Aggregate, lo: np.ndarray, hi: np.ndarray, in_type: DType) -> pa.Array:
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
    if vd.column(col).null_count:
        nnp = vd.nn_prefix(col)
        n = nnp[hi] - nnp[lo]
    else:  # no nulls: the non-null count is the row count
        n = hi - lo
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
            m = (s / np.maximum(n, 1)).astype(np.float64)
        return pa.array(m, mask=empty)
    if fn in ("min", "max"):
        rx = vd.cached((fn, col), lambda: _pit.RangeExtrema(x, valid, fn))
        return pa.array(rx.query(lo, hi), mask=empty).cast(out_type)
    if fn in ("var_samp", "var_pop", "stddev_samp", "stddev_pop"):
        p1, p2 = vd.cached(("var", col), lambda: _shifted_prefixes(vd, x, valid))
        s1 = p1.window(lo, hi, extended=True)
        s2 = p2.window(lo, hi, extended=True)
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


def _shifted_prefixes(vd: ViewData, x: np.ndarray, valid: np.ndarray) -> tuple[Any, Any]:
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


def _embedding_mean(vd: ViewData, col: str, lo: np.ndarray, hi: np.ndarray, n: np.ndarray, dim: int) -> pa.Array:
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
