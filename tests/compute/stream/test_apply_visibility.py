"""Read-after-write across an ``apply`` (Redis): a worker still on the old definitions must not make a
push to a new view look visible, and a running worker picks up a new apply within about a second."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest

from context_store.compute.stream.worker import run_workers
from tests.support.stream import T0, StoreFactory, event

pytestmark = pytest.mark.redis

T_REQ = T0 + timedelta(hours=6)


def _with_view(code: str, n: int) -> str:
    """The repo plus ``extra<n>``: a count over the same stream source, served by ``svc<n>``."""
    return code + (
        f"\nextra{n} = cs.FeatureView('extra{n}', entities=[user], source=txns, "
        f"aggregations=[cs.Aggregate('amount', 'count', '1d')])\n"
        f"svc{n} = cs.FeatureService('svc{n}', [extra{n}])\n"
    )


def test_push_right_after_apply_is_visible_only_with_the_new_view(
    tmp_path: Path, redis_url: str, workspace_name: str, redis_cleanup: list[str], make_store: StoreFactory
) -> None:
    redis_cleanup.append(f"*{workspace_name}*")
    store = make_store(tmp_path / "repo", online_store=redis_url, workspace=workspace_name)
    stop = threading.Event()
    pool = run_workers(store.stream_context(), 1, stop, flush_interval=0.2)
    try:
        log = store.ingestor.stream_log
        deadline = time.monotonic() + 10
        while any(log.lease_owner("transactions", p) is None for p in range(4)):  # the worker owns them all
            assert time.monotonic() < deadline, "the worker did not take its partitions"
            time.sleep(0.02)
        features = tmp_path / "repo" / "features.py"
        # Nothing reached the offline log yet: the new view has no history, so the apply marks it complete
        # and it must count every event pushed from now on.
        features.write_text(_with_view(features.read_text(), 1))
        store.apply(force=True)
        applied = time.monotonic()
        rows = [event(f"u{i % 3}", 10 + i, float(i)) for i in range(5)]
        res = store.push("transactions", rows)  # at once: the worker still runs the old definitions
        got = store.get_features("svc1", {"user_id": "u0"}, request_time=T_REQ).feature_values
        want = sum(1 for r in rows if r["user_id"] == "u0")
        # ``visible`` holds of the new view too: the worker reloads before applying entries pushed after the
        # apply, and an announcement by a worker on older definitions proves nothing to this pusher.
        assert res.visible, "the push was not visible within its timeout"
        assert got["extra1.amount_count_1d"] == want
        old = store.get_features("fraud", {"user_id": "u0"}, request_time=T_REQ).feature_values
        assert old["txn_stats.amount_count_1d"] == want
        version = store.registry.applied_version()
        while pool.workers[0]._version != version:
            assert time.monotonic() - applied < 2.0, "the worker did not reload the new definitions"
            time.sleep(0.01)
    finally:
        pool.stop()


def test_worker_on_a_context_made_before_an_apply_reloads(
    tmp_path: Path, redis_url: str, workspace_name: str, redis_cleanup: list[str], make_store: StoreFactory
) -> None:
    """The worker's version is that of its definitions, not the registry's when it started: a context
    built before an apply still gets reloaded (it used to count as already up to date)."""
    redis_cleanup.append(f"*{workspace_name}*")
    store = make_store(tmp_path / "repo", online_store=redis_url, workspace=workspace_name)
    ctx = store.stream_context()
    features = tmp_path / "repo" / "features.py"
    features.write_text(_with_view(features.read_text(), 1))
    store.apply(force=True)
    applied = time.monotonic()
    pool = run_workers(ctx, 1, threading.Event(), flush_interval=0.2)
    try:
        while "extra1" not in pool.workers[0].defs.feature_views:
            assert time.monotonic() - applied < 2.0, "the worker kept the definitions of its context"
            time.sleep(0.01)
        assert pool.workers[0]._version == store.registry.applied_version()
    finally:
        pool.stop()


def test_waiter_trusts_only_announcements_of_definitions_as_new(
    tmp_path: Path, redis_url: str, workspace_name: str, redis_cleanup: list[str], make_store: StoreFactory
) -> None:
    from context_store.compute.stream.applied import AppliedWaiter, applied_message, parse_announcement

    redis_cleanup.append(f"*{workspace_name}*")
    assert parse_announcement(applied_message({("s", 1): 7}, 3).encode()) == (3, [(("s", 1), 7)])
    assert parse_announcement(b"s|1|7") == (-1, [(("s", 1), 7)])  # unstamped: version unknown
    store = make_store(tmp_path / "repo", online_store=redis_url, workspace=workspace_name)
    log = store.ingestor.stream_log
    waiter = AppliedWaiter(log)
    try:
        deadline = time.monotonic() + 5
        while not waiter.wait("transactions", {0: 1}, 0.05):  # until the subscription is active
            log.announce({("transactions", 0): 1}, 1)
            assert time.monotonic() < deadline
        log.announce({("transactions", 0): 100}, 1)  # a worker on version 1 applied offset 100
        assert waiter.wait("transactions", {0: 100}, 1.0, version=1)
        assert not waiter.wait("transactions", {0: 100}, 0.3, version=2)  # proves nothing to a version-2 pusher
        log.announce({("transactions", 0): 90}, 2)
        assert not waiter.wait("transactions", {0: 100}, 0.3, version=2)
        assert waiter.wait("transactions", {0: 90}, 1.0, version=2)
        log.announce({("transactions", 0): 120}, 3)
        assert waiter.wait("transactions", {0: 110}, 1.0, version=2)  # newer definitions prove it too
    finally:
        waiter.close()
