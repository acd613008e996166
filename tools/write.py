"""MCP write tools: ``record_event``, an agent's write-back of one event (``serving/record.py``).

A write needs a key with the ``ingest`` scope (``WRITE_TOOL_SCOPES``; over stdio the operator may
write). The tool is not read-only and not destructive (it appends an event; nothing is
overwritten or deleted). It is idempotent only when the call names the event: with an
``idempotency_key`` (a retry answers the first result, nothing written) or on a source with an
``event_id_field`` (an event id seen before is dropped); otherwise each call counts once more,
so ``idempotentHint`` is false.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Annotated, Any

from mcp.server import MCPServer
from mcp.server.mcpserver import Context
from mcp_types import ToolAnnotations
from pydantic import BaseModel, ConfigDict, Field

from context_store import ContextStore
from context_store.limits import IDEMPOTENCY_KEY_CHARS, NAME_CHARS, RECORD_FIELDS

from .models import Provenance
from .scopes import REQUIRED_SCOPE
from .server import _errors, _run, require_scope, subject_of

__all__ = ["WRITE_TOOL_SCOPES", "RecordedEventOut", "register_write_tools"]

# Tool -> the scope its caller's key needs: ``scopes.ScopeGate`` hides the tool from other keys' tools/list
# and refuses their calls; the tool checks it again itself (the gate is middleware, the check is local).
WRITE_TOOL_SCOPES: dict[str, str] = {"record_event": "ingest"}
REQUIRED_SCOPE.update(WRITE_TOOL_SCOPES)

_WRITE = ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=False)


class RecordedEventOut(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: str
    accepted: int = Field(description="1 when the event was written, 0 when dropped as a duplicate or replayed.")
    visible: bool = Field(description="The features below include the event (read-after-write).")
    replayed: bool = Field(description="A retry with the same idempotency_key: the first call's result.")
    duplicate: bool = Field(description="The event id was ingested before: nothing written.")
    push: dict[str, Any] = Field(description="The full push result (as POST /v1/ingest's ingestMetrics).")
    join_keys: dict[str, Any] = Field(description="The entity read back (join keys of the views, from the record).")
    views: list[str] = Field(description="Online feature views fed by the source.")
    read_at: str | None = Field(description="ISO-8601 UTC time the features were read at.")
    features: dict[str, Any] = Field(description="'view.feature' -> value, now served for the entity.")
    provenance: dict[str, Provenance]
    untrusted_fields: list[str] = Field(default_factory=lambda: ["features (string values)", "join_keys"])


def register_write_tools(mcp: MCPServer, store: Callable[[Context], ContextStore]) -> None:
    """Add the write tools to ``mcp`` (``create_mcp_server``); ``store(ctx)`` is the caller's workspace."""

    def tool(title: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def register(fn: Callable[..., Any]) -> Callable[..., Any]:
            doc = inspect.cleandoc(fn.__doc__ or "").replace("\n", " ")
            return mcp.tool(annotations=_WRITE, title=title, description=doc)(fn)

        return register

    @tool("Record event")
    async def record_event(
        source: Annotated[
            str, Field(min_length=1, max_length=NAME_CHARS, description="Stream source name, e.g. 'transactions'.")
        ],
        record: Annotated[
            dict[str, Any],
            Field(
                min_length=1,
                max_length=RECORD_FIELDS,
                description="The event: field -> value per the source's schema, with its join keys and "
                "timestamp (ISO-8601 or epoch).",
            ),
        ],
        ctx: Context,
        idempotency_key: Annotated[
            str | None,
            Field(
                min_length=1,
                max_length=IDEMPOTENCY_KEY_CHARS,
                pattern=r"^[\x21-\x7e]+$",
                description="One key per logical event (visible ASCII, e.g. a UUID), reused on retries: a retry "
                "writes nothing.",
            ),
        ] = None,
    ) -> RecordedEventOut:
        """Write one event to a stream source (needs an ingest key), validated like any push, and return the
        feature values now served for its entity, so you see the effect. Not idempotent unless you pass
        idempotency_key (or the source dedups by event id)."""
        require_scope(ctx, WRITE_TOOL_SCOPES["record_event"])
        with _errors():
            call = functools.partial(
                store(ctx).record_event, source, record, subject=subject_of(ctx), idempotency_key=idempotency_key
            )
            res = await _run(call, offload=True)  # waits for the workers to apply it (read-after-write)
            return RecordedEventOut.model_validate(res.to_dict())
