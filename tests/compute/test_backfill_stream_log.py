"""A view added after events were pushed sees them: backfill reads the batch history plus the
stream's offline log (``src__``), cut at the batch/stream boundary, so online values, ``fv__``
rows and training data all equal a brute-force recomputation over history + every push."""

from __future__ import annotations

import random
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

import context_store as cs
from tests.support.reference import expected_view_row, values_match
from tests.support.repo import make_repo
from tests.support.stream import T0, event, events_table

TS = pa.timestamp("us", tz="UTC")
T_REQ = T0 + timedelta(hours=10)

_BASE = """
import context_store as cs

user = cs.Entity("user", join_keys=["user_id"])
{history}
txns = cs.StreamSource(
    "transactions",
    schema=[
        cs.Field("user_id", cs.String),
        cs.Field("ts", cs.Timestamp),
        cs.Field("amount", cs.Float64),
        cs.Field("merchant", cs.String),
    ],
    timestamp_field="ts",
    {batch}
    allowed_lateness="1d",
    partitions=2,
)
stats = cs.FeatureView(
    "stats",
    entities=[user],
    source=txns,
    aggregations=[cs.Aggregate("amount", "sum", "1d"), cs.Aggregate("amount", "count", cs.Lifetime())],
)
svc = cs.FeatureService("svc", [stats])
"""

_STATS2 = """
stats2 = cs.FeatureView(
    "stats2",
    entities=[user],
    source=txns,
    transform="SELECT user_id, ts, amount * 10 AS amount10, merchant FROM source WHERE amount >= 0",
    aggregations=[
        cs.Aggregate("amount10", "sum", "1d"),
        cs.Aggregate("amount10", "count", cs.Lifetime()),
        cs.Aggregate("amount10", "max", "12h"),
        cs.Aggregate("merchant", "last_distinct_n", "1d", n=3),
    ],
)
svc2 = cs.FeatureService("svc2", [stats2])
"""


def _code(with_history: bool, stats2: bool) -> str:
    code = _BASE.format(
        history='history = cs.FileSource("data/txns.parquet", timestamp_field="ts")' if with_history else "",
        batch="batch_source=history," if with_history else "",
    )
    return code + (_STATS2 if stats2 else "")


def _stats2_input(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {"user_id": r["user_id"], "ts": r["ts"], "amount10": r["amount"] * 10, "merchant": r["merchant"]}
        for r in rows
        if r["amount"] is not None and r["amount"] >= 0
    ]


def _us(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [dict(r, ts=int(r["ts"].timestamp() * 1_000_000)) for r in rows]


def check_view(store: cs.ContextStore, view_name: str, service: str, inputs: list[dict[str, Any]]) -> int:
    """fv__ rows == the view's input rows; online == training data == the brute-force reference."""
    view = store.definitions.feature_view(view_name)
    cols = ["user_id", "ts", *[c for c in inputs[0] if c not in ("user_id", "ts")]] if inputs else ["user_id", "ts"]
    key = lambda r: tuple(str(r[c]) for c in cols)  # noqa: E731
    deadline = time.monotonic() + 2.0  # the stream's offline appends: complete within 2 s of a push
    while True:
        fv = store.offline.read(f"fv__{view_name}", columns=cols).to_pylist()
        if len(fv) >= len(inputs) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    from collections import Counter

    got, exp = Counter(map(key, fv)), Counter(map(key, inputs))
    assert got == exp, (f"fv__{view_name} rows differ", sorted((got - exp).items()), sorted((exp - got).items()))
    events = _us(inputs)
    users = sorted({r["user_id"] for r in inputs}) + ["nobody"]
    times = [T0 + timedelta(hours=h) for h in (1, 3, 6, 9)] + [T_REQ]
    spine = pa.table(
        {"user_id": [u for _ in times for u in users], "timestamp": pa.array([t for t in times for _ in users], TS)}
    )
    td = store.get_training_data(spine, service).to_pylist()
    svc = store.definitions.feature_service(service)
    checked = 0
    for row in td:
        t_us = int(row["timestamp"].timestamp() * 1_000_000)
        want = expected_view_row(view, events, {"user_id": row["user_id"]}, t_us)
        online = store.get_features(service, {"user_id": row["user_id"]}, request_time=row["timestamp"]).feature_values
        for name, col in zip(svc.feature_names, svc.column_names):
            w = want[name.split(".", 1)[1]]
            assert values_match(row[col], w), ("offline", name, row["user_id"], row["timestamp"], row[col], w)
            assert values_match(online[name], w), ("online", name, row["user_id"], row["timestamp"], online[name], w)
            checked += 1
    return checked


def _rows(rng: random.Random, n: int, lo_min: float, hi_min: float) -> list[dict[str, Any]]:
    return [
        event(f"u{rng.randrange(4)}", rng.uniform(lo_min, hi_min), float(rng.randrange(-5, 50)), f"m{rng.randrange(5)}")
        for _ in range(n)
    ]


def _scenario(root: Path, online_store: str, workspace: str, with_history: bool, workers: bool = False) -> None:
    rng = random.Random(12)
    history = sorted(_rows(rng, 40, 0, 240), key=lambda r: r["ts"]) if with_history else []
    make_repo(
        root, _code(with_history, stats2=False), data={"txns.parquet": events_table(history)} if with_history else None
    )
    time.sleep(0.02)  # pushes below come strictly after the history file was written
    store = cs.ContextStore(root, workspace=workspace, online_store=online_store)
    pool = None
    stop = threading.Event()
    try:
        store.apply(force=True)
        if workers:
            from context_store.compute.stream.worker import run_workers

            pool = run_workers(store.stream_context(), 1, stop, flush_interval=0.2)
        # Pushed before any backfill: some older than the history's newest event (not in the files).
        early = _rows(rng, 15, 60, 360)
        assert store.push("transactions", early).accepted == len(early)
        store.backfill()
        store.materialize()
        late = _rows(rng, 10, 300, 480)  # after the cut-over (history ends at 240 min)
        for i in range(0, len(late), 3):
            assert store.push("transactions", late[i : i + 3]).visible
        pushed = early + late
        assert check_view(store, "stats", "svc", [dict(r) for r in history + pushed]) > 0
        # The new view, added after every push.
        (root / "features.py").write_text(_code(with_history, stats2=True))
        store.apply(force=True)
        if pool is not None:  # the worker picks up the new definitions (then feeds stats2 too)
            deadline = time.monotonic() + 15
            while any(w._version != store.registry.applied_version() for w in pool.workers):
                assert time.monotonic() < deadline, "the worker did not reload the applied definitions"
                time.sleep(0.05)
        report = store.backfill(views=["stats2"])
        assert "stats2" not in report.skipped
        store.materialize(views=["stats2"])
        assert check_view(store, "stats2", "svc2", _stats2_input(history + pushed)) > 0
        # And a full re-backfill (history + log again) changes nothing for either view.
        store.backfill()
        store.materialize()
        more = _rows(rng, 6, 490, 540)
        assert store.push("transactions", more).visible
        pushed += more
        if pool is not None:
            pool.stop()
            pool = None
        assert check_view(store, "stats", "svc", history + pushed) > 0
        assert check_view(store, "stats2", "svc2", _stats2_input(history + pushed)) > 0
    finally:
        if pool is not None:
            pool.stop()
        store.close()


@pytest.mark.parametrize("with_history", [True, False], ids=["batch_source", "log_only"])
def test_new_view_after_pushes_embedded(tmp_path: Path, with_history: bool, workspace_name: str) -> None:
    _scenario(tmp_path / "repo", "sqlite", workspace_name, with_history)


@pytest.mark.redis
@pytest.mark.parametrize("with_history", [True, False], ids=["batch_source", "log_only"])
def test_new_view_after_pushes_redis(
    tmp_path: Path, with_history: bool, redis_url: str, workspace_name: str, redis_cleanup: list[str]
) -> None:
    redis_cleanup.append(f"*{workspace_name}*")
    _scenario(tmp_path / "repo", redis_url, workspace_name, with_history, workers=True)


def test_log_rows_deduplicated_and_held_by_history(tmp_path: Path, workspace_name: str) -> None:
    """A replayed flush (same partition and offset twice) counts once; log events the lake
    already holds (pushed before the history file was written) are not counted twice."""
    import pyarrow.parquet as pq

    rng = random.Random(4)
    root = tmp_path / "repo"
    make_repo(root, _code(True, stats2=False), data={"txns.parquet": events_table([])})
    store = cs.ContextStore(root, workspace=workspace_name, online_store="sqlite")
    try:
        store.apply(force=True)
        first = _rows(rng, 12, 0, 100)
        store.push("transactions", first)
        log = store.offline.read("src__transactions")
        store.offline.append("src__transactions", log.slice(0, 5))  # a replay appended twice
        time.sleep(0.02)
        # The lake caught up on the first pushes (written after them).
        pq.write_table(events_table(sorted(first, key=lambda r: r["ts"])), root / "data" / "txns.parquet")
        time.sleep(0.02)
        second = _rows(rng, 8, 20, 90)  # pushed after the file: older than its newest, yet counted
        store.push("transactions", second)
        store.backfill()
        store.materialize()
        assert check_view(store, "stats", "svc", first + second) > 0
    finally:
        store.close()


def test_log_rows_deduplicated_by_event_id(tmp_path: Path, workspace_name: str) -> None:
    """With an event id (``StreamSource.event_id_field``): a retried event counts once, and log
    events whose id the history holds are the history's."""
    from types import SimpleNamespace

    from context_store.compute.backfill_log import log_rows

    root = make_repo(tmp_path / "repo", _code(False, stats2=False))
    store = cs.ContextStore(root, workspace=workspace_name, online_store="sqlite")
    try:
        store.apply(force=True)
        ts = [T0 + timedelta(minutes=m) for m in range(6)]
        store.offline.append(
            "src__ex",
            pa.table(
                {
                    "user_id": ["a"] * 6,
                    "ts": pa.array(ts, TS),
                    "eid": ["e1", "e2", "e2", "e3", "e4", None],  # e2 retried; e3 also in the history
                    "_partition": pa.array([0] * 6, pa.int64()),
                    "_offset": pa.array(range(6), pa.int64()),
                }
            ),
        )
        history = pa.table({"user_id": ["a"], "ts": pa.array([ts[3]], TS), "eid": ["e3"]})
        source = SimpleNamespace(name="ex", timestamp_field="ts", event_id_field="eid", partitions=1)
        got = log_rows(store.config, store.offline, source, history, None, None)  # type: ignore[arg-type]
        assert got is not None and got.column("eid").to_pylist() == ["e1", "e2", "e4", None]
        assert "_offset" not in got.column_names
    finally:
        store.close()
