"""Redis restarts empty under a running stream worker (a test-owned redis-server): the worker
recreates the lost consumer groups and streams -- no hot loop on NOGROUP -- and consumes the new
pushes; features read NOT_MATERIALIZED meanwhile, and ``materialize(full=True)`` restores values
equal to a brute-force recomputation."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from context_store.types import NOT_MATERIALIZED, PRESENT
from tests.support.private_redis import PrivateRedis
from tests.support.reference import expected_value
from tests.support.stream import StoreFactory

pytestmark = [pytest.mark.redis, pytest.mark.slow]

NOW = datetime.now(UTC)


def _rows(user: str, minutes: list[int], amount: float) -> list[dict[str, Any]]:
    return [
        {"user_id": user, "ts": NOW - timedelta(minutes=m), "amount": amount + i, "merchant": f"m{i}"}
        for i, m in enumerate(minutes)
    ]


def _count(events: list[dict[str, Any]], user: str) -> Any:
    rows = [{**e, "ts": int(e["ts"].timestamp() * 1_000_000)} for e in events]
    return expected_value(rows, ["user_id"], "ts", [user], time.time_ns() // 1000, "amount", "count", 86_400_000_000)


def _logged(store: Any) -> int:
    off = store.offline
    return int(off.count("src__transactions")) if off.exists("src__transactions") else 0


def _wait(cond: Any, what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


@pytest.fixture
def private(tmp_path: Path) -> Iterator[PrivateRedis]:
    (tmp_path / "redis").mkdir()
    r = PrivateRedis(tmp_path / "redis").start()
    yield r
    r.stop()


def test_worker_recreates_groups_after_redis_restarts_empty(
    tmp_path: Path, private: PrivateRedis, make_store: StoreFactory, caplog: pytest.LogCaptureFixture
) -> None:
    from context_store.compute.stream.worker import run_workers

    history = _rows("u1", [300, 290, 280], 1.0) + _rows("u2", [270], 5.0)
    store = make_store(tmp_path / "repo", online_store=private.url, history=history, partitions=2)
    store.backfill()
    store.materialize()
    stop = threading.Event()
    pool = run_workers(store.stream_context(), 1, stop, flush_interval=0.2, block_ms=100)
    events = list(history)
    try:
        live = _rows("u1", [20, 19], 10.0) + _rows("u2", [18], 20.0)
        assert store.push("transactions", live).visible
        events += live
        v = store.get_features("fraud", {"user_id": "u1"})
        assert v.feature_values["txn_stats.amount_count_1d"] == _count(events, "u1")
        # Every acknowledged event reaches the offline log before the crash (restored from there).
        _wait(lambda: _logged(store) == len(live), "offline log never caught up")

        caplog.set_level(logging.INFO, logger="context_store")
        private.restart_empty()
        caplog.clear()
        after = _rows("u1", [5], 100.0) + _rows("u3", [4, 3], 7.0)
        store.push("transactions", after, wait=False)
        events += after
        online = store.online
        _wait(
            lambda: any(online.applied_offset("txn_stats", str(p)) is not None for p in range(2)),
            "the worker never consumed a push after the restart",
        )
        _wait(
            lambda: _logged(store) == len(live) + len(after),
            "pushes after the restart never reached the offline log",
        )
        time.sleep(1.0)  # long enough for a hot loop to show
        failed = [r for r in caplog.records if "step failed" in r.getMessage()]
        regrouped = [r for r in caplog.records if "consumer group missing" in r.getMessage()]
        assert len(failed) <= 2, [r.getMessage() for r in failed]
        assert 1 <= len(regrouped) <= 4, [r.getMessage() for r in regrouped]

        # Online state was lost with Redis: nothing is served as PRESENT until it is restored.
        _wait(
            lambda: {m.status for m in store.get_features("fraud", {"user_id": "u1"}).metadata} == {NOT_MATERIALIZED},
            "lost state still served as PRESENT",
        )
        store.materialize(full=True)
        for u in ("u1", "u2", "u3"):
            v = store.get_features("fraud", {"user_id": u})
            assert {m.status for m in v.metadata if m.name.startswith("txn_stats.amount_count")} == {PRESENT}
            assert v.feature_values["txn_stats.amount_count_1d"] == _count(events, u), u
        # New pushes keep flowing through the recreated groups.
        more = _rows("u3", [1], 1.0)
        events += more
        store.push("transactions", more, wait=False)
        _wait(
            lambda: (
                store.get_features("fraud", {"user_id": "u3"}).feature_values["txn_stats.amount_count_1d"]
                == _count(events, "u3")
            ),
            "a push after the restore was not applied",
        )
    finally:
        pool.stop()
