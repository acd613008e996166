"""Exception handlers: every error becomes ``{"message": ...}`` with a 4xx/503 status, never a traceback."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from ..errors import ContextStoreError, InvalidInputError
from ..vocab.json import dumps_api

__all__ = ["install_error_handlers", "error_response", "json_response", "dumps", "loads_body", "is_unavailable"]

log = logging.getLogger("context_store.server")

dumps = dumps_api


def json_response(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(dumps(obj), status_code=status, media_type="application/json", headers=headers)


def error_response(status: int, message: str, field: str | None = None) -> Response:
    body: dict[str, Any] = {"message": message}
    if field:
        body["field"] = field
    headers = {"Retry-After": "1"} if status in (429, 503) else None
    if status == 401:
        headers = {"WWW-Authenticate": 'Bearer realm="context-store"'}
    return json_response(body, status, headers)


def loads_body(raw: bytes) -> Any:
    """Parse a JSON body; 400 naming the position for malformed JSON."""
    if not raw:
        raise InvalidInputError("request body is empty; expected JSON", field="body")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise InvalidInputError(f"request body is not valid JSON: {e}", field="body") from None


def is_unavailable(exc: BaseException) -> bool:
    """A backing service is down (Redis refused / timed out): 503, retry later."""
    mod = type(exc).__module__ or ""
    if mod.startswith("redis") and type(exc).__name__ in ("ConnectionError", "TimeoutError", "BusyLoadingError"):
        return True
    return isinstance(exc, (ConnectionError, TimeoutError))


def _validation_message(exc: RequestValidationError) -> tuple[str, str]:
    errs = exc.errors()
    if not errs:
        return "invalid request", "body"
    e = errs[0]
    loc = [str(x) for x in e.get("loc", ()) if x not in ("body", "query", "path", "header")]
    field = ".".join(loc) or str((e.get("loc") or ["body"])[0])
    return f"{field}: {e.get('msg', 'invalid value')}", field


def install_error_handlers(app: FastAPI) -> None:
    async def cs_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ContextStoreError)
        return error_response(exc.status, exc.message, exc.field)

    async def validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        msg, field = _validation_message(exc)
        return error_response(400, msg, field)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        detail = exc.detail if isinstance(exc.detail, str) else "request failed"
        return error_response(exc.status_code, detail)

    async def unexpected(request: Request, exc: Exception) -> Response:
        if is_unavailable(exc):
            return error_response(503, f"online store unreachable: {exc}; retry shortly")
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, f"internal error: {type(exc).__name__}")

    app.add_exception_handler(ContextStoreError, cs_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)
