"""Compact binary encodings of online values (no JSON on the hot path).

Row of a batch feature view (field ``{vid}``)::

    i64 event_ts_us | null bitmap (ceil(n/8) bytes, bit i set = feature i is null) | values

Values of non-null features in feature order: int64/timestamp ``<q``, float64 ``<d``,
bool 1 byte, string u32 length + UTF-8, embedding ``dim`` x ``<f4``, array u32 count then per
element 1 null byte + element.
Entity keys: ``name=value`` per join key joined by ``\\x1f`` (ints in decimal).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..definitions import Array, DType, Embedding
from ..vocab.time import datetime_to_us, us_to_datetime

__all__ = ["KEY_SEP", "RowCodec", "entity_key", "entity_keys"]

KEY_SEP = "\x1f"
_Q = struct.Struct("<q")
_D = struct.Struct("<d")
_U32 = struct.Struct("<I")


def entity_key(join_keys: Sequence[str], values: Sequence[Any]) -> str:
    return KEY_SEP.join(f"{k}={v}" for k, v in zip(join_keys, values))


def entity_keys(table: pa.Table, join_keys: Sequence[str]) -> pa.Array:
    """Vectorised ``entity_key`` for every row of ``table`` (a string array)."""
    parts = []
    for k in join_keys:
        col = table[k]
        if not pa.types.is_string(col.type) and not pa.types.is_large_string(col.type):
            col = pc.cast(col, pa.string())
        parts.append(pc.binary_join_element_wise(pa.scalar(f"{k}="), col, ""))
    if len(parts) == 1:
        out = parts[0]
    else:
        out = pc.binary_join_element_wise(*parts, KEY_SEP)
    return out.combine_chunks() if isinstance(out, pa.ChunkedArray) else out


def _ts_value(v: Any) -> int:
    return datetime_to_us(v) if isinstance(v, datetime) else int(v)


def _packer(dt: DType) -> Callable[[Any], bytes]:
    if isinstance(dt, Embedding):
        return lambda v: np.asarray(v, dtype="<f4").tobytes()
    if isinstance(dt, Array):
        el = _packer(dt.element)
        return lambda v: _U32.pack(len(v)) + b"".join(b"\x01" if x is None else b"\x00" + el(x) for x in v)
    n = dt.name
    if n == "int64":
        return lambda v: _Q.pack(int(v))
    if n == "timestamp":
        return lambda v: _Q.pack(_ts_value(v))
    if n == "float64":
        return lambda v: _D.pack(float(v))
    if n == "bool":
        return lambda v: b"\x01" if v else b"\x00"
    if n == "string":

        def pack_s(v: Any) -> bytes:
            b = str(v).encode()
            return _U32.pack(len(b)) + b

        return pack_s
    raise TypeError(f"unsupported online dtype {dt!r}")


def _unpacker(dt: DType) -> Callable[[bytes, int], tuple[Any, int]]:
    if isinstance(dt, Embedding):
        size = 4 * dt.dim
        return lambda b, o: (np.frombuffer(b, dtype="<f4", count=dt.dim, offset=o).tolist(), o + size)
    if isinstance(dt, Array):
        el = _unpacker(dt.element)

        def un_arr(b: bytes, o: int) -> tuple[Any, int]:
            (cnt,) = _U32.unpack_from(b, o)
            o += 4
            out: list[Any] = []
            for _ in range(cnt):
                if b[o] == 1:
                    out.append(None)
                    o += 1
                else:
                    v, o = el(b, o + 1)
                    out.append(v)
            return out, o

        return un_arr
    n = dt.name
    if n == "int64":
        return lambda b, o: (_Q.unpack_from(b, o)[0], o + 8)
    if n == "timestamp":
        return lambda b, o: (us_to_datetime(_Q.unpack_from(b, o)[0]), o + 8)
    if n == "float64":
        return lambda b, o: (_D.unpack_from(b, o)[0], o + 8)
    if n == "bool":
        return lambda b, o: (b[o] == 1, o + 1)

    def un_s(b: bytes, o: int) -> tuple[Any, int]:
        (ln,) = _U32.unpack_from(b, o)
        return b[o + 4 : o + 4 + ln].decode(), o + 4 + ln

    return un_s


class RowCodec:
    """Encoder/decoder of one batch view's rows (features in the view's order)."""

    def __init__(self, dtypes: Sequence[DType]) -> None:
        self.n = len(dtypes)
        self.nb = (self.n + 7) // 8
        self.packers = [_packer(d) for d in dtypes]
        self.unpackers = [_unpacker(d) for d in dtypes]
        fixed = {"int64": "q", "float64": "d", "timestamp": "q", "bool": "?"}
        # Fast path when nothing is null: runs of fixed-width features decode with one struct call.
        codes = [fixed.get(d.name) if not isinstance(d, (Array, Embedding)) else None for d in dtypes]
        self._segments: list[Any] = []
        run = ""
        for c, un in zip(codes, self.unpackers):
            if c:
                run += c
                continue
            if run:
                self._segments.append(struct.Struct("<" + run))
                run = ""
            self._segments.append(un)
        if run:
            self._segments.append(struct.Struct("<" + run))
        self._ts_idx = [i for i, d in enumerate(dtypes) if d.name == "timestamp"]

    def encode(self, ts_us: int, values: Sequence[Any]) -> bytes:
        bitmap = bytearray(self.nb)
        body = []
        for i, (v, p) in enumerate(zip(values, self.packers)):
            if v is None:
                bitmap[i >> 3] |= 1 << (i & 7)
            else:
                body.append(p(v))
        return _Q.pack(ts_us) + bytes(bitmap) + b"".join(body)

    def decode(self, buf: bytes) -> tuple[int, list[Any]]:
        ts = _Q.unpack_from(buf, 0)[0]
        bm = buf[8 : 8 + self.nb]
        off = 8 + self.nb
        if not any(bm):
            vals: list[Any] = []
            for seg in self._segments:
                if isinstance(seg, struct.Struct):
                    vals += seg.unpack_from(buf, off)
                    off += seg.size
                else:
                    v, off = seg(buf, off)
                    vals.append(v)
            for i in self._ts_idx:
                vals[i] = us_to_datetime(vals[i])
            return ts, vals
        out: list[Any] = []
        for i, un in enumerate(self.unpackers):
            if bm[i >> 3] & (1 << (i & 7)):
                out.append(None)
            else:
                v, off = un(buf, off)
                out.append(v)
        return ts, out

    @staticmethod
    def ts_of(buf: bytes) -> int:
        return _Q.unpack_from(buf, 0)[0]
