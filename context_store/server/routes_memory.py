"""Agent memory endpoints: ``POST /v1/memories``, ``GET /v1/memories/search``, ``DELETE /v1/memories/{id}``.

Thin: validation of the wire shape here, everything else in ``ContextStore`` (which enforces the
caller's subject). Writes need the ``ingest`` scope, search ``read``.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Path, Query
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from ..errors import InvalidInputError
from ..limits import (
    CONTEXT_QUERY_CHARS,
    ENTITY_ID_CHARS,
    MEMORY_ID_CHARS,
    MEMORY_ID_PATTERN,
    MEMORY_K,
    MEMORY_K_DEFAULT,
    MEMORY_KIND_CHARS,
    MEMORY_TEXT_CHARS,
)
from . import schemas
from .errors import json_response, loads_object
from .params import KNOWN_QUERY_PARAMS
from .state import ServerState

__all__ = ["memory_router", "REMEMBER"]

REMEMBER: dict[str, Any] = {
    "type": "object",
    "required": ["text"],
    "additionalProperties": False,
    "properties": {
        "text": {"type": "string", "minLength": 1, "maxLength": MEMORY_TEXT_CHARS, "pattern": r"\S"},
        "entity_id": {"type": ["string", "integer"], "maxLength": ENTITY_ID_CHARS},
        "kind": {"type": "string", "minLength": 1, "maxLength": MEMORY_KIND_CHARS},
        "metadata": {"type": "object", "description": "JSON object, at most MEMORY_METADATA_BYTES as JSON"},
        "workspace": {"type": "string"},
    },
}
_FIELDS = set(REMEMBER["properties"])


def memory_router(state: ServerState) -> APIRouter:
    router = APIRouter(
        prefix="/v1", tags=["memory"], responses=schemas.ERROR_RESPONSES, dependencies=[KNOWN_QUERY_PARAMS]
    )

    @router.post("/memories", openapi_extra=schemas.body(REMEMBER))
    async def remember(request: Request) -> Response:
        principal = state.authenticate(request)
        body = loads_object(await request.body())
        unknown = sorted(set(body) - _FIELDS)
        if unknown:
            raise InvalidInputError(
                f"unknown field {unknown[0]!r}; known: {', '.join(sorted(_FIELDS))}", field=unknown[0]
            )
        ws = body.get("workspace")
        _, store = state.store_for(principal, "ingest", ws if isinstance(ws, str) else None)
        rec = await run_in_threadpool(
            lambda: store.remember(
                body.get("text"),  # type: ignore[arg-type]  # checked by serving (400 naming the field)
                body.get("entity_id"),
                body.get("kind"),
                body.get("metadata"),
                subject=principal.subject,
                written_by=principal.key_id,
            )
        )
        return json_response(rec.to_dict(), status=200 if rec.deduplicated else 201)

    @router.get("/memories/search")
    async def search(
        request: Request,
        q: str = Query(..., min_length=1, max_length=CONTEXT_QUERY_CHARS, description="what to look for"),
        entity_id: str | None = Query(None, max_length=ENTITY_ID_CHARS, description="default: the token's subject"),
        k: int = Query(MEMORY_K_DEFAULT, ge=MEMORY_K.lo, le=MEMORY_K.hi, description=f"how many ({MEMORY_K})"),
        workspace: str | None = Query(None),
    ) -> Response:
        principal = state.authenticate(request)
        _, store = state.store_for(principal, "read", workspace)
        res = await run_in_threadpool(store.search_memories, q, entity_id, k, subject=principal.subject)
        return json_response(res.to_dict())

    @router.delete("/memories/{memory_id}")
    async def forget(
        request: Request,
        memory_id: str = Path(..., min_length=1, max_length=MEMORY_ID_CHARS, pattern=MEMORY_ID_PATTERN),
        workspace: str | None = Query(None),
    ) -> Response:
        if len(memory_id) > MEMORY_ID_CHARS:
            raise InvalidInputError(f"memory_id must be at most {MEMORY_ID_CHARS} characters", field="memory_id")
        principal = state.authenticate(request)
        _, store = state.store_for(principal, "ingest", workspace)
        await run_in_threadpool(store.forget_memory, memory_id, subject=principal.subject)
        return json_response({"id": memory_id, "forgotten": True})

    return router
