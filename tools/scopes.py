"""Which scope each MCP tool needs, and the gate that applies it per request.

``REQUIRED_SCOPE`` maps a tool name to the scope its caller's token must grant (``server.keys.GRANTS``);
a tool not listed needs ``read``. A tool module registers a writing tool with one line::

    REQUIRED_SCOPE["remember"] = "ingest"       # or: @requires("ingest") above the tool function

``ScopeGate`` is SDK middleware (``MCPServer.middleware``): ``tools/list`` shows only the tools the caller's
scopes can use, and ``tools/call`` of any other tool is an ``isError`` result (ForbiddenError, the REST 403)
before the tool runs. Callers without an HTTP request (stdio, in memory: the operator) see every tool.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp_types import CallToolResult, TextContent

from context_store.errors import ForbiddenError, tool_error_text

__all__ = ["REQUIRED_SCOPE", "required_scope", "requires", "ScopeGate"]

REQUIRED_SCOPE: dict[str, str] = {}  # tool name -> scope; absent: "read"

F = TypeVar("F", bound=Callable[..., Any])


def required_scope(tool: Any) -> str:
    return REQUIRED_SCOPE.get(tool, "read") if isinstance(tool, str) else "read"


def requires(scope: str) -> Callable[[F], F]:
    """Decorator form: ``@requires("ingest")`` on a tool function (its name is the tool's name)."""

    def mark(fn: F) -> F:
        REQUIRED_SCOPE[fn.__name__] = scope
        return fn

    return mark


class ScopeGate:
    """Filters ``tools/list`` and refuses ``tools/call`` by the caller's scopes (the principal that
    ``tools.http`` put on the request scope under ``principal_key``)."""

    def __init__(self, principal_key: str) -> None:
        self.principal_key = principal_key

    def _allows(self, ctx: ServerRequestContext[Any, Any]) -> Callable[[str], bool] | None:
        """``scope -> allowed`` for this request; None for the operator (no HTTP request: every tool)."""
        request = ctx.request
        if request is None:
            return None
        principal = getattr(request, "scope", {}).get(self.principal_key)
        if principal is None:  # an HTTP request without a principal: nothing (the tools refuse it too)
            return lambda _scope: False
        return lambda scope: bool(principal.can(scope))

    async def __call__(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        if ctx.method not in ("tools/list", "tools/call"):
            return await call_next(ctx)
        allows = self._allows(ctx)
        if allows is None:
            return await call_next(ctx)
        if ctx.method == "tools/call":
            name = (ctx.params or {}).get("name")
            need = required_scope(name)
            if not allows(need):
                err = ForbiddenError(f"tool {name!r} needs a token with scope {need!r}", field="Authorization")
                return CallToolResult(content=[TextContent(type="text", text=tool_error_text(err))], is_error=True)
            return await call_next(ctx)
        result = await call_next(ctx)  # the wire form: {"tools": [{"name": ...}, ...], ...}
        if isinstance(result, dict) and isinstance(result.get("tools"), list):
            tools = [t for t in result["tools"] if isinstance(t, dict) and allows(required_scope(t.get("name")))]
            result = {**result, "tools": tools}
        return result
