"""Exception handlers: every error becomes ``{"message": ...}`` with a 4xx/503 status, never a traceback.

The mapping itself (status, body, headers) is ``context_store.errors``'s, shared with the fast path and MCP.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import orjson
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from ..errors import ContextStoreError, InvalidInputError, error_body, error_headers, http_status, is_unavailable
from ..vocab.json import dumps_api

__all__ = ["install_error_handlers", "error_response", "json_response", "dumps", "loads_body", "loads_object"]

log = logging.getLogger("context_store.server")

dumps = dumps_api


def json_response(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(dumps(obj), status_code=status, media_type="application/json", headers=headers)


def error_response(exc: BaseException, headers: Mapping[str, str] | None = None) -> Response:
    status = http_status(exc)
    return json_response(error_body(exc), status, {**error_headers(status), **(headers or {})} or None)


def loads_body(raw: bytes) -> Any:
    """Parse a JSON body; 400 naming the position for malformed JSON."""
    if not raw:
        raise InvalidInputError("request body is empty; expected JSON", field="body")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise InvalidInputError(f"request body is not valid JSON: {e}", field="body") from None


def loads_object(raw: bytes) -> dict[str, Any]:
    """``loads_body`` for routes whose body is a JSON object: 400 naming ``body`` for anything else."""
    body = loads_body(raw)
    if not isinstance(body, dict):
        raise InvalidInputError("request body must be a JSON object", field="body")
    return body


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
        # A client's mistake: one line (off at the default level), never a traceback.
        log.info("%s %s -> %d: %s", request.method, request.url.path, http_status(exc), exc)
        return error_response(exc)

    async def validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        msg, field = _validation_message(exc)
        return error_response(InvalidInputError(msg, field=field))

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        err = ContextStoreError(exc.detail if isinstance(exc.detail, str) else "request failed")
        err.status = exc.status_code  # Starlette's own 404/405: keep its status
        return error_response(err, exc.headers)  # 405 carries Allow (RFC 9110)

    async def unexpected(request: Request, exc: Exception) -> Response:
        if not is_unavailable(exc):
            log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(exc)

    app.add_exception_handler(ContextStoreError, cs_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)
