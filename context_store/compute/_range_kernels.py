"""Range kernels of the point-in-time join: every window function over index ranges ``[lo, hi)``.

``_pit.EventIndex`` turns each spine row's time window into ``[lo, hi)`` over the entity-sorted
events; these answer a function over many such ranges at once (see ``_pit``'s module doc):
compensated prefix sums, block/sparse-table extrema, last-valid links, distinct-n scans and the
DataSketches loops.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# One sketch configuration for online and offline values (the same estimates both ways).
from ..state.agg_objects import HLL_LG_K, KLL_K

__all__ = [
    "HLL_LG_K",
    "KLL_K",
    "CompensatedPrefix",
    "RangeExtrema",
    "approx_count_distinct",
    "approx_percentile",
    "distinct_n",
    "distinct_n_indices",
    "last_valid",
    "prefix",
    "value_codes",
]

_BLOCK = 16
_SHIFT = 4  # log2(_BLOCK)
_CHUNK = 1 << 15  # elements per cache-resident chunk of the prefix-sum build


def prefix(values: np.ndarray, dtype: Any) -> np.ndarray:
    out = np.empty(len(values) + 1, dtype=dtype)
    out[0] = 0
    np.cumsum(values, dtype=dtype, out=out[1:])
    return out


class CompensatedPrefix:
    """Prefix sums of float64 values with the rounding error of every addition carried in a
    second prefix (TwoSum), so a window sum is accurate to ~1e-16 relative to |window sum| even
    deep into a long history -- at float64 cumsum speed (long double cumsum is ~10x slower)."""

    def __init__(self, x: np.ndarray) -> None:
        x = np.ascontiguousarray(x, dtype=np.float64)
        n = len(x)
        self.p = p = np.empty(n + 1, dtype=np.float64)
        self.c = c = np.empty(n + 1, dtype=np.float64)
        p[0] = c[0] = 0.0
        # Chunks that stay in L2: one pass over memory instead of seven. Within and across chunks
        # p[i + 1] = fl(p[i] + x[i]) strictly in order (add.accumulate is sequential), so TwoSum's
        # error term err = (a - (s - bb)) + (x - bb), bb = s - a, is exact.
        bb_buf = np.empty(min(n, _CHUNK), dtype=np.float64)
        tmp_buf = np.empty(min(n, _CHUNK), dtype=np.float64)
        for i in range(0, n, _CHUNK):
            j = min(i + _CHUNK, n)
            xs, ps, cs = x[i:j], p[i : j + 1], c[i : j + 1]
            bb, tmp = bb_buf[: j - i], tmp_buf[: j - i]
            ps[1:] = xs
            np.add.accumulate(ps, out=ps)
            a, s = ps[:-1], ps[1:]
            np.subtract(s, a, out=bb)
            np.subtract(s, bb, out=tmp)
            np.subtract(a, tmp, out=tmp)
            np.subtract(xs, bb, out=bb)
            np.add(tmp, bb, out=bb)
            cs[1:] = bb
            np.add.accumulate(cs, out=cs)

    def window(self, lo: np.ndarray, hi: np.ndarray, extended: bool = False) -> np.ndarray:
        """Sums over [lo, hi): float64 within ~2 ulp of the exact sum, or long double (``extended``,
        for variances, whose final subtraction cancels)."""
        if not extended:
            return (self.p[hi] - self.p[lo]) + (self.c[hi] - self.c[lo])
        ld = np.longdouble
        return (self.p[hi].astype(ld) - self.p[lo].astype(ld)) + (self.c[hi] - self.c[lo]).astype(ld)


class RangeExtrema:
    """min or max over index ranges [lo, hi) of a numeric array (invalid entries ignored).

    Blocks of 16: in-block prefix/suffix extrema, stored transposed -- (16, nb), so building them
    is 15 vectorized passes over all blocks -- and a sparse table over block extrema, flattened so
    a query is one gather per side. A range spanning blocks costs O(1); a range inside one block
    (< 16 events) is scanned, longest first (work = their total length).
    """

    def __init__(self, values: np.ndarray, valid: np.ndarray, op: str) -> None:
        self.uf: np.ufunc = np.minimum if op == "min" else np.maximum
        ident: float
        if values.dtype.kind in "iu":
            info = np.iinfo(values.dtype)
            ident = info.max if op == "min" else info.min
        else:
            ident = np.inf if op == "min" else -np.inf
        self.ident = ident
        n = len(values)
        nb = max((n + _BLOCK - 1) // _BLOCK, 1)
        self.nb = nb
        # scans stay inside [0, n): no padding needed, and no copy when nothing is null
        v = values if valid.all() else np.where(valid, values, ident)
        self.v = v
        # (16, nb): row k = k-th element of every block, the last block padded with the identity
        t = np.empty((_BLOCK, nb), dtype=values.dtype)
        full = n // _BLOCK
        t[:, :full] = v[: full * _BLOCK].reshape(full, _BLOCK).T
        if full < nb:
            t[:, full] = ident
            t[: n - full * _BLOCK, full] = v[full * _BLOCK :]
        pref, suf = t, t.copy()
        for k in range(1, _BLOCK):  # row-wise passes: contiguous and vectorized over all blocks
            self.uf(pref[k - 1], pref[k], out=pref[k])
            self.uf(suf[_BLOCK - k], suf[_BLOCK - k - 1], out=suf[_BLOCK - k - 1])
        self.pref = pref.reshape(-1)
        self.suf = suf.reshape(-1)
        # sparse table over block extrema: level k (ranges of 2**k blocks) at offset off[k]
        sizes = []
        k = 0
        while (1 << k) <= nb:
            sizes.append(nb - (1 << k) + 1)
            k += 1
        self.off = np.r_[0, np.cumsum(sizes)].astype(np.int64)
        flat = np.empty(int(self.off[-1]), dtype=values.dtype)
        flat[:nb] = pref[_BLOCK - 1]
        for k in range(1, len(sizes)):
            prev = flat[self.off[k - 1] : self.off[k]]
            half = 1 << (k - 1)
            self.uf(prev[: sizes[k]], prev[half : half + sizes[k]], out=flat[self.off[k] : self.off[k + 1]])
        self.table = flat

    def _t(self, i: np.ndarray) -> np.ndarray:
        """Flat index of element i in the transposed (16, nb) layout."""
        out = i & (_BLOCK - 1)
        out *= self.nb
        out += i >> _SHIFT
        return out

    def query(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        res = np.full(len(lo), self.ident, dtype=self.v.dtype)
        ne = np.flatnonzero(hi > lo)
        if not len(ne):
            return res
        lo_, h = lo[ne], hi[ne] - 1
        bl, bh = lo_ >> _SHIFT, h >> _SHIFT
        same = bl == bh
        # ranges spanning blocks: suffix of the first, prefix of the last, sparse table between
        d = np.flatnonzero(~same)
        if len(d):
            r = self.uf(self.suf[self._t(lo_[d])], self.pref[self._t(h[d])])
            a = bl[d] + 1
            cnt = bh[d] - a  # whole blocks strictly between
            has = np.flatnonzero(cnt > 0)
            if len(has):
                a, cnt = a[has], cnt[has]
                lvl = np.log2(cnt).astype(np.int64)  # floor: exact for powers of two
                first = self.off[lvl] + a
                second = first + cnt - (np.int64(1) << lvl)
                r[has] = self.uf(r[has], self.uf(self.table[first], self.table[second]))
            res[ne[d]] = r
        # ranges inside one block: longest first, then pass k extends the ranges longer than k --
        # a prefix of that order -- by one element
        s = np.flatnonzero(same)
        if len(s):
            length = h[s] - lo_[s] + 1  # 1..16
            order = np.argsort((_BLOCK - length).astype(np.int8), kind="stable")  # radix sort
            s = s[order]
            start = lo_[s]
            desc = length[order]
            r = self.v[start]
            buf = np.empty_like(r)
            longer = len(desc) - np.cumsum(np.bincount(desc, minlength=_BLOCK + 1))  # ranges longer than k
            for k in range(1, int(desc[0])):
                c = int(longer[k])
                np.take(self.v[k:], start[:c], out=buf[:c], mode="clip")  # v[start + k], no index temp
                self.uf(r[:c], buf[:c], out=r[:c])
            res[ne[s]] = r
        return res


def last_valid(valid: np.ndarray) -> np.ndarray:
    """``out[i]`` = the largest j <= i with valid[j], else -1."""
    idx = np.where(valid, np.arange(len(valid), dtype=np.int64), -1)
    return np.maximum.accumulate(idx) if len(idx) else idx


def _hashable(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v


def distinct_n(vals: list[Any], lo: np.ndarray, hi: np.ndarray, n: int, last: bool) -> list[list[Any]]:
    """last: the n distinct values with the latest occurrences, oldest -> newest;
    first: the first n distinct values by earliest occurrence, oldest first."""
    out: list[list[Any]] = []
    for a, b in zip(lo.tolist(), hi.tolist()):
        seen: set[Any] = set()
        res: list[Any] = []
        rng = range(b - 1, a - 1, -1) if last else range(a, b)
        for i in rng:
            v = vals[i]
            if v is None:
                continue
            hv = _hashable(v)
            if hv not in seen:
                seen.add(hv)
                res.append(v)
                if len(res) == n:
                    break
        if last:
            res.reverse()
        out.append(res)
    return out


def value_codes(values: pa.Array) -> np.ndarray | None:
    """Equality codes of scalar values as Python's ``==`` sees them (-1 for null), or None when
    that is not safe to vectorise (nested values; NaN, which Python never finds equal)."""
    t = values.type
    if pa.types.is_floating(t):
        x = values.cast(pa.float64()).fill_null(0.0).to_numpy(zero_copy_only=False)
        if np.isnan(x).any():
            return None
        _, codes = np.unique(x, return_inverse=True)  # -0.0 == 0.0, as in Python
        codes = codes.astype(np.int64)
    elif pa.types.is_integer(t) or pa.types.is_boolean(t) or pa.types.is_string(t) or pa.types.is_large_string(t):
        enc = pc.dictionary_encode(values)
        codes = enc.indices.cast(pa.int64()).fill_null(-1).to_numpy(zero_copy_only=False)
    else:
        return None
    if values.null_count:
        codes = np.where(values.is_valid().to_numpy(zero_copy_only=False), codes, -1)
    return codes


_DISTINCT_STEPS = 64  # vectorised scan steps before the few rows with long duplicate runs go to Python


def distinct_n_indices(
    codes: np.ndarray,
    seg: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    n: int,
    last: bool,
    vals: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """Event indices of ``distinct_n`` per row, vectorised: (flat indices, per-row counts).

    Event i is the latest occurrence of its value in ``[lo, hi)`` iff the next event of its entity
    with that value is at or after hi (first occurrence: the previous one is before lo). Rows scan
    back from hi (forward from lo) one step at a time, all rows at once; ``vals`` (Python values,
    fetched lazily) answers the rows still unfinished after ``_DISTINCT_STEPS`` steps.
    """
    m, ne = len(lo), len(codes)
    g = seg * (int(codes.max(initial=0)) + 2) + codes  # (entity, value) group; codes >= -1
    order = np.argsort(g, kind="stable")
    same = g[order[1:]] == g[order[:-1]]
    a, b = order[:-1][same], order[1:][same]
    if last:
        link = np.full(ne, np.iinfo(np.int64).max, dtype=np.int64)  # next occurrence
        link[a] = b
    else:
        link = np.full(ne, -1, dtype=np.int64)  # previous occurrence
        link[b] = a
    valid = codes >= 0
    res = np.full((m, n), -1, dtype=np.int64)
    cnt = np.zeros(m, dtype=np.int64)
    act = np.flatnonzero(hi > lo)
    cur = (hi[act] - 1) if last else lo[act].copy()
    for _ in range(_DISTINCT_STEPS):
        if not len(act):
            break
        ok = valid[cur] & ((link[cur] >= hi[act]) if last else (link[cur] < lo[act]))
        rows = act[ok]
        res[rows, cnt[rows]] = cur[ok]
        cnt[rows] += 1
        cur = cur - 1 if last else cur + 1
        keep = ((cur >= lo[act]) if last else (cur < hi[act])) & (cnt[act] < n)
        act, cur = act[keep], cur[keep]
    if len(act):
        pyvals = vals()
        for r, c in zip(act.tolist(), cur.tolist()):
            seen = {_hashable(pyvals[i]) for i in res[r, : cnt[r]].tolist()}
            rng = range(c, int(lo[r]) - 1, -1) if last else range(c, int(hi[r]))
            for i in rng:
                v = pyvals[i]
                if v is None:
                    continue
                hv = _hashable(v)
                if hv not in seen:
                    seen.add(hv)
                    res[r, cnt[r]] = i
                    cnt[r] += 1
                    if cnt[r] == n:
                        break
    if last:  # found newest first: oldest -> newest per row
        res = np.where(np.arange(n) < cnt[:, None], res, -1)[:, ::-1]
    return res[res >= 0], cnt


def approx_count_distinct(vals: list[Any], lo: np.ndarray, hi: np.ndarray) -> list[int]:
    from datasketches import hll_sketch

    out: list[int] = []
    for a, b in zip(lo.tolist(), hi.tolist()):
        sk = hll_sketch(HLL_LG_K)
        for i in range(a, b):
            v = vals[i]
            if v is not None:
                sk.update(int(v) if isinstance(v, bool) else v)
        out.append(int(round(sk.get_estimate())))
    return out


def approx_percentile(
    values: np.ndarray, valid: np.ndarray, lo: np.ndarray, hi: np.ndarray, p: float
) -> list[float | None]:
    """KLL quantile at normalized rank p, inclusive (the nearest-rank percentile while exact)."""
    from datasketches import kll_doubles_sketch

    x = values.astype(np.float64)
    out: list[float | None] = []
    for a, b in zip(lo.tolist(), hi.tolist()):
        w = x[a:b][valid[a:b]]
        if not len(w):
            out.append(None)
            continue
        sk = kll_doubles_sketch(KLL_K)
        sk.update(w)
        out.append(float(sk.get_quantile(p, True)))
    return out
