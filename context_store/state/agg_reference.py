"""Reference aggregate over a plain event list: a test/batch helper kept apart from the online AggPlan engine."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..definitions import Aggregate, DType, Embedding, FeatureView
from .columns import Columns

__all__ = ["aggregate_values"]


def aggregate_values(
    function: str,
    ts_us: Sequence[int],
    values: Sequence[Any],
    n: int | None = None,
    percentile: float | None = None,
) -> Any:
    """Reference: one aggregate over a list of events (the same code path as online).

    For the batch engine (e.g. approx functions in training data) and for tests.
    Values are Python scalars (None = null); ``ts_us`` int µs.
    """
    # lazy: aggregations re-exports this function, so a top-level import would be circular
    from ..definitions import Bool, Entity, FileSource, Float64, Int64, String
    from .aggregations import NUM_FUNCS, AggPlan

    sample = next((v for v in values if v is not None), None)
    dt: DType
    if isinstance(sample, bool):
        dt = Bool
    elif isinstance(sample, (list, tuple, np.ndarray)):
        dt = Embedding(len(sample))
    elif isinstance(sample, int):
        dt = Int64
    elif isinstance(sample, float) or function in NUM_FUNCS or function == "approx_percentile":
        dt = Float64
    else:
        dt = String
    view = FeatureView(
        "ref",
        [Entity("e", ["k"])],
        FileSource("x.parquet", "ts"),
        aggregations=[Aggregate("c", function, "1d", n=n, percentile=percentile)],
    )
    plan = AggPlan(view, {"c": dt})
    ts = np.asarray(list(ts_us), dtype=np.int64)
    vals = list(values)
    valid = np.array([v is not None for v in vals], dtype=bool)
    cols = Columns(ts=ts, valid={"c": valid})
    if dt.is_numeric:
        cols.num["c"] = np.array([0.0 if v is None else float(v) for v in vals], dtype=np.float64)
    if isinstance(dt, Embedding):
        cols.emb["c"] = np.array([np.zeros(dt.dim) if v is None else v for v in vals], dtype=np.float32).reshape(
            -1, dt.dim
        )
    else:
        cols.obj["c"] = vals
    p = plan.partial(cols)
    return plan.finalize(plan.outputs[0], p.num, p.objs)
