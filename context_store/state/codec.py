"""Compact binary encodings of online values (no JSON on the hot path).

Row of a batch feature view (``ROW_FORMAT`` 2)::

    i64 event_ts_us | null bitmap (ceil(n/8) bytes, bit i set = feature i is null) | values

Values of non-null features in feature order: int64 zigzag varint (LEB128: 1 byte below 64, 2 below
8192, ...), timestamp ``<q``, float64 ``<d``, bool 1 byte, string varint length + UTF-8, embedding
``dim`` x ``<f4``, array varint count then per element 1 null byte + element.
Stored in up to ``row_chunk_count`` hash fields (``split_row``) of at most 64 bytes each, Redis's
default ``hash-max-listpack-value``: one longer value turns the whole entity hash into Redis's
hashtable encoding (about twice the bytes of a listpack for a typical entity). A read joins them.
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

__all__ = [
    "KEY_SEP",
    "LISTPACK_VALUE_MAX",
    "ROW_FORMAT",
    "RowCodec",
    "entity_key",
    "entity_keys",
    "join_row",
    "row_chunk_count",
    "split_row",
]

KEY_SEP = "\x1f"
_Q = struct.Struct("<q")
_D = struct.Struct("<d")
# Layout version of row views (part of their vid, so a changed layout is never misread).
ROW_FORMAT = 2
# Redis's default ``hash-max-listpack-value``: a longer field value converts the hash to a hashtable.
LISTPACK_VALUE_MAX = 64
_MAX_ROW_CHUNKS = 32
# Generous widths of variable-size values, for the number of fields a read asks for (a row uses only
# the fields it needs; a longer one still round-trips: its last field holds the rest, deliberately
# accepting the hashtable encoding for that entity).
_EST_INT = 9
_EST_STRING = 24
_EST_ARRAY = 48


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


def _est_width(dt: DType) -> int:
    if isinstance(dt, Embedding):
        return 4 * dt.dim
    if isinstance(dt, Array):
        return _EST_ARRAY
    return {"int64": _EST_INT, "timestamp": 8, "float64": 8, "bool": 1}.get(dt.name, _EST_STRING)


def row_chunk_count(dtypes: Sequence[DType]) -> int:
    """Most hash fields a row of these features is stored in (each <= 64 bytes)."""
    est = 8 + (len(dtypes) + 7) // 8 + sum(_est_width(d) for d in dtypes)
    return max(1, min(_MAX_ROW_CHUNKS, -(-est // LISTPACK_VALUE_MAX)))


def split_row(buf: bytes, k: int) -> list[bytes]:
    """``buf`` as 1..``k`` pieces of <= 64 bytes (when ``len(buf) > 64 * k`` the last holds the rest).
    The first holds the event timestamp (``RowCodec.ts_of``). A writer deletes the fields of the
    pieces it does not use (a shorter row replacing a longer one)."""
    n = len(buf)
    if n <= LISTPACK_VALUE_MAX or k == 1:
        return [buf]
    m = min(k, -(-n // LISTPACK_VALUE_MAX))
    step = LISTPACK_VALUE_MAX
    return [buf[i * step : (i + 1) * step] for i in range(m - 1)] + [buf[(m - 1) * step :]]


def join_row(pieces: Sequence[bytes | None]) -> bytes | None:
    """The row stored in ``pieces`` (``split_row``'s fields as read); None when absent."""
    if pieces[0] is None:
        return None
    if len(pieces) == 1:
        return pieces[0]
    return b"".join([x for x in pieces if x is not None])


def _varint(x: int) -> bytes:
    """Unsigned LEB128."""
    if x < 0x80:
        return bytes((x,))
    out = bytearray()
    while x >= 0x80:
        out.append((x & 0x7F) | 0x80)
        x >>= 7
    out.append(x)
    return bytes(out)


_SMALL_INTS = [bytes(((v << 1) ^ (v >> 63),)) for v in range(-64, 64)]  # one-byte zigzag varints


def _zigzag(v: int) -> bytes:
    if -64 <= v < 64:
        return _SMALL_INTS[v + 64]
    return _varint((v << 1) ^ (v >> 63))


def _read_varint(b: bytes, o: int) -> tuple[int, int]:
    x = b[o]
    if x < 0x80:
        return x, o + 1
    x &= 0x7F
    shift = 7
    while True:
        o += 1
        c = b[o]
        x |= (c & 0x7F) << shift
        if c < 0x80:
            return x, o + 1
        shift += 7


def _read_zigzag(b: bytes, o: int) -> tuple[int, int]:
    x = b[o]
    if x < 0x80:
        return (x >> 1) ^ -(x & 1), o + 1
    u, o = _read_varint(b, o)
    return (u >> 1) ^ -(u & 1), o


def _ts_value(v: Any) -> int:
    return datetime_to_us(v) if isinstance(v, datetime) else int(v)


def _packer(dt: DType) -> Callable[[Any], bytes]:
    if isinstance(dt, Embedding):
        return lambda v: np.asarray(v, dtype="<f4").tobytes()
    if isinstance(dt, Array):
        el = _packer(dt.element)
        return lambda v: _varint(len(v)) + b"".join(b"\x01" if x is None else b"\x00" + el(x) for x in v)
    n = dt.name
    if n == "int64":
        return lambda v: _zigzag(int(v))
    if n == "timestamp":
        return lambda v: _Q.pack(_ts_value(v))
    if n == "float64":
        return lambda v: _D.pack(float(v))
    if n == "bool":
        return lambda v: b"\x01" if v else b"\x00"
    if n == "string":

        def pack_s(v: Any) -> bytes:
            b = str(v).encode()
            return _varint(len(b)) + b

        return pack_s
    raise TypeError(f"unsupported online dtype {dt!r}")


def _unpacker(dt: DType) -> Callable[[bytes, int], tuple[Any, int]]:
    if isinstance(dt, Embedding):
        size = 4 * dt.dim
        return lambda b, o: (np.frombuffer(b, dtype="<f4", count=dt.dim, offset=o).tolist(), o + size)
    if isinstance(dt, Array):
        el = _unpacker(dt.element)

        def un_arr(b: bytes, o: int) -> tuple[Any, int]:
            cnt, o = _read_varint(b, o)
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
        return _read_zigzag
    if n == "timestamp":
        return lambda b, o: (us_to_datetime(_Q.unpack_from(b, o)[0]), o + 8)
    if n == "float64":
        return lambda b, o: (_D.unpack_from(b, o)[0], o + 8)
    if n == "bool":
        return lambda b, o: (b[o] == 1, o + 1)

    def un_s(b: bytes, o: int) -> tuple[Any, int]:
        ln = b[o]
        if ln < 0x80:
            return b[o + 1 : o + 1 + ln].decode(), o + 1 + ln
        ln, o = _read_varint(b, o)
        return b[o : o + ln].decode(), o + ln

    return un_s


class RowCodec:
    """Encoder/decoder of one batch view's rows (features in the view's order)."""

    def __init__(self, dtypes: Sequence[DType]) -> None:
        self.n = len(dtypes)
        self.nb = (self.n + 7) // 8
        self.packers = [_packer(d) for d in dtypes]
        self.unpackers = [_unpacker(d) for d in dtypes]
        fixed = {"float64": "d", "timestamp": "q", "bool": "?"}
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
