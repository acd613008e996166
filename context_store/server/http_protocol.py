"""uvicorn's httptools protocol, with a response's head and body leaving in one socket write.

uvicorn writes the status line and headers when the app sends ``http.response.start`` and the body when it
sends ``http.response.body``: two ``send()`` syscalls per response on uvloop, which writes at once (measured
with strace: 3 writes per get-features request, one of them to Redis). Here a write is held until the next
write of the same event-loop iteration, or the end of that iteration: a head and the body sent right after
it go out together; nothing is held longer than one iteration (a streaming response is not delayed).
``serve`` runs uvicorn with ``http="context_store.server.http_protocol:HttpToolsProtocol"``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from .shedding import SheddingHttpTools

__all__ = ["HttpToolsProtocol", "CoalescingTransport"]


class CoalescingTransport:
    """A transport whose writes are joined until the end of the event-loop iteration (or the next write)."""

    __slots__ = ("_held", "_loop", "_scheduled", "transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self.transport = transport
        self._loop = loop
        self._held: bytes | None = None
        self._scheduled = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        held = self._held
        if held is not None:  # the second write of this iteration: both go out now
            self._held = None
            self.transport.writelines([held, data])
            return
        self._held = bytes(data)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        held, self._held = self._held, None
        if held is not None and not self.transport.is_closing():
            self.transport.write(held)

    def writelines(self, lines: Any) -> None:
        self.write(b"".join(lines))

    def close(self) -> None:
        self._flush()
        self.transport.close()

    def write_eof(self) -> None:
        self._flush()
        self.transport.write_eof()

    def get_write_buffer_size(self) -> int:
        return self.transport.get_write_buffer_size() + len(self._held or b"")

    def __getattr__(self, name: str) -> Any:  # everything else: the real transport
        return getattr(self.transport, name)


class HttpToolsProtocol(SheddingHttpTools):  # load shedding before routing (shedding.py)
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]
