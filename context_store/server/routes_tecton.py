"""Tecton-compatible feature serving: ``/api/v1/feature-service/{get-features,get-features-batch,metadata}``.

The handlers take the Authorization header and the raw body and return a JSON-ready object, so the
same code serves both the FastAPI routes (OpenAPI, fallback) and the ``fastpath`` dispatcher that
skips FastAPI's per-request machinery on the hot path.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from ..errors import ContextStoreError
from ..serving.feature_log import LogContext
from ..serving.store import ContextStore
from ..types import MISSING_DATA, FeatureMetadata, FeatureVector
from . import schemas, tecton
from .errors import json_response, loads_body
from .state import ServerState

__all__ = ["TectonHandlers", "tecton_router", "PREFIX", "Handler"]

PREFIX = "/api/v1/feature-service"
# (authorization header, raw body, scope) -> (JSON-ready response, feature service name)
Handler = Callable[[str | None, bytes, MutableMapping[str, Any]], Awaitable[Any]]


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
            meta.append(
                FeatureMetadata(name, t.describe() if t else {"type": "unknown"}, MISSING_DATA, None, sel.view.name)
            )
    return FeatureVector(values, meta)


async def _with_budget(awaitable: Any, budget_ms: int) -> Any:
    try:
        return await asyncio.wait_for(awaitable, budget_ms / 1000.0)
    except TimeoutError:
        raise BudgetExceeded(
            f"latency budget of {budget_ms} ms exceeded; set allowPartialResults to get a partial result",
            field="params.requestOptions.latencyBudgetMs",
        ) from None


def _slo(t0: float, store_s: float, eligible: bool = True) -> dict[str, Any]:
    server_s = time.perf_counter() - t0
    slo: dict[str, Any] = {
        "sloEligible": eligible,
        "sloServerTimeSeconds": server_s,
        "serverTimeSeconds": server_s,
        "storeMaxLatency": store_s,
    }
    if not eligible:
        slo["sloIneligibilityReasons"] = ["LATENCY_BUDGET_EXCEEDED"]
    return slo


class TectonHandlers:
    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.metrics = state.metrics
        self._schemas: dict[tuple[str, str, bool, bool], tuple[object, tecton.WireSchema]] = {}

    def _observe_store(self, ws: str, seconds: float) -> None:
        self.metrics.observe_online(ws, seconds)

    async def get_features(self, auth: str | None, body: bytes, scope: MutableMapping[str, Any]) -> Any:
        t0 = time.perf_counter()
        state = self.state
        principal = state.authenticate_header(auth)
        p = tecton.parse_get_features(loads_body(body))
        ws, store = state.store_for(principal, "read", p.workspace)
        defs = store.definitions  # before the read: a refresh during it makes the next request rebuild the schema
        eligible = True
        lc = LogContext(key_id=principal.key_id)  # the feature log's key id (a logged service only)
        try:
            if p.latency_budget_ms is None:
                vec = await store.get_features_async(
                    p.service, p.join_keys, p.request_context, subject=principal.subject, log_context=lc
                )
            else:
                store.definitions.feature_service(p.service)  # an unknown service is a 404, not a timeout
                # In a thread, so the budget holds even when a realtime view computes synchronously.
                vec = await _with_budget(
                    run_in_threadpool(
                        store.get_features,
                        p.service,
                        p.join_keys,
                        p.request_context,
                        subject=principal.subject,
                        log_context=lc,
                    ),
                    p.latency_budget_ms,
                )
        except BudgetExceeded:
            if not p.allow_partial:
                raise
            vec, eligible = _missing(store, p.service), False
        store_s = time.perf_counter() - t0
        self._observe_store(ws, store_s)
        scope["cs.service"] = p.service
        if state.sample():
            self.metrics.observe_freshness(ws, vec.metadata)
        slo = _slo(t0, store_s, eligible) if p.meta.slo_info else None
        if eligible and tecton.WireSchema.static(p.meta):
            return self._schema(ws, p, defs, vec).encode(vec, slo)
        return tecton.encode_vector(vec, p.meta, slo)

    def _schema(self, ws: str, p: tecton.GetFeaturesParams, defs: object, vec: FeatureVector) -> tecton.WireSchema:
        """The service's ``WireSchema``, rebuilt when the definitions it came from were replaced (a refresh)."""
        key = (ws, p.service, p.meta.names, p.meta.data_types)
        hit = self._schemas.get(key)
        if hit is not None and hit[0] is defs:
            return hit[1]
        if len(self._schemas) > 1024:  # bounded: service names come from requests
            self._schemas.clear()
        schema = tecton.WireSchema(vec, p.meta)
        self._schemas[key] = (defs, schema)
        return schema

    async def get_features_batch(self, auth: str | None, body: bytes, scope: MutableMapping[str, Any]) -> Any:
        t0 = time.perf_counter()
        state = self.state
        principal = state.authenticate_header(auth)
        p, keys, ctxs = tecton.parse_batch(loads_body(body), state.settings.max_batch_rows)
        ws, store = state.store_for(principal, "read", p.workspace)
        eligible = True
        if p.latency_budget_ms is not None:
            store.definitions.feature_service(p.service)  # an unknown service is a 404, not a timeout
        lc = LogContext(key_id=principal.key_id)
        call = run_in_threadpool(
            store.get_features_batch, p.service, keys, ctxs, subject=principal.subject, log_context=lc
        )
        try:
            vecs = await (call if p.latency_budget_ms is None else _with_budget(call, p.latency_budget_ms))
        except BudgetExceeded:
            if not p.allow_partial:
                raise
            vecs, eligible = [_missing(store, p.service) for _ in keys], False
        store_s = time.perf_counter() - t0
        self._observe_store(ws, store_s)
        scope["cs.service"] = p.service
        rows: list[dict[str, Any]] = []
        for v in vecs:
            row: dict[str, Any] = {"features": tecton.encode_values(v)}
            if p.meta.serving_status:
                row["metadata"] = {"features": [{"status": tecton.wire_status(m.status)} for m in v.metadata]}
            rows.append(row)
        meta: dict[str, Any] = {}
        if vecs:
            meta["features"] = tecton.encode_feature_metadata(vecs[0], p.meta, with_status=False)
        if p.meta.slo_info:
            meta["batchSloInfo"] = _slo(t0, store_s, eligible)
        return {"result": rows, "metadata": meta}

    async def metadata(self, auth: str | None, body: bytes, scope: MutableMapping[str, Any]) -> Any:
        principal = self.state.authenticate_header(auth)
        workspace, service = tecton.parse_metadata_request(loads_body(body))
        _, store = self.state.store_for(principal, "read", workspace)
        out = await run_in_threadpool(lambda: tecton.service_metadata(store.definitions, service))
        scope["cs.service"] = service
        return out

    def routes(self) -> dict[tuple[str, str], Handler]:
        """``(method, path) -> handler`` for the fast-path dispatcher."""
        return {
            ("POST", PREFIX + "/get-features"): self.get_features,
            ("POST", PREFIX + "/get-features-batch"): self.get_features_batch,
            ("POST", PREFIX + "/metadata"): self.metadata,
        }


def tecton_router(handlers: TectonHandlers) -> APIRouter:
    """The same handlers as FastAPI routes: they document the API (OpenAPI) and serve if the fast path is off."""
    router = APIRouter(prefix=PREFIX, tags=["tecton"], responses=schemas.ERROR_RESPONSES)

    def route(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            return json_response(
                await handler(request.headers.get("authorization"), await request.body(), request.scope)
            )

        return endpoint

    router.add_api_route(
        "/get-features",
        route(handlers.get_features),
        methods=["POST"],
        name="get_features",
        summary="Feature values of one entity (Tecton API)",
        openapi_extra=schemas.body(schemas.GET_FEATURES),
    )
    router.add_api_route(
        "/get-features-batch",
        route(handlers.get_features_batch),
        methods=["POST"],
        name="get_features_batch",
        summary="Feature values of many entities (Tecton API)",
        openapi_extra=schemas.body(schemas.GET_FEATURES_BATCH),
    )
    router.add_api_route(
        "/metadata",
        route(handlers.metadata),
        methods=["POST"],
        name="feature_service_metadata",
        summary="Join keys, request context and features of a feature service (Tecton API)",
        openapi_extra=schemas.body(schemas.METADATA),
    )
    return router
