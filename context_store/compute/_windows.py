"""Window answers for one feature view: its event log indexed once, aggregations over ``[lo, hi)``.

``ViewData`` holds the sorted log and per-column structures (built lazily, shared by the view's
aggregations, safe to build from two threads); ``aggregate`` turns index ranges into one output
column per aggregation, with SPEC's empty-window and null rules.
"""

from __future__ import annotations

import threading
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..definitions import Aggregate, DType, Embedding, FeatureView, aggregate_dtype
from ..errors import InvalidInputError
from . import _pit
from . import _range_kernels as rk

__all__ = ["ViewData", "aggregate", "NumResult"]


class NumResult(NamedTuple):
    """A numeric result still in numpy: values, null mask (or None) and its Arrow type."""

    values: np.ndarray
    mask: np.ndarray | None
    type: pa.DataType


def _inverse(order: np.ndarray) -> np.ndarray:
    inv = np.empty_like(order)
    inv[order] = np.arange(len(order), dtype=order.dtype)
    return inv


class ViewData:
    """One view's events, indexed, with per-column caches shared by its aggregations."""

    def __init__(
        self,
        view: FeatureView,
        events: pa.Table,
        spine_keys: list[Any],
        end: np.ndarray,
        index: _pit.EventIndex | None = None,
    ) -> None:
        """``index``: the events' index built before (it depends on the events only), else built here."""
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
        self.idx = (
            index
            if index is not None and index.n == events.num_rows
            else _pit.build_index([events.column(k) for k in view.join_keys], ts.astype(np.int64, copy=False))
        )
        seg = _pit.lookup_segments(self.idx, spine_keys, view.join_keys)
        # Work on the spine sorted by (entity, end): binary searches and prefix lookups then walk
        # memory forward. ``unsort`` puts results back in spine order at the end.
        qkey = seg * self.idx.span + self.idx._tb(end)
        if len(qkey) < 2 or bool(np.all(qkey[1:] >= qkey[:-1])):
            self.order: np.ndarray | None = None
        else:
            # unstable sort is ~5x faster; rows with equal keys get equal answers, so order among them is moot
            self.order = np.argsort(qkey)
        self.seg = seg if self.order is None else seg[self.order]
        self.end = end if self.order is None else end[self.order]
        self._cache: dict[Any, Any] = {}
        self._locks: dict[Any, threading.Lock] = {}
        self._guard = threading.Lock()

    def pos(self, bound_key: Any, bound: np.ndarray) -> np.ndarray:
        return self.cached(("pos", bound_key), lambda: self.idx.positions(self.seg, bound))

    def unsort(self, arr: pa.Array | NumResult) -> pa.Array:
        """A result in working order back to spine order (numeric results are permuted in numpy:
        Arrow's take is ~10x slower on arrays with a validity bitmap)."""
        order = self.order
        if isinstance(arr, NumResult):
            values, mask, typ = arr
            if mask is not None and not mask.any():
                mask = None
            if order is not None:
                inv = self.cached("inverse", lambda: _inverse(order))
                values = values[inv]
                mask = None if mask is None else mask[inv]
            out = pa.array(values, mask=mask)
            return out if out.type == typ else out.cast(typ)
        if order is None:
            return arr
        return arr.take(self.cached("inverse_pa", lambda: pa.array(self.cached("inverse", lambda: _inverse(order)))))

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
            zero: float
            if pa.types.is_integer(t) or pa.types.is_boolean(t):
                target, zero = pa.int64(), 0
            elif pa.types.is_floating(t) or pa.types.is_decimal(t):
                target, zero = pa.float64(), 0.0
            else:
                raise InvalidInputError(f"column {name!r} of type {t} is not numeric", field=name)
            if t != target:
                col = col.cast(target)
            if col.null_count:
                col = col.fill_null(zero)
            return col.to_numpy(zero_copy_only=False)  # zero-copy for int64/float64 without nulls

        return self.cached(("num", name), f)

    def nn_prefix(self, name: str) -> np.ndarray:
        return self.cached(("nnp", name), lambda: rk.prefix(self.valid(name).astype(np.int64), np.int64))

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


def aggregate(vd: ViewData, agg: Aggregate, lo: np.ndarray, hi: np.ndarray, in_type: DType) -> pa.Array | NumResult:
    """One aggregation over ``[lo, hi)`` per (working-order) spine row; pass it to ``vd.unsort``."""
    fn, col = agg.function, agg.column
    out_type = aggregate_dtype(fn, in_type).to_arrow()
    if fn == "count":
        return NumResult(hi - lo, None, pa.int64())
    if fn == "last":
        vals = vd.ordered(col)
        lv = vd.cached(("lastnn", col), lambda: rk.last_valid(vals.is_valid().to_numpy(zero_copy_only=False)))
        j = np.where(hi > lo, lv[np.maximum(hi - 1, 0)] if len(lv) else -1, -1)
        ok = (j >= lo) & (hi > lo)
        return vals.take(pa.array(np.where(ok, j, 0), mask=~ok)).cast(out_type)
    if fn in ("last_distinct_n", "first_distinct_n"):
        ordered = vd.ordered(col)
        codes = vd.cached(("codes", col), lambda: rk.value_codes(ordered))

        def pyvals() -> list[Any]:
            return vd.cached(("py", col), lambda: ordered.to_pylist())

        last = fn == "last_distinct_n"
        if codes is None:  # nested values or NaN: Python's equality, row by row
            return pa.array(rk.distinct_n(pyvals(), lo, hi, int(agg.n or 1), last=last), type=out_type)
        flat, cnt = rk.distinct_n_indices(codes, vd.idx.seg, lo, hi, int(agg.n or 1), last, pyvals)
        offsets = np.zeros(len(cnt) + 1, dtype=np.int64)
        np.cumsum(cnt, out=offsets[1:])
        values = ordered.take(pa.array(flat, pa.int64()))
        if offsets[-1] < 2**31 - 1:
            lists = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), values)
        else:  # pragma: no cover - more than 2**31 list items
            lists = pa.LargeListArray.from_arrays(pa.array(offsets), values)
        return lists.cast(out_type)
    valid = vd.valid(col)
    if vd.column(col).null_count:
        nnp = vd.nn_prefix(col)
        n = nnp[hi] - nnp[lo]
    else:  # no nulls: the non-null count is the row count
        n = hi - lo
    empty = n == 0
    if fn == "approx_count_distinct":
        py_list = vd.cached(("py", col), lambda: vd.ordered(col).to_pylist())
        return pa.array(rk.approx_count_distinct(py_list, lo, hi), pa.int64(), mask=empty)
    if isinstance(in_type, Embedding) and fn == "mean":
        return _embedding_mean(vd, col, lo, hi, n, in_type.dim)
    x = vd.numeric(col)
    is_int = x.dtype.kind == "i"
    if fn in ("sum", "mean"):
        if is_int:
            p = vd.cached(("sum", col), lambda: rk.prefix(np.where(valid, x, 0), np.int64))
            s = p[hi] - p[lo]
        else:
            cp = vd.cached(("sum", col), lambda: rk.CompensatedPrefix(x if valid.all() else np.where(valid, x, 0.0)))
            # p[hi], c[hi] are shared by the view's windows: gather them once
            ph, ch = vd.cached(("sumhi", col, id(hi)), lambda: (cp.p[hi], cp.c[hi]))
            s = vd.cached(("sumw", col, id(lo)), lambda: (ph - cp.p[lo]) + (ch - cp.c[lo]))
        if fn == "sum":
            return NumResult(s.astype(np.int64 if is_int else np.float64, copy=False), None, out_type)
        with np.errstate(invalid="ignore", divide="ignore"):
            m = (s / np.maximum(n, 1)).astype(np.float64)
        return NumResult(m, empty, pa.float64())
    if fn in ("min", "max"):
        rx = vd.cached((fn, col), lambda: rk.RangeExtrema(x, valid, fn))
        return NumResult(rx.query(lo, hi), empty, out_type)
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
        return NumResult(out, (n < 2) if samp else empty, pa.float64())
    if fn == "approx_percentile":
        return pa.array(rk.approx_percentile(x, valid, lo, hi, float(agg.percentile or 0.5)), pa.float64())
    raise InvalidInputError(f"unknown aggregation function {fn!r}", field="function")  # pragma: no cover


def _shifted_prefixes(vd: ViewData, x: np.ndarray, valid: np.ndarray) -> tuple[Any, Any]:
    """Prefix sums of (x - c) and (x - c)^2 with c the entity's first valid value (keeps sums small)."""
    seg = vd.idx.seg
    xf = x.astype(np.float64)
    shift = np.zeros(len(x), dtype=np.float64)
    if len(x):
        starts: np.ndarray = np.r_[0, np.nonzero(seg[1:] != seg[:-1])[0] + 1]
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
    return rk.CompensatedPrefix(y), rk.CompensatedPrefix(y * y)


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
