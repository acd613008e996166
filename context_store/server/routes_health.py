"""Liveness, readiness (online store reachable) and Prometheus metrics."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from ..errors import DeploymentConflictError
from ..vocab.redact import redact_text
from .auth import authorize
from .errors import json_response
from .state import ServerState
from .supervise import worker_health

__all__ = ["health_router"]

# Both exposition formats the route negotiates (by Accept), documented so clients and the
# conformance run know the content types.
_TEXT: dict[str, Any] = {"schema": {"type": "string"}}
_METRICS_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Prometheus text exposition, or OpenMetrics when the Accept header asks for it",
        "content": {"text/plain": _TEXT, "application/openmetrics-text": _TEXT},
    },
    401: {"description": "no API key"},
    403: {"description": "the key lacks the metrics scope"},
}


async def _missing_state(stores: list[Any]) -> str:
    """Why the online state cannot answer (views never materialized, or state lost), or ""."""
    parts = []
    for store in stores:
        try:
            views = await asyncio.wait_for(run_in_threadpool(store.missing_online_state), timeout=2.0)
        except Exception as e:  # noqa: BLE001 - reported like any other cause
            reason = "timed out" if isinstance(e, asyncio.TimeoutError) else redact_text(str(e)) or type(e).__name__
            return f"online state markers unreadable: {reason}"
        if views:
            parts.append(f"workspace '{store.workspace}': {', '.join(views)}")
    if not parts:
        return ""
    return (
        f"online state for views {'; '.join(parts)} is missing (never materialized, or the online store "
        "lost it); run `context-store materialize --full`"
    )


async def _out_of_slo(stores: list[Any]) -> list[dict[str, Any]]:
    """Views staler than their ``expected_freshness`` (``ContextStore.view_status``); [] when unreadable:
    the checks above already reported an unreachable store."""
    out = []
    for store in stores:
        try:
            defs = store.definitions
            views = (*defs.feature_views.values(), *defs.embedding_views.values())
            if not any(getattr(v, "expected_freshness", None) for v in views):
                continue  # no SLO to check: a probe costs nothing more
            rows = await asyncio.wait_for(run_in_threadpool(store.view_status), timeout=2.0)
        except Exception:  # noqa: BLE001
            continue
        out += [
            {
                "workspace": store.workspace,
                "view": r.view,
                "freshness_seconds": r.freshness_seconds,
                "expected_freshness_seconds": r.expected_freshness_seconds,
            }
            for r in rows
            if r.slo_breached
        ]
    return out


def health_router(state: ServerState) -> APIRouter:
    router = APIRouter(tags=["health"])

    @router.get("/healthz")
    async def healthz() -> Response:
        return json_response({"status": "ok"})

    @router.get(
        "/readyz",
        responses={503: {"description": "online store unreachable, online state missing, or vector indexes loading"}},
    )
    async def readyz() -> Response:
        t0 = time.perf_counter()
        try:
            opened = state.resolver.open_stores()
            store = opened[0] if opened else state.resolver(None)
            ok = await asyncio.wait_for(run_in_threadpool(store.ping), timeout=2.0)
            if not ok:
                raise ConnectionError("ping failed")
        except DeploymentConflictError as e:  # reachable, but another deployment's namespace: never serve it
            return json_response({"ready": False, "message": redact_text(e.message)}, 503)
        except Exception as e:  # whatever the cause, the answer is "not ready" with the reason
            state.metrics.online_up.set(0)
            reason = "timed out" if isinstance(e, asyncio.TimeoutError) else redact_text(str(e)) or type(e).__name__
            return json_response({"ready": False, "message": f"online store unreachable: {reason}"}, 503)
        state.metrics.online_up.set(1)
        ping_ms = round((time.perf_counter() - t0) * 1000, 3)
        loading = store.vectors_loading()  # only once the server warmed (or used) them
        if loading is not None:
            return json_response({"ready": False, "message": "vector indexes are loading", "vectors": loading}, 503)
        missing = await _missing_state(opened or [store])
        if missing:
            return json_response({"ready": False, "message": missing}, 503)
        # Reported, not failing readiness unless configured (``ready_requires_fresh``): see docs/observability.md.
        stale = await _out_of_slo(opened or [store])
        detail: dict[str, Any] = {"views_out_of_slo": stale} if stale else {}
        if stale and state.settings.ready_requires_fresh:
            names = ", ".join(f"{v['workspace']}/{v['view']}" for v in stale)
            return json_response({"ready": False, "message": f"views out of freshness SLO: {names}", **detail}, 503)
        workers = worker_health()  # None unless ``serve`` supervises stream worker processes
        if workers is None:
            return json_response({"ready": True, "online_store_ping_ms": ping_ms, **detail})
        if workers.alive == 0:  # pushes still apply (the pusher drains), but nothing consumes the streams
            body = {"ready": False, "message": "no stream worker process is alive", "workers": workers.to_dict()}
            return json_response({**body, **detail}, 503)
        return json_response({"ready": True, "online_store_ping_ms": ping_ms, "workers": workers.to_dict(), **detail})

    @router.get("/metrics", include_in_schema=True, response_class=PlainTextResponse, responses=_METRICS_DOC)
    async def metrics(request: Request) -> Response:
        # Metric labels name workspaces, services and views: a key with the metrics scope (or admin) reads
        # them, unless the operator chose ``serve --public-metrics``. With auth off (loopback) it is open.
        if not state.settings.public_metrics:
            authorize(state.authenticate(request), "metrics", None)
        # In a thread: collect hooks talk to Redis.
        body, content_type = await run_in_threadpool(state.metrics.render, request.headers.get("accept"))
        return Response(body, media_type=content_type)

    return router
