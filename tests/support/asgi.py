"""Calling an ASGI app in process: one HTTP request, its status back."""

from __future__ import annotations

from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["ok_app", "status_of", "http_scope"]


def http_scope(path: str, method: str = "POST") -> dict[str, Any]:
    return {"type": "http", "method": method, "path": path, "headers": []}


async def ok_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers 200 ``{}`` at once."""
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


async def status_of(app: ASGIApp, scope: Scope, body: bytes = b"") -> int:
    """The status ``app`` answers ``scope`` with (0 if it never starts a response)."""
    status = 0

    async def receive() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(msg: Message) -> None:
        nonlocal status
        if msg["type"] == "http.response.start":
            status = msg["status"]

    await app(scope, receive, send)
    return status
