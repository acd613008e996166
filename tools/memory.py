"""MCP tools of agent memories: ``remember``, ``forget_memory``, ``search_memories`` (docs/memory.md).

Registered by ``create_mcp_server``. The caller's token decides: its subject is the entity (another
entity is an isError 403), its key id is the memory's ``written_by``, and writes need its ``ingest``
scope (no caller: stdio, the operator, may).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Annotated, Any

from mcp.server import MCPServer
from mcp.server.mcpserver import Context
from mcp_types import ToolAnnotations
from pydantic import BaseModel, ConfigDict, Field

from context_store import ContextStore
from context_store.limits import (
    CONTEXT_QUERY_CHARS,
    ENTITY_ID_CHARS,
    MEMORY_ID_CHARS,
    MEMORY_K,
    MEMORY_K_DEFAULT,
    MEMORY_KIND_CHARS,
    MEMORY_TEXT_CHARS,
)
from context_store.memory_types import MemoryRecord

from .models import UntrustedData, UntrustedText
from .scopes import REQUIRED_SCOPE
from .server import _errors, _run, caller, require_scope, subject_of

__all__ = ["MEMORY_TOOL_SCOPES", "register_memory_tools", "MemoryOut", "SearchMemoriesOut", "ForgetMemoryOut"]

# The scope each tool needs (for scope-based tool listing).
MEMORY_TOOL_SCOPES = {"remember": "ingest", "forget_memory": "ingest", "search_memories": "read"}
REQUIRED_SCOPE.update(MEMORY_TOOL_SCOPES)  # scopes.ScopeGate: hidden from keys that may not call them

_REMEMBER = ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=True, open_world_hint=False)
_FORGET = ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=True, open_world_hint=False)
_SEARCH = ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False)

EntityArg = Annotated[
    str | None,
    Field(min_length=1, max_length=ENTITY_ID_CHARS, description="The entity's join key value; default: your token's."),
]


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MemoryOut(_Out):
    id: str
    entity: dict[str, Any]
    text: UntrustedText
    kind: UntrustedText | None
    metadata: UntrustedData
    created_at: str = Field(description="ISO-8601 UTC time the memory was stored.")
    written_by: str | None = Field(description="Who stored it: API key id or token principal (provenance).")
    score: float | None = Field(description="Similarity to the query plus a recency bonus (searches only).")
    deduplicated: bool = Field(description="remember: the same text was stored within the dedup window; its id.")
    untrusted_fields: list[str] = Field(default_factory=lambda: ["text", "kind", "metadata"])


class SearchMemoriesOut(_Out):
    memory: str
    entity: dict[str, Any]
    query: str
    memories: list[MemoryOut]
    untrusted_fields: list[str] = Field(
        default_factory=lambda: ["memories[].text", "memories[].kind", "memories[].metadata"]
    )


class ForgetMemoryOut(_Out):
    id: str
    forgotten: bool


def _out(m: MemoryRecord) -> MemoryOut:
    d = m.to_dict()
    d.pop("memory", None)
    return MemoryOut.model_validate(d)


def _key_id(ctx: Context) -> str | None:
    principal = caller(ctx)
    return None if principal is None else getattr(principal, "key_id", None)


def register_memory_tools(mcp: MCPServer, store: Callable[[Context], ContextStore]) -> None:
    """Add the memory tools to ``mcp``; ``store(ctx)`` is the caller's workspace store."""

    @mcp.tool(annotations=_REMEMBER, title="Remember")
    async def remember(
        text: Annotated[str, Field(min_length=1, max_length=MEMORY_TEXT_CHARS, description="What to remember.")],
        ctx: Context,
        entity_id: EntityArg = None,
        kind: Annotated[
            str | None, Field(min_length=1, max_length=MEMORY_KIND_CHARS, description="e.g. preference, fact.")
        ] = None,
        metadata: Annotated[dict[str, Any] | None, Field(description="Small JSON object kept with it.")] = None,
    ) -> MemoryOut:
        """Store a memory about one entity (a user). Repeating the same text within the dedup window
        returns the stored memory (deduplicated). Searchable as soon as this returns."""
        require_scope(ctx, MEMORY_TOOL_SCOPES["remember"])
        with _errors():
            call = functools.partial(
                store(ctx).remember, text, entity_id, kind, metadata, subject=subject_of(ctx), written_by=_key_id(ctx)
            )
            return _out(await _run(call, offload=True))

    @mcp.tool(annotations=_FORGET, title="Forget memory")
    async def forget_memory(
        memory_id: Annotated[str, Field(min_length=1, max_length=MEMORY_ID_CHARS, description="The memory's id.")],
        ctx: Context,
    ) -> ForgetMemoryOut:
        """Delete one memory everywhere (search, context, offline log). Unknown ids are an error."""
        require_scope(ctx, MEMORY_TOOL_SCOPES["forget_memory"])
        with _errors():
            call = functools.partial(store(ctx).forget_memory, memory_id, subject=subject_of(ctx))
            return ForgetMemoryOut(id=memory_id, forgotten=await _run(call, offload=True))

    @mcp.tool(annotations=_SEARCH, title="Search memories")
    async def search_memories(
        query: Annotated[str, Field(min_length=1, max_length=CONTEXT_QUERY_CHARS, description="What to look for.")],
        ctx: Context,
        entity_id: EntityArg = None,
        k: Annotated[int, Field(ge=MEMORY_K.lo, le=MEMORY_K.hi, description="How many.")] = MEMORY_K_DEFAULT,
    ) -> SearchMemoriesOut:
        """An entity's memories most relevant to a query (similarity, then recency), best first."""
        require_scope(ctx, MEMORY_TOOL_SCOPES["search_memories"])
        with _errors():
            call = functools.partial(store(ctx).search_memories, query, entity_id, k, subject=subject_of(ctx))
            res = await _run(call, offload=True)
            return SearchMemoriesOut(
                memory=res.memory, entity=res.entity, query=res.query, memories=[_out(m) for m in res.memories]
            )
