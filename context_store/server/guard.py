"""Host, Origin and Content-Type checks in front of every route (fast path, FastAPI routes, ``/mcp``), in every
mode (with keys or ``--no-auth``).

- ``Host`` must name this server: loopback names (``localhost``, ``127.0.0.1``, ``[::1]``, any port) plus the
  configured ``allowed_hosts``; otherwise 421, the status the MCP transport uses. A browser sends the
  attacker's name after DNS rebinding, so this is what stops a page from reading local data.
- ``Origin``, when a browser sends one, must be an allowed host (any scheme) or a configured
  ``allowed_origins`` entry; otherwise 403. Requests without ``Origin`` (curl, SDKs) pass.
- Writes (POST: every write route is one) must declare ``Content-Type: application/json``: 415 otherwise. The
  content types a page may post cross-site without a preflight (``text/plain``, forms) never reach a route.
  ``/mcp`` keeps its transport's own content-type rule (400), with the same Host/Origin lists.

CORS headers are sent only for configured ``allowed_origins`` (``cors_middleware``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from ..errors import (
    ContextStoreError,
    ForbiddenError,
    MisdirectedRequestError,
    UnsupportedMediaTypeError,
    send_error,
)

__all__ = ["HostPolicy", "RequestGuard", "LOOPBACK_HOSTS", "cors_middleware"]

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")
# Only POST: every write route is a POST, and a method no route takes must stay a 405 (browsers cannot send
# another method cross-site without a preflight, which is refused unless origins are configured).
_WRITES = frozenset({"POST"})
_OWN_CONTENT_RULES = frozenset({"/mcp"})  # the MCP transport checks its content type itself
_CACHE_MAX = 256  # accepted header values remembered (a set lookup per request instead of parsing)


def _split_host(value: str) -> tuple[str, str | None]:
    """``"Example.com:8000"`` -> ``("example.com", "8000")``; ``"[::1]"`` -> ``("[::1]", None)``."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return value, None
        name, rest = value[: end + 1], value[end + 1 :]
        return name, rest[1:] if rest.startswith(":") else None
    name, sep, port = value.rpartition(":")
    if not sep or ":" in name:  # no port, or a bare IPv6 address (not a valid Host header anyway)
        return value, None
    return name, port


@dataclass(frozen=True)
class HostPolicy:
    """Which ``Host`` names (and so which browser origins) this server answers for.

    ``any_port`` names match with any port or none; ``exact`` entries (``name:port``) match only as written.
    ``origins`` are the configured CORS origins (``https://app.example.com``).
    """

    any_port: frozenset[str]
    exact: frozenset[str]
    origins: tuple[str, ...] = ()

    @classmethod
    def build(cls, hosts: Iterable[str] = (), origins: Iterable[str] = ()) -> HostPolicy:
        """Loopback names plus ``hosts`` (``name``, ``name:*`` = any port; ``name:port`` = that port)."""
        any_port, exact = set(LOOPBACK_HOSTS), set()
        for h in hosts:
            name, port = _split_host(h)
            if port in (None, "*"):
                any_port.add(name)
            else:
                exact.add(f"{name}:{port}")
        return cls(frozenset(any_port), frozenset(exact), tuple(dict.fromkeys(o.lower().rstrip("/") for o in origins)))

    def host_ok(self, host: str) -> bool:
        name, port = _split_host(host)
        if name in self.any_port and (port is None or port.isdigit()):
            return True
        return port is not None and f"{name}:{port}" in self.exact

    def origin_ok(self, origin: str) -> bool:
        origin = origin.strip().lower()
        if origin in self.origins:
            return True
        scheme, sep, rest = origin.partition("://")
        return bool(sep) and scheme in ("http", "https") and "/" not in rest and self.host_ok(rest)

    # The MCP transport's own check (``TransportSecuritySettings``) gets the same lists in its pattern syntax.
    def mcp_hosts(self) -> list[str]:
        return sorted(p for n in self.any_port for p in (n, f"{n}:*")) + sorted(self.exact)

    def mcp_origins(self) -> list[str]:
        hosts = self.mcp_hosts()
        return [f"{s}://{h}" for s in ("http", "https") for h in hosts] + list(self.origins)


def _is_json(content_type: bytes | None) -> bool:
    if content_type is None:
        return False
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == b"application/json" or (media.startswith(b"application/") and media.endswith(b"+json"))


class RequestGuard:
    """Pure ASGI, outermost: one scan of the headers, then set lookups of values accepted before (measured:
    under a microsecond per request); the full checks run only for a value not seen yet."""

    def __init__(self, app: ASGIApp, policy: HostPolicy, routed: Callable[[Scope], bool] | None = None) -> None:
        self.app = app
        self.policy = policy
        # Whether a route takes this method at this path: a method no route takes stays the app's 404/405.
        self._routed = routed
        self._hosts_ok: set[bytes | None] = set()
        self._origins_ok: set[bytes] = set()
        self._json_ok: set[bytes | None] = {b"application/json"}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            host = origin = content_type = None
            for name, value in scope["headers"]:
                if name == b"host":
                    host = value
                elif name == b"origin":
                    origin = value
                elif name == b"content-type":
                    content_type = value
            err = self.verdict(scope, host, origin, content_type)
            if err is not None:
                await send_error(send, err)
                return
        await self.app(scope, receive, send)

    def verdict(
        self, scope: Scope, host: bytes | None, origin: bytes | None, content_type: bytes | None
    ) -> ContextStoreError | None:
        """The error to answer with, or None. ``FastPath`` calls it from its own header scan (no second scan)."""
        if (
            host in self._hosts_ok
            and (origin is None or origin in self._origins_ok)
            and (content_type in self._json_ok or scope["method"] not in _WRITES)
        ):
            return None
        return self._check(scope, host, origin, content_type)

    def _check(
        self, scope: Scope, host: bytes | None, origin: bytes | None, content_type: bytes | None
    ) -> ContextStoreError | None:
        if host not in self._hosts_ok:
            text = host.decode("latin-1") if host is not None else ""
            if not self.policy.host_ok(text):
                return MisdirectedRequestError(
                    f"Host {text!r} is not a name this server answers for; add it with `serve --allowed-host` "
                    "or allowed_hosts in context_store.yaml",
                    field="Host",
                )
            if len(self._hosts_ok) < _CACHE_MAX and host is not None:
                self._hosts_ok.add(host)
        if origin is not None and origin not in self._origins_ok:
            text = origin.decode("latin-1")
            if not self.policy.origin_ok(text):
                return ForbiddenError(
                    f"Origin {text!r} is not allowed; add its host with `serve --allowed-host` or the origin with "
                    "allowed_origins in context_store.yaml",
                    field="Origin",
                )
            if len(self._origins_ok) < _CACHE_MAX:
                self._origins_ok.add(origin)
        method = scope.get("method", "")
        if method in _WRITES and content_type not in self._json_ok and scope.get("path") not in _OWN_CONTENT_RULES:
            if not _is_json(content_type):
                if self._routed is not None and not self._routed(scope):
                    return None  # no route takes it: the app answers 404 or 405, as for any other method
                got = content_type.decode("latin-1") if content_type is not None else "none"
                return UnsupportedMediaTypeError(
                    f"{method} bodies must be sent as Content-Type: application/json (got {got!r})",
                    field="Content-Type",
                )
            if len(self._json_ok) < _CACHE_MAX:
                self._json_ok.add(content_type)
        return None


def cors_middleware(app: ASGIApp, origins: tuple[str, ...]) -> ASGIApp:
    """CORS for the configured origins only (never ``*``): preflights answered, responses readable by those pages."""
    return CORSMiddleware(
        app,
        allow_origins=list(origins),
        allow_methods=["GET", "POST", "DELETE"],
        allow_headers=["authorization", "content-type", "accept", "mcp-protocol-version", "mcp-session-id"],
        expose_headers=["retry-after", "mcp-session-id"],
        max_age=600,
    )
