"""Online/offline parity across the batch/stream hand-over: a random event history, split at a
random point between batch history (backfill + materialize) and live pushes (stream, out of order,
in random chunks), gives get_features == get_training_data on the full history at the same t."""

from __future__ import annotations

import math
import random
import threading
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from context_store.compute.stream.cutover import get_cutover
from tests.support.stream import T0, StoreFactory, event

TS = pa.timestamp("us", tz="UTC")

_event = st.tuples(
    st.integers(0, 3),  # user
    st.integers(0, 6 * 3600),  # seconds after T0
    st.one_of(st.none(), st.integers(-20, 100)),  # amount (nulls are ignored by all but count)
    st.integers(0, 4),  # merchant
)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        if a is None or b is None:
            return a is None and b is None
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    return a == b


def _check_parity(store, users: list[str], times: list) -> int:
    spine = pa.table(
        {
            "user_id": [u for t in times for u in users],
            "timestamp": pa.array([t for t in times for _ in users], TS),
        }
    )
    td = store.get_training_data(spine, "fraud").to_pylist()
    svc = store.definitions.feature_service("fraud")
    checked = 0
    for row in td:
        online = store.get_features("fraud", {"user_id": row["user_id"]}, request_time=row["timestamp"]).feature_values
        for name, col in zip(svc.feature_names, svc.column_names):
            assert _same(online[name], row[col]), (name, row["user_id"], row["timestamp"], online[name], row[col])
            checked += 1
    return checked


def _split_history(events: list[tuple], rng: random.Random) -> tuple[list[dict], list[dict], int]:
    rows = [event(f"u{u}", s / 60, None if a is None else float(a), f"m{m}") for u, s, a, m in events]
    rows.sort(key=lambda r: r["ts"])
    cut = rng.randrange(len(rows) + 1)
    # History is everything strictly before the first live timestamp (no event straddles the split).
    while 0 < cut < len(rows) and rows[cut - 1]["ts"] == rows[cut]["ts"]:
        cut -= 1
    return rows[:cut], rows[cut:], cut


@pytest.mark.parametrize("interval", [None, "30m"])
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(events=st.lists(_event, min_size=1, max_size=60), seed=st.integers(0, 2**32 - 1))
def test_backfill_then_stream_equals_training_data(
    tmp_path: Path, interval: str | None, events, seed: int, make_store: StoreFactory
) -> None:
    rng = random.Random(seed)
    history, live, _ = _split_history(events, rng)
    store = make_store(tmp_path / uuid.uuid4().hex, history=history, lateness="1d", interval=interval)
    try:
        store.backfill()
        store.materialize()
        if history:
            c = get_cutover(store.config, "txn_stats")
            assert c is not None and c > int(history[-1]["ts"].timestamp() * 1e6) - 1
        rng.shuffle(live)  # the stream delivers out of order (within allowed lateness)
        i = 0
        while i < len(live):
            n = rng.randint(1, 8)
            assert store.push("transactions", live[i : i + n]).visible
            i += n
        times = [T0 + timedelta(seconds=rng.randrange(0, 7 * 3600)) for _ in range(3)] + [T0 + timedelta(hours=7)]
        if live:
            times.append(live[0]["ts"])  # exactly at an event (strictly-before rule)
        assert _check_parity(store, [f"u{u}" for u in range(4)], times) > 0
    finally:
        store.close()


@pytest.mark.redis
@pytest.mark.parametrize("backend", ["redis", "redis-cluster"])
def test_parity_through_redis_workers(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest, workspace_name: str, make_store: StoreFactory
) -> None:
    """The same property through Redis Streams and two workers (one fixed random history), on one
    Redis and on a Redis Cluster (3 masters + 3 replicas; pushes acknowledged after WAIT 1)."""
    from context_store.compute.stream.worker import run_workers

    if backend == "redis":
        redis_url = request.getfixturevalue("redis_url")
        request.getfixturevalue("redis_cleanup").append(f"cs:{workspace_name}:*")
    else:
        redis_url = request.getfixturevalue("redis_cluster").url
    rng = random.Random(7)
    events = [
        (rng.randrange(4), rng.randrange(6 * 3600), rng.choice([None, *range(-5, 60)]), rng.randrange(5))
        for _ in range(400)
    ]
    history, live, _ = _split_history(events, rng)
    store = make_store(
        tmp_path / "repo", online_store=redis_url, workspace=workspace_name, history=history, lateness="1d"
    )
    stop = threading.Event()
    pool = run_workers(store.stream_context(), 2, stop, flush_interval=0.1)
    try:
        store.backfill()
        store.materialize()
        rng.shuffle(live)
        for i in range(0, len(live), 7):
            assert store.push("transactions", live[i : i + 7]).visible
    finally:
        pool.stop()  # flushes the offline log the training data reads
    times = [T0 + timedelta(seconds=rng.randrange(0, 7 * 3600)) for _ in range(4)]
    assert _check_parity(store, [f"u{u}" for u in range(4)], times) > 0
    if backend != "redis":
        store.online.clear()
    store.close()


def test_backfill_after_live_pushes_does_not_double_count(tmp_path: Path, make_store: StoreFactory) -> None:
    """Events pushed live and later also present in the batch history (the lake caught up): the
    backfill owns ts < C, replaces the stream's rows there, and nothing is counted twice."""
    from tests.support.stream import events_table

    rng = random.Random(3)
    rows = [event(f"u{rng.randrange(3)}", rng.randrange(0, 300), float(rng.randrange(50)), "m") for _ in range(80)]
    rows.sort(key=lambda r: r["ts"])
    store = make_store(tmp_path / "repo", lateness="1d")
    try:
        assert store.push("transactions", rows[:50]).accepted == 50  # live, before any backfill
        # The batch source now holds those 50 events too (and nothing newer).
        import pyarrow.parquet as pq

        pq.write_table(events_table(rows[:50]), Path(store.config.repo) / "data" / "txns.parquet")
        store.backfill()
        store.materialize()
        assert store.push("transactions", rows[50:]).accepted == 30
        assert store.offline.count("fv__txn_stats") == 80
        times = [T0 + timedelta(minutes=m) for m in (100, 200, 301, 420)]
        assert _check_parity(store, ["u0", "u1", "u2"], times) > 0
        got = store.get_features("fraud", {"user_id": "u0"}, request_time=T0 + timedelta(hours=7)).feature_values
        assert got["txn_stats.amount_count_1d"] == sum(1 for r in rows if r["user_id"] == "u0")
    finally:
        store.close()
