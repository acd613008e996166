"""``http_protocol.CoalescingTransport`` on a real socket: writes of one loop iteration leave together, in
order; a lone write is not held past its iteration (streaming is not delayed); close sends what is held."""

from __future__ import annotations

import asyncio
import socket

from context_store.server.http_protocol import CoalescingTransport


def test_coalesced_writes_arrive_in_order_and_are_never_held_past_an_iteration() -> None:
    async def run() -> None:
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair()
        b.setblocking(False)
        transport, _ = await loop.create_connection(asyncio.Protocol, sock=a)
        ct = CoalescingTransport(transport, loop)  # type: ignore[arg-type]

        async def read(n: int) -> bytes:
            got = b""
            while len(got) < n:
                got += await asyncio.wait_for(loop.sock_recv(b, 65536), 2)
            return got

        ct.write(b"HTTP/1.1 200 OK\r\n\r\n")
        ct.write(b"body")
        assert await read(23) == b"HTTP/1.1 200 OK\r\n\r\nbody"
        ct.write(b"chunk-1")  # alone: flushed at the end of this iteration
        assert await read(7) == b"chunk-1"
        ct.writelines([b"a", b"b"])
        ct.write(memoryview(b"c"))
        assert await read(3) == b"abc"
        assert ct.get_write_buffer_size() == 0 and not ct.is_closing()
        ct.write(b"last")
        ct.close()
        assert await read(4) == b"last"
        assert await asyncio.wait_for(loop.sock_recv(b, 10), 2) == b""  # then EOF
        b.close()

    asyncio.run(run())
