"""Tile math and per-view state plans (what fields a read at time ``t`` needs, and how to
combine them into exact window values). The layout is documented in docs/online-state.md.

A feature view with aggregations keeps, per entity, tiles of ``g`` microseconds
(``aggregation_interval`` if set, else chosen so the longest window spans <= ~48 tiles):

- ``{vid}:{i}``  partial state of all events with ``i*g <= ts < (i+1)*g`` (AggPlan.encode)
- ``{vid}:{i}r`` (continuous mode only) the raw events of that tile, so the two edge tiles of
  a window can be cut exactly at ``t - W`` and ``t``
- ``{vid}:L``    lifetime base: i64 fold tile F, then the partial of every event before tile F
- ``{vid}:m``    i64: lowest tile index that may still exist (for folding/expiry)

A batch (row) view keeps ``{vid}``: the latest row (stores/online/codec.py).
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..definitions import DType, Embedding, FeatureView, StreamSource
from .aggregations import AggPlan, Columns, Partial

__all__ = [
    "ViewState", "decompose", "columns_from_arrow", "choose_tile_us", "encode_raw", "encode_raw_groups", "decode_raw", "ts_to_us",
    "TILES_PER_WINDOW", "RETENTION_SLACK_US",
]

US = 1_000_000
TILES_PER_WINDOW = 96  # finer tiles = smaller exact edges to cut per read; 4^L blocks keep reads short
# Extra history kept beyond the longest window, so requests a little in the past stay exact.
RETENTION_SLACK_US = 86_400 * US
_NICE = [1, 5, 10, 30, 60, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 7 * 86400]
_HDR = struct.Struct("<I")
_I64 = struct.Struct("<q")


def choose_tile_us(view: FeatureView) -> int:
    if view.aggregation_interval is not None:
        return view.aggregation_interval // timedelta(microseconds=1)
    w = view.max_window
    if w is None:
        finite = [a.window_td for a in view.aggregations if a.window_td is not None]
        w = max(finite) if finite else timedelta(days=1)
    target = w.total_seconds() / TILES_PER_WINDOW
    for s in _NICE:
        if s >= target:
            return s * US
    return _NICE[-1] * US


def ts_to_us(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Any Arrow timestamp/date/int column -> int64 µs since epoch (UTC)."""
    t = col.type
    if pa.types.is_timestamp(t):
        if t.unit != "us":
            col = pc.cast(col, pa.timestamp("us", tz=t.tz))
        arr = pc.cast(col, pa.int64())
    elif pa.types.is_date(t):
        arr = pc.multiply(pc.cast(pc.cast(col, pa.timestamp("us")), pa.int64()), 1)
    else:
        arr = pc.cast(col, pa.int64())
    return np.asarray(arr.to_numpy(zero_copy_only=False) if hasattr(arr, "to_numpy") else arr, dtype=np.int64)


def columns_from_arrow(table: pa.Table, plan: AggPlan, ts_column: str) -> Columns:
    cols = Columns(ts=ts_to_us(table[ts_column]))
    for c in plan.columns:
        if c not in table.column_names:
            from ..errors import InvalidInputError

            raise InvalidInputError(f"rows of feature view {plan.view.name!r} lack column {c!r}", field=c)
        arr = table[c]
        dt = plan.types[c]
        valid = np.asarray(arr.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
        cols.valid[c] = valid
        if isinstance(dt, Embedding):
            m = np.zeros((len(arr), dt.dim), dtype=np.float32)
            if valid.any():
                flat = pc.list_flatten(arr.filter(pa.array(valid))).to_numpy(zero_copy_only=False)
                m[valid] = np.asarray(flat, dtype=np.float32).reshape(-1, dt.dim)
            cols.emb[c] = m
            continue
        if dt.name == "timestamp":
            us = ts_to_us(arr.fill_null(0) if arr.null_count else arr)
            if c in plan.num_cols or dt.is_numeric:
                cols.num[c] = us.astype(np.float64)
            cols.obj[c] = [int(x) if v else None for x, v in zip(us.tolist(), valid.tolist())]
            continue
        if dt.is_numeric:
            filled = arr.fill_null(0) if arr.null_count else arr
            cols.num[c] = np.asarray(filled.to_numpy(zero_copy_only=False), dtype=np.float64)
        if c in plan.obj_cols:
            cols.obj[c] = arr.to_pylist()
    return cols


# -- raw event blocks (continuous mode edge tiles) --------------------------------------

def encode_raw(cols: Columns, plan: AggPlan) -> bytes:
    """u32 n, i64 ts[n], then per plan column: u8 valid[n] + values; blocks concatenate."""
    n = len(cols)
    out = [_HDR.pack(n), cols.ts.astype("<i8").tobytes()]
    for c in plan.columns:
        dt = plan.types[c]
        valid = cols.valid[c]
        out.append(valid.astype(np.uint8).tobytes())
        if isinstance(dt, Embedding):
            out.append(cols.emb[c].astype("<f4").tobytes())
        elif dt.name == "string":
            enc = [(v or "").encode() for v in cols.obj[c]]
            out.append(np.array([len(b) for b in enc], dtype="<u4").tobytes())
            out.append(b"".join(enc))
        elif dt.name in ("int64", "timestamp"):
            src = cols.obj.get(c)
            vals = np.array([v or 0 for v in src], dtype="<i8") if src is not None else cols.num[c].astype("<i8")
            out.append(vals.tobytes())
        elif dt.name == "bool":
            out.append(np.array([bool(v) for v in cols.obj[c]], dtype=np.uint8).tobytes())
        else:
            out.append(cols.num[c].astype("<f8").tobytes())
    return b"".join(out)


def encode_raw_groups(cols: Columns, plan: AggPlan, starts: np.ndarray, ends: np.ndarray) -> list[bytes]:
    """``encode_raw`` of many consecutive row groups at once: whole columns are converted to
    bytes once and each group's block is assembled from slices (materialization)."""
    n = len(cols)
    st, en = starts.tolist(), ends.tolist()
    pieces: list[tuple[bytes, int, list[int] | None]] = [(cols.ts.astype("<i8").tobytes(), 8, None)]
    for c in plan.columns:
        dt = plan.types[c]
        pieces.append((cols.valid[c].astype(np.uint8).tobytes(), 1, None))
        if isinstance(dt, Embedding):
            pieces.append((cols.emb[c].astype("<f4").tobytes(), 4 * dt.dim, None))
        elif dt.name == "string":
            enc = [(v or "").encode() for v in cols.obj[c]]
            lens = np.array([len(b) for b in enc], dtype=np.int64)
            off = np.concatenate([[0], np.cumsum(lens)]).tolist()
            pieces.append((lens.astype("<u4").tobytes(), 4, None))
            pieces.append((b"".join(enc), 0, off))
        elif dt.name in ("int64", "timestamp"):
            src = cols.obj.get(c)
            vals = np.array([v or 0 for v in src], dtype="<i8") if src is not None else cols.num[c].astype("<i8")
            pieces.append((vals.tobytes(), 8, None))
        elif dt.name == "bool":
            pieces.append((np.array([bool(v) for v in cols.obj[c]], dtype=np.uint8).tobytes(), 1, None))
        else:
            pieces.append((cols.num[c].astype("<f8").tobytes(), 8, None))
    assert n == 0 or len(pieces[0][0]) == 8 * n
    out = []
    for a, b in zip(st, en):
        parts = [_HDR.pack(b - a)]
        for buf, w, off in pieces:
            parts.append(buf[w * a : w * b] if off is None else buf[off[a] : off[b]])
        out.append(b"".join(parts))
    return out


_NP_EDGE = 48  # edges with more events than this are cut with numpy (hot entities); fewer: plain Python


def parse_raw_num(buf: bytes, plan: AggPlan) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """Timestamps, validity and values of the numeric columns of a raw field: Python sequences
    for small edges (read on the hot path, arrays cost more than they save), numpy arrays for big ones."""
    blocks: list[tuple[int, int, dict[str, tuple[int, str]]]] = []  # (n, ts offset, column -> (offset, kind))
    off = 0
    end = len(buf)
    total = 0
    while off < end:
        (n,) = _HDR.unpack_from(buf, off)
        off += 4
        ts_off = off
        off += 8 * n
        where: dict[str, tuple[int, str]] = {}
        for c in plan.columns:
            dt = plan.types[c]
            v_off = off
            off += n
            if isinstance(dt, Embedding):
                off += 4 * n * dt.dim
            elif dt.name == "string":
                off += 4 * n + sum(struct.unpack_from(f"<{n}I", buf, off))
            elif dt.name == "bool":
                off += n
            else:
                where[c] = (v_off, "d" if dt.name == "float64" else "q")
                off += 8 * n
        blocks.append((n, ts_off, where))
        total += n
    if total > _NP_EDGE:
        ts_np = np.concatenate([np.frombuffer(buf, "<i8", n, o) for n, o, _ in blocks]) if blocks else np.zeros(0, np.int64)
        valid_np: dict[str, Any] = {}
        vals_np: dict[str, Any] = {}
        for c in plan.num_cols:
            valid_np[c] = np.concatenate([np.frombuffer(buf, np.uint8, n, w[c][0]) for n, _, w in blocks]).astype(bool)
            vals_np[c] = np.concatenate([np.frombuffer(buf, "<f8" if w[c][1] == "d" else "<i8", n, w[c][0] + n)
                                         for n, _, w in blocks]).astype(np.float64)
        return ts_np, valid_np, vals_np
    ts_all: list[int] = []
    valid_all: dict[str, Any] = {c: b"" for c in plan.num_cols}
    vals_all: dict[str, Any] = {c: () for c in plan.num_cols}
    for n, o, w in blocks:
        ts_all += struct.unpack_from(f"<{n}q", buf, o)
        for c in plan.num_cols:
            v_off, kind = w[c]
            valid_all[c] += buf[v_off : v_off + n]
            vals_all[c] += struct.unpack_from(f"<{n}{kind}", buf, v_off + n)
    return ts_all, valid_all, vals_all


def raw_num_block(parsed: tuple[Any, dict[str, Any], dict[str, Any]], plan: AggPlan, lo: int | None, hi: int) -> list[float]:
    """The numeric block (same formulas as AggPlan.partials_grouped) of the parsed raw events
    with ``lo <= ts < hi``: the continuous-mode edge of a numbers-only view."""
    ts_all, valid_all, vals_all = parsed
    if isinstance(ts_all, np.ndarray):
        sel_m = ts_all < hi if lo is None else (ts_all < hi) & (ts_all >= lo)
        res = [float(np.count_nonzero(sel_m))]
        for c in plan.num_cols:
            x = vals_all[c][sel_m & valid_all[c]]
            if not len(x):
                res += [0.0, 0.0, math.inf, -math.inf, 0.0, 0.0]
                continue
            cnt = float(len(x))
            sm = float(x.sum())
            mean = sm / cnt
            d = x - mean
            res += [cnt, sm, float(x.min()), float(x.max()), mean, float(np.dot(d, d))]
        return res
    sel = [i for i, x in enumerate(ts_all) if x < hi and (lo is None or x >= lo)]
    res = [float(len(sel))]
    for c in plan.num_cols:
        v, x = valid_all[c], vals_all[c]
        vals = [float(x[i]) for i in sel if v[i]]
        if not vals:
            res += [0.0, 0.0, math.inf, -math.inf, 0.0, 0.0]
            continue
        cnt = float(len(vals))
        sm = sum(vals)
        mean = sm / cnt
        res += [cnt, sm, min(vals), max(vals), mean, sum((y - mean) ** 2 for y in vals)]
    return res


def decode_raw(buf: bytes, plan: AggPlan) -> Columns:
    parts: list[Columns] = []
    off = 0
    while off < len(buf):
        (n,) = _HDR.unpack_from(buf, off)
        off += 4
        ts = np.frombuffer(buf, dtype="<i8", count=n, offset=off).astype(np.int64)
        off += 8 * n
        cols = Columns(ts=ts)
        for c in plan.columns:
            dt = plan.types[c]
            valid = np.frombuffer(buf, dtype=np.uint8, count=n, offset=off).astype(bool)
            off += n
            cols.valid[c] = valid
            if isinstance(dt, Embedding):
                cols.emb[c] = np.frombuffer(buf, dtype="<f4", count=n * dt.dim, offset=off).reshape(n, dt.dim)
                off += 4 * n * dt.dim
            elif dt.name == "string":
                lens = np.frombuffer(buf, dtype="<u4", count=n, offset=off).tolist()
                off += 4 * n
                vals: list[Any] = []
                for ln, v in zip(lens, valid.tolist()):
                    vals.append(buf[off : off + ln].decode() if v else None)
                    off += ln
                cols.obj[c] = vals
            elif dt.name in ("int64", "timestamp"):
                x = np.frombuffer(buf, dtype="<i8", count=n, offset=off)
                off += 8 * n
                cols.num[c] = x.astype(np.float64)
                cols.obj[c] = [v if ok else None for v, ok in zip(x.tolist(), valid.tolist())]
            elif dt.name == "bool":
                x = np.frombuffer(buf, dtype=np.uint8, count=n, offset=off)
                off += n
                cols.obj[c] = [bool(v) if ok else None for v, ok in zip(x.tolist(), valid.tolist())]
            else:
                x = np.frombuffer(buf, dtype="<f8", count=n, offset=off)
                off += 8 * n
                cols.num[c] = x.astype(np.float64)
                if c in plan.obj_cols:
                    cols.obj[c] = [v if ok else None for v, ok in zip(x.tolist(), valid.tolist())]
        parts.append(cols)
    if not parts:
        return Columns(ts=np.zeros(0, dtype=np.int64))
    return Columns.concat(parts)


# -- per-view state plan ----------------------------------------------------------------

@dataclass(eq=False)  # hashed by identity: a layout cache key
class _ReadCtx:
    fields: list[str]
    n_blocks: int                   # fields[:n_blocks] are partial blocks
    per_window: list[list[int]]     # per entry of ViewState.windows: indices of its blocks
    lo: int                         # first tile covered by the lifetime read (tiles [lo, b))
    b: int                          # tile containing t (exclusive end of full tiles)
    raw_tiles: list[int]


def decompose(a: int, b: int, max_level: int) -> list[tuple[int, int]]:
    """Aligned blocks ``(level, index)`` covering tiles ``[a, b)``: block j of level L covers
    tiles ``[j*4^L, (j+1)*4^L)``; at most ~3 blocks per level on each side."""
    out: list[tuple[int, int]] = []
    while a < b:
        lv = 0
        while lv < max_level and a % (4 ** (lv + 1)) == 0 and a + 4 ** (lv + 1) <= b:
            lv += 1
        out.append((lv, a >> (2 * lv)))
        a += 4**lv
    return out


class ViewState:
    """Everything about one feature view's online state: ids, tile size, fields, evaluation."""

    def __init__(self, view: FeatureView, input_types: dict[str, DType] | None = None) -> None:
        self.view = view
        self.name = view.name
        self.is_aggregate = view.is_aggregate
        spec = {"n": view.name, "a": [a.spec() for a in view.aggregations], "f": [f.spec() for f in view.features_in],
                "i": view.aggregation_interval.total_seconds() if view.aggregation_interval else None,
                "k": view.join_keys}
        self.vid = hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:8]
        self.ttl_us = view.ttl // timedelta(microseconds=1) if view.ttl else None
        self.plan: AggPlan | None = None
        if not self.is_aggregate:
            return
        self.plan = AggPlan(view, input_types or {})
        self.g = choose_tile_us(view)
        self.interval = view.aggregation_interval is not None
        lateness = view.source.allowed_lateness if isinstance(view.source, StreamSource) else timedelta(0)
        finite = [o.window_us for o in self.plan.outputs if o.window_us is not None]
        self.has_lifetime = any(o.window_us is None for o in self.plan.outputs)
        max_w = max(finite) if finite else 0
        self.max_tiles = math.ceil(max_w / self.g) + 1
        # Tiles older than now_tile - retention can no longer be reached by a request at >= now - slack.
        self.retention = self.max_tiles + math.ceil((lateness // timedelta(microseconds=1) + RETENTION_SLACK_US) / self.g) + 1
        # Levels of 4^L-tile blocks kept beside the tiles, so a long window reads O(log) fields.
        span = self.retention if self.has_lifetime else self.max_tiles
        self.levels = max(0, min(5, int(math.log(max(span, 1), 4) + 1e-9)))
        # Outputs grouped by window, longest first.
        by_w: dict[int | None, list[int]] = {}
        for i, o in enumerate(self.plan.outputs):
            by_w.setdefault(o.window_us, []).append(i)
        self.windows = sorted(by_w.items(), key=lambda kv: -(kv[0] if kv[0] is not None else 1 << 62))
        # Per window: does any output need min/max/M2 (else reads merge only rows, n and sum)?
        self._spread = [any(self.plan.outputs[i].function not in ("count", "sum", "mean") for i in which) for _, which in self.windows]
        self.L = f"{self.vid}:L"
        self.M = f"{self.vid}:m"
        self._cache: tuple[Any, _ReadCtx] | None = None

    # field names
    def tile(self, i: int) -> str:
        return f"{self.vid}:{i}"

    def block(self, level: int, j: int) -> str:
        return f"{self.vid}:{j}" if level == 0 else f"{self.vid}:{level}:{j}"

    def raw(self, i: int) -> str:
        return f"{self.vid}:{i}r"

    def horizon(self, now_us: int) -> int:
        """Tiles with index < horizon are folded into the lifetime base (or dropped)."""
        return now_us // self.g - self.retention

    def expire_ms(self, latest_ts_us: int, now_us: int) -> int | None:
        """How long an entity hash must live after a write of events up to ``latest_ts_us``."""
        if self.is_aggregate:
            if self.has_lifetime:
                return None
            end = latest_ts_us + (self.retention + 1) * self.g
        else:
            if self.ttl_us is None:
                return None
            end = latest_ts_us + self.ttl_us + RETENTION_SLACK_US
        return max((end - now_us) // 1000, 60_000)

    # -- reads ---------------------------------------------------------------------------
    def read_ctx(self, t: int) -> _ReadCtx:
        """Fields needed at time ``t`` (µs); cached while t stays in the same tile/edge set."""
        g = self.g
        b = t // g
        if self.interval:
            key: Any = b
        else:
            key = (b, tuple((t - w) // g for w, _ in self.windows if w is not None))
        c = self._cache
        if c is not None and c[0] == key:
            return c[1]
        lo = b - self.retention
        ranges = []
        for w, _ in self.windows:
            if w is None:
                ranges.append((lo, b))
            elif self.interval:
                ranges.append((b - w // g, b))
            else:
                ranges.append(((t - w) // g + 1, b))
        index: dict[tuple[int, int], int] = {}
        per_window: list[list[int]] = []
        for a, e in ranges:
            ids = []
            for blk in decompose(a, e, self.levels):
                if blk not in index:
                    index[blk] = len(index)
                ids.append(index[blk])
            per_window.append(ids)
        fields = [self.block(lv, j) for lv, j in index]
        n_blocks = len(fields)
        raw_tiles: list[int] = []
        if not self.interval:
            raw_tiles = sorted({(t - w) // g for w, _ in self.windows if w is not None} | {b})
            fields += [f"{self.vid}:{i}r" for i in raw_tiles]
        if self.has_lifetime:
            fields.append(self.L)
        ctx = _ReadCtx(fields, n_blocks, per_window, lo, b, raw_tiles)
        self._cache = (key, ctx)
        return ctx

    def _evaluate_num(self, t: int, ctx: _ReadCtx, values: list[bytes | None]) -> list[Any]:
        """``evaluate`` for numbers-only views without Lifetime (the common case): blocks unpacked
        with one struct call each and merged as Python tuples (no numpy for a dozen tiny blocks)."""
        plan = self.plan
        assert plan is not None
        nb = ctx.n_blocks
        unpack = plan._struct.unpack
        blocks = [None if v is None else unpack(v) for v in values[:nb]]
        raws: dict[int, Any] = {}
        if ctx.raw_tiles:
            for j, ti in enumerate(ctx.raw_tiles):
                v = values[nb + j]
                if v is not None:
                    raws[ti] = parse_raw_num(v, plan)
        out: list[Any] = [None] * len(plan.outputs)
        g = self.g
        b = ctx.b
        cuts: dict[int | None, list[float]] = {}
        finalize = plan.finalize
        outputs = plan.outputs
        for (w, which), ids, spread in zip(self.windows, ctx.per_window, self._spread):
            parts: list[Any] = [x for x in (blocks[i] for i in ids) if x is not None]
            if raws:
                s = t - w
                sb = s // g
                if sb < b and sb in raws:
                    parts.append(raw_num_block(raws[sb], plan, s, t))
                if b in raws:
                    lo = s if sb >= b else None
                    cut = cuts.get(lo)  # windows starting before tile b share this edge
                    if cut is None:
                        cut = cuts[lo] = raw_num_block(raws[b], plan, lo, t)
                    parts.append(cut)
            mnum = (parts[0] if len(parts) == 1 else plan.merge_rows(parts, spread)) if parts else plan.empty_list
            for i in which:
                out[i] = finalize(outputs[i], mnum, [])  # type: ignore[arg-type]
        return out

    def evaluate(self, t: int, ctx: _ReadCtx, values: list[bytes | None], extra: dict[int, bytes] | None = None) -> list[Any]:
        """All outputs (in plan order) at ``t`` from the fetched ``values`` (aligned with ctx.fields)."""
        plan = self.plan
        assert plan is not None
        if not plan.slots and not self.has_lifetime:
            return self._evaluate_num(t, ctx, values)
        nb = ctx.n_blocks
        present = [i for i in range(nb) if values[i] is not None]
        pos = {i: k for k, i in enumerate(present)}
        if present:
            num, objs = plan.decode_many([values[i] for i in present])  # type: ignore[misc]
        else:
            num, objs = np.empty((0, plan.K)), None
        raws: dict[int, Any] = {}
        for j, ti in enumerate(ctx.raw_tiles):
            v = values[nb + j]
            if v is not None:
                raws[ti] = decode_raw(v, plan)
        base: Partial | None = None
        if self.has_lifetime and values[-1] is not None:
            base = plan.decode(values[-1][8:])  # type: ignore[index]
        out: list[Any] = [None] * len(plan.outputs)
        g = self.g
        numl: list[list[float]] | None = None
        for (w, which), ids in zip(self.windows, ctx.per_window):
            rows = [pos[i] for i in ids if i in pos]
            edges: list[Partial] = []
            if not self.interval:
                s = None if w is None else t - w
                if s is not None and s // g < ctx.b:
                    cs = raws.get(s // g)
                    if cs is not None:
                        edges.append(plan.partial(cs.take(cs.ts >= s)))
                cb = raws.get(ctx.b)
                if cb is not None:
                    m = cb.ts < t if s is None or s // g < ctx.b else (cb.ts < t) & (cb.ts >= s)
                    edges.append(plan.partial(cb.take(m)))
            if w is None:
                if base is not None:
                    edges.append(base)
                for bts in (extra or {}).values():  # tiles between the fold point and the read range
                    edges.append(plan.decode(bts))
            if not rows and not edges:
                e = plan.empty()
                mnum, mobjs = e.num, e.objs
            elif objs is None and not edges and len(rows) <= 64:
                # Few blocks, numbers only: merging Python lists beats a dozen tiny numpy calls.
                if numl is None:
                    numl = num.tolist()
                mnum, mobjs = plan.merge_rows([numl[r] for r in rows]), []
            else:
                parts_num = num[rows] if len(rows) != 1 else num[rows[0]][None, :]
                parts_objs = [objs[r] for r in rows] if objs is not None else None
                if edges:
                    parts_num = np.vstack([parts_num] + [e.num[None, :] for e in edges])
                    if parts_objs is not None or plan.slots:
                        parts_objs = (parts_objs or []) + [e.objs for e in edges]
                mnum = plan.merge_num(parts_num)
                mobjs = plan.merge_objs(parts_objs) if parts_objs else [None] * len(plan.slots)
            for i in which:
                out[i] = plan.finalize(plan.outputs[i], mnum, mobjs)
        return out

    def window_end(self, t: int) -> int:
        return (t // self.g) * self.g if self.is_aggregate and self.interval else t
