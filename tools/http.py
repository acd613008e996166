"""MCP over streamable HTTP, behind Bearer-key authentication.

``create_mcp_http_app(get_store, authenticate)`` returns an ASGI app to mount at ``/mcp``::

    mcp_app = create_mcp_http_app(resolver, lambda header: auth.authenticate(header, key_store))
    app.router.routes.append(starlette.routing.Route("/mcp", endpoint=mcp_app))   # exact path, no redirect

    @asynccontextmanager
    async def lifespan(app):
        async with mcp_app.lifespan():        # runs the SDK's session manager (once per app)
            yield

``authenticate(authorization_header_value_or_None)`` returns a principal with ``.workspace``
(or raises ``UnauthorizedError``/``ForbiddenError``, or returns None); that workspace is the tenant
of every tool call. Missing/invalid keys get 401 (JSON ``{"message", "field"}``) before any MCP
processing. Host and Origin headers are checked (DNS
rebinding protection) against ``allowed_hosts`` / ``allowed_origins``.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from starlette.types import Receive, Scope, Send

from context_store import ContextStore
from context_store.errors import ContextStoreError, UnauthorizedError, send_error

from .server import PRINCIPAL_SCOPE_KEY, create_mcp_server

__all__ = [
    "McpHttpApp",
    "create_mcp_http_app",
    "create_standalone_app",
    "DEFAULT_ALLOWED_HOSTS",
    "DEFAULT_ALLOWED_ORIGINS",
]

DEFAULT_ALLOWED_HOSTS = ["127.0.0.1", "127.0.0.1:*", "localhost", "localhost:*", "[::1]", "[::1]:*"]
DEFAULT_ALLOWED_ORIGINS = ["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"]


class McpHttpApp:
    """ASGI app: authenticate the Bearer key, then hand the request to the SDK's session manager."""

    def __init__(
        self,
        session_manager: StreamableHTTPSessionManager,
        authenticate: Callable[[str | None], Any],
    ) -> None:
        self.session_manager = session_manager
        self.authenticate = authenticate

    @asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        """Run the session manager's task group; wrap the host app's lifespan in it."""
        async with self.session_manager.run():
            yield

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":  # served on its own (uvicorn context_store.tools.http:...)
            await _lifespan(self, receive, send)
            return
        if scope["type"] != "http":
            return
        header = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"authorization"), None)
        try:
            # The host app's authenticate decides (it may allow keyless calls when auth is disabled).
            principal = self.authenticate(header)
            if inspect.isawaitable(principal):
                principal = await principal
            if principal is None:
                raise UnauthorizedError("invalid or revoked API key", field="Authorization")
        except ContextStoreError as e:
            await send_error(send, e)
            return
        scope = dict(scope)
        # Host names are case-insensitive; the SDK's Host/Origin check compares exactly: give it lower case.
        scope["headers"] = [(k, v.lower()) if k in (b"host", b"origin") else (k, v) for k, v in scope["headers"]]
        scope[PRINCIPAL_SCOPE_KEY] = principal
        # The SDK binds a stateful session to the credential that opened it; give it a stable id.
        client_id = getattr(principal, "key_id", None) or hashlib.sha256((header or "").encode()).hexdigest()[:16]
        scope["user"] = AuthenticatedUser(
            AccessToken(token="redacted", client_id=str(client_id), scopes=[str(getattr(principal, "scope", "read"))])
        )
        await self.session_manager.handle_request(scope, receive, send)


async def _lifespan(app: McpHttpApp, receive: Receive, send: Send) -> None:
    msg = await receive()
    assert msg["type"] == "lifespan.startup"
    try:
        async with app.lifespan():
            await send({"type": "lifespan.startup.complete"})
            msg = await receive()
    except BaseException as e:  # report, then let the server stop
        await send({"type": "lifespan.startup.failed", "message": str(e)})
        raise
    await send({"type": "lifespan.shutdown.complete"})


def create_mcp_http_app(
    get_store: Callable[[str | None], ContextStore] | ContextStore,
    authenticate: Callable[[str | None], Any],
    *,
    allowed_hosts: Sequence[str] | None = None,
    allowed_origins: Sequence[str] | None = None,
    stateless: bool = True,
    json_response: bool = True,
    max_request_body_size: int = 1 << 20,
) -> McpHttpApp:
    """The MCP tools over streamable HTTP; see the module docstring for mounting.

    ``stateless``/``json_response`` (default): every POST is self-contained and answered with JSON --
    no session state, so any worker process or replica can serve any request. Hosts/origins default to loopback;
    pass the public host names when serving on another interface (never disable the check).
    """
    mcp = create_mcp_server(get_store)
    security = TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=list(allowed_hosts or DEFAULT_ALLOWED_HOSTS),
        allowed_origins=list(allowed_origins or DEFAULT_ALLOWED_ORIGINS),
    )
    # streamable_http_app() is the SDK's public way to build (and attach) the session manager.
    mcp.streamable_http_app(
        stateless_http=stateless,
        json_response=json_response,
        transport_security=security,
        max_request_body_size=max_request_body_size,
    )
    return McpHttpApp(mcp.session_manager, authenticate)


def create_standalone_app(mcp_app: McpHttpApp, path: str = "/mcp") -> Any:
    """A Starlette app serving only ``mcp_app`` at ``path`` (tests, benchmarks, ``python -m context_store.tools``)."""
    from starlette.applications import Starlette
    from starlette.routing import Route

    @asynccontextmanager
    async def lifespan(_app: Any) -> AsyncIterator[None]:
        async with mcp_app.lifespan():
            yield

    return Starlette(routes=[Route(path, endpoint=mcp_app)], lifespan=lifespan)
