"""Tecton-compatible feature serving: ``/api/v1/feature-service/{get-features,get-features-batch,metadata}``."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from ..errors import ContextStoreError
from ..serving.store import ContextStore
from ..types import MISSING_DATA, FeatureMetadata, FeatureVector
from . import schemas, tecton
from .errors import json_response, loads_body
from .state import ServerState

__all__ = ["tecton_router"]

PREFIX = "/api/v1/feature-service"


class BudgetExceeded(ContextStoreError):
    status = 504


def _missing(store: ContextStore, service: str) -> FeatureVector:
    """All features MISSING_DATA: the partial result when the latency budget ran out first."""
    defs = store.definitions
    svc = defs.feature_service(service)
    values: dict[str, Any] = {}
    meta: list[FeatureMetadata] = []
    for sel in svc.selections:
        types = defs.feature_types.get(sel.view.name, {})
        for f in sel.features:
            name = f"{sel.view.name}.{f}"
            values[name] = None
            t = types.get(f)
            meta.append(FeatureMetadata(name, t.describe() if t else {"type": "unknown"}, MISSING_DATA, None, sel.view.name))
    return FeatureVector(values, meta)


async def _with_budget(awaitable: Any, budget_ms: int | None) -> Any:
    if budget_ms is None:
        return await awaitable
    try:
        return await asyncio.wait_for(awaitable, budget_ms / 1000.0)
    except asyncio.TimeoutError:
        raise BudgetExceeded(f"latency budget of {budget_ms} ms exceeded; set allowPartialResults to get a partial "
                             "result", field="params.requestOptions.latencyBudgetMs") from None


def _slo(t0: float, store_s: float, eligible: bool = True) -> dict[str, Any]:
    server_s = time.perf_counter() - t0
    slo: dict[str, Any] = {"sloEligible": eligible, "sloServerTimeSeconds": server_s,
                           "serverTimeSeconds": server_s, "storeMaxLatency": store_s}
    if not eligible:
        slo["sloIneligibilityReasons"] = ["LATENCY_BUDGET_EXCEEDED"]
    return slo


def tecton_router(state: ServerState) -> APIRouter:
    router = APIRouter(prefix=PREFIX, tags=["tecton"], responses=schemas.ERROR_RESPONSES)
    metrics = state.metrics

    @router.post("/get-features", openapi_extra=schemas.body(schemas.GET_FEATURES))
    async def get_features(request: Request) -> Response:
        t0 = time.perf_counter()
        principal = state.authenticate(request)
        p = tecton.parse_get_features(loads_body(await request.body()))
        ws, store = state.store_for(principal, "read", p.workspace)
        eligible = True
        try:
            if p.latency_budget_ms is None:
                vec = await store.get_features_async(p.service, p.join_keys, p.request_context)
            else:
                # In a thread, so the budget holds even when a realtime view computes synchronously.
                vec = await _with_budget(
                    run_in_threadpool(store.get_features, p.service, p.join_keys, p.request_context),
                    p.latency_budget_ms,
                )
        except BudgetExceeded:
            if not p.allow_partial:
                raise
            vec, eligible = _missing(store, p.service), False
        store_s = time.perf_counter() - t0
        metrics.online_latency.labels(ws).observe(store_s)
        request.scope["cs.service"] = p.service
        if state.sample():
            metrics.observe_freshness(ws, vec.metadata)
        slo = _slo(t0, store_s, eligible) if p.meta.slo_info else None
        return json_response(tecton.encode_vector(vec, p.meta, slo))

    @router.post("/get-features-batch", openapi_extra=schemas.body(schemas.GET_FEATURES_BATCH))
    async def get_features_batch(request: Request) -> Response:
        t0 = time.perf_counter()
        principal = state.authenticate(request)
        p, keys, ctxs = tecton.parse_batch(loads_body(await request.body()), state.settings.max_batch_rows)
        ws, store = state.store_for(principal, "read", p.workspace)
        eligible = True
        try:
            vecs = await _with_budget(
                run_in_threadpool(store.get_features_batch, p.service, keys, ctxs), p.latency_budget_ms
            )
        except BudgetExceeded:
            if not p.allow_partial:
                raise
            vecs, eligible = [_missing(store, p.service) for _ in keys], False
        store_s = time.perf_counter() - t0
        metrics.online_latency.labels(ws).observe(store_s)
        request.scope["cs.service"] = p.service
        rows: list[dict[str, Any]] = []
        for v in vecs:
            row: dict[str, Any] = {"features": tecton.encode_values(v)}
            if p.meta.serving_status:
                row["metadata"] = {"features": [{"status": m.status} for m in v.metadata]}
            rows.append(row)
        meta: dict[str, Any] = {}
        if vecs:
            meta["features"] = tecton.encode_feature_metadata(vecs[0], p.meta, with_status=False)
        if p.meta.slo_info:
            meta["batchSloInfo"] = _slo(t0, store_s, eligible)
        return json_response({"result": rows, "metadata": meta})

    @router.post("/metadata", openapi_extra=schemas.body(schemas.METADATA))
    async def metadata(request: Request) -> Response:
        principal = state.authenticate(request)
        workspace, service = tecton.parse_metadata_request(loads_body(await request.body()))
        _, store = state.store_for(principal, "read", workspace)
        return json_response(await run_in_threadpool(lambda: tecton.service_metadata(store.definitions, service)))

    return router
