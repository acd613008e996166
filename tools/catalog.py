"""The MCP ``search_features`` tool: find features, views and services of this workspace by what they mean.

Thin over ``ContextStore.search_catalog`` (``serving/catalog.py``); the items are those of
``GET /v1/catalog/search``. Read-only (``read`` scope, the default of ``scopes.REQUIRED_SCOPE``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Annotated

from mcp.server import MCPServer
from mcp.server.mcpserver import Context
from pydantic import BaseModel, ConfigDict, Field

from context_store import ContextStore
from context_store.limits import CATALOG_K, CATALOG_K_DEFAULT, CONTEXT_QUERY_CHARS

from .server import _READ, _errors, _run

__all__ = ["register_catalog_tools", "CatalogRefOut", "CatalogHitOut", "SearchFeaturesOut"]


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CatalogRefOut(_Out):
    kind: str
    name: str


class CatalogHitOut(_Out):
    kind: str = Field(description="feature_view, feature_service, context_service, embedding_view, knowledge, ...")
    name: str
    description: str
    owner: str | None
    tags: dict[str, str]
    entities: list[str] = Field(description="The entities it is keyed by (e.g. user).")
    upstream: list[CatalogRefOut] = Field(description="What it reads from (one hop).")
    downstream: list[CatalogRefOut] = Field(description="What reads from it (one hop).")
    score: float = Field(ge=0, le=1, description="Relevance to the query, best first.")


class SearchFeaturesOut(_Out):
    workspace: str
    query: str
    items: list[CatalogHitOut]


def register_catalog_tools(mcp: MCPServer, store: Callable[[Context], ContextStore]) -> None:
    """Add ``search_features`` to ``mcp``; ``store(ctx)`` is the caller's workspace store."""

    @mcp.tool(annotations=_READ, title="Search features")
    async def search_features(
        query: Annotated[
            str, Field(min_length=1, max_length=CONTEXT_QUERY_CHARS, description="What you are looking for.")
        ],
        ctx: Context,
        k: Annotated[int, Field(ge=CATALOG_K.lo, le=CATALOG_K.hi, description="How many items.")] = CATALOG_K_DEFAULT,
    ) -> SearchFeaturesOut:
        """Find feature views, feature services, context services, sources and knowledge of this workspace by
        name, description, tag or feature name (semantic when the workspace has an embedder). Use the names
        with describe_feature_service, get_features or get_user_context."""
        with _errors():
            s = store(ctx)
            hits = await _run(functools.partial(s.search_catalog, query, k), offload=True)  # may embed the query
            return SearchFeaturesOut(
                workspace=s.workspace, query=query, items=[CatalogHitOut.model_validate(h.to_dict()) for h in hits]
            )
