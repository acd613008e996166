"""The backfill's cut-over on several hosts (issue #16): recorded in the shared Redis online store,
so a backfill on host A is honoured by pushes and workers on host B (another data_dir) -- nothing
counted by both batch and stream. Also the upgrade path from the host-local ``cutover.json``."""

from __future__ import annotations

import json
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

import context_store as cs
from context_store.compute.stream.cutover import SHARED_MAP, get_cutover, load_cutovers, record_cutover
from context_store.compute.stream.stats import STATS
from context_store.compute.stream.worker import StreamWorker, run_workers
from context_store.config import load_config
from context_store.errors import InvalidInputError
from context_store.stores.online import open_online_store
from tests.support.repo import make_repo
from tests.support.stream import REPO, T0, event, events_table

pytestmark = pytest.mark.redis

_CODE = REPO.format(partitions=4, lateness="1d", interval="")


def _host(root: Path, shared: Path, url: str, ws: str, history: list[dict[str, Any]]) -> cs.ContextStore:
    """One host: its own repo checkout and data_dir; the registry, the offline lake and Redis are shared."""
    cfg = {
        "online_store": url,
        "workspace": ws,
        "data_dir": str(root / "local"),
        "registry": str(shared / "registry"),
        "offline_store": str(shared / "lake"),
    }
    make_repo(root / "repo", _CODE, data={"txns.parquet": events_table(history)}, config=cfg)
    return cs.ContextStore(root / "repo")


def _url(backend: str, request: pytest.FixtureRequest, ws: str) -> str:
    if backend == "redis":
        request.getfixturevalue("redis_cleanup").append(f"cs:{ws}:*")
        return str(request.getfixturevalue("redis_url"))
    return str(request.getfixturevalue("redis_cluster").url)


@pytest.mark.parametrize("backend", ["redis", "redis-cluster"])
def test_a_backfill_on_host_a_is_honoured_by_pushes_and_workers_on_host_b(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest, workspace_name: str
) -> None:
    url = _url(backend, request, workspace_name)
    rows = [event(f"u{i % 3}", i * 3.5 + 0.25, float(i % 17), f"m{i % 4}") for i in range(80)]  # distinct ts
    history, live = rows[:50], rows[50:]
    a = _host(tmp_path / "a", tmp_path / "shared", url, workspace_name, history)
    b = _host(tmp_path / "b", tmp_path / "shared", url, workspace_name, [])
    assert a.config.data_dir != b.config.data_dir
    try:
        a.apply(force=True)
        a.backfill()
        a.materialize()
        cut = int(history[-1]["ts"].timestamp() * 1_000_000) + 1
        assert get_cutover(b.config, "txn_stats", b.online) == cut  # host B sees host A's record
        for host in (a, b):
            assert not (host.config.workspace_dir / "stream" / "cutover.json").exists()

        before = STATS.get("before_cutover_events", "transactions")
        # An outside producer on B's side replays history events (ts < C) straight into the stream.
        log = b.ingestor.stream_log
        key = log.stream_key("transactions", 0)
        log.ensure_group(key)
        replayed = rows[30:40]
        log.r.xadd(key, {"json": orjson.dumps([{**r, "ts": r["ts"].isoformat()} for r in replayed])})
        w = StreamWorker(b.stream_context(), name="b-catch-up", flush_interval=0.1)
        w.rebalance()
        while w.step():
            pass
        w.close()  # flushes: the replayed events reach src__transactions, not fv__txn_stats
        assert STATS.get("before_cutover_events", "transactions") - before >= len(replayed)

        stop = threading.Event()
        pool = run_workers(b.stream_context(), 1, stop, flush_interval=0.1)
        try:
            with pytest.raises(InvalidInputError, match="cut-over|cutover"):
                b.push("transactions", rows[40:50])  # every record before C: nothing written
            res = b.push("transactions", rows[45:55])  # half before C (rejected), half after
            assert res.accepted == 5 and {r.reason for r in res.rejected} == {"before_cutover"}
            assert b.push("transactions", live[5:]).visible
        finally:
            pool.stop()

        assert a.offline.count("fv__txn_stats") == len(rows)  # history 50 + stream 30, none twice
        assert a.offline.count("src__transactions") == len(replayed) + len(live)
        at = T0 + timedelta(hours=7)
        for user in ("u0", "u1", "u2"):
            mine = [r for r in rows if r["user_id"] == user]
            for host in (a, b):
                got = host.get_features("fraud", {"user_id": user}, request_time=at).feature_values
                assert got["txn_stats.amount_count_1d"] == len(mine), (user, host.config.data_dir)
                assert got["txn_stats.amount_sum_lifetime"] == pytest.approx(sum(r["amount"] for r in mine))
    finally:
        if backend != "redis":
            b.online.clear()
        a.close()
        b.close()


def test_a_host_local_file_is_moved_into_redis_on_upgrade(tmp_path: Path, redis_url: str, workspace_name: str) -> None:
    """An earlier version's ``cutover.json`` on a Redis deployment: honoured (copied into the shared map
    at the first read, then renamed); a cut-over recorded in Redis since is not overwritten by it."""
    host_a = load_config(tmp_path / "a", online_store=redis_url, workspace=workspace_name)
    host_b = load_config(tmp_path / "b", online_store=redis_url, workspace=workspace_name)
    online = open_online_store(host_a)
    try:
        online.set_shared_field(SHARED_MAP, "newer", json.dumps({"ts_us": 900, "recorded_at_us": 2}).encode())
        old = host_a.workspace_dir / "stream" / "cutover.json"
        old.parent.mkdir(parents=True)
        entry = {"ts_us": 500, "recorded_at_us": 1, "offsets": {"0": 7}}
        old.write_text(json.dumps({"v1": entry, "newer": {"ts_us": 100, "recorded_at_us": 1}}))

        assert set(load_cutovers(host_b)) == {"newer"}  # host B has no file: only what Redis holds
        got = load_cutovers(host_a, online)  # host A's first read moves its file
        assert {v: c.ts_us for v, c in got.items()} == {"v1": 500, "newer": 900}
        assert got["v1"].offsets == {"0": 7}
        assert not old.exists() and old.with_name("cutover.json.migrated").exists()
        assert get_cutover(host_b, "v1") == 500  # every host sees it now

        record_cutover(host_b, "v1", 700)
        assert get_cutover(host_a, "v1", online) == 700
        record_cutover(host_a, "v1", None, online=online)
        assert get_cutover(host_b, "v1") is None and get_cutover(host_b, "newer") == 900
    finally:
        online.clear()
        online.close()


def test_sqlite_keeps_the_file(tmp_path: Path) -> None:
    config = load_config(tmp_path, workspace="w")
    record_cutover(config, "v", 123)
    assert json.loads((config.workspace_dir / "stream" / "cutover.json").read_text())["v"]["ts_us"] == 123
    assert get_cutover(config, "v") == 123
    record_cutover(config, "v", None)
    assert get_cutover(config, "v") is None
