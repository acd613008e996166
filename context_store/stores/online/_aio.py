"""The Redis store's async hot read path: one raw connection per event loop, driven as an asyncio protocol.

redis-py opens the connection (AUTH, SELECT, TLS: whatever the URL asks), then this protocol takes over its
transport: commands are written pre-packed, replies parsed by hiredis in ``data_received`` and handed to
waiting futures in order. Concurrent requests of one worker pipeline on the one connection. Measured in
the feature server: redis.asyncio's per-command layers (pool checkout, retry wrapper, stream reader,
``asyncio.timeout``) cost more CPU than the whole feature computation of a 10-feature lookup.

Timeouts: no timer per command. One timer per connection is armed at the earliest deadline of a waiting
command. A command past its deadline fails alone with ``TimeoutError`` (a hung Redis is a fast 503, as on
the sync path); its slot stays in the pipeline so its late reply is read and dropped, and the commands
behind it keep their own budgets. A reply owed for
longer than ``abandon_s`` past its deadline (a Redis hung for good) aborts the connection: every command
on it fails and the next one opens a new connection.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any

__all__ = ["AsyncRawConnection", "open_async_raw"]


class _Pending:
    __slots__ = ("acc", "deadline", "fut", "left")

    def __init__(self, fut: asyncio.Future[Any], n: int, deadline: float) -> None:
        self.fut = fut
        self.left = n
        self.acc: list[Any] | None = [] if n > 1 else None
        self.deadline = deadline


class AsyncRawConnection(asyncio.Protocol):
    """A connection's transport, taken over from redis-py after its handshake (``open_async_raw``)."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, transport: Any, keep: Any, error: type[Exception], abandon_s: float = 2.0
    ) -> None:
        import hiredis

        self.loop = loop
        self.transport = transport
        self._keep = keep  # the redis-py connection object that opened the transport (closed with it)
        self._err = error
        self.reader = hiredis.Reader(replyError=error)
        self.pending: collections.deque[_Pending] = collections.deque()
        self.closed = False
        self.abandon_s = abandon_s
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._timed_out = False

    # -- asyncio.Protocol ---------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        reader = self.reader
        reader.feed(data)
        pending = self.pending
        while pending:
            r = reader.gets()
            if r is False:
                return
            p = pending[0]
            if p.acc is not None:
                p.acc.append(r)
                p.left -= 1
                if p.left:
                    continue
                r = p.acc
            pending.popleft()
            if not p.fut.done():  # a cancelled waiter (client gone): its reply is read and dropped
                p.fut.set_result(r)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        err: Exception = (
            TimeoutError("Redis did not answer within the read timeout")
            if self._timed_out
            else ConnectionError(f"Redis closed the connection{f' ({exc})' if exc else ''}")
        )
        while self.pending:
            p = self.pending.popleft()
            if not p.fut.done():
                p.fut.set_exception(err)

    # -- commands -----------------------------------------------------------------------
    def call(self, packed: bytes, n: int, timeout: float) -> asyncio.Future[Any]:
        """Send ``n`` pre-packed commands; the future is the reply (``n == 1``) or the list of replies."""
        if self.closed:
            raise ConnectionError("Redis connection is closed")
        fut = self.loop.create_future()
        deadline = self.loop.time() + timeout
        self.pending.append(_Pending(fut, n, deadline))
        self.transport.write(packed)
        if self._timer is None or deadline < self._timer_at:
            self._arm(deadline)
        return fut

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._timer_at = self.loop.call_at(when, self._check), when

    def _check(self) -> None:
        self._timer = None
        pending = self.pending
        if not pending or self.closed:
            return
        now = self.loop.time()
        if pending[0].deadline + self.abandon_s <= now:  # owed for too long: Redis is gone for good
            self._timed_out = True
            self.closed = True  # new commands go to a new connection at once
            self.transport.abort()  # connection_lost fails every pending command
            return
        for p in pending:
            if p.deadline <= now and not p.fut.done():
                p.fut.set_exception(TimeoutError("Redis did not answer within the read timeout"))
        live = [p.deadline for p in pending if not p.fut.done()]
        self._arm(min(live) if live else pending[0].deadline + self.abandon_s)

    def close(self) -> None:
        """Close from any thread (the server closes stores from a worker thread at shutdown)."""
        if self.closed:
            return
        self.closed = True
        try:
            if not self.loop.is_closed():  # a closed loop (``asyncio.run`` ended): the transport's GC closes it
                self.loop.call_soon_threadsafe(self.transport.close)
        except (RuntimeError, OSError):  # closing anyway
            pass


async def open_async_raw(client: Any, timeout: float, abandon_s: float = 2.0) -> AsyncRawConnection:
    """A connection from redis.asyncio ``client``'s pool (AUTH/SELECT/TLS done by redis-py), taken over."""
    import redis

    conn = client.connection_pool.make_connection()
    async with asyncio.timeout(timeout):
        await conn.connect()
    writer = conn._writer
    transport = writer.transport
    loop = asyncio.get_running_loop()
    proto = AsyncRawConnection(loop, transport, conn, redis.exceptions.ResponseError, abandon_s)
    transport.set_protocol(proto)
    return proto
