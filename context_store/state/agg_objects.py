"""Object slots of aggregation partials (what is not a fixed-size number): ``last``,
``last_distinct_n``/``first_distinct_n``, HLL (``approx_count_distinct``), KLL
(``approx_percentile``) and embedding means — build, merge, encode, decode. Used by
:class:`context_store.state.aggregations.AggPlan`.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np

from ..definitions import DType

__all__ = ["HLL_LG_K", "KLL_K", "pack_scalar", "scalar_kind", "unpack_scalar"]

HLL_LG_K = 12
KLL_K = 200
_U32 = struct.Struct("<I")
_I64 = struct.Struct("<q")
_F64 = struct.Struct("<d")


# -- scalar codec (typed by the column's dtype, so no per-value tag) ---------------------


def pack_scalar(kind: str, v: Any) -> bytes:
    if kind == "s":
        b = v.encode()
        return _U32.pack(len(b)) + b
    if kind == "d":
        return _F64.pack(v)
    if kind == "b":
        return b"\x01" if v else b"\x00"
    return _I64.pack(v)  # "q": int64 and timestamps (µs)


def unpack_scalar(kind: str, buf: bytes, off: int) -> tuple[Any, int]:
    if kind == "s":
        (ln,) = _U32.unpack_from(buf, off)
        return buf[off + 4 : off + 4 + ln].decode(), off + 4 + ln
    if kind == "d":
        return _F64.unpack_from(buf, off)[0], off + 8
    if kind == "b":
        return buf[off] == 1, off + 1
    return _I64.unpack_from(buf, off)[0], off + 8


def scalar_kind(dtype: DType) -> str:
    return {"int64": "q", "timestamp": "q", "float64": "d", "bool": "b", "string": "s"}.get(dtype.name, "")


def _kll() -> Any:
    import datasketches

    return datasketches.kll_doubles_sketch(KLL_K)


def _obj_from_pairs(kind: str, n: int, pairs: list[tuple[int, Any]]) -> Any:
    if kind == "last":
        return max(pairs)
    if kind == "ldn":
        d: dict[Any, int] = {}
        for t, v in pairs:
            if d.get(v, t) <= t:
                d[v] = t
        return _trim(d, n, latest=True)
    if kind == "fdn":
        d = {}
        for t, v in pairs:
            if d.get(v, t) >= t:
                d[v] = t
        return _trim(d, n, latest=False)
    if kind == "hll":
        import datasketches

        sk = datasketches.hll_sketch(HLL_LG_K, datasketches.tgt_hll_type.HLL_8)
        for _, v in pairs:
            sk.update(v)
        return sk
    raise AssertionError(kind)


def _trim(d: dict[Any, int], n: int, latest: bool) -> dict[Any, int]:
    if len(d) <= n:
        return d
    items = sorted(((t, v) for v, t in d.items()))
    keep = items[-n:] if latest else items[:n]
    return {v: t for t, v in keep}


def _merge_obj(kind: str, n: int, items: list[Any]) -> Any:
    if len(items) == 1:
        return items[0]
    if kind == "last":
        return max(items)
    if kind in ("ldn", "fdn"):
        d: dict[Any, int] = dict(items[0])
        for other in items[1:]:
            for v, t in other.items():
                cur = d.get(v)
                if cur is None or (t > cur if kind == "ldn" else t < cur):
                    d[v] = t
        return _trim(d, n, latest=kind == "ldn")
    if kind == "hll":
        import datasketches

        u = datasketches.hll_union(HLL_LG_K)
        for sk in items:
            u.update(sk)
        return u.get_result(datasketches.tgt_hll_type.HLL_8)
    if kind == "kll":
        sk = _kll()
        for o in items:
            sk.merge(o)
        return sk
    cnt = sum(c for c, _ in items)
    return (cnt, np.sum([s for _, s in items], axis=0))


def _encode_obj(kind: str, sk: str, o: Any) -> bytes:
    if kind == "last":
        return _I64.pack(o[0]) + pack_scalar(sk, o[1])
    if kind in ("ldn", "fdn"):
        return _U32.pack(len(o)) + b"".join(_I64.pack(t) + pack_scalar(sk, v) for v, t in o.items())
    if kind == "hll":
        return o.serialize_compact()
    if kind == "kll":
        return o.serialize()
    cnt, s = o
    return _I64.pack(cnt) + s.astype("<f8").tobytes()


def _decode_obj(kind: str, sk: str, b: bytes, dtype: DType) -> Any:
    if kind == "last":
        v, _ = unpack_scalar(sk, b, 8)
        return (_I64.unpack_from(b, 0)[0], v)
    if kind in ("ldn", "fdn"):
        (cnt,) = _U32.unpack_from(b, 0)
        off = 4
        d: dict[Any, int] = {}
        for _ in range(cnt):
            t = _I64.unpack_from(b, off)[0]
            v, off = unpack_scalar(sk, b, off + 8)
            d[v] = t
        return d
    import datasketches

    if kind == "hll":
        return datasketches.hll_sketch.deserialize(b)
    if kind == "kll":
        return datasketches.kll_doubles_sketch.deserialize(b)
    return (_I64.unpack_from(b, 0)[0], np.frombuffer(b, dtype="<f8", offset=8).copy())
