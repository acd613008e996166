"""Authentication: ``Authorization: Tecton-key <key>`` or ``Bearer <key or JWT>`` -> a ``Principal``.

An API key (``cs_<id>_<secret>``) is looked up in the key store; a JWT (three dot-separated segments) is
verified locally by ``tokens.JwtVerifier`` when ``auth.jwt`` is configured. Either may bind the caller to one
entity (``Principal.subject``).

``authenticate`` is also what the MCP transport calls, so REST and MCP agree on who a caller is.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..access import Subject
from ..errors import ForbiddenError, UnauthorizedError
from .keys import GRANTS, KeyStore
from .tokens import JwtVerifier, looks_like_jwt

__all__ = ["Principal", "ANONYMOUS", "authenticate", "parse_authorization", "authorize"]


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling. ``workspace=None`` means any workspace (auth disabled on loopback)."""

    workspace: str | None
    scope: str
    key_id: str | None = None
    rate_limit: float | None = None
    subject: Subject | None = None  # the one entity this token may touch (``context_store.access``)

    def can(self, scope: str) -> bool:
        return scope in GRANTS[self.scope]


ANONYMOUS = Principal(workspace=None, scope="admin", key_id=None)


def parse_authorization(header_value: str | None) -> str:
    """The key in ``Tecton-key <key>`` / ``Bearer <key>``; 401 when absent or malformed."""
    if not header_value:
        raise UnauthorizedError(
            "missing Authorization header: send 'Authorization: Tecton-key <key>' or 'Bearer <key>'",
            field="Authorization",
        )
    scheme, _, key = header_value.strip().partition(" ")
    if scheme.lower() not in ("tecton-key", "bearer") or not key.strip():
        raise UnauthorizedError(
            "malformed Authorization header: expected 'Tecton-key <key>' or 'Bearer <key>'", field="Authorization"
        )
    return key.strip()


def authenticate(header_value: str | None, key_store: KeyStore | None, jwt: JwtVerifier | None = None) -> Principal:
    """Verify an Authorization header value. ``key_store=None`` means auth is disabled."""
    if key_store is None:
        return ANONYMOUS
    token = parse_authorization(header_value)
    if looks_like_jwt(token):
        if jwt is None:
            raise UnauthorizedError(
                "this server does not accept JWT bearer tokens (configure auth.jwt in context_store.yaml) "
                "or use an API key",
                field="Authorization",
            )
        ident = jwt.verify(token)  # 401 when invalid, expired, for another audience ...
        return Principal(ident.workspace, ident.scope, key_id=ident.key_id, subject=ident.subject)
    rec, derived = key_store.verify_cached(token)  # 401 when unknown, revoked or expired
    p = derived[0]
    if p is None:  # once per key cache period (building a frozen dataclass is ~3 us: most of a cached lookup)
        p = derived[0] = Principal(
            rec.workspace, rec.scope, key_id=rec.key_id, rate_limit=rec.rate_limit, subject=rec.subject
        )
    return p


def authorize(principal: Principal, scope: str, workspace: str | None) -> str:
    """Check scope and workspace; return the workspace the request runs in (403 on mismatch)."""
    if not principal.can(scope):
        raise ForbiddenError(
            f"this API key has scope {principal.scope!r}; this operation needs {scope!r}", field="Authorization"
        )
    if principal.workspace is None:
        return workspace or "default"
    if workspace and workspace != principal.workspace:
        raise ForbiddenError(
            f"this API key is for workspace {principal.workspace!r}, not {workspace!r}", field="workspaceName"
        )
    return principal.workspace
