"""``DELETE /v1/entities/{entity}/{id}``: forget an entity (right to erasure; admin scope).

Thin: ``ContextStore.forget_entity`` does the work and the audit (docs/erasure.md). Not an MCP tool.
"""

from __future__ import annotations

from fastapi import APIRouter, Path, Query
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from ..limits import ENTITY_ID_CHARS, NAME_CHARS, NO_CONTROL_PATTERN
from . import schemas
from .errors import json_response
from .state import ServerState

__all__ = ["forget_router"]


def forget_router(state: ServerState) -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["governance"], responses=schemas.ERROR_RESPONSES)

    @router.delete("/entities/{entity}/{entity_id}")
    async def forget_entity(
        request: Request,
        entity: str = Path(..., max_length=NAME_CHARS, description="entity definition name, e.g. `user`"),
        entity_id: str = Path(
            ..., max_length=ENTITY_ID_CHARS, pattern=NO_CONTROL_PATTERN, description="the value of its join key"
        ),
        workspace: str | None = Query(None),
    ) -> Response:
        """Erase the entity from the offline, online and vector stores; returns the counts per store."""
        principal = state.authenticate(request)
        _, store = state.store_for(principal, "admin", workspace)
        actor = f"key:{principal.key_id}" if principal.key_id else "rest:anonymous"
        result = await run_in_threadpool(store.forget_entity, entity, entity_id, actor=actor)
        return json_response(result.to_dict())

    return router
