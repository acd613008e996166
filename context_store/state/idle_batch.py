"""Lifetime views read for many idle entities at once (a re-rank's ~150 candidates, a top-items
ranking's whole catalogue).

An entity idle for longer than a view's retention keeps only its folded Lifetime base: every finite
window is empty and every Lifetime window is the base alone (``ViewState._evaluate_idle``). Read one
by one, each such entity paid a decode, a per-window loop and a finalize per output in Python (~15 µs,
the largest part of an online re-rank read); here the bases are decoded with one ``frombuffer`` and
the empty windows' values computed once per batch. The finalizers are ``AggPlan.num_finalizer``'s
(the same expressions as ``finalize``) applied to each base's floats, so values and types are the ones
``_evaluate_idle`` returns.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .tiles import ViewState, is_idle

__all__ = ["idle_batchable", "is_idle", "evaluate_idle_many"]

# ``num_finalizer`` returns exactly ``finalize``'s value and type for these on a list of floats.
_SIMPLE = frozenset({"count", "sum", "mean", "min", "max"})


def idle_batchable(st: ViewState) -> bool:
    """A numbers-only aggregate view with a Lifetime window (``ViewState.evaluate``'s idle path applies)."""
    return st.is_aggregate and st.has_lifetime and st.plan is not None and not st.plan.slots and not st.ev_fields


def evaluate_idle_many(st: ViewState, lifetimes: Sequence[bytes | None]) -> list[list[Any]]:
    """``st._evaluate_idle(lv)`` for each ``lv`` (a stored Lifetime base or None), in order."""
    plan = st.plan
    assert plan is not None and idle_batchable(st)
    empty = st._evaluate_idle(None)  # every window empty: the same values for every entity
    out = [list(empty) for _ in lifetimes]
    present = [e for e, lv in enumerate(lifetimes) if lv is not None]
    if not present:
        return out
    K = plan.K
    # A base is i64 fold tile then K float64 (no object slots): ``plan.decode(lv[8:]).num``'s floats.
    arr = np.frombuffer(
        b"".join([lifetimes[e][8 : 8 + 8 * K] for e in present]),  # type: ignore[index]
        dtype="<f8",
    ).reshape(len(present), K)
    rows = arr.tolist()
    simple: list[tuple[int, Any]] = []  # count/sum/mean/min/max: the same expressions on Python floats
    other: list[int] = []  # variance and the like: ``finalize`` on the numpy row, as the one-by-one path
    for w, which in st.windows:
        if w is None:
            for i in which:
                o = plan.outputs[i]
                if o.function in _SIMPLE:
                    simple.append((i, plan.num_finalizer(o)))
                else:
                    other.append(i)
    for j, e in enumerate(present):
        row = out[e]
        base = rows[j]
        for i, fin in simple:
            row[i] = fin(base)
        for i in other:
            row[i] = plan.finalize(plan.outputs[i], arr[j], [])
    return out
