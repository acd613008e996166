"""Redis Streams workers against a real Redis: read-after-write, partition sharing, takeover of a
dead worker's pending entries, outside producers, exactly-once replay."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from pathlib import Path

import orjson
import pytest

from context_store.compute.stream.stats import STATS
from context_store.compute.stream.worker import StreamWorker, run_workers
from tests.support.stream import T0, StoreFactory, event

pytestmark = pytest.mark.redis

T_REQ = T0 + timedelta(hours=6)


@pytest.fixture
def rstore(tmp_path: Path, redis_url: str, workspace_name: str, redis_cleanup: list[str], make_store: StoreFactory):
    redis_cleanup.extend([f"cs:{workspace_name}:*", f"*{workspace_name}*"])
    s = make_store(tmp_path / "repo", online_store=redis_url, workspace=workspace_name)
    yield s
    s.close()


def _stream_log(store):
    return store.ingestor.stream_log


def _vals(store, user: str) -> dict:
    return store.get_features("fraud", {"user_id": user}, request_time=T_REQ).feature_values


def _events(n: int, users: int = 20, start: int = 0) -> list[dict]:
    return [event(f"u{i % users}", (start + i) * 0.01, float(i % 7), f"m{i % 5}") for i in range(n)]


def _expected_counts(rows: list[dict]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in rows:
        out[r["user_id"]] = out.get(r["user_id"], 0) + 1
    return out


def _flaky_commits(online, before: tuple[int, ...], after: tuple[int, ...]) -> dict:
    """Make ``online._commit`` fail on the given calls: before writing, or after (reply lost)."""
    real = online._commit
    calls = {"n": 0, "real": real}

    def flaky(ops, cas=(), notify=None):
        calls["n"] += 1
        if calls["n"] in before:
            raise ConnectionError("injected failure")
        ok = real(ops, cas, notify)
        if calls["n"] in after:
            raise ConnectionError("injected failure after the commit")
        return ok

    online._commit = flaky
    return calls


def _run_until_drained(store, worker: StreamWorker, seconds: float = 30) -> None:
    """Run ``worker`` on a thread until every stream entry is applied and acknowledged."""
    stop = threading.Event()
    t = threading.Thread(target=worker.run, args=(stop,))
    t.start()
    try:
        log = _stream_log(store)
        keys = [log.stream_key("transactions", p) for p in range(4)]
        deadline = time.time() + seconds
        while time.time() < deadline and log.lag(keys):
            time.sleep(0.1)
        assert log.lag(keys) == 0
    finally:
        stop.set()
        t.join(10)


def test_push_with_live_worker_is_visible_on_return(rstore) -> None:
    stop = threading.Event()
    pool = run_workers(rstore.stream_context(), 1, stop, flush_interval=0.2)
    try:
        deadline = time.time() + 5
        while len(pool.workers[0].owned) < 4 and time.time() < deadline:
            time.sleep(0.02)
        assert len(pool.workers[0].owned) == 4  # alone: owns every partition
        for i in range(20):
            res = rstore.push("transactions", [event("u1", i, 2.0)])
            assert res.visible
            assert _vals(rstore, "u1")["txn_stats.amount_count_1d"] == i + 1  # read-after-write
        deadline = time.time() + 15  # the offline log follows about once a second
        while time.time() < deadline and not all(
            rstore.offline.exists(t) and rstore.offline.count(t) == 20 for t in ("fv__txn_stats", "src__transactions")
        ):
            time.sleep(0.1)
        assert rstore.offline.count("src__transactions") == 20
        assert rstore.offline.count("fv__txn_stats") == 20
    finally:
        pool.stop()
    log = _stream_log(rstore)
    assert log.lag([log.stream_key("transactions", p) for p in range(4)]) == 0  # all acked


def test_push_without_worker_drains_inline(rstore) -> None:
    rows = _events(300)
    res = rstore.push("transactions", rows)
    assert res.visible and res.accepted == 300 and len(res.offsets) == 4
    for user, n in _expected_counts(rows).items():
        assert _vals(rstore, user)["txn_stats.amount_count_1d"] == n
    assert rstore.offline.count("src__transactions") == 300
    # Nothing left pending; the pushing process keeps the leases while no worker runs...
    log = _stream_log(rstore)
    assert log.lag([log.stream_key("transactions", p) for p in range(4)]) == 0
    assert all((log.lease_owner("transactions", p) or "").startswith("push-") for p in range(4))
    # ...and hands them to a worker as soon as one is alive.
    stop = threading.Event()
    pool = run_workers(rstore.stream_context(), 1, stop, flush_interval=0.2)
    try:
        time.sleep(0.3)
        assert rstore.push("transactions", [event("u0", 1, 1.0)]).visible
        assert _vals(rstore, "u0")["txn_stats.amount_count_1d"] == _expected_counts(rows)["u0"] + 1
        deadline = time.time() + 5
        while len(pool.workers[0].owned) < 4 and time.time() < deadline:
            time.sleep(0.05)
        assert all(log.lease_owner("transactions", p) == pool.workers[0].name for p in range(4))
    finally:
        pool.stop()


def test_two_workers_share_partitions_and_count_exactly(rstore) -> None:
    stop = threading.Event()
    pool = run_workers(rstore.stream_context(), 2, stop, flush_interval=0.2)
    try:
        deadline = time.time() + 10
        while time.time() < deadline and sorted(len(w.owned) for w in pool.workers) != [2, 2]:
            time.sleep(0.05)
        assert sorted(len(w.owned) for w in pool.workers) == [2, 2]
        rows = _events(2000)
        for i in range(0, len(rows), 100):
            assert rstore.push("transactions", rows[i : i + 100]).visible
        for user, n in _expected_counts(rows).items():
            assert _vals(rstore, user)["txn_stats.amount_count_1d"] == n
        assert all(w.processed > 0 for w in pool.workers)
    finally:
        pool.stop()
    assert rstore.offline.count("src__transactions") == 2000
    assert rstore.offline.count("fv__txn_stats") == 2000


def test_new_worker_claims_pending_entries_of_a_dead_one(rstore) -> None:
    """A worker that read and applied entries but died before its offline flush/ack: the next
    owner takes them over (XAUTOCLAIM); online skips what was applied, offline gets all."""
    rows = _events(500)
    log = _stream_log(rstore)
    dead = StreamWorker(rstore.stream_context(), name="dead", lease_ms=400, flush_interval=3600)
    dead.rebalance()
    assert len(dead.owned) == 4
    # Add without waiting: write to the streams the way push does, then let `dead` read half.
    from context_store.compute.stream.processor import source_plan
    from context_store.compute.stream.validate import validate_records

    plan = source_plan(rstore.definitions, "transactions")
    rstore.ingestor.push_redis(plan, validate_records(plan.source, rows[:250], plan.required), timeout=None)
    while dead.step():
        pass
    assert dead.processed == 250
    rstore.ingestor.push_redis(plan, validate_records(plan.source, rows[250:], plan.required), timeout=None)
    # `dead` stops here without flushing/acking (as after kill -9); its leases expire.
    log.leave("dead")
    time.sleep(0.5)
    claimed_before = STATS.get("claimed_events", "transactions")
    heir = StreamWorker(rstore.stream_context(), name="heir", lease_ms=2000, flush_interval=3600)
    heir.rebalance()
    assert len(heir.owned) == 4
    assert STATS.get("claimed_events", "transactions") - claimed_before >= 4  # the dead one's entries
    while heir.step():
        pass
    heir.close()
    for user, n in _expected_counts(rows).items():
        assert _vals(rstore, user)["txn_stats.amount_count_1d"] == n
    assert rstore.offline.count("src__transactions") == 500
    assert rstore.offline.count("fv__txn_stats") == 500
    assert log.lag([log.stream_key("transactions", p) for p in range(4)]) == 0


def test_outside_producer_json_entries(rstore) -> None:
    """Events XADDed by another system (JSON) are validated and applied; a bad one is counted."""
    log = _stream_log(rstore)
    key = log.stream_key("transactions", 0)
    log.ensure_group(key)
    good = {"user_id": "ext", "ts": T0.isoformat(), "amount": 4.0, "merchant": "x"}
    log.r.xadd(key, {"json": orjson.dumps([good, {**good, "amount": 6.0}])})
    log.r.xadd(key, {"json": orjson.dumps({**good, "amount": "NaN-ish"})})
    rejected = STATS.get("rejected_pushes", "transactions")
    w = StreamWorker(rstore.stream_context(), name="w1")
    w.rebalance()
    while w.step():
        pass
    w.close()
    assert STATS.get("rejected_pushes", "transactions") - rejected == 1
    v = _vals(rstore, "ext")
    assert v["txn_stats.amount_count_1d"] == 2 and v["txn_stats.amount_max_1d"] == 6.0


def test_worker_needs_redis(tmp_path: Path, make_store: StoreFactory) -> None:
    from context_store.errors import ContextStoreError

    s = make_store(tmp_path / "r")
    with pytest.raises(ContextStoreError, match="Redis"):
        StreamWorker(s.stream_context())
    s.close()


def test_worker_rejects_unknown_source_and_reloads_on_apply(rstore) -> None:
    from context_store.errors import NotFoundError

    with pytest.raises(NotFoundError, match="not a stream source"):
        StreamWorker(rstore.stream_context(), sources=["nope"])
    w = StreamWorker(rstore.stream_context(), name="reloader")
    w.rebalance()
    assert len(w.owned) == 4 and w.plans["transactions"].source.partitions == 4
    # Another process applies a change (8 partitions): the worker hands back and reloads.
    repo = Path(rstore.config.repo)
    (repo / "features.py").write_text((repo / "features.py").read_text().replace("partitions=4", "partitions=8"))
    other = type(rstore)(repo, workspace=rstore.workspace, online_store=rstore.config.online_store)
    other.apply(force=True)
    other.close()
    w.rebalance()
    assert w.plans["transactions"].source.partitions == 8 and len(w.owned) == 8
    w.close()


def test_failure_mid_batch_is_replayed_exactly_once(rstore) -> None:
    """Redis errors in the middle of a round (after some commits, before others; also after a
    commit succeeded but before the worker heard so): the worker drops its memory, re-claims its
    own pending entries and the fences skip what was applied."""

    online = rstore.online
    calls = _flaky_commits(online, before=(4, 9, 14), after=(6, 11))
    rows = _events(600)
    for i in range(0, 600, 20):
        rstore.ingestor.push("transactions", rows[i : i + 20], wait=False)
    try:
        _run_until_drained(rstore, StreamWorker(rstore.stream_context(), name="flaky", flush_interval=0.1, count=5))
    finally:
        online._commit = calls["real"]
    assert calls["n"] > 14  # all injected failures happened
    for user, n in _expected_counts(rows).items():
        assert _vals(rstore, user)["txn_stats.amount_count_1d"] == n
    assert rstore.offline.count("src__transactions") == 600
    assert rstore.offline.count("fv__txn_stats") == 600


def test_backlog_limit_refuses_pushes_instead_of_dropping(rstore) -> None:
    from context_store.errors import RateLimitedError

    repo = Path(rstore.config.repo)
    (repo / "context_store.yaml").write_text("redis_stream_maxlen: 2\n")
    store = type(rstore)(repo, workspace=rstore.workspace, online_store=rstore.config.online_store)
    try:
        for i in range(2):
            store.ingestor.push("transactions", [event("u1", i, 1.0)], wait=False)
        with pytest.raises(RateLimitedError, match="behind") as ei:
            store.ingestor.push("transactions", [event("u1", 5, 1.0), event("u2", 5, 1.0)], wait=False)
        assert ei.value.status == 429
        log = _stream_log(store)
        assert sum(log.r.xlen(log.stream_key("transactions", p)) for p in range(4)) == 2  # nothing half-written
        # A worker catches up (applies, logs offline, acks, trims): pushes are accepted again.
        w = StreamWorker(store.stream_context(), name="catch-up")
        w.rebalance()
        while w.step():
            pass
        w.close()
        assert store.push("transactions", [event("u1", 6, 1.0)]).visible
        assert _vals(store, "u1")["txn_stats.amount_count_1d"] == 3
    finally:
        store.close()


def test_view_keyed_by_another_entity_counts_exactly_with_two_workers(
    tmp_path: Path, redis_url: str, workspace_name: str, redis_cleanup: list[str]
) -> None:
    """A merchant-keyed view on a source partitioned by user: every partition (and so both
    workers) writes the same merchants. Their read-modify-writes are guarded (optimistic
    concurrency), so concurrent commits never lose an update."""
    import context_store as cs
    from context_store.compute.stream.processor import source_plan
    from tests.support.repo import make_repo
    from tests.support.stream import REPO, events_table

    redis_cleanup.extend([f"cs:{workspace_name}:*", f"*{workspace_name}*"])
    code = (
        REPO.format(partitions=4, lateness="1h", interval="")
        + """
merchant = cs.Entity("merchant", join_keys=["merchant"])
merchant_stats = cs.FeatureView("merchant_stats", entities=[merchant], source=txns,
    aggregations=[cs.Aggregate("amount", "count", "1d"), cs.Aggregate("amount", "sum", "1d")])
merchants = cs.FeatureService("merchants", [merchant_stats])
"""
    )
    make_repo(tmp_path / "repo", code, data={"txns.parquet": events_table([])})
    store = cs.ContextStore(tmp_path / "repo", workspace=workspace_name, online_store=redis_url)
    store.apply(force=True)
    plan = source_plan(store.definitions, "transactions")
    assert plan.partition_keys == ("user_id",) and plan.shared == frozenset({"merchant_stats"})
    stop = threading.Event()
    pool = run_workers(store.stream_context(), 2, stop, flush_interval=0.2, count=50)
    try:
        deadline = time.time() + 10
        while time.time() < deadline and sorted(len(w.owned) for w in pool.workers) != [2, 2]:
            time.sleep(0.05)
        rows = [event(f"u{i % 40}", i * 0.01, float(i % 7), f"m{i % 3}") for i in range(3000)]
        pushers = [
            threading.Thread(
                target=lambda k=k: [
                    store.ingestor.push("transactions", rows[i : i + 25], wait=False)
                    for i in range(k * 25, len(rows), 100)
                ]
            )
            for k in range(4)
        ]
        for t in pushers:
            t.start()
        for t in pushers:
            t.join()
        log = _stream_log(store)
        keys = [log.stream_key("transactions", p) for p in range(4)]
        while time.time() < deadline + 60 and log.lag(keys):
            time.sleep(0.05)
        assert log.lag(keys) == 0
    finally:
        pool.stop()
    for m in ("m0", "m1", "m2"):
        mine = [r["amount"] for r in rows if r["merchant"] == m]
        got = store.get_features("merchants", {"merchant": m}, request_time=T_REQ).feature_values
        assert got["merchant_stats.amount_count_1d"] == len(mine)
        assert got["merchant_stats.amount_sum_1d"] == pytest.approx(sum(mine))
    for user, n in _expected_counts(rows).items():
        assert _vals(store, user)["txn_stats.amount_count_1d"] == n
    store.close()


def test_recent_events_lists_exactly_once_across_failures(
    tmp_path: Path, redis_url: str, workspace_name: str, redis_cleanup: list[str]
) -> None:
    """A context service's recent-events lists commit with the round (fenced per partition): commits
    that fail, and commits that succeed but whose reply is lost, are replayed without duplicates."""
    import context_store as cs
    from context_store.state.codec import entity_key
    from tests.support.repo import make_repo
    from tests.support.stream import REPO, events_table

    redis_cleanup.extend([f"cs:{workspace_name}:*", f"*{workspace_name}*"])
    code = (
        REPO.format(partitions=4, lateness="1h", interval="")
        + """
ctx = cs.ContextService("ctx", entity=user, features=[txn_stats], recent_events=(txns, 50))
"""
    )
    make_repo(tmp_path / "repo", code, data={"txns.parquet": events_table([])})
    store = cs.ContextStore(tmp_path / "repo", workspace=workspace_name, online_store=redis_url)
    store.apply(force=True)
    online = store.online
    calls = _flaky_commits(online, before=(3, 8), after=(5, 11, 12))
    rows = _events(400, users=10)
    for i in range(0, len(rows), 10):
        store.ingestor.push("transactions", rows[i : i + 10], wait=False)
    try:
        _run_until_drained(
            store, StreamWorker(store.stream_context(), name="flaky-recent", flush_interval=0.1, count=7)
        )
    finally:
        online._commit = calls["real"]
    assert calls["n"] > 12
    for u in range(10):
        mine = [r for r in rows if r["user_id"] == f"u{u}"]
        got = online.read_recent("transactions", entity_key(["user_id"], [f"u{u}"]), 100)
        assert [g["amount"] for g in got] == [r["amount"] for r in mine]  # all 40: none twice
        assert [g["ts"] for g in got] == [r["ts"].isoformat() for r in mine]
    store.close()
