"""``GET /v1/status/views``: per view freshness, its SLO and stream lag (read scope; the web console reads it).

Thin: ``ContextStore.view_status`` does the work (``serving/view_status.py``; docs/observability.md).
"""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Query
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from . import schemas
from .errors import json_response
from .params import KNOWN_QUERY_PARAMS
from .state import ServerState

__all__ = ["status_router"]


def status_router(state: ServerState) -> APIRouter:
    router = APIRouter(
        prefix="/v1/status", tags=["status"], responses=schemas.ERROR_RESPONSES, dependencies=[KNOWN_QUERY_PARAMS]
    )

    @router.get("/views")
    async def views(request: Request, workspace: str | None = Query(None)) -> Response:
        """Per view: freshness (now - newest event time applied online), expected freshness and whether it is
        breached, stream lag per partition (entries, seconds), late and rejected counts."""
        principal = state.authenticate(request)
        ws, store = state.store_for(principal, "read", workspace)
        now = datetime.now(UTC)
        rows = await run_in_threadpool(store.view_status, now.timestamp())
        return json_response({"workspace": ws, "now": now.isoformat(), "views": [r.to_dict() for r in rows]})

    return router
