"""The point-in-time index rank-compresses timestamps with a sort-based unique: the same sorted
distinct values (and dtype) as ``np.unique``, and an index over a span that needs it finds events."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from context_store.compute._pit import _sorted_unique, build_index


def test_sorted_unique_is_np_unique() -> None:
    rng = np.random.default_rng(3)
    for n in (0, 1, 2, 7, 1000, 50_000):
        x = rng.integers(-(10**15), 10**15, n).astype(np.int64)
        x = np.r_[x, x[: n // 3], rng.integers(-3, 3, n // 5)].astype(np.int64)
        got, want = _sorted_unique(x), np.unique(x)
        assert got.dtype == want.dtype and np.array_equal(got, want), n


def test_index_over_a_huge_span_keeps_each_entitys_order() -> None:
    # 40k entities x a span of ~3e17 us overflows seg * span: the index ranks the timestamps.
    n_ent = 40_000
    ts = np.r_[np.arange(n_ent, dtype=np.int64) * 7, np.full(n_ent, 3 * 10**17, dtype=np.int64)]
    keys = [pa.chunked_array([pa.array([f"e{i}" for i in range(n_ent)] * 2)])]
    idx = build_index(keys, ts)
    assert idx.uniq_ts is not None  # the rank-compressed path
    assert np.array_equal(idx.uniq_ts, np.unique(ts))
    assert np.all(idx.key[1:] >= idx.key[:-1])  # sorted by (entity, ts)
