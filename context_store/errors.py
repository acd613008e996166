"""One exception hierarchy for every layer, and its one mapping to HTTP.

Each error names what is wrong (``field``) so that REST maps it to a 4xx body,
MCP to an ``isError`` result and the CLI to a non-zero exit -- never a traceback.
``http_status``/``error_body``/``error_headers`` are that mapping, used by the FastAPI routes, the
fast path, the body-size limit and the MCP HTTP transport; ``tool_error_text`` is the MCP ``isError`` text.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from .vocab.redact import redact_text

__all__ = [
    "ContextStoreError",
    "DefinitionError",
    "InvalidInputError",
    "NotFoundError",
    "UnauthorizedError",
    "ForbiddenError",
    "RateLimitedError",
    "UnavailableError",
    "OverloadedError",
    "MissingDependencyError",
    "ConflictError",
    "DeploymentConflictError",
    "PayloadTooLargeError",
    "UnsupportedMediaTypeError",
    "MisdirectedRequestError",
    "http_status",
    "error_body",
    "error_headers",
    "tool_error_text",
    "is_unavailable",
    "error_messages",
    "send_error",
]


class ContextStoreError(Exception):
    """Base class. ``status`` is the HTTP status the REST layer uses."""

    status: int = 400

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def __str__(self) -> str:
        return self.message


class DefinitionError(ContextStoreError):
    """A feature definition is invalid; the message names file, line and object."""

    def __init__(self, message: str, *, location: str | None = None, obj: str | None = None) -> None:
        prefix = ""
        if location:
            prefix += f"{location}: "
        if obj:
            prefix += f"{obj}: "
        super().__init__(prefix + message)
        self.location = location
        self.obj = obj


class InvalidInputError(ContextStoreError):
    status = 400


class NotFoundError(ContextStoreError):
    status = 404


class UnauthorizedError(ContextStoreError):
    status = 401


class ForbiddenError(ContextStoreError):
    status = 403


class ConflictError(ContextStoreError):
    """A breaking change without ``force``, or a concurrent registry write."""

    status = 409


class DeploymentConflictError(ConflictError):
    """The online namespace (Redis database + workspace, or SQLite file) is claimed by another deployment
    (another repo's registry): this process refuses to serve, push or consume there."""


class RateLimitedError(ContextStoreError):
    status = 429


class UnavailableError(ContextStoreError):
    """A backing service (Redis, ...) cannot be reached; retry later."""

    status = 503


class OverloadedError(UnavailableError):
    """This server process is at its in-flight request limit (load shedding); retry shortly."""


class MissingDependencyError(UnavailableError, ImportError):
    """This installation lacks an optional extra the request needs (e.g. a text query on an image built
    without embeddings): 503 whose message names what to install, not a 500 ``internal error: ImportError``.
    Still an ``ImportError``, so code that falls back when an import is missing keeps doing so."""


class PayloadTooLargeError(ContextStoreError):
    """A request body above the server's size limit."""

    status = 413


class UnsupportedMediaTypeError(ContextStoreError):
    """A write whose body is not declared ``application/json`` (cross-site forms and ``text/plain`` posts)."""

    status = 415


class MisdirectedRequestError(ContextStoreError):
    """A ``Host`` header this server was not told to answer for (DNS rebinding); the status ``/mcp`` uses."""

    status = 421


# -- the one error -> HTTP mapping (REST routes, fast path, MCP transport) -------------------------
def is_unavailable(exc: BaseException) -> bool:
    """A backing service is down (Redis refused / timed out): 503, retry later."""
    mod = type(exc).__module__ or ""
    if mod.startswith("redis") and type(exc).__name__ in ("ConnectionError", "TimeoutError", "BusyLoadingError"):
        return True
    return isinstance(exc, (ConnectionError, TimeoutError))


def http_status(exc: BaseException) -> int:
    """Ours carry their status; a backing service that is down is 503; anything else is a 500."""
    if isinstance(exc, ContextStoreError):
        return exc.status
    return 503 if is_unavailable(exc) else 500


def error_body(exc: BaseException) -> dict[str, str]:
    """``{"message", "field"?}``: the field only when the caller can fix it; never a traceback, never a
    credential (a driver's error text may quote the store URL)."""
    if isinstance(exc, ContextStoreError):
        message = redact_text(exc.message)
        return {"message": message, "field": exc.field} if exc.field else {"message": message}
    if is_unavailable(exc):
        return {"message": redact_text(f"online store unreachable: {exc}; retry shortly")}
    return {"message": f"internal error: {type(exc).__name__}"}


def error_headers(status: int) -> dict[str, str]:
    """Retry hints for 429/503, the auth scheme for 401 (header names lower-case, as ASGI sends them)."""
    if status in (429, 503):
        return {"retry-after": "1"}
    if status == 401:
        return {"www-authenticate": 'Bearer realm="context-store"'}
    return {}


def tool_error_text(exc: ContextStoreError) -> str:
    """The text of an MCP ``isError`` result: the error class, the message and the field to fix."""
    where = f" (field: {exc.field})" if exc.field else ""
    return f"{type(exc).__name__}: {redact_text(exc.message)}{where}"


def error_messages(exc: BaseException) -> tuple[dict[str, Any], dict[str, Any]]:
    """An error as the two raw ASGI messages (``http.response.start``, ``http.response.body``): the same status,
    body and headers as the routes give, for middleware in front of them (and prebuilt by the load shedder)."""
    body = orjson.dumps(error_body(exc))
    status = http_status(exc)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.encode(), v.encode()) for k, v in error_headers(status).items()]
    return {"type": "http.response.start", "status": status, "headers": headers}, {
        "type": "http.response.body",
        "body": body,
    }


async def send_error(send: Callable[[MutableMapping[str, Any]], Awaitable[None]], exc: BaseException) -> None:
    """Answer ``exc`` on a raw ASGI ``send`` (see ``error_messages``)."""
    start, body = error_messages(exc)
    await send(start)
    await send(body)
