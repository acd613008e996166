"""Compiled read plans of the online read path (``features.FeatureServer``): what a feature
service reads (one ``Read`` per view), where each value goes (``Output``, ``Spec``), its metadata
(``Meta``), realtime view arguments (``RequestArg``, ``ViewArg``), and the grouping that lets the common
case assemble a response without per-feature work (``Group``, ``groups``)."""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from ..definitions import DType, RealtimeFeatureView
from ..state.tiles import ViewState
from ..stores.online.base import ViewValues

__all__ = [
    "Group",
    "Meta",
    "Output",
    "Plan",
    "Read",
    "RequestArg",
    "Spec",
    "ViewArg",
    "feature_dtype",
    "groups",
    "plan_values",
]


@dataclass
class Read:
    state: ViewState
    join_keys: tuple[str, ...]


class Output(NamedTuple):
    """A stored feature: ``read`` index, ``pos`` in its values; or a realtime one: read -1,
    ``pos`` of the realtime view, ``feature`` its output name."""

    read: int
    pos: int
    feature: str


class Meta(NamedTuple):
    name: str  # "view.feature"
    dtype: dict[str, Any]  # dataType description
    view: str


class RequestArg(NamedTuple):
    """A realtime view's request-source argument: these request fields."""

    fields: list[str]


class ViewArg(NamedTuple):
    """A realtime view's feature-view argument: ``names`` taken from read ``read`` at ``positions``."""

    read: int
    names: list[str]
    positions: list[int]


class Spec(NamedTuple):
    """One output of the service in order (``Output`` and ``Meta`` joined)."""

    read: int
    pos: int
    feature: str
    name: str
    dtype: dict[str, Any]
    view: str


class Group(NamedTuple):
    """``feature_assembly._assemble_fast``: a read's consecutive outputs, and the picker of their values (None:
    the read's values are taken whole)."""

    read: int
    names: list[str]
    pick: Callable[[list[Any]], Sequence[Any]] | None


@dataclass
class Plan:
    name: str
    join_keys: dict[str, DType]  # every join key the service needs
    reads: list[Read]  # one per feature view used (selected or realtime source)
    outputs: list[Output]
    names: list[str]
    meta: list[Meta]
    realtimes: list[tuple[RealtimeFeatureView, list[RequestArg | ViewArg]]]  # view, its arguments
    request_fields: dict[str, DType]
    specs: list[Spec] = field(default_factory=list)
    single_key: bool = False  # every view is keyed by the same join keys
    # Fast assembly (no realtime views, outputs grouped by read in order).
    groups: list[Group] | None = None
    log: Any = None  # ``feature_log.ServiceLog`` when the service logs its served vectors


def groups(plan: Plan) -> list[Group] | None:
    """Outputs grouped by read for ``feature_assembly._assemble_fast``; None when that shape does not apply."""
    if plan.realtimes:
        return None
    groups: list[tuple[int, list[str], list[int]]] = []
    for sp in plan.specs:
        ri, vi, name = sp.read, sp.pos, sp.name
        if groups and groups[-1][0] == ri:
            groups[-1][1].append(name)
            groups[-1][2].append(vi)
        else:
            groups.append((ri, [name], [vi]))
    if len({g[0] for g in groups}) != len(groups):
        return None  # one read's outputs interleaved with another's: keep the declared order exactly
    out: list[Group] = []
    for ri, names, idx in groups:
        st = plan.reads[ri].state
        n_vals = len(st.plan.outputs) if st.plan is not None else len(st.view.features_in)
        pick: Callable[[list[Any]], Sequence[Any]] | None
        if idx == list(range(n_vals)):
            pick = None
        elif len(idx) == 1:
            pick = one(idx[0])
        else:
            pick = operator.itemgetter(*idx)
        out.append(Group(ri, names, pick))
    return out


def one(i: int) -> Callable[[list[Any]], Sequence[Any]]:
    """A picker of one value (``itemgetter`` of one index returns the value, not a 1-tuple)."""
    return lambda vv: (vv[i],)


def feature_dtype(st: ViewState, fname: str) -> DType | None:
    if st.plan is not None:
        for o in st.plan.outputs:
            if o.name == fname:
                return o.dtype
    for f in st.view.features_in:
        if f.name == fname:
            return f.dtype
    return None


def plan_values(plan: Plan, res: list[ViewValues]) -> dict[str, Any]:
    """Output name -> value of a plan without realtime views (``plan.groups``): one zip per read."""
    assert plan.groups is not None
    if len(plan.groups) == 1:  # one view (the usual service): no intermediate dict
        ri, names, pick = plan.groups[0]
        vv = res[ri].values
        if vv is None:
            return dict.fromkeys(names)
        return dict(zip(names, vv if pick is None else pick(vv)))
    values: dict[str, Any] = {}
    for ri, names, pick in plan.groups:
        vv = res[ri].values
        if vv is None:
            values.update(dict.fromkeys(names))
        else:
            values.update(zip(names, vv if pick is None else pick(vv)))
    return values
