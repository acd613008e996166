"""The events encoding of events-mode entities (``state/events_mode.py``): compact and exact.

``varint n | zigzag varint ts[0], varint ts[i] - ts[i-1] (sorted) | per plan column (sorted):
valid bitmap (ceil(n/8) bytes, bit i = row i valid), u8 scale s, values of the valid rows``:
s = 255: ``<f8`` each; else zigzag varints k with k / 10^s == v exactly (integers, amounts with
cents: 1-3 bytes instead of 8). The encoder keeps the decimal form only when it reproduces every
value bit for bit. Ten events of one column over a week: ~90 bytes with cents, ~150 without.
"""

from __future__ import annotations

import struct

import numpy as np

from .aggregations import AggPlan

__all__ = ["decode_events", "encode_events", "parse_events"]

_SCALES = (1.0, 10.0, 100.0, 1000.0, 10000.0)


def _uvarint(out: bytearray, x: int) -> None:
    while x >= 0x80:
        out.append((x & 0x7F) | 0x80)
        x >>= 7
    out.append(x)


def _read_uvarint(b: bytes, o: int) -> tuple[int, int]:
    x = shift = 0
    while True:
        c = b[o]
        o += 1
        x |= (c & 0x7F) << shift
        if c < 0x80:
            return x, o
        shift += 7


def _scale(xs: list[float]) -> int:
    """Smallest s with ``round(v * 10^s) / 10^s == v`` for every v (exact for one s: for every
    larger one too, the same decimal), 255 when none <= 4 (or a value is huge, inf or NaN)."""
    best = 0
    for v in xs:
        if not -4e15 < v < 4e15:  # also false for NaN
            return 255
        s = best
        while s < len(_SCALES):
            f = _SCALES[s]
            if round(v * f) / f == v:
                break
            s += 1
        if s == len(_SCALES):
            return 255
        best = s
    return best


def encode_events(ts: list[int], cols: list[tuple[list[bool], list[float]]]) -> bytes:
    """Events sorted by ``ts``; per plan column its validity and values (any where invalid)."""
    out = bytearray()
    n = len(ts)
    _uvarint(out, n)
    if n:
        prev = ts[0]
        _uvarint(out, 2 * prev if prev >= 0 else -2 * prev - 1)
        for t in ts[1:]:
            d = t - prev
            if d < 0x80:
                out.append(d)
            else:
                _uvarint(out, d)
            prev = t
    for valid, vals in cols:
        bm = bytearray((n + 7) // 8)
        for i, ok in enumerate(valid):
            if ok:
                bm[i >> 3] |= 1 << (i & 7)
        out += bm
        xs = [v for v, ok in zip(vals, valid) if ok]
        scale = _scale(xs)
        out.append(scale)
        if scale == 255:
            out += np.asarray(xs, dtype="<f8").tobytes()
        else:
            f = _SCALES[scale]
            for v in xs:
                k = round(v * f)
                z = 2 * k if k >= 0 else -2 * k - 1
                if z < 0x80:
                    out.append(z)
                else:
                    _uvarint(out, z)
    return bytes(out)


def decode_events(buf: bytes, ncols: int) -> tuple[list[int], list[tuple[bytes, list[float]]]]:
    """(ts, per column (valid as one 0/1 byte per row, values with 0.0 where invalid)).

    On every read of an events-mode entity: varints are decoded inline (a call per varint cost more
    than the decoding) and a column without nulls skips the per-row validity work."""
    n, o = _read_uvarint(buf, 0)
    if n == 0:
        return [], [(b"", []) for _ in range(ncols)]
    x, o = _read_uvarint(buf, o)
    t = (x >> 1) ^ -(x & 1)
    ts: list[int] = [t]
    for _ in range(n - 1):
        c = buf[o]
        o += 1
        if c >= 0x80:  # a multi-byte delta
            x, shift = c & 0x7F, 7
            while True:
                c = buf[o]
                o += 1
                x |= (c & 0x7F) << shift
                if c < 0x80:
                    break
                shift += 7
            c = x
        t += c
        ts.append(t)
    cols: list[tuple[bytes, list[float]]] = []
    nb = (n + 7) // 8
    full = (1 << n) - 1
    for _ in range(ncols):
        bm = buf[o : o + nb]
        o += nb
        dense = int.from_bytes(bm, "little") & full == full
        valid = b"\x01" * n if dense else bytes((bm[i >> 3] >> (i & 7)) & 1 for i in range(n))
        scale = buf[o]
        o += 1
        m = n if dense else sum(valid)
        if scale == 255:
            xs = list(struct.unpack_from(f"<{m}d", buf, o))
            o += 8 * m
        else:
            f = _SCALES[scale]
            xs = []
            for _ in range(m):
                c = buf[o]
                o += 1
                if c >= 0x80:
                    x, shift = c & 0x7F, 7
                    while True:
                        c = buf[o]
                        o += 1
                        x |= (c & 0x7F) << shift
                        if c < 0x80:
                            break
                        shift += 7
                    c = x
                xs.append(((c >> 1) ^ -(c & 1)) / f)
        if dense:
            cols.append((valid, xs))
        else:
            it = iter(xs)
            cols.append((valid, [next(it) if ok else 0.0 for ok in valid]))
    return ts, cols


def parse_events(buf: bytes, plan: AggPlan) -> tuple[list[int], dict[str, bytes], dict[str, list[float]]]:
    """``raw_events.parse_raw_num``'s form (for ``raw_num_block``) of an events-mode field."""
    ts, cols = decode_events(buf, len(plan.columns))
    got = dict(zip(plan.columns, cols))
    return ts, {c: got[c][0] for c in plan.num_cols}, {c: got[c][1] for c in plan.num_cols}
