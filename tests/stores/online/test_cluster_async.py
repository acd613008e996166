"""The Redis Cluster store's async read path (``RedisClusterOnlineStore._ahmget``): one raw connection per
master and event loop, HMGETs grouped per master; a MOVED reply (a stale slot map) or a lost connection falls
back to redis-py's cluster client, which follows the redirect, and the right values come back either way."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

import context_store as cs
from context_store.config import load_config
from context_store.errors import UnavailableError
from context_store.state.codec import entity_key
from context_store.stores.online import open_online_store
from context_store.stores.online._cluster import shard_of
from context_store.stores.online.redis_cluster import RedisClusterOnlineStore
from tests.stores.online.test_online_contract import NOW, agg_state, events, expected, key, table
from tests.support.cluster import RedisClusterProcs

pytestmark = pytest.mark.redis

USERS = tuple(f"u{i}" for i in range(30))


@pytest.fixture
def store(redis_cluster: RedisClusterProcs, tmp_path: Path, workspace_name: str) -> Iterator[RedisClusterOnlineStore]:
    s = open_online_store(load_config(tmp_path, workspace=workspace_name, online_store=redis_cluster.url))
    assert isinstance(s, RedisClusterOnlineStore)
    yield s
    s.clear()
    s.close()


def test_async_reads_group_per_master_on_raw_connections(store: RedisClusterOnlineStore) -> None:
    st = agg_state("1h", [cs.Aggregate("amount", "count", "1d"), cs.Aggregate("amount", "sum", "1h")])
    ev = events(400, seed=11, users=USERS)
    store.apply_events(st, table(ev), now_us=NOW)
    reads = [(st, key(u)) for u in USERS] + [(st, key("nobody"))]

    async def run() -> None:
        got = await store.read_features_async(reads, NOW)  # every master in one request
        for u, vals in zip(USERS, got):
            assert vals.values == pytest.approx(expected(st, ev, u, NOW)), u
        assert got[-1].values == pytest.approx(expected(st, ev, "nobody", NOW))
        masters = {n.name for n in store._rr.get_primaries()}
        loop = asyncio.get_running_loop()
        conns = set(store.aconns.of(loop))
        assert conns == masters  # one raw connection per master, nothing went through the fallback's thread
        one = await asyncio.gather(*(store.read_features_async([(st, key(u))], NOW) for u in USERS))
        assert [r[0].values for r in one] == [g.values for g in got[:-1]]

    asyncio.run(run())


def test_a_moved_slot_falls_back_to_the_cluster_client_and_heals(store: RedisClusterOnlineStore) -> None:
    st = agg_state("1h", [cs.Aggregate("amount", "count", "1d")])
    ev = events(100, seed=12, users=USERS[:5])
    store.apply_events(st, table(ev), now_us=NOW)
    u = USERS[0]
    slot = store._slots[shard_of(entity_key(["user_id"], [u]), store.shards)]
    nm = store._rr.nodes_manager
    right = nm.get_node_from_slot(slot)
    wrong = next(n for n in store._rr.get_primaries() if n.name != right.name)
    nm.slots_cache[slot] = [wrong]  # a stale map, as after a resharding: that master answers MOVED

    async def run() -> None:
        loop = asyncio.get_running_loop()
        with pytest.raises(redis.exceptions.ResponseError, match="MOVED"):  # the raw path alone: a real MOVED
            await store._ahmget_raw([(key(u), ["x"])], 1)
        assert store.aconns.get(loop, wrong.name) is not None  # the connection stays usable after it
        got = await store.read_features_async([(st, key(u))], NOW)  # the fallback follows the redirect
        assert got[0].values == pytest.approx(expected(st, ev, u, NOW))
        assert nm.get_node_from_slot(slot).name == right.name  # redis-py's map is fixed: the raw path again
        got = await store.read_features_async([(st, key(u))], NOW)
        assert got[0].values == pytest.approx(expected(st, ev, u, NOW))
        assert store.aconns.get(loop, right.name) is not None

    asyncio.run(run())


def test_a_killed_connection_falls_back_then_reconnects(store: RedisClusterOnlineStore) -> None:
    st = agg_state("1h", [cs.Aggregate("amount", "count", "1d")])
    ev = events(100, seed=13, users=USERS)
    store.apply_events(st, table(ev), now_us=NOW)
    reads = [(st, key(u)) for u in USERS]
    want = [pytest.approx(expected(st, ev, u, NOW)) for u in USERS]

    async def run() -> None:
        loop = asyncio.get_running_loop()
        assert [r.values for r in await store.read_features_async(reads, NOW)] == want
        before = {name: store.aconns.get(loop, name) for name in {n.name for n in store._rr.get_primaries()}}
        assert all(before.values())
        for n in store._rr.get_primaries():  # the servers drop every client connection (as on a restart)
            store._rr.get_redis_connection(n).client_kill_filter(_type="normal", skipme=True)
        await asyncio.sleep(0.1)
        assert [r.values for r in await store.read_features_async(reads, NOW)] == want
        assert [r.values for r in await store.read_features_async(reads, NOW)] == want
        after = {name: store.aconns.get(loop, name) for name in before}
        assert all(c is not None and c is not before[name] for name, c in after.items())  # reopened

    asyncio.run(run())


def test_a_master_killed_the_async_reads_recover_on_the_promoted_replica(tmp_path: Path, workspace_name: str) -> None:
    cluster = RedisClusterProcs(tmp_path / "cluster", node_timeout_ms=1000).start()
    s = open_online_store(load_config(tmp_path, workspace=workspace_name, online_store=cluster.url))
    assert isinstance(s, RedisClusterOnlineStore)
    try:
        st = agg_state("1h", [cs.Aggregate("amount", "count", "1d")])
        ev = events(200, seed=14, users=USERS)
        s.apply_events(st, table(ev), now_us=NOW)
        for n in s._r.get_primaries():  # every write reached its replica before the crash
            s._r.get_redis_connection(n).execute_command("WAIT", 1, 2000)
        reads = [(st, key(u)) for u in USERS]
        want = [pytest.approx(expected(st, ev, u, NOW)) for u in USERS]
        victim = cluster.master_of(s._k(key(USERS[0])))

        async def run() -> None:
            assert [r.values for r in await s.read_features_async(reads, NOW)] == want
            cluster.kill(victim)
            deadline = time.monotonic() + 60
            while True:  # 503s while the replica is elected, then the right values
                try:
                    got = await s.read_features_async(reads, NOW)
                    break
                except UnavailableError:
                    assert time.monotonic() < deadline, "reads did not recover after the failover"
                    await asyncio.sleep(0.2)
            assert [r.values for r in got] == want
            loop = asyncio.get_running_loop()
            for _ in range(3):  # then the raw path again, on the new master's own connection
                assert [r.values for r in await s.read_features_async(reads, NOW)] == want
            names = {n.name for n in s._rr.get_primaries()}
            assert f"127.0.0.1:{victim}" not in names
            assert all(s.aconns.get(loop, name) is not None for name in names)

        asyncio.run(run())
    finally:
        s.close()
        cluster.stop()
