"""THE implementation of every window aggregation: partial state, merge, finalize, encode.

Materialization, the stream worker and the online read path all use :class:`AggPlan`,
so batch-loaded and stream-updated state agree by construction.

A *partial* is the mergeable state of one set of events (a tile, an edge of a window, a
lifetime base) for all aggregations of one feature view:

- a numeric block (float64 vector, merged with numpy across many tiles at once):
  ``[rows]`` then per numeric column ``[n, sum, min, max, mean, m2]`` (Chan et al. merge
  of ``n, mean, M2`` for the variances: stable, no sum-of-squares cancellation);
- object slots for what is not a fixed-size number: ``last`` (ts, value),
  ``last_distinct_n``/``first_distinct_n`` (value -> latest/earliest ts, trimmed to n),
  ``approx_count_distinct`` (DataSketches HLL, lg_k=12), ``approx_percentile``
  (DataSketches KLL doubles, k=200, inclusive rank) and ``mean`` over an embedding
  (count + float64 sum vector).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np

from ..definitions import DType, Embedding, FeatureView, aggregate_dtype
from ..errors import DefinitionError
from ..vocab.time import us_to_datetime
from .agg_objects import (
    HLL_LG_K,
    KLL_K,
    _decode_obj,
    _encode_obj,
    _kll,
    _merge_obj,
    _obj_from_pairs,
    pack_scalar,
    scalar_kind,
    unpack_scalar,
)
from .agg_reference import aggregate_values
from .columns import Columns

__all__ = [
    "HLL_LG_K",
    "KLL_K",
    "NUM_FUNCS",
    "AggPlan",
    "Columns",
    "Partial",
    "aggregate_values",
    "pack_scalar",
    "unpack_scalar",
]

# Functions served from the numeric block of their column.
NUM_FUNCS = frozenset({"sum", "mean", "min", "max", "stddev_samp", "stddev_pop", "var_samp", "var_pop"})
_NSLOT = 6  # n, sum, min, max, mean, m2
_U32 = struct.Struct("<I")


@dataclass
class Partial:
    num: np.ndarray
    objs: list[Any]


@dataclass(frozen=True)
class _Out:
    name: str
    function: str
    column: str
    window_us: int | None  # None: lifetime
    dtype: DType
    num_base: int  # offset of the column's numeric slots, -1 if none
    slot: int  # object slot index, -1 if none
    n: int | None
    percentile: float | None


class AggPlan:
    """Compiled aggregation state layout of one feature view (aggregations=...)."""

    def __init__(self, view: FeatureView, input_types: dict[str, DType]) -> None:
        self.view = view
        self.types: dict[str, DType] = {}
        num_cols: list[str] = []
        slots: list[tuple[str, str, int]] = []  # (kind, column, n)
        outs: list[_Out] = []
        for a in view.aggregations:
            dt = input_types.get(a.column)
            if dt is None:
                raise DefinitionError(
                    f"feature view {view.name!r}: aggregation {a.output_name!r} reads column {a.column!r}, "
                    f"which is not in its input rows ({', '.join(sorted(input_types)) or 'none'})"
                )
            self.types[a.column] = dt
            fn = a.function
            num_base, slot = -1, -1
            if fn in NUM_FUNCS and not (fn == "mean" and isinstance(dt, Embedding)):
                if not dt.is_numeric:
                    raise DefinitionError(
                        f"feature view {view.name!r}: {fn} of {a.column!r} needs a numeric column, got {dt!r}"
                    )
                if a.column not in num_cols:
                    num_cols.append(a.column)
                num_base = 1 + _NSLOT * num_cols.index(a.column)
            elif fn != "count":
                kind = {
                    "mean": "emb",
                    "last": "last",
                    "last_distinct_n": "ldn",
                    "first_distinct_n": "fdn",
                    "approx_count_distinct": "hll",
                    "approx_percentile": "kll",
                }[fn]
                if kind in ("last", "ldn", "fdn", "hll") and not scalar_kind(dt):
                    raise DefinitionError(
                        f"feature view {view.name!r}: {fn} of {a.column!r} is not supported for {dt!r}"
                    )
                if kind == "kll" and not dt.is_numeric:
                    raise DefinitionError(f"feature view {view.name!r}: {fn} of {a.column!r} needs a numeric column")
                key = (kind, a.column, a.n or 0)
                if key not in slots:
                    slots.append(key)
                slot = slots.index(key)
            w = a.window_td
            outs.append(
                _Out(
                    a.output_name,
                    fn,
                    a.column,
                    None if w is None else w // timedelta(microseconds=1),
                    aggregate_dtype(fn, dt),
                    num_base,
                    slot,
                    a.n,
                    a.percentile,
                )
            )
        self.num_cols = num_cols
        self.slots = slots
        self.outputs = outs
        self.K = 1 + _NSLOT * len(num_cols)
        self.obj_cols = sorted({c for (_, c, _) in slots if not isinstance(self.types[c], Embedding)})
        self.emb_cols = sorted({c for (_, c, _) in slots if isinstance(self.types[c], Embedding)})
        # count counts rows, so a column read only by count carries no state (and no raw bytes).
        self.columns = sorted(set(num_cols) | set(self.obj_cols) | set(self.emb_cols))
        self._empty_num = np.zeros(self.K)
        for i in range(len(num_cols)):
            self._empty_num[1 + _NSLOT * i + 2] = math.inf
            self._empty_num[1 + _NSLOT * i + 3] = -math.inf
        self.empty_list: list[float] = self._empty_num.tolist()
        self._struct = struct.Struct(f"<{self.K}d")

    # -- building partials -------------------------------------------------------------
    def empty(self) -> Partial:
        return Partial(self._empty_num.copy(), [None] * len(self.slots))

    def partial(self, cols: Columns) -> Partial:
        """The partial of all events in ``cols``."""
        if len(cols) == 0:
            return self.empty()
        num, objs = self.partials_grouped(cols, np.array([0], dtype=np.int64))
        return Partial(num[0], objs[0])

    def partials_grouped(self, cols: Columns, starts: np.ndarray) -> tuple[np.ndarray, list[list[Any]]]:
        """Partials of consecutive groups of rows starting at ``starts`` (vectorised numeric block)."""
        n_rows = len(cols)
        G = len(starts)
        ends = np.append(starts[1:], n_rows)
        out = np.empty((G, self.K))
        out[:, 0] = ends - starts
        gid = np.repeat(np.arange(G), ends - starts)
        for i, c in enumerate(self.num_cols):
            b = 1 + _NSLOT * i
            v = cols.valid[c]
            x = cols.num[c]
            xz = np.where(v, x, 0.0)
            n = np.add.reduceat(v.astype(np.float64), starts)
            s = np.add.reduceat(xz, starts)
            mean = np.divide(s, n, out=np.zeros(G), where=n > 0)
            dev = np.where(v, x - mean[gid], 0.0)
            out[:, b] = n
            out[:, b + 1] = s
            out[:, b + 2] = np.minimum.reduceat(np.where(v, x, math.inf), starts)
            out[:, b + 3] = np.maximum.reduceat(np.where(v, x, -math.inf), starts)
            out[:, b + 4] = mean
            out[:, b + 5] = np.add.reduceat(dev * dev, starts)
        if not self.slots:
            return out, [[]] * G  # shared empty lists: nothing to hold
        objs: list[list[Any]] = [[None] * len(self.slots) for _ in range(G)]
        if self.slots:
            ts_l = cols.ts.tolist()
            st = starts.tolist()
            en = ends.tolist()
            for si, (kind, c, slot_n) in enumerate(self.slots):
                if kind == "emb":
                    valid = cols.valid[c]
                    m = cols.emb[c]
                    for g in range(G):
                        vv = valid[st[g] : en[g]]
                        cnt = int(vv.sum())
                        if cnt:
                            objs[g][si] = (cnt, m[st[g] : en[g]][vv].sum(axis=0, dtype=np.float64))
                    continue
                if kind == "kll":
                    valid = cols.valid[c]
                    x = cols.num[c]
                    for g in range(G):
                        vals = x[st[g] : en[g]][valid[st[g] : en[g]]]
                        if len(vals):
                            sk = _kll()
                            sk.update(np.ascontiguousarray(vals, dtype=np.float64))
                            objs[g][si] = sk
                    continue
                vals = cols.obj[c]
                for g in range(G):
                    pairs = [(t, v) for t, v in zip(ts_l[st[g] : en[g]], vals[st[g] : en[g]]) if v is not None]
                    if pairs:
                        objs[g][si] = _obj_from_pairs(kind, slot_n, pairs)
        return out, objs

    # -- merging -----------------------------------------------------------------------
    def merge_num(self, arr: np.ndarray) -> np.ndarray:
        """Merge numeric blocks, one per row of ``arr`` (shape (T, K))."""
        if arr.shape[0] == 1:
            return arr[0]
        res = np.empty(self.K)
        res[0] = arr[:, 0].sum()
        for i in range(len(self.num_cols)):
            b = 1 + _NSLOT * i
            n_i = arr[:, b]
            n = n_i.sum()
            s = arr[:, b + 1].sum()
            res[b] = n
            res[b + 1] = s
            res[b + 2] = arr[:, b + 2].min()
            res[b + 3] = arr[:, b + 3].max()
            if n > 0:
                mean = s / n
                d = arr[:, b + 4] - mean
                res[b + 4] = mean
                res[b + 5] = arr[:, b + 5].sum() + float(np.dot(n_i, d * d))
            else:
                res[b + 4] = 0.0
                res[b + 5] = 0.0
        return res

    def merge_rows(self, rows: Sequence[Sequence[float]], spread: bool = True, m2: bool = True) -> list[float]:
        """``merge_num`` for a few blocks given as Python lists (same formulas, no numpy overhead).
        ``spread=False``: only rows, n, sum and mean are merged (enough for count/sum/mean reads);
        ``m2=False``: min and max too, but not the mean and M2 slots (no variance/stddev read)."""
        if len(rows) == 1:
            return list(rows[0])
        cols = list(zip(*rows))
        res = [0.0] * self.K
        res[0] = sum(cols[0])
        for i in range(len(self.num_cols)):
            b = 1 + _NSLOT * i
            n = sum(cols[b])
            s = sum(cols[b + 1])
            res[b] = n
            res[b + 1] = s
            if not spread:
                continue
            res[b + 2] = min(cols[b + 2])
            res[b + 3] = max(cols[b + 3])
            if n > 0 and m2:
                mean = s / n
                res[b + 4] = mean
                res[b + 5] = sum(cols[b + 5]) + sum([ni * (mi - mean) ** 2 for ni, mi in zip(cols[b], cols[b + 4])])
        return res

    def merge_pairs(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Row-wise merge of two stacks of numeric blocks (shape (F, K)): the same formulas as
        ``merge_num``, vectorised across fields (stream applies touch many tiles at once)."""
        res = np.empty_like(a)
        res[:, 0] = a[:, 0] + b[:, 0]
        for i in range(len(self.num_cols)):
            c = 1 + _NSLOT * i
            n1, n2 = a[:, c], b[:, c]
            n = n1 + n2
            s = a[:, c + 1] + b[:, c + 1]
            mean = np.divide(s, n, out=np.zeros(len(n)), where=n > 0)
            res[:, c] = n
            res[:, c + 1] = s
            res[:, c + 2] = np.minimum(a[:, c + 2], b[:, c + 2])
            res[:, c + 3] = np.maximum(a[:, c + 3], b[:, c + 3])
            res[:, c + 4] = mean
            res[:, c + 5] = a[:, c + 5] + b[:, c + 5] + n1 * (a[:, c + 4] - mean) ** 2 + n2 * (b[:, c + 4] - mean) ** 2
        return res

    def merge_grouped(self, arr: np.ndarray, starts: np.ndarray) -> np.ndarray:
        """``merge_num`` of consecutive row groups of ``arr`` (shape (T, K)) starting at ``starts``,
        vectorised: one merged block per group (stream applies merge many tiles into blocks)."""
        if len(starts) == len(arr):
            return arr
        G = len(starts)
        sizes = np.diff(np.append(starts, len(arr)))
        gid = np.repeat(np.arange(G), sizes)
        res = np.empty((G, self.K))
        res[:, 0] = np.add.reduceat(arr[:, 0], starts)
        for i in range(len(self.num_cols)):
            c = 1 + _NSLOT * i
            n_i = arr[:, c]
            n = np.add.reduceat(n_i, starts)
            s = np.add.reduceat(arr[:, c + 1], starts)
            mean = np.divide(s, n, out=np.zeros(G), where=n > 0)
            d = arr[:, c + 4] - mean[gid]
            res[:, c] = n
            res[:, c + 1] = s
            res[:, c + 2] = np.minimum.reduceat(arr[:, c + 2], starts)
            res[:, c + 3] = np.maximum.reduceat(arr[:, c + 3], starts)
            res[:, c + 4] = mean
            res[:, c + 5] = np.where(n > 0, np.add.reduceat(arr[:, c + 5] + n_i * d * d, starts), 0.0)
        return res

    def merge_encoded_many(
        self, olds: Sequence[bytes | None], new_num: np.ndarray, new_objs: Sequence[list[Any]] | None = None
    ) -> list[bytes]:
        """The stream's read-modify-write: stored partials (or None) merged with new ones, one per
        row of ``new_num``. Numeric blocks merge in one vectorised call; only object slots
        (sketches, last-n sets) are decoded and merged one by one, and only where one was stored."""
        n, w = len(olds), 8 * self.K
        old_arr = np.tile(self._empty_num, (n, 1))
        present = [i for i, x in enumerate(olds) if x is not None]
        if present:
            old_arr[present] = np.frombuffer(
                b"".join([olds[i][:w] for i in present]),  # type: ignore[index]
                dtype="<f8",
            ).reshape(-1, self.K)
        merged = self.merge_pairs(old_arr, new_num).astype("<f8", copy=False)
        if not self.slots:
            buf = merged.tobytes()
            return [buf[i : i + w] for i in range(0, len(buf), w)]
        assert new_objs is not None
        out = []
        for i, old in enumerate(olds):
            objs = new_objs[i] if old is None else self.merge_objs([self._decode_objs(old), new_objs[i]])
            out.append(self.encode_parts(merged[i], objs))
        return out

    def merge_objs(self, objs_list: Sequence[list[Any]]) -> list[Any]:
        if len(objs_list) == 1:
            return list(objs_list[0])
        out: list[Any] = []
        for si, (kind, _, n) in enumerate(self.slots):
            items = [o[si] for o in objs_list if o[si] is not None]
            out.append(_merge_obj(kind, n, items) if items else None)
        return out

    def merge(self, parts: Sequence[Partial]) -> Partial:
        if not parts:
            return self.empty()
        if len(parts) == 1:
            return parts[0]
        return Partial(self.merge_num(np.stack([p.num for p in parts])), self.merge_objs([p.objs for p in parts]))

    # -- finalize ----------------------------------------------------------------------
    def num_finalizer(self, out: _Out) -> Callable[[Sequence[float]], Any]:
        """``finalize(out, num, [])`` as one closure with the branches decided once (reads call it for
        every output of every lookup); the same expressions, so the same values and types."""
        fn, b = out.function, out.num_base
        is_int = out.dtype.name == "int64"
        if fn == "count":
            return lambda num: int(num[0])
        if b >= 0 and fn == "sum":
            if is_int:
                return lambda num: int(float(num[b + 1]) if num[b] > 0 else 0.0)
            return lambda num: float(num[b + 1]) if num[b] > 0 else 0.0
        if b >= 0 and fn == "mean":
            return lambda num: None if num[b] == 0 else float(num[b + 1] / num[b])
        if b >= 0 and fn in ("min", "max"):
            k = b + 2 if fn == "min" else b + 3
            if is_int:
                return lambda num: None if num[b] == 0 else int(num[k])
            return lambda num: None if num[b] == 0 else float(num[k])
        return lambda num: self.finalize(out, num, [])

    def finalize(self, out: _Out, num: np.ndarray | Sequence[float], objs: list[Any]) -> Any:
        fn = out.function
        if fn == "count":
            return int(num[0])
        if out.num_base >= 0:
            b = out.num_base
            n = num[b]
            is_int = out.dtype.name == "int64"
            if fn == "sum":
                s = float(num[b + 1]) if n > 0 else 0.0
                return int(s) if is_int else s
            if n == 0:
                return None
            if fn == "mean":
                return float(num[b + 1] / n)
            if fn == "min":
                return int(num[b + 2]) if is_int else float(num[b + 2])
            if fn == "max":
                return int(num[b + 3]) if is_int else float(num[b + 3])
            m2 = max(float(num[b + 5]), 0.0)
            if fn in ("var_samp", "stddev_samp"):
                if n < 2:
                    return None
                var = m2 / (n - 1)
            else:
                var = m2 / n
            return math.sqrt(var) if fn.startswith("stddev") else var
        o = objs[out.slot]
        kind, _, slot_n = self.slots[out.slot]  # slot_n: the n of last/first_distinct_n
        if o is None:
            return [] if kind in ("ldn", "fdn") else None
        ts_out = out.dtype.name == "timestamp" or (
            kind in ("ldn", "fdn") and self.types[out.column].name == "timestamp"
        )
        if kind == "last":
            v = o[1]
        elif kind == "ldn":
            items = sorted(((t, v) for v, t in o.items()))[-slot_n:]
            v = [x for _, x in items]
        elif kind == "fdn":
            items = sorted(((t, v) for v, t in o.items()))[:slot_n]
            v = [x for _, x in items]
        elif kind == "hll":
            return int(round(o.get_estimate()))
        elif kind == "kll":
            return float(o.get_quantile(out.percentile if out.percentile is not None else 0.5, True))
        else:  # emb
            cnt, s = o
            return (s / cnt).astype(np.float32).tolist()  # the output dtype is an float32 embedding
        if ts_out:
            v = [us_to_datetime(x) for x in v] if isinstance(v, list) else us_to_datetime(v)
        return v

    # -- encoding ----------------------------------------------------------------------
    def encode(self, p: Partial) -> bytes:
        return self.encode_parts(p.num, p.objs)

    def encode_parts(self, num: np.ndarray, objs: list[Any]) -> bytes:
        """Numeric block (K float64) then per object slot: u32 length + bytes (0 = empty)."""
        if not self.slots:
            return num.astype("<f8", copy=False).tobytes()
        chunks = [num.astype("<f8", copy=False).tobytes()]
        for si, (kind, c, _) in enumerate(self.slots):
            o = objs[si]
            b = b"" if o is None else _encode_obj(kind, scalar_kind(self.types[c]), o)
            chunks.append(_U32.pack(len(b)))
            chunks.append(b)
        return b"".join(chunks)

    def decode(self, buf: bytes) -> Partial:
        return Partial(np.frombuffer(buf, dtype="<f8", count=self.K), self._decode_objs(buf))

    def _decode_objs(self, buf: bytes) -> list[Any]:
        objs: list[Any] = []
        off = 8 * self.K
        for kind, c, _ in self.slots:
            (ln,) = _U32.unpack_from(buf, off)
            off += 4
            objs.append(
                None if ln == 0 else _decode_obj(kind, scalar_kind(self.types[c]), buf[off : off + ln], self.types[c])
            )
            off += ln
        return objs

    def decode_many(self, bufs: Sequence[bytes]) -> tuple[np.ndarray, list[list[Any]] | None]:
        """Numeric blocks as one (T, K) array (one numpy call when there are no object slots)."""
        if not self.slots:
            return np.frombuffer(b"".join(bufs), dtype="<f8").reshape(len(bufs), self.K), None
        parts = [self.decode(b) for b in bufs]
        return np.stack([p.num for p in parts]), [p.objs for p in parts]
