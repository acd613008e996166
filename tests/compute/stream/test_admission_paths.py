"""The plain-Python admission of small pushes decides exactly as the numpy one (property test)."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from context_store.compute.stream.admission import _admit_arrays, _admit_small

H = 3_600_000_000  # 1 h in µs
T0 = 1_790_000_000_000_000


@settings(max_examples=400, deadline=None)
@given(
    rows=st.lists(st.tuples(st.integers(-3 * H, 3 * H), st.integers(0, 3)), min_size=1, max_size=16),
    wms=st.lists(st.one_of(st.none(), st.integers(-3 * H, 3 * H)), min_size=4, max_size=4),
    lateness_min=st.sampled_from([0, 1, 30, 60, 120]),
    cut=st.one_of(st.none(), st.integers(-3 * H, 3 * H)),
)
def test_small_and_array_admission_agree(
    rows: list[tuple[int, int]], wms: list[int | None], lateness_min: int, cut: int | None
) -> None:
    ts = np.array([T0 + t for t, _ in rows], dtype=np.int64)
    part = np.array([p for _, p in rows], dtype=np.int64)
    watermarks = {p: None if w is None else T0 + w for p, w in enumerate(wms)}
    lateness = timedelta(minutes=lateness_min)
    lateness_us = lateness // timedelta(microseconds=1)
    cutover = None if cut is None else ("v", T0 + cut)
    small = _admit_small(ts.tolist(), part.tolist(), watermarks, lateness_us, lateness, cutover, "ts")
    arrays = _admit_arrays(ts, part, watermarks, lateness_us, lateness, cutover, "ts")
    assert small.accepted.tolist() == arrays.accepted.tolist()
    assert small.rejected == arrays.rejected
    assert small.partitions == arrays.partitions
