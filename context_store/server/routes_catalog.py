"""The catalog: ``GET /v1/catalog``, ``GET /v1/catalog/search``, ``GET /v1/catalog/{name}`` (read scope).

Thin: ``ContextStore.catalog`` / ``search_catalog`` / ``describe`` do the work (``serving/catalog.py``); the
shapes are the contract of docs/catalog.md, which the web console reads.
"""

from __future__ import annotations

from fastapi import APIRouter, Path, Query
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from ..limits import CATALOG_K, CATALOG_K_DEFAULT, CONTEXT_QUERY_CHARS, NAME_CHARS
from ..serving.catalog import KINDS
from . import schemas
from .errors import json_response
from .params import KNOWN_QUERY_PARAMS
from .state import ServerState

__all__ = ["catalog_router"]

_KIND = "one of: " + ", ".join(KINDS)
_KIND_PATTERN = "^(" + "|".join(KINDS) + ")$"


def catalog_router(state: ServerState) -> APIRouter:
    router = APIRouter(
        prefix="/v1", tags=["catalog"], responses=schemas.ERROR_RESPONSES, dependencies=[KNOWN_QUERY_PARAMS]
    )

    @router.get("/catalog", responses=schemas.ok(schemas.CATALOG_LIST))
    async def list_catalog(
        request: Request,
        kind: str | None = Query(None, pattern=_KIND_PATTERN, description=_KIND),
        tag: str | None = Query(None, max_length=NAME_CHARS * 4, pattern=r"^\s*[^=\s]", description="KEY or KEY=VALUE"),
        workspace: str | None = Query(None),
    ) -> Response:
        """Every definition of the workspace (or those of one kind / with one tag), with one hop of lineage."""
        principal = state.authenticate(request)
        _, store = state.store_for(principal, "read", workspace)
        items = await run_in_threadpool(store.catalog, kind, tag)
        return json_response({"workspace": store.workspace, "items": [i.to_dict() for i in items]})

    @router.get("/catalog/search", responses=schemas.ok(schemas.CATALOG_SEARCH))
    async def search_catalog(
        request: Request,
        q: str = Query(..., min_length=1, max_length=CONTEXT_QUERY_CHARS, description="words to look for"),
        k: int = Query(CATALOG_K_DEFAULT, ge=CATALOG_K.lo, le=CATALOG_K.hi, description=f"how many ({CATALOG_K})"),
        workspace: str | None = Query(None),
    ) -> Response:
        """Definitions matching the words: names, descriptions, tags, feature names; semantic with the
        workspace's embedder (lexical only when it declares none). Best first, scores in [0, 1]."""
        principal = state.authenticate(request)
        _, store = state.store_for(principal, "read", workspace)
        hits = await run_in_threadpool(store.search_catalog, q, k)  # may embed: off the event loop
        return json_response({"workspace": store.workspace, "query": q, "items": [h.to_dict() for h in hits]})

    @router.get("/catalog/{name}", responses=schemas.ok(schemas.CATALOG_DESCRIBE))
    async def describe(
        request: Request,
        name: str = Path(..., max_length=NAME_CHARS, description="a definition's name"),
        kind: str | None = Query(None, pattern=_KIND_PATTERN, description=f"when kinds share the name; {_KIND}"),
        workspace: str | None = Query(None),
    ) -> Response:
        """One definition: its item, spec, features and the full lineage chain. 404 when unknown."""
        principal = state.authenticate(request)
        _, store = state.store_for(principal, "read", workspace)
        item = await run_in_threadpool(store.describe, name, kind)
        return json_response(item.describe_dict())

    return router
