"""The Redis store's async read path (``_aio.py``: one raw connection per event loop, pipelined): replies
reach the right waiters under concurrency and cancellation, a hung Redis fails fast, a restarted one is
reconnected. Test-owned redis-server processes (SIGSTOP, restart) where the shared Redis must not be touched."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvloop

import context_store as cs
from context_store.config import load_config
from context_store.errors import UnavailableError
from context_store.state.tiles import ViewState
from context_store.stores.online import BaseOnlineStore, open_online_store
from context_store.stores.online._aio import AsyncRawConnection
from context_store.stores.online.redis import RedisOnlineStore
from tests.stores.online.test_online_contract import NOW, agg_state, events, expected, key, table
from tests.support.private_redis import PrivateRedis

pytestmark = pytest.mark.redis

USERS = tuple(f"u{i}" for i in range(40))


@dataclass
class Own:
    """A test-owned, password-protected redis-server (SIGSTOP / kill are allowed on it), a store on it and
    one aggregation view with u1's events applied."""

    redis: PrivateRedis
    store: BaseOnlineStore
    st: ViewState

    @property
    def pid(self) -> int:
        assert self.redis.proc is not None
        return self.redis.proc.pid


@pytest.fixture
def own(tmp_path: Path) -> Iterator[Own]:
    server = PrivateRedis(tmp_path, password="s3cr3t-pw").start()
    try:
        s = open_online_store(load_config(tmp_path, workspace="aown", online_store=server.url))
        st = agg_state("1h", [cs.Aggregate("amount", "count", "1d")])
        s.apply_events(st, table(events(10, seed=1, users=("u1",))), now_us=NOW)
        yield Own(server, s, st)
        s.close()
    finally:
        server.stop()


@pytest.fixture
def shared(tmp_path: Path, workspace_name: str, redis_url: str) -> Iterator[BaseOnlineStore]:
    s = open_online_store(load_config(tmp_path, workspace=workspace_name, online_store=redis_url))
    yield s
    s.clear()
    s.close()


@pytest.fixture
def patient(tmp_path: Path, workspace_name: str, redis_url: str) -> Iterator[BaseOnlineStore]:
    """A 2 s read bound: 400 pipelined reads on a busy 2-core CI box can take longer than the 100 ms default
    (for tests of pipelining and cancellation; the bounds themselves are tested with ``shared``)."""
    config = load_config(tmp_path, workspace=workspace_name, online_store=redis_url, redis_read_timeout_ms=2000)
    s = open_online_store(config)
    yield s
    s.clear()
    s.close()


def test_concurrent_reads_pipeline_on_one_connection_and_cancelled_ones_keep_it_in_sync(
    patient: BaseOnlineStore,
) -> None:
    st = agg_state("1h", [cs.Aggregate("amount", "count", "1d"), cs.Aggregate("amount", "sum", "1d")])
    ev = events(600, seed=5, users=USERS)
    patient.apply_events(st, table(ev), now_us=NOW)
    want = {u: expected(st, ev, u, NOW) for u in USERS}

    async def run() -> None:
        async def one(u: str) -> tuple[str, list[object] | None]:
            return u, (await patient.read_features_async([(st, key(u))], NOW))[0].values

        # 400 single-key reads in flight at once, plus multi-key reads between them
        order = [USERS[i % len(USERS)] for i in range(400)]
        got = await asyncio.gather(*(one(u) for u in order))
        for u, vals in got:
            assert vals == pytest.approx(want[u]), u
        many = await patient.read_features_async([(st, key(u)) for u in USERS], NOW)
        assert [v.values for v in many] == [pytest.approx(want[u]) for u in USERS]
        per = await patient.read_entities_async([st], [key(u) for u in USERS], NOW)
        assert [p[0].values for p in per] == [pytest.approx(want[u]) for u in USERS]
        # cancel every other waiter after the commands went out: their replies are read and dropped
        tasks = [asyncio.ensure_future(one(u)) for u in order[:100]]
        await asyncio.sleep(0)
        for t in tasks[::2]:
            t.cancel()
        done = await asyncio.gather(*tasks, return_exceptions=True)
        for t, r in zip(tasks, done):
            if not t.cancelled():
                assert isinstance(r, tuple) and r[1] == pytest.approx(want[r[0]])
        for u in USERS[:5]:
            assert (await one(u))[1] == pytest.approx(want[u])

    asyncio.run(run())
    asyncio.run(run())  # a second event loop opens its own connection


def test_hung_redis_async_reads_fail_fast_then_recover(own: Own) -> None:
    s, st = own.store, own.st

    async def run() -> None:
        assert (await s.read_features_async([(st, key("u1"))], NOW))[0].values is not None
        os.kill(own.pid, signal.SIGSTOP)
        try:
            took = []
            for _ in range(3):
                t = time.monotonic()
                results = await asyncio.gather(
                    *(s.read_features_async([(st, key("u1"))], NOW) for _ in range(5)), return_exceptions=True
                )
                took.append(time.monotonic() - t)
                for r in results:
                    assert isinstance(r, UnavailableError) and r.status == 503, r
                    assert "s3cr3t-pw" not in str(r)
        finally:
            os.kill(own.pid, signal.SIGCONT)
        assert max(took) < 1.0, took  # default read timeout 100 ms; generous for a loaded 2-core box
        assert (await s.read_features_async([(st, key("u1"))], NOW))[0].values is not None  # recovers

    asyncio.run(run())


def test_restarted_redis_is_reconnected_on_the_next_read(own: Own) -> None:
    s, st = own.store, own.st

    async def run() -> None:
        assert (await s.read_features_async([(st, key("u1"))], NOW))[0].values is not None
        own.redis.restart_empty()  # same loop, same (now broken) connection
        s.apply_events(st, table(events(10, seed=1, users=("u1",))), now_us=NOW)
        # the broken connection is found on use and the read retried once on a new one
        assert (await s.read_features_async([(st, key("u1"))], NOW))[0].values is not None
        own.redis.stop()
        await asyncio.sleep(0.05)  # the loop sees the connection close
        with pytest.raises(UnavailableError):
            await s.read_features_async([(st, key("u1"))], NOW)

    asyncio.run(run())


def test_a_reply_waiting_in_the_socket_after_a_stalled_loop_is_not_a_timeout(shared: BaseOnlineStore) -> None:
    st = agg_state("1h", [cs.Aggregate("amount", "count", "1d")])
    ev = events(50, seed=7, users=USERS[:3])
    shared.apply_events(st, table(ev), now_us=NOW)

    async def run() -> None:
        await shared.read_features_async([(st, key("u0"))], NOW)  # the connection is open
        task = asyncio.ensure_future(shared.read_features_async([(st, key("u1"))], NOW))
        # right after the task sends its command, the loop stalls past the 100 ms read budget; the reply that
        # waits in the socket meanwhile counts (libuv polls the sockets before it runs the now overdue timer)
        asyncio.get_running_loop().call_soon(time.sleep, 0.4)
        assert (await task)[0].values == pytest.approx(expected(st, ev, "u1", NOW))

    uvloop.run(run())  # the server's loop: libuv runs due timers before it polls the sockets (asyncio: after)


def test_timed_out_reads_fail_alone_and_the_connection_survives_a_short_hang(own: Own) -> None:
    s, st = own.store, own.st
    assert isinstance(s, RedisOnlineStore)

    async def run() -> None:
        assert (await s.read_features_async([(st, key("u1"))], NOW))[0].values is not None
        [conn] = s.aconns.of(asyncio.get_running_loop()).values()
        os.kill(own.pid, signal.SIGSTOP)
        try:
            first = asyncio.ensure_future(s.read_features_async([(st, key("u1"))], NOW))
            await asyncio.sleep(0.06)
            second = asyncio.ensure_future(s.read_features_async([(st, key("u1"))], NOW))
            with pytest.raises(UnavailableError):
                await first
            assert not second.done()  # its own budget is not spent yet
            with pytest.raises(UnavailableError):
                await second
        finally:
            os.kill(own.pid, signal.SIGCONT)
        # the late replies are read and dropped; the same connection serves on
        assert (await s.read_features_async([(st, key("u1"))], NOW))[0].values is not None
        assert list(s.aconns.of(asyncio.get_running_loop()).values()) == [conn] and not conn.closed

    asyncio.run(run())


def test_each_event_loop_reads_on_its_own_connection_and_close_closes_them_all(shared: BaseOnlineStore) -> None:
    s = shared
    assert isinstance(s, RedisOnlineStore)
    st = agg_state("1h", [cs.Aggregate("amount", "count", "1d")])
    ev = events(20, seed=3, users=USERS[:2])
    s.apply_events(st, table(ev), now_us=NOW)
    seen: list[object] = []

    async def run() -> None:
        loop = asyncio.get_running_loop()
        assert s.aconns.of(loop) == {}  # opened on the first read, not before
        for _ in range(3):
            assert (await s.read_features_async([(st, key("u0"))], NOW))[0].values == pytest.approx(
                expected(st, ev, "u0", NOW)
            )
        [conn] = s.aconns.of(loop).values()  # one connection, reused by the loop's reads
        seen.append(conn)

    asyncio.run(run())
    asyncio.run(run())  # a new loop (possibly reusing the first one's id) opens its own
    first, second = seen
    assert first is not second
    assert isinstance(second, AsyncRawConnection) and not second.closed
    assert isinstance(first, AsyncRawConnection) and first.closed  # its loop ended: dropped when the next opened
    s.close()  # the server closes stores from another thread at shutdown: no connection is left open
    assert all(isinstance(c, AsyncRawConnection) and c.closed for c in seen)
