"""Feature vectors from a plan's read results (``features.FeatureServer``): realtime views run, values placed,
metadata built. ``shared`` memoises what is immutable and seen again (metadata, effective times)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from ..errors import ContextStoreError, InvalidInputError
from ..stores.online.base import ViewValues
from ..types import MISSING_DATA, PRESENT, FeatureMetadata, FeatureVector
from ..vocab.time import us_to_datetime
from .feature_plans import Plan, RequestArg, plan_values

__all__ = ["assemble", "meta_fast"]


def assemble(
    plan: Plan,
    keys: dict[str, Any],
    ctx: Mapping[str, Any],
    res: list[ViewValues],
    t: int,
    shared: dict[Any, Any] | None = None,
    single: bool = False,
) -> FeatureVector:
    """``shared``: identical metadata and effective times are built once (they are immutable); ``single``:
    one entity's lookup (request-time metadata is not memoised, see ``_assemble_fast``)."""
    rt_out: list[dict[str, Any]] = []
    for view, srcs in plan.realtimes:
        args: list[dict[str, Any]] = []
        for s in srcs:
            if isinstance(s, RequestArg):
                args.append({f: ctx.get(f) for f in s.fields})
            else:
                vv = res[s.read].values
                args.append({n: (vv[i] if vv is not None else None) for n, i in zip(s.names, s.positions)})
        try:
            out = view(*args)
        except ContextStoreError:
            raise
        except Exception as e:
            raise InvalidInputError(
                f"realtime feature view {view.name!r} failed: {type(e).__name__}: {e}", field=view.name
            ) from None
        if not isinstance(out, Mapping):
            raise InvalidInputError(
                f"realtime feature view {view.name!r} must return a dict, got {type(out).__name__}", field=view.name
            )
        rt_out.append(out)
    if plan.groups is not None and shared is not None:
        return _assemble_fast(plan, keys, res, shared, t if single else None)
    values: dict[str, Any] = {}
    metadata: list[FeatureMetadata] = []
    if shared is None:
        effs = [
            us_to_datetime(r.effective_us) if r.values is not None and r.effective_us is not None else None for r in res
        ]
    else:
        effs = []
        for r in res:
            eff_us = r.effective_us if r.values is not None else None
            d = shared.get(eff_us)
            if d is None and eff_us is not None:
                d = shared[eff_us] = us_to_datetime(eff_us)
            effs.append(d)
    req_dt = us_to_datetime(t) if rt_out else None
    for i, (ri, vi, fname, name, dtype, vname) in enumerate(plan.specs):
        if ri < 0:
            v = rt_out[vi].get(fname)
            eff = req_dt
        else:
            vv = res[ri].values
            v = vv[vi] if vv is not None else None
            eff = effs[ri]
        values[name] = v
        if shared is None:
            metadata.append(FeatureMetadata(name, dtype, MISSING_DATA if v is None else PRESENT, eff, vname))
        else:
            mk = (plan.name, i, v is None, eff)  # memo is shared by every service
            m = shared.get(mk)
            if m is None:
                m = shared[mk] = FeatureMetadata(name, dtype, MISSING_DATA if v is None else PRESENT, eff, vname)
            metadata.append(m)
    return FeatureVector(values, metadata, keys, None)


def _assemble_fast(
    plan: Plan, keys: dict[str, Any], res: list[ViewValues], shared: dict[Any, Any], t: int | None = None
) -> FeatureVector:
    """Stored features only: values copied per read, metadata memoised (``meta_fast``)."""
    return FeatureVector(plan_values(plan, res), meta_fast(plan, res, shared, t), keys, None)


def meta_fast(plan: Plan, res: list[ViewValues], shared: dict[Any, Any], t: int | None = None) -> list[FeatureMetadata]:
    """Metadata memoised per (service, read, effective time, null pattern) -- FeatureMetadata objects
    are immutable. An effective time equal to the request time ``t`` (a continuous window ends at the
    request) is never seen again: such metadata is built, not memoised (memoising it filled the memo
    with garbage for the collector)."""
    meta: list[FeatureMetadata] = []
    eff_t: datetime | None = None
    assert plan.groups is not None
    for gi, (ri, _names, pick) in enumerate(plan.groups):
        r = res[ri]
        vv = r.values
        if vv is None:
            mk: tuple[Any, ...] = (plan.name, gi, None, None)
            sel: Any = None
        else:
            sel = vv if pick is None else pick(vv)
            nulls = tuple([x is None for x in sel]) if None in sel else True
            if r.effective_us == t and t is not None:
                tk = (plan.name, gi, "t", nulls)  # per request: only the effective time differs
                tmpl = shared.get(tk)
                if tmpl is None:
                    tmpl = shared[tk] = _group_meta(plan, gi, None, sel, shared)
                eff_t = eff_t or us_to_datetime(t)
                meta += [FeatureMetadata(m.name, m.data_type, m.status, eff_t, m.view) for m in tmpl]
                continue
            mk = (plan.name, gi, r.effective_us, nulls)
        m = shared.get(mk)
        if m is None:
            m = shared[mk] = _group_meta(plan, gi, None if vv is None else r.effective_us, sel, shared)
        meta += m
    return meta


def _group_meta(
    plan: Plan, gi: int, eff_us: int | None, sel: Any, shared: dict[Any, Any]
) -> tuple[FeatureMetadata, ...]:
    eff = None
    if eff_us is not None:
        eff = shared.get(eff_us)
        if eff is None:
            eff = shared[eff_us] = us_to_datetime(eff_us)
    assert plan.groups is not None
    ri = plan.groups[gi].read
    specs = [sp for sp in plan.specs if sp.read == ri]
    return tuple(
        FeatureMetadata(name, dtype, MISSING_DATA if sel is None or sel[j] is None else PRESENT, eff, vname)
        for j, (_, _, _, name, dtype, vname) in enumerate(specs)
    )
