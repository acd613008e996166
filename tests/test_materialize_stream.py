"""Materialize vs the stream: stream-applied events not yet in the offline log are never lost,
and materialize fills the recent-events lists from batch history (idempotently)."""

from __future__ import annotations

import random
import threading
from datetime import timedelta
from pathlib import Path

import pytest

from tests.fixtures_stream import T0, event, make_store
from tests.test_stream_parity import _check_parity


@pytest.mark.redis
def test_materialize_before_offline_flush_keeps_stream_events(
    tmp_path: Path, redis_url: str, workspace_name: str, redis_cleanup: list[str]
) -> None:
    """A live worker applies pushed events online at once but appends them to ``fv__`` later
    (here: a long flush interval). A materialize in that window must not erase their effect."""
    from context_store.compute.stream.worker import run_workers

    redis_cleanup.append(f"cs:{workspace_name}:*")
    rng = random.Random(11)
    history = sorted((event(f"u{rng.randrange(3)}", rng.randrange(0, 120), float(rng.randrange(50)), f"m{rng.randrange(4)}")
                      for _ in range(60)), key=lambda r: r["ts"])
    # Live events fall into tiles/blocks that also hold batch rows (same hours as the history's tail).
    live = [event(f"u{rng.randrange(3)}", rng.randrange(121, 200), float(rng.randrange(50)), f"m{rng.randrange(4)}")
            for _ in range(40)]
    store = make_store(tmp_path / "repo", online_store=redis_url, workspace=workspace_name, history=history,
                       lateness="1d")
    stop = threading.Event()
    pool = run_workers(store, 1, stop, flush_interval=3600.0, flush_rows=10**9)  # no offline flush until stop
    t = T0 + timedelta(hours=5)
    try:
        store.backfill()
        store.materialize()
        for i in range(0, len(live), 8):
            assert store.push("transactions", live[i : i + 8]).visible
        assert store.offline.count("fv__txn_stats") == len(history)  # the live events are not offline yet
        before = {u: store.get_features("fraud", {"user_id": u}, request_time=t).feature_values for u in ("u0", "u1", "u2")}
        for u, fv in before.items():
            assert fv["txn_stats.amount_count_1d"] == sum(1 for r in history + live if r["user_id"] == u)
        store.materialize()  # before the worker's offline flush
        store.materialize()  # and again (idempotent)
        for u, fv in before.items():
            after = store.get_features("fraud", {"user_id": u}, request_time=t).feature_values
            assert after == fv, u
    finally:
        pool.stop()  # flushes the offline log
    assert store.offline.count("fv__txn_stats") == len(history) + len(live)
    times = [T0 + timedelta(minutes=m) for m in (60, 150, 199, 201, 300)]
    assert _check_parity(store, ["u0", "u1", "u2"], times) > 0
    store.materialize()  # after the flush too: still exact
    assert _check_parity(store, ["u0", "u1", "u2"], times) > 0
    store.close()
