"""Authentication: ``Authorization: Tecton-key <key>`` or ``Bearer <key>`` -> a ``Principal``.

``authenticate`` is also what the MCP transport calls, so REST and MCP agree on who a caller is.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..access import Subject
from ..errors import ForbiddenError, UnauthorizedError
from .keys import GRANTS, KeyStore

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


def authenticate(header_value: str | None, key_store: KeyStore | None) -> Principal:
    """Verify an Authorization header value. ``key_store=None`` means auth is disabled."""
    if key_store is None:
        return ANONYMOUS
    rec = key_store.verify(parse_authorization(header_value))  # 401 when unknown, revoked or expired
    return Principal(workspace=rec.workspace, scope=rec.scope, key_id=rec.key_id, rate_limit=rec.rate_limit)


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
