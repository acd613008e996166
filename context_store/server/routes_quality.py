"""``GET /v1/status/quality``: the stored data quality runs (read scope; the web console reads it).

Thin: ``ContextStore.quality_runs`` does the work (serving/quality.py, docs/data-quality.md).
"""

from __future__ import annotations

from fastapi import APIRouter, Query
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from ..limits import NAME_CHARS, QUALITY_RUNS, QUALITY_RUNS_DEFAULT
from . import schemas
from .errors import json_response
from .params import KNOWN_QUERY_PARAMS
from .state import ServerState

__all__ = ["quality_router"]


def quality_router(state: ServerState) -> APIRouter:
    router = APIRouter(
        prefix="/v1", tags=["status"], responses=schemas.ERROR_RESPONSES, dependencies=[KNOWN_QUERY_PARAMS]
    )

    @router.get("/status/quality")
    async def quality_status(
        request: Request,
        view: str | None = Query(None, max_length=NAME_CHARS, description="only this feature view"),
        stage: str | None = Query(
            None, pattern="^(backfill|materialize|stream)$", description="backfill, materialize or stream"
        ),
        limit: int = Query(QUALITY_RUNS_DEFAULT, ge=QUALITY_RUNS.lo, le=QUALITY_RUNS.hi, description="newest runs"),
        workspace: str | None = Query(None),
    ) -> Response:
        """Expectation runs (backfill, materialize, sampled stream), newest first, with each result."""
        principal = state.authenticate(request)
        ws, store = state.store_for(principal, "read", workspace)
        runs = await run_in_threadpool(store.quality_runs, view, stage, limit)
        return json_response({"workspace": ws, "runs": [r.to_dict() for r in runs]})

    return router
