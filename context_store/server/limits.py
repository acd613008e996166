"""Request limits: a body-size cap (pure ASGI, before any parsing) and a per-key token bucket."""

from __future__ import annotations

import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import (
    InvalidInputError,
    PayloadTooLargeError,
    RateLimitedError,
    send_error,
)
from ..limits import BODY_BYTES

__all__ = ["BodySizeLimit", "RateLimiter", "DEFAULT_MAX_BODY"]

DEFAULT_MAX_BODY = BODY_BYTES  # ``serve --max-body`` overrides it


class _TooLarge(Exception):
    pass


class BodySizeLimit:
    """413 for bodies above ``max_body`` bytes: by Content-Length up front, or while streaming."""

    def __init__(self, app: ASGIApp, max_body: int = DEFAULT_MAX_BODY) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_body
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    size = int(value)
                except ValueError:
                    await send_error(
                        send, InvalidInputError("Content-Length header is not an integer", field="Content-Length")
                    )
                    return
                if size > limit:
                    await send_error(
                        send,
                        PayloadTooLargeError(
                            f"request body of {size} bytes exceeds the limit of {limit} bytes", field="body"
                        ),
                    )
                    return
                break
        seen = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > limit:
                    raise _TooLarge
            return msg

        async def tracking_send(msg: Message) -> None:
            nonlocal started
            if msg["type"] == "http.response.start":
                started = True
            await send(msg)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await send_error(
                    send, PayloadTooLargeError(f"request body exceeds the limit of {limit} bytes", field="body")
                )


class RateLimiter:
    """Token bucket per key id: ``rate`` requests/second sustained, bursts up to ``2 * rate``.

    Per process: with N workers the effective limit is up to N times higher (documented).
    """

    def __init__(self, default_rate: float | None = None) -> None:
        self.default_rate = default_rate
        self._buckets: dict[Any, list[float]] = {}

    def check(self, key_id: str | None, rate: float | None = None) -> None:
        rate = rate or self.default_rate
        if not rate or key_id is None:
            return
        now = time.monotonic()
        burst = max(1.0, 2.0 * rate)
        b = self._buckets.get(key_id)
        if b is None:
            b = self._buckets[key_id] = [burst, now]
        tokens = min(burst, b[0] + (now - b[1]) * rate)
        b[1] = now
        if tokens < 1.0:
            b[0] = tokens
            raise RateLimitedError(
                f"rate limit of {rate:g} requests/second for this API key exceeded; retry shortly",
                field="Authorization",
            )
        b[0] = tokens - 1.0
