"""Some features of one view for many entities, as float columns: the online read of a re-rank's
candidates (``retrieval._feature_values``) and of a top-items ranking.

``FeatureServer.get_view_features_batch`` builds a ``FeatureVector`` per entity (join keys checked
one by one, metadata memoised per entity) that the re-rank then takes apart again for two numbers
each: ~1.5 ms of an online ``get_user_context``'s ~6. Here the same read (the view's compiled plan,
``read_entities`` in one round trip) goes straight to columns. The values are the ones the vectors
carry: when the read is not that simple (views not fully materialized, a logged plan, keys of the
wrong type) it falls back to ``get_view_features_batch`` itself, which also raises the same errors.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import numpy as np

from ..definitions import FeatureView
from .features import FeatureServer, to_us

__all__ = ["view_feature_columns", "as_float"]

_NAN = float("nan")


def as_float(v: Any) -> float:
    """A feature value as a re-rank number: int, float and bool as ``float()``; anything else NaN."""
    return float(v) if isinstance(v, (int, float)) else _NAN


def view_feature_columns(
    server: FeatureServer, view: FeatureView, feats: Sequence[str], keys: Sequence[Any], at: datetime
) -> dict[str, np.ndarray]:
    """``feature -> as_float`` of its value per entity of ``keys`` (the view's one join key, in the
    key's type), read online at ``at``."""
    plan = server._view_plan(view)
    kf = view.join_key_fields[0]
    want_int = kf.dtype.name == "int64"
    simple = (
        len(plan.reads) == 1
        and plan.single_key
        and plan.log is None
        and hasattr(server.online, "read_entities")
        and all((type(k) is int) if want_int else (type(k) is str) for k in keys)
    )
    cov = server._cover(plan) if simple else None
    pos = [view.feature_names.index(f) for f in feats]
    if not simple or cov is not None:
        vecs = server.get_view_features_batch(view, [{kf.name: x} for x in keys], at)
        return {
            f: np.array([as_float(fv.feature_values.get(f"{view.name}.{f}")) for fv in vecs], dtype=np.float64)
            for f in feats
        }
    name = plan.reads[0].join_keys[0]
    # ``FeatureServer._reads``' entity key for one join key: "name=value"
    per = server.online.read_entities([plan.reads[0].state], [f"{name}={k}" for k in keys], to_us(at))
    rows = [vs[0].values for vs in per]
    return {
        f: np.array([as_float(r[p]) if r is not None else _NAN for r in rows], dtype=np.float64)
        for f, p in zip(feats, pos)
    }
