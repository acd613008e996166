"""The vectorised row encoding (materialize) gives the same bytes as the per-row ``RowCodec``."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa

import context_store as cs
from context_store.state.codec import RowCodec
from context_store.state.row_encode import encode_rows

INTS = [0, -1, 63, -64, 64, -65, 8191, 8192, -8193, 2**62, -(2**63), 2**63 - 1]
STRS = ["", "a", "é" * 70, "x" * 200, "Paris", "日本" * 50]


def _random_table(n: int, seed: int) -> tuple[list[cs.DType], np.ndarray, list[pa.Array]]:
    rng = random.Random(seed)

    def maybe(f: Callable[[], Any]) -> list[Any]:
        return [None if rng.random() < 0.2 else f() for _ in range(n)]

    dts = [cs.Int64, cs.Float64, cs.Bool, cs.String, cs.Timestamp, cs.Int64, cs.String]
    cols = [
        pa.array(maybe(lambda: rng.choice([*INTS, rng.randint(-(10**12), 10**12)])), pa.int64()),
        pa.array(maybe(lambda: rng.random() * 1e6 - 5e5), pa.float64()),
        pa.array(maybe(lambda: rng.random() < 0.5), pa.bool_()),
        pa.array(maybe(lambda: rng.choice(STRS)), pa.string()),
        pa.array(maybe(lambda: rng.randint(-(2**50), 2**50)), pa.timestamp("us", tz="UTC")),
        pa.array(maybe(lambda: rng.randint(-100, 100)), pa.int32()),
        pa.array(maybe(lambda: rng.choice(STRS)), pa.large_string()),
    ]
    ts = np.array([rng.randint(-(2**60), 2**60) for _ in range(n)], dtype=np.int64)
    return dts, ts, cols


def _per_row(dts: list[cs.DType], ts: np.ndarray, cols: list[pa.Array]) -> list[bytes]:
    codec = RowCodec(dts)
    py = [c.to_pylist() for c in cols]
    return [codec.encode(int(t), [c[i] for c in py]) for i, t in enumerate(ts)]


def test_vectorised_rows_are_byte_identical_to_per_row() -> None:
    dts, ts, cols = _random_table(3000, seed=1)
    want = _per_row(dts, ts, cols)
    assert encode_rows(dts, ts, cols) == want
    # sliced arrays (a chunk of a table: non-zero Arrow offsets)
    assert encode_rows(dts, ts[7:], [c.slice(7) for c in cols]) == want[7:]
    # no nulls at all, and nine features (a two-byte null bitmap)
    full = [pa.array([1, -2, 300], pa.int64())] * 9
    nine = [cs.Int64] * 9
    t3 = np.array([1, 2, 3], dtype=np.int64)
    assert encode_rows(nine, t3, full) == _per_row(nine, t3, full)


def test_types_outside_the_vector_path_take_the_per_row_one() -> None:
    dts = [cs.Int64, cs.Array(cs.String), cs.Embedding(3)]
    cols = [
        pa.array([1, None, -7], pa.int64()),
        pa.array([["a", None], None, []], pa.list_(pa.string())),
        pa.array([[1.0, 2.0, 3.0], None, [0.5, 0.25, 0.0]], pa.list_(pa.float32(), 3)),
    ]
    ts = np.array([10, 20, 30], dtype=np.int64)
    assert encode_rows(dts, ts, cols) == _per_row(dts, ts, cols)
    # a String feature stored as numbers: str(v) per row
    s = [pa.array([1, 22, None], pa.int64())]
    assert encode_rows([cs.String], ts, s) == _per_row([cs.String], ts, s)
