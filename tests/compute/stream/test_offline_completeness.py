"""Offline completeness: every acknowledged event is in the offline log (``src__`` and every
``fv__`` it feeds) within 2 s of its push, also when no more events follow (burst then idle), in
worker mode (a ``context-store worker`` process), inline-drain mode (Redis, no worker: the pusher
drains) and embedded mode (sqlite). Then online == offline (training data) == a brute-force
recomputation."""

from __future__ import annotations

import random
import signal
import subprocess
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from tests.support.reference import expected_view_row, values_match
from tests.support.stream import T0, StoreFactory, event, start_worker

TS = pa.timestamp("us", tz="UTC")
T_REQ = T0 + timedelta(hours=8)
DEADLINE_S = 2.0


def wait_live(store: Any, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    log = store.ingestor.stream_log
    deadline = time.monotonic() + timeout
    while not log.live_workers(3000):
        if proc.poll() is not None:
            raise AssertionError(f"worker exited: {proc.stderr.read().decode()[-2000:] if proc.stderr else ''}")
        assert time.monotonic() < deadline, "worker did not start"
        time.sleep(0.05)


def _counts(store: Any) -> tuple[int, int, int]:
    off = store.offline

    def n(t: str) -> int:
        return off.count(t) if off.exists(t) else 0

    return n("src__transactions"), n("fv__txn_stats"), n("fv__big_spend")


def burst_then_idle(store: Any, rows: list[dict[str, Any]], chunk: int = 7) -> float:
    """Push ``rows`` in chunks, then nothing; returns the seconds from the last push's return
    until every event is in ``src__`` and both ``fv__`` tables (fails past ``DEADLINE_S``)."""
    before = _counts(store)
    for i in range(0, len(rows), chunk):
        res = store.push("transactions", rows[i : i + chunk])
        assert res.accepted == len(rows[i : i + chunk])
    t_last = time.monotonic()
    want = tuple(
        a + b for a, b in zip(before, (len(rows), len(rows), sum(1 for r in rows if r["amount"] >= 0)), strict=True)
    )
    while True:
        got = _counts(store)
        waited = time.monotonic() - t_last
        assert waited <= DEADLINE_S, f"offline log incomplete {waited:.2f}s after the last push: {got} != {want}"
        if got == want:
            return waited
        time.sleep(0.02)


def check_parity(store: Any, rows: list[dict[str, Any]]) -> int:
    """Online == training data (offline) == brute force, for every feature of ``fraud``."""
    events = [dict(r, ts=int(r["ts"].timestamp() * 1_000_000)) for r in rows]
    big = [
        {"user_id": e["user_id"], "ts": e["ts"], "doubled": e["amount"] * 2}
        for e in events
        if e["amount"] is not None and e["amount"] >= 0
    ]
    users = sorted({r["user_id"] for r in rows})
    times = [T0 + timedelta(hours=h) for h in (2, 5)] + [T_REQ]
    spine = pa.table(
        {"user_id": [u for _ in times for u in users], "timestamp": pa.array([t for t in times for _ in users], TS)}
    )
    td = store.get_training_data(spine, "fraud").to_pylist()
    svc = store.definitions.feature_service("fraud")
    checked = 0
    for row in td:
        t_us = int(row["timestamp"].timestamp() * 1_000_000)
        online = store.get_features("fraud", {"user_id": row["user_id"]}, request_time=row["timestamp"]).feature_values
        for name, col in zip(svc.feature_names, svc.column_names):
            view_name, feat = name.split(".", 1)
            view = store.definitions.feature_view(view_name)
            want = expected_view_row(view, events if view_name == "txn_stats" else big, row, t_us)[feat]
            scale = 1e4 if "stddev" in feat else 100.0
            assert values_match(row[col], want, scale=scale), ("offline", name, row["user_id"], row[col], want)
            assert values_match(online[name], want, scale=scale), ("online", name, row["user_id"], online[name], want)
            checked += 1
    return checked


def _burst(seed: int, n: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [
        event(f"u{rng.randrange(6)}", rng.uniform(0, 420), float(rng.randrange(-5, 60)), f"m{rng.randrange(4)}")
        for _ in range(n)
    ]


@pytest.mark.redis
def test_burst_then_idle_worker_process(
    tmp_path: Path, redis_url: str, workspace_name: str, redis_cleanup: list[str], make_store: StoreFactory
) -> None:
    redis_cleanup.append(f"*{workspace_name}*")
    store = make_store(tmp_path / "repo", online_store=redis_url, workspace=workspace_name, lateness="1d")
    proc = start_worker(store, redis_url)
    try:
        wait_live(store, proc)
        rows = _burst(1, 300)
        burst_then_idle(store, rows[:200])
        time.sleep(1.3)  # idle, then a second, smaller burst (one flush period later)
        burst_then_idle(store, rows[200:], chunk=3)
        assert check_parity(store, rows) > 0
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        if proc.stderr:
            proc.stderr.close()
        store.close()


@pytest.mark.redis
def test_burst_then_idle_inline_drain(
    tmp_path: Path, redis_url: str, workspace_name: str, redis_cleanup: list[str], make_store: StoreFactory
) -> None:
    redis_cleanup.append(f"*{workspace_name}*")
    store = make_store(tmp_path / "repo", online_store=redis_url, workspace=workspace_name, lateness="1d")
    try:
        assert not store.ingestor.stream_log.live_workers(3000)
        rows = _burst(2, 150)
        burst_then_idle(store, rows[:100])
        assert store.ingestor.redis.inline_worker is not None  # the pusher drained (no worker alive)
        burst_then_idle(store, rows[100:], chunk=1)
        assert check_parity(store, rows) > 0
    finally:
        store.close()


def test_burst_then_idle_embedded(tmp_path: Path, workspace_name: str, make_store: StoreFactory) -> None:
    store = make_store(tmp_path / "repo", workspace=workspace_name, lateness="1d")
    try:
        rows = _burst(3, 150)
        burst_then_idle(store, rows[:100])
        burst_then_idle(store, rows[100:], chunk=1)
        assert check_parity(store, rows) > 0
    finally:
        store.close()


_OFFLINE_ONLY = """
import context_store as cs

user = cs.Entity("user", join_keys=["user_id"])
clicks = cs.StreamSource(
    "clicks",
    schema=[cs.Field("user_id", cs.String), cs.Field("ts", cs.Timestamp), cs.Field("amount", cs.Float64)],
    timestamp_field="ts",
    partitions=2,
)
clicks_offline = cs.FeatureView(
    "clicks_offline", entities=[user], source=clicks, online=False,
    aggregations=[cs.Aggregate("amount", "sum", "1d")],
)
"""


@pytest.mark.redis
def test_inline_drain_of_a_source_with_no_online_view(
    tmp_path: Path, redis_url: str, workspace_name: str, redis_cleanup: list[str]
) -> None:
    """Nothing to wait for online, yet the pusher (no worker alive) drains to the offline log."""
    import context_store as cs
    from tests.support.repo import make_repo

    redis_cleanup.append(f"*{workspace_name}*")
    root = make_repo(tmp_path / "repo", _OFFLINE_ONLY)
    store = cs.ContextStore(root, workspace=workspace_name, online_store=redis_url)
    try:
        store.apply(force=True)
        rows = [{"user_id": f"u{i % 3}", "ts": T0 + timedelta(minutes=i), "amount": float(i)} for i in range(20)]
        t = time.monotonic()
        store.push("clicks", rows)
        while not (
            store.offline.exists("src__clicks")
            and store.offline.count("src__clicks") == 20
            and store.offline.count("fv__clicks_offline") == 20
        ):
            assert time.monotonic() - t <= DEADLINE_S, "offline log incomplete"
            time.sleep(0.02)
        assert time.monotonic() - t <= DEADLINE_S
    finally:
        store.close()


@pytest.mark.redis
def test_inline_drain_by_two_pushers(
    tmp_path: Path, redis_url: str, workspace_name: str, redis_cleanup: list[str], make_store: StoreFactory
) -> None:
    """Two pushing processes (two stores), no worker: the second one's events reach the offline
    log within the bound although the first one holds the partitions it drained."""
    import context_store as cs

    redis_cleanup.append(f"*{workspace_name}*")
    a = make_store(tmp_path / "repo", online_store=redis_url, workspace=workspace_name, lateness="1d")
    b = cs.ContextStore(tmp_path / "repo", workspace=workspace_name, online_store=redis_url)
    try:
        rows = _burst(5, 80)
        burst_then_idle(a, rows[:40])
        t = time.monotonic()  # from the push call: its events are durable before it returns
        res = b.push("transactions", rows[40:])  # a's inline worker still holds the leases
        assert res.accepted == 40 and res.visible
        while _counts(a) != (80, 80, sum(1 for r in rows if r["amount"] >= 0)):
            assert time.monotonic() - t <= DEADLINE_S, f"offline log incomplete: {_counts(a)}"
            time.sleep(0.02)
        assert time.monotonic() - t <= DEADLINE_S, (
            f"offline log complete only {time.monotonic() - t:.2f}s after the push"
        )
        assert check_parity(a, rows) > 0
    finally:
        b.close()
        a.close()
