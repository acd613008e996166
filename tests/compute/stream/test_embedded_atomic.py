"""Embedded push (``online_store: sqlite``) is all-or-nothing across online and offline, and retry-safe.

Faults are real: a Lance table directory replaced by a file (stops root too, unlike chmod), the
SQLite file write-locked by another connection, a pusher process SIGKILLed between its offline
appends and its SQLite commit, and pushers in two processes (two threads each) into one file.
Every check is online == offline == a brute-force recomputation (``tests.support.reference``).
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from starlette.testclient import TestClient

import context_store as cs
from context_store.errors import UnavailableError
from context_store.server import create_app
from tests.support.reference import expected_view_row, values_match
from tests.support.stream import T0, StoreFactory, event

T_REQ = T0 + timedelta(hours=5)
USERS = ["u0", "u1", "u2"]
TS = pa.timestamp("us", tz="UTC")
ROOT = Path(__file__).resolve().parents[3]


def _us(t: Any) -> int:
    return int(t.timestamp() * 1_000_000)


def _batch(k: int, n: int = 3) -> list[dict[str, Any]]:
    """Deterministic batch ``k`` (< 400): n events over USERS at distinct times before T_REQ."""
    return [
        event(USERS[(k + i) % len(USERS)], 60 + k * 0.5 + i * 0.01, float(k % 7 + i), f"m{k % 4}") for i in range(n)
    ]


def _rows(store: cs.ContextStore, table: str) -> int:
    return store.offline.count(table) if store.offline.exists(table) else 0


def _snapshot(store: cs.ContextStore) -> dict[str, Any]:
    """What a reader sees: every online value and the offline row counts."""
    out: dict[str, Any] = {t: _rows(store, t) for t in ("src__transactions", "fv__txn_stats", "fv__big_spend")}
    for u in USERS:
        out[u] = store.get_features("fraud", {"user_id": u}, request_time=T_REQ).feature_values
    return out


def _check(store: cs.ContextStore, pushed: list[dict[str, Any]], history: list[dict[str, Any]] = ()) -> None:
    """online == offline == brute force, counts and values: each pushed event exactly once."""
    src = store.offline.read("src__transactions").to_pylist()
    key = lambda e: (e["user_id"], _us(e["ts"]), e["amount"], e["merchant"])  # noqa: E731
    got, want = Counter(map(key, src)), Counter(map(key, pushed))
    if got != want:  # say which rows, and whether a fresh reader (no handle cached) sees the same
        fresh = Counter(map(key, _fresh_read(store, "src__transactions")))
        missing, extra = want - got, got - want
        raise AssertionError(
            f"offline log != pushed: missing {dict(missing)}, extra {dict(extra)}; "
            f"a fresh read == pushed: {fresh == want}"
        )
    assert _rows(store, "fv__txn_stats") == len(pushed) + len(history)
    view = store.definitions.feature_views["txn_stats"]
    ref = [{**e, "ts": _us(e["ts"])} for e in [*history, *pushed]]
    spine = pa.table({"user_id": USERS, "timestamp": pa.array([T_REQ] * len(USERS), TS)})
    offline = {r["user_id"]: r for r in store.get_training_data(spine, "fraud").to_pylist()}
    svc = store.definitions.feature_service("fraud")
    cols = dict(zip(svc.feature_names, svc.column_names))
    for u in USERS:
        want = expected_view_row(view, ref, {"user_id": u}, _us(T_REQ))
        online = store.get_features("fraud", {"user_id": u}, request_time=T_REQ).feature_values
        for name, w in want.items():
            full = f"txn_stats.{name}"
            assert values_match(online[full], w, scale=100.0), (u, name, online[full], w)
            assert values_match(offline[u][cols[full]], w, scale=100.0), (u, name, offline[u][cols[full]], w)
    assert store.online.pending_pushes() == []  # no journal entry left behind


def _fresh_read(store: cs.ContextStore, table: str) -> list[dict[str, Any]]:
    import lance

    rows: list[dict[str, Any]] = lance.dataset(str(store.offline.path / f"{table}.lance")).to_table().to_pylist()
    return rows


def _break(store: cs.ContextStore, table: str) -> tuple[Path, Path]:
    """Replace the table's directory by a file (root cannot write into a file either)."""
    path = store.offline.path / f"{table}.lance"
    aside = path.with_name(path.name + ".aside")
    path.rename(aside)
    path.write_text("not a directory")
    return path, aside


def _repair(path: Path, aside: Path) -> None:
    path.unlink()
    aside.rename(path)


@pytest.mark.parametrize("history", [False, True], ids=["stream-only", "after-backfill"])
@pytest.mark.parametrize("broken", ["src__transactions", "fv__txn_stats"])
def test_offline_fault_is_503_with_nothing_applied_and_a_retry_counts_once(
    tmp_path: Path, make_store: StoreFactory, broken: str, history: bool
) -> None:
    hist = [event(u, 5 + i, 1.0 + i) for i, u in enumerate(USERS)] if history else []
    store = make_store(tmp_path / "repo", history=hist, lateness="1d")
    if history:
        store.backfill()  # fv__ tables written without _offset: a failed push is taken back by version
        store.materialize()
    pushed = _batch(0)
    store.push("transactions", pushed)  # the tables exist
    before = _snapshot(store)
    path, aside = _break(store, broken)
    failed = [_batch(k) for k in (1, 2, 3)]
    for rows in failed:
        with pytest.raises(UnavailableError) as ei:
            store.push("transactions", rows)
        msg = str(ei.value)
        assert ei.value.field == "offline_store" and ei.value.status == 503
        assert "offline store" in msg and broken in msg and "nothing of this push was applied" in msg
        assert "Traceback" not in msg and ".cargo" not in msg
        # fv__ tables are appended before src__: a broken src__ means fv__ rows were taken back.
        _repair(path, aside)
        assert _snapshot(store) == before
        path, aside = _break(store, broken)
    _repair(path, aside)
    for rows in failed:  # the client retries each failed push once
        assert store.push("transactions", rows).visible
    _check(store, pushed + [e for rows in failed for e in rows], hist)


def test_offline_fault_through_rest_is_a_503_naming_the_offline_store(tmp_path: Path, make_store: StoreFactory) -> None:
    store = make_store(tmp_path / "repo", lateness="1d")
    store.push("transactions", _batch(0))
    before = _snapshot(store)
    path, aside = _break(store, "src__transactions")
    body = {
        "records": {"transactions": [{"record": {**e, "ts": e["ts"].isoformat()}} for e in _batch(1)]},
    }
    with TestClient(create_app(tmp_path / "repo", auth=False, mcp=False, allowed_hosts=("testserver",))) as client:
        r = client.post("/v1/ingest", json=body)
        assert r.status_code == 503, r.text
        assert "offline store" in r.json()["message"] and "Traceback" not in r.text
        _repair(path, aside)
        assert _snapshot(store) == before
        r = client.post("/v1/ingest", json=body)  # the retry
        assert r.status_code == 200, r.text
    _check(store, _batch(0) + _batch(1))


def test_online_lock_fault_leaves_offline_unchanged(tmp_path: Path, make_store: StoreFactory) -> None:
    root = tmp_path / "repo"
    make_store(root, lateness="1d").close()
    (root / "context_store.yaml").write_text("embedded_push_timeout: 0.3\n")
    with cs.ContextStore(root) as store:
        store.push("transactions", _batch(0))
        before = _snapshot(store)
        other = sqlite3.connect(store.online.path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another writer holds the write lock past the timeout
        try:
            with pytest.raises(UnavailableError) as ei:
                store.push("transactions", _batch(1))
            assert ei.value.field == "online_store" and "locked" in str(ei.value)
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert _snapshot(store) == before
        store.push("transactions", _batch(1))
        _check(store, _batch(0) + _batch(1))


_KILL_BEFORE_COMMIT = """
import os, signal, sys
from pathlib import Path
import context_store as cs
from context_store.stores.online.sqlite import SqliteOnlineStore
from tests.compute.stream.test_embedded_atomic import _batch

end = SqliteOnlineStore.end_push
def die_before_commit(self, seq, timeout_s=None):
    if self._in_txn():  # offline appends done, SQLite commit not yet
        os.kill(os.getpid(), signal.SIGKILL)
    return end(self, seq, timeout_s)
SqliteOnlineStore.end_push = die_before_commit
with cs.ContextStore(Path(sys.argv[1])) as store:
    store.push("transactions", _batch(1))
"""


def _python(code: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", code, *args], env=env, cwd=ROOT, capture_output=True, timeout=120)


def test_pusher_killed_between_offline_append_and_commit_is_taken_back(
    tmp_path: Path, make_store: StoreFactory
) -> None:
    root = tmp_path / "repo"
    store = make_store(root, lateness="1d")
    store.push("transactions", _batch(0))
    before = _snapshot(store)
    proc = _python(_KILL_BEFORE_COMMIT, str(root))
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    # The crash window: offline got the rows, online did not, the journal says so.
    assert len(store.online.pending_pushes()) == 1
    assert _rows(store, "src__transactions") == before["src__transactions"] + 3
    assert {u: before[u] for u in USERS} == {u: _snapshot(store)[u] for u in USERS}
    store.push("transactions", _batch(2))  # the next push takes the orphans back first
    store.push("transactions", _batch(1))  # the client's retry of the unacknowledged push
    _check(store, _batch(0) + _batch(2) + _batch(1))


_PUSHER = """
import sys, threading
from pathlib import Path
import context_store as cs
from tests.compute.stream.test_embedded_atomic import _push_all

root, proc, threads, pushes = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
with cs.ContextStore(root) as store:
    errors = []
    ks = [[100 + 40 * proc + 20 * t + i for i in range(pushes)] for t in range(threads)]
    ts = [threading.Thread(target=_push_all, args=(store, k, errors)) for k in ks]
    for t in ts: t.start()
    for t in ts: t.join()
sys.exit("; ".join(errors) if errors else 0)
"""


def _push_all(store: cs.ContextStore, ks: list[int], errors: list[str]) -> None:
    """Push batch k for each k; every error goes to ``errors`` (a thread's exception would otherwise
    vanish and the test would only see rows missing). Pushes are serialized by the admission lock and
    nothing here is faulty, so any error, a 503 included, is a bug."""
    for k in ks:
        try:
            store.push("transactions", _batch(k))
        except Exception as e:  # noqa: BLE001 - reported to the test, which fails on it
            errors.append(f"batch {k}: {type(e).__name__}: {e}")


def test_concurrent_pushers_in_two_processes_count_exactly_once(tmp_path: Path, make_store: StoreFactory) -> None:
    root = tmp_path / "repo"
    store = make_store(root, lateness="1d")
    threads, pushes = 2, 8
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _PUSHER, str(root), str(p), str(threads), str(pushes)],
            env=env,
            cwd=ROOT,
            stderr=subprocess.PIPE,
        )
        for p in (1, 2)
    ]
    errors: list[str] = []
    local = threading.Thread(target=_push_all, args=(store, [250 + i for i in range(pushes)], errors))
    local.start()
    local.join()
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()[-2000:]
    assert errors == []
    pushed = [
        e for p in (1, 2) for t in range(threads) for i in range(pushes) for e in _batch(100 + 40 * p + 20 * t + i)
    ]
    pushed += [e for i in range(pushes) for e in _batch(250 + i)]
    _check(store, pushed)
    offsets = store.offline.read("src__transactions", columns=["_offset"]).column("_offset").to_pylist()
    assert len(set(offsets)) == len(offsets)  # offsets are unique across processes (dedupe by offset works)
    shutil.rmtree(root / ".context_store", ignore_errors=True)
