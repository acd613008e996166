"""Materialize vs the stream: stream-applied events not yet in the offline log are never lost,
and materialize fills the recent-events lists from batch history (idempotently)."""

from __future__ import annotations

import random
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import context_store as cs
from context_store.compute.materialize import HIST_MARK
from context_store.serving import context_events
from context_store.state.codec import entity_key
from tests.compute.stream.test_stream_parity import _check_parity
from tests.support.context import build_context_repo, txn_rows
from tests.support.stream import T0, StoreFactory, event


@pytest.mark.redis
def test_materialize_before_offline_flush_keeps_stream_events(
    tmp_path: Path, redis_url: str, workspace_name: str, redis_cleanup: list[str], make_store: StoreFactory
) -> None:
    """A live worker applies pushed events online at once but appends them to ``fv__`` later
    (here: a long flush interval). A materialize in that window must not erase their effect."""
    from context_store.compute.stream.worker import run_workers

    redis_cleanup.append(f"cs:{workspace_name}:*")
    rng = random.Random(11)
    history = sorted(
        (
            event(f"u{rng.randrange(3)}", rng.randrange(0, 120), float(rng.randrange(50)), f"m{rng.randrange(4)}")
            for _ in range(60)
        ),
        key=lambda r: r["ts"],
    )
    # Live events fall into tiles/blocks that also hold batch rows (same hours as the history's tail).
    live = [
        event(f"u{rng.randrange(3)}", rng.randrange(121, 200), float(rng.randrange(50)), f"m{rng.randrange(4)}")
        for _ in range(40)
    ]
    store = make_store(
        tmp_path / "repo", online_store=redis_url, workspace=workspace_name, history=history, lateness="1d"
    )
    stop = threading.Event()
    pool = run_workers(
        store.stream_context(), 1, stop, flush_interval=3600.0, flush_rows=10**9
    )  # no offline flush until stop
    t = T0 + timedelta(hours=5)
    try:
        store.backfill()
        store.materialize()
        for i in range(0, len(live), 8):
            assert store.push("transactions", live[i : i + 8]).visible
        assert store.offline.count("fv__txn_stats") == len(history)  # the live events are not offline yet
        before = {
            u: store.get_features("fraud", {"user_id": u}, request_time=t).feature_values for u in ("u0", "u1", "u2")
        }
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


@pytest.mark.parametrize("online", ["sqlite", "redis"])
def test_materialize_fills_recent_events_from_history(
    tmp_path: Path, online: str, request: pytest.FixtureRequest, workspace_name: str, redis_cleanup: list[str]
) -> None:
    """materialize puts each entity's newest n history rows on its recent-events list, once."""
    if online == "redis":
        online = request.getfixturevalue("redis_url")
        redis_cleanup.append(f"*{workspace_name}*")
    root = build_context_repo(tmp_path / "repo")
    store = cs.ContextStore(root, workspace=workspace_name, online_store=online)
    try:
        store.apply()
        store.backfill()
        first = store.materialize()
        assert first.recent == {"transactions": 3}
        hist = pq.read_table(root / "data" / "transactions.parquet").to_pylist()
        want = {
            u: sorted((r for r in hist if r["user_id"] == u), key=lambda r: r["ts"])[-5:] for u in ("u1", "u2", "u3")
        }
        for u, rows in want.items():
            got = store.online.read_recent("transactions", entity_key(["user_id"], [u]), 50)
            assert [g["amount"] for g in got] == [r["amount"] for r in rows]
            assert all(g.get(HIST_MARK) for g in got)
        # Pushed events for u1, then a rerun: nothing is appended twice, u1's list keeps its order.
        now = datetime.now(UTC)
        store.push("transactions", txn_rows("u1", now - timedelta(seconds=30), 2, timedelta(seconds=10), amount0=100.0))
        again = store.materialize()
        assert again.recent == {"transactions": 0}
        got = store.online.read_recent("transactions", entity_key(["user_id"], ["u1"]), 50)
        assert [g["amount"] for g in got] == [r["amount"] for r in want["u1"]][-3:] + [100.0, 101.0]
        # get_user_context from the online list alone (no per-process history index) is exact.
        context_events._HISTORY.clear()
        uc = store.get_user_context("u2", context_service="user_context")
        assert [e.values["amount"] for e in uc.recent_events] == [r["amount"] for r in reversed(want["u2"])]
        assert all(HIST_MARK not in e.values for e in uc.recent_events)
        uc1 = store.get_user_context("u1", context_service="user_context")
        assert [e.values["amount"] for e in uc1.recent_events] == [101.0, 100.0] + [
            r["amount"] for r in reversed(want["u1"])
        ][:3]
        # New history files (a newer u2 row): the filled rows no longer stand for the history,
        # so the reader falls back to the history itself and still sees the newest rows.
        extra = dict(want["u2"][-1], amount=999.0, ts=want["u2"][-1]["ts"] + timedelta(minutes=30))
        table = pq.read_table(root / "data" / "transactions.parquet")
        pq.write_table(
            pa.concat_tables([table, pa.Table.from_pylist([extra], schema=table.schema)]),
            root / "data" / "transactions.parquet",
        )
        uc2 = store.get_user_context("u2", context_service="user_context")
        assert [e.values["amount"] for e in uc2.recent_events] == [999.0] + [r["amount"] for r in reversed(want["u2"])][
            :4
        ]
    finally:
        store.close()


@pytest.mark.redis
def test_materialize_after_a_new_backfill_waits_for_the_offline_log(
    tmp_path: Path, redis_url: str, workspace_name: str, redis_cleanup: list[str], make_store: StoreFactory
) -> None:
    """A new cut-over (re-backfill) makes materialize reload from fv__: it first waits until the
    workers' offline log holds what they applied online, so those events are not overwritten."""
    from context_store.compute.stream.worker import run_workers

    redis_cleanup.append(f"cs:{workspace_name}:*")
    rng = random.Random(5)
    history = sorted(
        (event(f"u{rng.randrange(2)}", rng.randrange(0, 100), float(rng.randrange(50))) for _ in range(30)),
        key=lambda r: r["ts"],
    )
    live = [event(f"u{rng.randrange(2)}", rng.randrange(101, 160), float(rng.randrange(50))) for _ in range(20)]
    store = make_store(
        tmp_path / "repo", online_store=redis_url, workspace=workspace_name, history=history, lateness="1d"
    )
    stop = threading.Event()
    pool = run_workers(store.stream_context(), 1, stop, flush_interval=1.0)
    t = T0 + timedelta(hours=5)
    try:
        store.backfill()
        store.materialize()
        assert store.push("transactions", live).visible
        store.backfill()  # records the cut-over again: the next materialize reloads from fv__
        report = store.materialize()
        assert {v.mode for v in report.views} <= {"full", "incremental"}
        for u in ("u0", "u1"):
            got = store.get_features("fraud", {"user_id": u}, request_time=t).feature_values
            assert got["txn_stats.amount_count_1d"] == sum(1 for r in history + live if r["user_id"] == u)
    finally:
        pool.stop()
    assert _check_parity(store, ["u0", "u1"], [T0 + timedelta(minutes=m) for m in (50, 130, 200)]) > 0
    store.close()
