"""One exception hierarchy for every layer.

Each error names what is wrong (``field``) so that REST maps it to a 4xx body,
MCP to an ``isError`` result and the CLI to a non-zero exit -- never a traceback.
"""

from __future__ import annotations

__all__ = [
    "ContextStoreError",
    "DefinitionError",
    "InvalidInputError",
    "NotFoundError",
    "UnauthorizedError",
    "ForbiddenError",
    "RateLimitedError",
    "UnavailableError",
    "ConflictError",
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


class RateLimitedError(ContextStoreError):
    status = 429


class UnavailableError(ContextStoreError):
    """A backing service (Redis, ...) cannot be reached; retry later."""

    status = 503
