"""Load shedding in the HTTP protocol (``SheddingHttpTools``, under ``serve``): a refused request is answered
from the parsed headers with one pre-encoded 503 + Retry-After and never reaches the ASGI app (no routing, no
body read); the connection stays usable (the refused body is skipped in step) unless the client asked to close;
probes are exempt; an admitted request goes through without a second decision."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn
from starlette.types import Receive, Scope, Send

from context_store.server.http_protocol import HttpToolsProtocol
from context_store.server.shedding import ADMITTED, LoadShedder, find_shedder
from tests.support.server import free_port

BODY = b'{"params": {"workspaceName": "w", "featureServiceName": "s", "joinKeyMap": {"user_id": "u1"}}}'


class Recorder:
    """In front of the shedder, as uvicorn's own wrappers are: sees every request that became an ASGI call."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.calls: list[tuple[str, bool]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.calls.append((scope["path"], bool(scope.get(ADMITTED))))
        await self.app(scope, receive, send)


async def slow(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    body = (await receive())["body"]
    await asyncio.sleep(0.6 if scope["path"] == "/slow" else 0)
    out = json.dumps({"path": scope["path"], "got": len(body)}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(out))]})
    await send({"type": "http.response.body", "body": out})


@contextmanager
def serving(app: Any) -> Iterator[int]:
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, http=HttpToolsProtocol, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def request(path: str, method: str = "POST", body: bytes = BODY, close: bool = False) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    head += f"Content-Length: {len(body)}\r\n" + ("Connection: close\r\n" if close else "") + "\r\n"
    return head.encode() + body


class Conn:
    """A raw keep-alive connection reading responses in order (several may arrive in one segment)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.file = self.sock.makefile("rb")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def response(self) -> tuple[int, dict[str, str], bytes]:
        status_line = self.file.readline()
        assert status_line, "connection closed before a response"
        headers: dict[str, str] = {}
        while (line := self.file.readline()) not in (b"\r\n", b""):
            k, _, v = line.decode().partition(":")
            headers[k.lower()] = v.strip()
        return int(status_line.split()[1]), headers, self.file.read(int(headers["content-length"]))

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def test_refused_in_the_protocol_before_the_app_and_the_connection_stays_in_step() -> None:
    shedder = LoadShedder(slow, max_in_flight=1)
    app = Recorder(shedder)
    assert find_shedder(app) is shedder
    with serving(app) as port:
        holder = Conn(port)
        holder.send(request("/slow"))  # takes the only in-flight slot for 0.6 s
        time.sleep(0.2)
        assert shedder.in_flight == 1
        c = Conn(port)
        t0 = time.perf_counter()
        c.send(request("/api/x"))
        status, headers, body = c.response()
        took = time.perf_counter() - t0
        assert status == 503 and headers["retry-after"] == "1" and headers["content-type"] == "application/json"
        assert "overloaded" in json.loads(body)["message"]
        assert "connection" not in headers  # kept open
        assert took < 0.3  # not behind the slow request
        # Same connection: a probe (exempt) is served, so the refused request's body was skipped in step.
        c.send(request("/healthz", "GET", b""))
        status, _, body = c.response()
        assert status == 200 and json.loads(body) == {"path": "/healthz", "got": 0}
        # Two refused requests in one write, then a probe: still in step.
        c.send(request("/api/x") + request("/api/y", body=b"{}" * 500) + request("/readyz", "GET", b""))
        assert [c.response()[0] for _ in range(3)] == [503, 503, 200]
        c.close()
        c = Conn(port)
        c.send(request("/api/x", close=True))
        status, headers, _ = c.response()
        assert status == 503 and headers["connection"] == "close"
        assert c.sock.recv(1) == b""  # the server closed it, as asked
        c.close()
        status, _, body = holder.response()
        holder.close()
        assert status == 200 and json.loads(body)["path"] == "/slow"
        c = Conn(port)  # the slot is free again: admitted
        c.send(request("/api/x"))
        status, _, body = c.response()
        c.close()
        assert status == 200 and json.loads(body) == {"path": "/api/x", "got": len(BODY)}
    # The refused requests never became ASGI calls; the admitted ones were decided once, in the protocol.
    assert app.calls == [("/slow", True), ("/healthz", False), ("/readyz", False), ("/api/x", True)]
    assert shedder.in_flight == 0


def test_pipelined_requests_are_left_to_the_asgi_layer() -> None:
    """A request pipelined behind one still in progress is queued by uvicorn; the ASGI layer decides it then."""
    shedder = LoadShedder(slow, max_in_flight=1)
    app = Recorder(shedder)
    with serving(app) as port:
        c = Conn(port)
        c.send(request("/slow") + request("/api/x"))
        assert [c.response()[0] for _ in range(2)] == [200, 200]  # in turn: the slot is free for the second
        c.close()
    assert app.calls == [("/slow", True), ("/api/x", False)]
