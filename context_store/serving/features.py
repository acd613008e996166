"""The online read path: ``FeatureServer.get_features`` with precompiled per-service plans.

A plan is compiled once per feature service (first use): which (view, entity key) reads to
issue, which values go to which output names, the realtime views to run and the request
fields to check. A request is then: validate keys -> one ``online.read_features`` (one round
trip) -> assemble (``feature_assembly.py``). No registry work per request.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from ..definitions import DType, FeatureSelection, FeatureService, FeatureView, RealtimeFeatureView, RequestSource
from ..errors import InvalidInputError
from ..registry.repo import RepoDefinitions
from ..state.codec import KEY_SEP
from ..state.tiles import ViewState
from ..stores.online.base import OnlineStore, ViewValues
from ..types import FeatureMetadata, FeatureVector, LazyFeatureVector
from ..vocab.time import checked_seconds_us, checked_us, parse_iso, us_to_datetime
from .coverage import Coverage, PlanCover
from .feature_assembly import assemble, meta_fast
from .feature_log import FeatureLogWriter, LogContext
from .feature_plans import (
    Meta,
    Output,
    Plan,
    Read,
    RequestArg,
    Spec,
    ViewArg,
    feature_dtype,
    groups,
    plan_values,
)

__all__ = ["FeatureServer", "to_us"]

_INT = re.compile(r"^-?\d{1,19}$")


def to_us(t: datetime | str | float | None) -> int:
    """A request time (datetime, ISO string, epoch seconds) -> µs since epoch, UTC; None -> now."""
    if t is None:
        return time.time_ns() // 1000
    if isinstance(t, str):
        try:
            t = parse_iso(t)
        except ValueError:
            raise InvalidInputError(
                f"request_time {t!r:.80} is not an ISO-8601 timestamp", field="request_time"
            ) from None
    if isinstance(t, datetime):
        return checked_us(t, "request_time")
    if isinstance(t, (int, float)) and not isinstance(t, bool):
        return checked_seconds_us(t, "request_time")
    raise InvalidInputError(
        f"request_time must be a datetime or ISO string, got {type(t).__name__}", field="request_time"
    )


class FeatureServer:
    """``FeatureServer(defs, online).get_features("fraud", {"user_id": "u1"})``."""

    def __init__(self, defs: RepoDefinitions, online: OnlineStore, feature_log: FeatureLogWriter | None = None) -> None:
        self.defs = defs
        self.online = online
        self.feature_log = feature_log  # logged services enqueue what they serve (``feature_log.py``)
        self._plans: dict[str, Plan] = {}
        self._view_plans: dict[str, Plan] = {}  # one view's features (``get_view_features``)
        self._states: dict[str, ViewState] = {}
        self._lock = threading.Lock()
        self._memo: dict[Any, Any] = {}
        # What the online state holds per view: features it lacks are NOT_MATERIALIZED, never zeros.
        self.coverage = Coverage(defs, online, self.state)

    # -- compilation --------------------------------------------------------------------
    def state(self, view: FeatureView) -> ViewState:
        st = self._states.get(view.name)
        if st is None:
            st = self._states[view.name] = ViewState(view, self.defs.input_schemas.get(view.name, {}))
        return st

    def plan(self, service: str) -> Plan:
        p = self._plans.get(service)
        if p is None:
            if not isinstance(service, str):
                raise InvalidInputError(
                    f"feature_service must be a name, got {type(service).__name__}", field="feature_service"
                )
            svc = self.defs.feature_service(service)  # NotFoundError naming the known services
            with self._lock:
                p = self._plans[service] = self._compile(svc)
        return p

    def _compile(self, svc: Any) -> Plan:
        reads: list[Read] = []
        read_idx: dict[str, int] = {}
        join_keys: dict[str, DType] = {}

        def use(view: FeatureView) -> int:
            if view.name not in read_idx:
                read_idx[view.name] = len(reads)
                reads.append(Read(self.state(view), tuple(view.join_keys)))
                for f in view.join_key_fields:
                    join_keys.setdefault(f.name, f.dtype)
            return read_idx[view.name]

        outputs: list[Output] = []
        names: list[str] = []
        meta: list[Meta] = []
        dtypes: list[DType | None] = []  # typed columns of the feature log
        realtimes: list[tuple[RealtimeFeatureView, list[RequestArg | ViewArg]]] = []
        req_fields: dict[str, DType] = {}
        for sel in svc.selections:
            view = sel.view
            types = self.defs.feature_types.get(view.name, {})
            if isinstance(view, RealtimeFeatureView):
                srcs: list[RequestArg | ViewArg] = []
                for s in view.sources:
                    if isinstance(s, RequestSource):
                        for f in s.schema or ():
                            req_fields[f.name] = f.dtype
                        srcs.append(RequestArg([f.name for f in s.schema or ()]))
                    else:
                        fv = s.view if isinstance(s, FeatureSelection) else s
                        fnames = list(s.features) if isinstance(s, FeatureSelection) else fv.feature_names
                        ri = use(fv)
                        srcs.append(ViewArg(ri, fnames, [fv.feature_names.index(n) for n in fnames]))
                ri_rt = len(realtimes)
                realtimes.append((view, srcs))
                out_types = {f.name: f.dtype for f in view.output}
                for fname in sel.features:
                    outputs.append(Output(-1, ri_rt, fname))
                    nm = f"{view.name}.{fname}"
                    names.append(nm)
                    meta.append(Meta(nm, out_types[fname].describe(), view.name))
                    dtypes.append(out_types[fname])
            else:
                ri = use(view)
                st = reads[ri].state
                for fname in sel.features:
                    outputs.append(Output(ri, view.feature_names.index(fname), fname))
                    nm = f"{view.name}.{fname}"
                    names.append(nm)
                    dt = types.get(fname) or feature_dtype(st, fname)
                    meta.append(Meta(nm, dt.describe() if dt is not None else {"type": "unknown"}, view.name))
                    dtypes.append(dt)
        specs = [Spec(o.read, o.pos, o.feature, m.name, m.dtype, m.view) for o, m in zip(outputs, meta)]
        single = bool(reads) and all(r.join_keys == reads[0].join_keys for r in reads)
        p = Plan(svc.name, join_keys, reads, outputs, names, meta, realtimes, req_fields, specs, single)
        p.groups = groups(p)
        if svc.logging is not None and self.feature_log is not None:
            p.log = self.feature_log.service_log(svc, join_keys, dtypes)
        return p

    # -- validation ---------------------------------------------------------------------
    def _keys(self, plan: Plan, join_keys: Any) -> dict[str, Any]:
        if not isinstance(join_keys, Mapping):
            raise InvalidInputError(
                f"join_keys must be an object of join key -> value, got {type(join_keys).__name__}", field="join_keys"
            )
        out: dict[str, Any] = {}
        for k, dt in plan.join_keys.items():
            if k not in join_keys:
                raise InvalidInputError(
                    f"missing join key {k!r} for feature service {plan.name!r} (needs {', '.join(plan.join_keys)})",
                    field=f"join_keys.{k}",
                )
            v = join_keys[k]
            if dt.name == "int64":
                if isinstance(v, str) and _INT.match(v):
                    v = int(v)
                elif not isinstance(v, int) or isinstance(v, bool):
                    raise InvalidInputError(
                        f"join key {k!r} must be an int64, got {type(v).__name__} {v!r}", field=f"join_keys.{k}"
                    )
            elif not isinstance(v, str):
                raise InvalidInputError(
                    f"join key {k!r} must be a string, got {type(v).__name__} {v!r}", field=f"join_keys.{k}"
                )
            out[k] = v
        if len(join_keys) != len(out):
            extra = sorted(set(join_keys) - set(out), key=str)
            raise InvalidInputError(
                f"unexpected join key {extra[0]!r} for feature service {plan.name!r} "
                f"(it needs {', '.join(plan.join_keys) or 'none'})",
                field=f"join_keys.{extra[0]}",
            )
        return out

    def _context(self, plan: Plan, ctx: Any) -> Mapping[str, Any]:
        if not plan.request_fields:
            return ctx or {}
        if ctx is None:
            ctx = {}
        if not isinstance(ctx, Mapping):
            raise InvalidInputError(
                f"request_context must be an object, got {type(ctx).__name__}", field="request_context"
            )
        for name, dt in plan.request_fields.items():
            if name not in ctx or ctx[name] is None:
                raise InvalidInputError(
                    f"missing request context field {name!r} for feature service {plan.name!r}",
                    field=f"request_context.{name}",
                )
            if not dt.accepts(ctx[name]):
                raise InvalidInputError(
                    f"request context field {name!r} must be {dt.name}, got {type(ctx[name]).__name__} {ctx[name]!r}",
                    field=f"request_context.{name}",
                )
        return ctx

    # -- reads --------------------------------------------------------------------------
    def _reads(self, plan: Plan, keys: dict[str, Any], cov: PlanCover | None = None) -> list[tuple[ViewState, str]]:
        if cov is not None:
            return [
                (st, KEY_SEP.join(f"{k}={keys[k]}" for k in r.join_keys)) for st, r in zip(cov.states(plan), plan.reads)
            ]
        return [(r.state, KEY_SEP.join(f"{k}={keys[k]}" for k in r.join_keys)) for r in plan.reads]

    def _cover(self, plan: Plan) -> PlanCover | None:
        """None when the online state holds every view of ``plan`` (a clock read per request)."""
        c = self.coverage
        c.refresh_if_due()
        return c.plan_cover(plan) if c.gaps else None

    def _lazy_meta(self, arg: tuple[Plan, list[ViewValues], int]) -> list[FeatureMetadata]:
        """``LazyFeatureVector``'s builder: the metadata ``feature_assembly.meta_fast`` builds, when first read."""
        plan, res, t = arg
        return meta_fast(plan, res, self._shared(), t)

    def get_features(
        self,
        service: str,
        join_keys: Mapping[str, Any],
        request_context: Mapping[str, Any] | None = None,
        request_time: datetime | str | None = None,
        *,
        log_context: LogContext | None = None,
    ) -> FeatureVector:
        plan, keys, ctx, t = self._prepare(service, join_keys, request_context, request_time)
        cov = self._cover(plan)
        res = self.online.read_features(self._reads(plan, keys, cov), t)
        fv = self._finish(plan, keys, ctx, res, t, request_time, cov)
        if plan.log is not None:
            plan.log.record(fv, ctx, t, log_context)
        return fv

    def get_view_features(
        self, view: FeatureView, join_keys: Mapping[str, Any], request_time: datetime | str | None = None
    ) -> FeatureVector:
        """Every feature of one view, no feature service needed (what a write changed: ``record.py``)."""
        plan = self._view_plan(view)
        keys, t = self._keys(plan, join_keys), to_us(request_time)
        cov = self._cover(plan)
        res = self.online.read_features(self._reads(plan, keys, cov), t)
        return self._finish(plan, keys, {}, res, t, request_time, cov)

    def _view_plan(self, view: FeatureView) -> Plan:
        plan = self._view_plans.get(view.name)
        if plan is None:
            with self._lock:
                plan = self._compile(FeatureService(view.name, [view]))
                plan.name = f"view:{view.name}"  # coverage and the memo key plans by name: never a service's
                self._view_plans[view.name] = plan
        return plan

    def get_view_features_batch(
        self, view: FeatureView, join_keys: Sequence[Mapping[str, Any]], request_time: datetime | str | None = None
    ) -> list[FeatureVector]:
        """Every feature of one view for many entities, one round trip (re-ranking candidates by live values)."""
        return self.get_features_batch(self._view_plan(view), join_keys, None, request_time)

    def _prepare(
        self, service: str, join_keys: Mapping[str, Any], request_context: Mapping[str, Any] | None, request_time: Any
    ) -> tuple[Plan, Any, Any, int]:
        """Validate the request against the service's compiled plan (shared by sync and async)."""
        plan = self.plan(service)
        return plan, self._keys(plan, join_keys), self._context(plan, request_context), to_us(request_time)

    def _finish(
        self, plan: Plan, keys: Any, ctx: Any, res: Any, t: int, request_time: Any, cov: PlanCover | None = None
    ) -> FeatureVector:
        if cov is None and plan.groups is not None:
            # The common lookup: values now, metadata and the request time only if read (the wire
            # response of get-features carries neither unless asked for).
            rt = request_time if isinstance(request_time, datetime) else None
            return LazyFeatureVector(plan_values(plan, res), keys, self._lazy_meta, (plan, res, t), rt, t)
        if cov is not None:
            res = cov.fix(plan, res)
        fv = assemble(plan, keys, ctx, res, t, self._shared(), single=True)
        if cov is not None:
            cov.mark(plan, fv)
        fv.request_time = request_time if isinstance(request_time, datetime) else us_to_datetime(t)
        return fv

    def _shared(self) -> dict[Any, Any]:
        """Immutable metadata/effective times reused across requests (bounded)."""
        if len(self._memo) > 8192:
            self._memo = {}
        return self._memo

    async def get_features_async(
        self,
        service: str,
        join_keys: Mapping[str, Any],
        request_context: Mapping[str, Any] | None = None,
        request_time: datetime | str | None = None,
        *,
        log_context: LogContext | None = None,
    ) -> FeatureVector:
        plan, keys, ctx, t = self._prepare(service, join_keys, request_context, request_time)
        cov = self._cover(plan)
        res = await self.online.read_features_async(self._reads(plan, keys, cov), t)
        fv = self._finish(plan, keys, ctx, res, t, request_time, cov)
        if plan.log is not None:
            plan.log.record(fv, ctx, t, log_context)
        return fv

    def _batch_prepare(
        self, service: str | Plan, join_keys: Sequence[Mapping[str, Any]], request_context: Any
    ) -> tuple[Plan, list[dict[str, Any]], list[Mapping[str, Any]], list[tuple[ViewState, str]], PlanCover | None]:
        plan = service if isinstance(service, Plan) else self.plan(service)
        cov = self._cover(plan)
        if isinstance(join_keys, Mapping) or not isinstance(join_keys, Sequence):
            raise InvalidInputError("join_keys must be a list of join key objects", field="join_keys")
        if request_context is None or isinstance(request_context, Mapping):
            ctxs_in = [request_context] * len(join_keys)
        elif isinstance(request_context, Sequence) and len(request_context) == len(join_keys):
            ctxs_in = list(request_context)
        else:
            raise InvalidInputError(
                "request_context must be one object or a list with one object per entity", field="request_context"
            )
        keys_l, ctxs, reads = [], [], []
        for i, (jk, c) in enumerate(zip(join_keys, ctxs_in)):
            try:
                keys = self._keys(plan, jk)
                ctxs.append(self._context(plan, c))
            except InvalidInputError as e:
                raise InvalidInputError(f"entity {i}: {e.message}", field=f"[{i}].{e.field}") from None
            keys_l.append(keys)
            reads.extend(self._reads(plan, keys, cov))
        return plan, keys_l, ctxs, reads, cov

    def get_features_batch(
        self,
        service: str | Plan,
        join_keys: Sequence[Mapping[str, Any]],
        request_context: Sequence[Mapping[str, Any]] | Mapping[str, Any] | None = None,
        request_time: datetime | str | None = None,
        *,
        log_context: LogContext | None = None,
    ) -> list[FeatureVector]:
        """Many entities, one round trip (``service``: a name, or a compiled plan such as a view's)."""
        plan, keys_l, ctxs, reads, cov = self._batch_prepare(service, join_keys, request_context)
        t = to_us(request_time)
        if plan.single_key and hasattr(self.online, "read_entities"):
            states = cov.states(plan) if cov is not None else [r.state for r in plan.reads]
            per = self.online.read_entities(states, [k for _, k in reads[:: len(plan.reads)]], t)
            res = [v for vs in per for v in vs]
        else:
            res = self.online.read_features(reads, t) if reads else []
        return self._split(plan, keys_l, ctxs, res, t, cov, log_context)

    async def get_features_batch_async(
        self,
        service: str,
        join_keys: Sequence[Mapping[str, Any]],
        request_context: Sequence[Mapping[str, Any]] | Mapping[str, Any] | None = None,
        request_time: datetime | str | None = None,
        *,
        log_context: LogContext | None = None,
    ) -> list[FeatureVector]:
        plan, keys_l, ctxs, reads, cov = self._batch_prepare(service, join_keys, request_context)
        t = to_us(request_time)
        if plan.single_key and hasattr(self.online, "read_entities_async"):
            states = cov.states(plan) if cov is not None else [r.state for r in plan.reads]
            per = await self.online.read_entities_async(states, [k for _, k in reads[:: len(plan.reads)]], t)
            res = [v for vs in per for v in vs]
        else:
            res = await self.online.read_features_async(reads, t) if reads else []
        return self._split(plan, keys_l, ctxs, res, t, cov, log_context)

    def _split(
        self,
        plan: Plan,
        keys_l: list[dict[str, Any]],
        ctxs: list[Mapping[str, Any]],
        res: list[ViewValues],
        t: int,
        cov: PlanCover | None = None,
        log_context: LogContext | None = None,
    ) -> list[FeatureVector]:
        n = len(plan.reads)
        rt = us_to_datetime(t)
        shared = self._shared()
        out = []
        for i, (keys, ctx) in enumerate(zip(keys_l, ctxs)):
            part = res[i * n : (i + 1) * n]
            fv = assemble(plan, keys, ctx, part if cov is None else cov.fix(plan, part), t, shared)
            if cov is not None:
                cov.mark(plan, fv)
            fv.request_time = rt
            out.append(fv)
        if plan.log is not None:
            plan.log.record_batch(out, ctxs, t, log_context)
        return out
