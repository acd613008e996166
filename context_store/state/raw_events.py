"""Raw event blocks: the events of a continuous-mode edge tile, so a window can be cut
exactly at ``t - W`` and ``t`` (layout in docs/online-state.md).

Block: ``u32 n | i64 ts[n] | per plan column (sorted): u8 valid[n] + values``; a tile's raw
field is a concatenation of blocks (one per materialization / stream apply).
"""

from __future__ import annotations

import math
import operator
import struct
from itertools import compress
from typing import Any

import numpy as np

from ..definitions import Embedding
from .aggregations import AggPlan
from .columns import Columns

__all__ = ["decode_raw", "encode_raw", "encode_raw_groups", "parse_raw_num", "raw_num_block"]

_HDR = struct.Struct("<I")


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
        ts_np = (
            np.concatenate([np.frombuffer(buf, "<i8", n, o) for n, o, _ in blocks]) if blocks else np.zeros(0, np.int64)
        )
        valid_np: dict[str, Any] = {}
        vals_np: dict[str, Any] = {}
        for c in plan.num_cols:
            valid_np[c] = np.concatenate([np.frombuffer(buf, np.uint8, n, w[c][0]) for n, _, w in blocks]).astype(bool)
            vals_np[c] = np.concatenate(
                [np.frombuffer(buf, "<f8" if w[c][1] == "d" else "<i8", n, w[c][0] + n) for n, _, w in blocks]
            ).astype(np.float64)
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


def raw_num_block(
    parsed: tuple[Any, dict[str, Any], dict[str, Any]], plan: AggPlan, lo: int | None, hi: int
) -> list[float]:
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
    if not ts_all:
        keep: Any = None
        n_sel = 0
    elif max(ts_all) < hi and (lo is None or min(ts_all) >= lo):
        keep = None  # the whole tile (the usual case for the current tile): no per-event test
        n_sel = len(ts_all)
    else:
        keep = [x < hi and (lo is None or x >= lo) for x in ts_all]
        n_sel = sum(keep)
    res = [float(n_sel)]
    for c in plan.num_cols:
        v, x = valid_all[c], vals_all[c]
        if keep is None:
            vals = list(x) if v.count(0) == 0 else list(compress(x, v))
        else:
            vals = list(compress(x, map(operator.and_, keep, v)))
        if not vals:
            res += [0.0, 0.0, math.inf, -math.inf, 0.0, 0.0]
            continue
        cnt = float(len(vals))
        sm = float(sum(vals))
        mean = sm / cnt
        res += [cnt, sm, float(min(vals)), float(max(vals)), mean, sum([(y - mean) * (y - mean) for y in vals])]
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
