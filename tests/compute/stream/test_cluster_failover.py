"""Failover on a Redis Cluster under load: pushes (acknowledged after WAIT 1), two stream workers and
reads run while the master holding the source's streams (and a third of the online shards) is
killed; its replica is promoted, everyone reconnects by themselves, reads recover within seconds,
and no acknowledged event is lost nor counted twice (final sums vs a count of acknowledged pushes)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest

import context_store as cs
from context_store.config import load_config
from context_store.errors import ContextStoreError
from tests.support.cluster import RedisClusterProcs
from tests.support.repo import make_repo
from tests.support.stream import REPO, events_table

pytestmark = [pytest.mark.redis, pytest.mark.slow]

USERS = [f"u{i}" for i in range(8)]


def _lifetime_sum(store: cs.ContextStore, user: str) -> float:
    vals = store.get_features("fraud", {"user_id": user}).feature_values
    (name,) = [k for k in vals if "sum" in k and "lifetime" in k.lower()]
    return float(vals[name] or 0.0)


def test_master_killed_under_load_loses_no_acknowledged_event(tmp_path: Path, workspace_name: str) -> None:
    from context_store.compute.stream.worker import run_workers

    cluster = RedisClusterProcs(tmp_path / "cluster", node_timeout_ms=1000).start()
    try:
        root = make_repo(
            tmp_path / "repo",
            REPO.format(partitions=4, lateness="1h", interval=""),
            data={"txns.parquet": events_table([])},
        )
        config = load_config(
            root,
            workspace=workspace_name,
            online_store=cluster.url,
            redis_wait_replicas=1,
            redis_wait_timeout_ms=500,
            redis_read_timeout_ms=500,
        )
        store = cs.ContextStore(root, config=config)
        store.apply(force=True)
        stop, done = threading.Event(), threading.Event()
        pool = run_workers(store.stream_context(), 2, stop, flush_interval=0.2)
        acked = dict.fromkeys(USERS, 0.0)
        maybe = dict.fromkeys(USERS, 0.0)  # pushes that failed: written or not, the client cannot know
        errors: Counter[str] = Counter()
        read_ok: list[float] = []
        read_failed: list[float] = []

        def pusher() -> None:
            i = 0
            while not done.is_set():
                u = USERS[i % len(USERS)]
                i += 1
                ev = {"user_id": u, "ts": datetime.now(UTC), "amount": 1.0, "merchant": "m"}
                try:
                    store.push("transactions", [ev], wait=False)
                    acked[u] += 1
                except ContextStoreError as e:
                    maybe[u] += 1
                    errors[type(e).__name__ + ": " + str(e)[:80]] += 1
                    time.sleep(0.02)

        def reader() -> None:  # every user: some live in the victim's shards
            i = 0
            while not done.is_set():
                i += 1
                try:
                    store.get_features("fraud", {"user_id": USERS[i % len(USERS)]})
                    read_ok.append(time.monotonic())
                except ContextStoreError:
                    read_failed.append(time.monotonic())
                    time.sleep(0.01)

        threads = [threading.Thread(target=pusher), threading.Thread(target=reader)]
        for t in threads:
            t.start()
        try:
            time.sleep(2.0)
            victim = cluster.master_of(f"cs:{workspace_name}:{{s:transactions}}:p0")
            before = set(cluster.master_ports())
            killed_at = time.monotonic()
            cluster.kill(victim)
            deadline = killed_at + 20
            while time.monotonic() < deadline:
                masters = set(cluster.master_ports())
                if len(masters) == 3 and victim not in masters:
                    break
                time.sleep(0.2)
            promoted = set(cluster.master_ports()) - before
            assert len(promoted) == 1, "the victim's replica was not promoted"
            promoted_at = time.monotonic()
            # The promoted master has no replica: WAIT 1 refuses its writes (503, nothing acknowledged)
            # until the old master rejoins as its replica, as an operator would bring it back.
            time.sleep(1.0)
            cluster.restart(victim)
            time.sleep(4.0)  # load continues on the new topology
        finally:
            done.set()
            for t in threads:
                t.join(30)
        # Reads recovered by themselves: they succeed again within a few seconds of the promotion.
        after = [t for t in read_ok if t > promoted_at]
        assert len(after) > 100, "reads did not recover after the failover"
        assert not read_failed or max(read_failed) - promoted_at < 5.0, max(read_failed) - promoted_at
        assert sum(acked.values()) > 20, errors.most_common(3)
        # Every acknowledged push is applied exactly once (failed ones at most once).
        deadline = time.monotonic() + 30
        while True:
            got = {u: _lifetime_sum(store, u) for u in USERS}
            if all(acked[u] <= got[u] <= acked[u] + maybe[u] for u in USERS) or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        stop.set()
        pool.stop()
        print(
            f"failover: acked={sum(acked.values()):.0f} failed={sum(maybe.values()):.0f} "
            f"applied={sum(got.values()):.0f} "
            f"reads ok={len(read_ok)} failed={len(read_failed)} promotion={promoted_at - killed_at:.1f}s "
            f"last failed read at +{max(read_failed, default=killed_at) - killed_at:.2f}s after the kill"
        )
        for u in USERS:
            assert acked[u] <= got[u] <= acked[u] + maybe[u], (u, got[u], acked[u], maybe[u])
        store.close()
    finally:
        cluster.stop()
