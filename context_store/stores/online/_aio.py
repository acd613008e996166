"""The Redis store's async hot read path: one raw connection per event loop, driven as an asyncio protocol.

redis-py opens the connection (AUTH, SELECT, TLS: whatever the URL asks), then this protocol takes over its
transport: commands are written pre-packed, replies parsed by hiredis in ``data_received`` and handed to
waiting futures in order. Concurrent requests of one worker pipeline on the one connection, and the commands
of one event-loop iteration leave in one write (``call`` holds them until the iteration's end): under load
several requests' HMGETs arrive at Redis together, so both this process and Redis make one write and one read
for all of them rather than one each (measured with strace under wrk: see evals/results/server.md). Measured in
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
import functools
import threading
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["AsyncRawConnection", "LoopConnections", "open_async_raw"]


_UNSENT = float("inf")  # the deadline of a command still held in ``_out``: its budget starts when it is written


class _Pending:
    __slots__ = ("acc", "deadline", "fut", "left", "timeout")

    def __init__(self, fut: asyncio.Future[Any], n: int, timeout: float) -> None:
        self.fut = fut
        self.left = n
        self.acc: list[Any] | None = [] if n > 1 else None
        self.timeout = timeout
        self.deadline = _UNSENT


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
        self._out: list[bytes] = []  # commands of this loop iteration, written by ``_flush`` at its end
        self._out_p: list[_Pending] = []  # their waiters

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
        p = _Pending(fut, n, timeout)
        self.pending.append(p)
        out = self._out
        out.append(packed)
        self._out_p.append(p)
        if len(out) == 1:  # the first of this iteration: written when the iteration ends, with any others
            self.loop.call_soon(self._flush)
        return fut

    def _flush(self) -> None:
        out, held = self._out, self._out_p
        self._out, self._out_p = [], []
        if not out or self.transport.is_closing():  # closing: connection_lost fails their commands
            return
        self.transport.write(out[0] if len(out) == 1 else b"".join(out))
        # Budgets start now, not at ``call``: a loop stalled in between (a long request) does not spend
        # them before the command even left.
        now = self.loop.time()
        first = _UNSENT
        for p in held:
            p.deadline = d = now + p.timeout
            first = min(first, d)
        if self._timer is None or first < self._timer_at:
            self._arm(first)

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
        live = [p.deadline for p in pending if not p.fut.done() and p.deadline != _UNSENT]
        nxt = min(live) if live else pending[0].deadline + self.abandon_s
        if nxt != _UNSENT:  # only unsent commands: ``_flush`` arms the timer when they leave
            self._arm(nxt)

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


class LoopConnections:
    """Raw connections per (event loop, key): each opened once (one opener at a time per loop and key, the
    others wait for it) and reopened when closed. Keyed by the loop's id and checked by identity: a new loop
    may reuse a closed one's id (``asyncio.run`` in tests). ``opener(key)`` opens one, bounded by its own
    budget; a caller waits at most its ``timeout`` (a busy host's handshake completes for later requests)."""

    def __init__(self, opener: Callable[[str], Awaitable[AsyncRawConnection]]) -> None:
        self._opener = opener
        self._conns: dict[tuple[int, str], AsyncRawConnection] = {}
        self._opening: dict[tuple[int, str], asyncio.Future[AsyncRawConnection]] = {}
        self._lock = threading.Lock()  # ``close_all`` runs from another thread at shutdown

    def get(self, loop: asyncio.AbstractEventLoop, key: str) -> AsyncRawConnection | None:
        """The open connection of ``loop`` to ``key``, if any (no await: the hot path)."""
        c = self._conns.get((id(loop), key))
        return c if c is not None and not c.closed and c.loop is loop else None

    def of(self, loop: asyncio.AbstractEventLoop) -> dict[str, AsyncRawConnection]:
        """``loop``'s open connections by key (what tests and diagnostics look at; not the hot path)."""
        with self._lock:
            held = list(self._conns.items())
        return {key: c for (lid, key), c in held if lid == id(loop) and not c.closed and c.loop is loop}

    async def open(self, loop: asyncio.AbstractEventLoop, key: str, timeout: float) -> AsyncRawConnection:
        k = (id(loop), key)
        opening = self._opening.get(k)
        if opening is None or opening.get_loop() is not loop:
            opening = self._opening[k] = asyncio.ensure_future(self._opener(key))
            opening.add_done_callback(functools.partial(self._opened, k))
        fresh = await asyncio.wait_for(asyncio.shield(opening), timeout)
        with self._lock:
            old = self._conns.get(k)
            self._conns[k] = fresh
            # Connections of loops that ended (``asyncio.run`` in a thread, tests) would be held until
            # ``close_all``: dropped here, on the rare open path, so their transports can be collected.
            ended = [kk for kk, c in self._conns.items() if c.loop.is_closed()]
            gone = [self._conns.pop(kk) for kk in ended]
        for c in [old, *gone] if old is not None and old is not fresh else gone:
            c.close()
        return fresh

    def _opened(self, k: tuple[int, str], f: asyncio.Future[AsyncRawConnection]) -> None:
        if self._opening.get(k) is f:
            self._opening.pop(k, None)
        if not f.cancelled():
            f.exception()  # retrieved: a failure nobody waits for any more (the waiter timed out) is not logged

    def close_all(self) -> None:
        with self._lock:
            conns, self._conns = list(self._conns.values()), {}
        for c in conns:
            c.close()
