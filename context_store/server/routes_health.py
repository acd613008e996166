"""Liveness, readiness (online store reachable) and Prometheus metrics."""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from ..vocab.redact import redact_text
from .errors import json_response
from .state import ServerState

__all__ = ["health_router"]


def health_router(state: ServerState) -> APIRouter:
    router = APIRouter(tags=["health"])

    @router.get("/healthz")
    async def healthz() -> Response:
        return json_response({"status": "ok"})

    @router.get("/readyz", responses={503: {"description": "online store unreachable"}})
    async def readyz() -> Response:
        t0 = time.perf_counter()
        try:
            opened = state.resolver.open_stores()
            store = opened[0] if opened else state.resolver(None)
            ok = await asyncio.wait_for(run_in_threadpool(store.ping), timeout=2.0)
            if not ok:
                raise ConnectionError("ping failed")
        except Exception as e:  # whatever the cause, the answer is "not ready" with the reason
            state.metrics.online_up.set(0)
            reason = "timed out" if isinstance(e, asyncio.TimeoutError) else redact_text(str(e)) or type(e).__name__
            return json_response({"ready": False, "message": f"online store unreachable: {reason}"}, 503)
        state.metrics.online_up.set(1)
        ping_ms = round((time.perf_counter() - t0) * 1000, 3)
        loading = store.vectors_loading()  # only once the server warmed (or used) them
        if loading is not None:
            return json_response({"ready": False, "message": "vector indexes are loading", "vectors": loading}, 503)
        return json_response({"ready": True, "online_store_ping_ms": ping_ms})

    @router.get("/metrics", include_in_schema=True)
    async def metrics(request: Request) -> Response:
        # In a thread: collect hooks talk to Redis.
        body, content_type = await run_in_threadpool(state.metrics.render, request.headers.get("accept"))
        return Response(body, media_type=content_type)

    return router
