"""One deployment per online namespace: two repos with the same workspace name on one Redis database.

Real Redis, real processes (``context-store apply/worker/push/serve`` as subprocesses). The second repo is
refused everywhere with one clear line and nothing crosses: the first repo's online values and offline log
equal a recomputation of its own events, the second's offline store stays empty. ``apply --take-over`` moves
the claim, the old worker stops consuming, and the new owner's events reach only its own offline store.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

import context_store as cs
from context_store.errors import DeploymentConflictError
from context_store.registry.registry import Registry
from tests.support.repo import make_repo
from tests.support.server import free_port
from tests.support.stream import REPO, T0, StoreFactory, event, events_table

pytestmark = pytest.mark.redis

CLI = [sys.executable, "-m", "context_store.cli.main"]
T_REQ = T0 + timedelta(hours=6)


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("CONTEXT_STORE_", "PROMETHEUS_"))}


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=_env(), timeout=timeout)


def _where(repo: Path, ws: str, url: str) -> list[str]:
    return ["--repo", str(repo), "--workspace", ws, "--online-store", url]


def _start_worker(repo: Path, ws: str, url: str) -> subprocess.Popen[bytes]:
    cmd = [*CLI, "worker", *_where(repo, ws, url), "--flush-interval", "0.2"]
    return subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _applied_elsewhere(root: Path, ws: str) -> str:
    """A second repo (same definitions, same workspace name, its own offline store), applied against its own
    embedded store; returns its deployment id. Its commands are then pointed at the shared Redis database."""
    make_repo(root, REPO.format(partitions=4, lateness="1h", interval=""), data={"txns.parquet": events_table([])})
    with cs.ContextStore(root, workspace=ws, online_store="sqlite") as store:
        store.apply(force=True)
        dep = store.registry.deployment_id(create=False)
    assert dep
    return dep


def _one_line_error(out: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert out.returncode != 0, out.stdout
    lines = [x for x in out.stderr.strip().splitlines() if x.startswith("Error:")]
    assert len(lines) == 1, out.stderr
    assert "Traceback" not in out.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def _owned_by_worker(store: cs.ContextStore) -> bool:
    log = store.ingestor.stream_log
    return all((log.lease_owner("transactions", p) or "push-").split("-")[0] != "push" for p in range(4))


def _wait(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def _offline_rows(store: cs.ContextStore) -> list[tuple[Any, ...]]:
    if not store.offline.exists("src__transactions"):
        return []
    t = store.offline.read("src__transactions", columns=["user_id", "ts", "amount"])
    return sorted(zip(t.column("user_id").to_pylist(), t.column("ts").to_pylist(), t.column("amount").to_pylist()))


def _rows(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return sorted((r["user_id"], r["ts"], r["amount"]) for r in rows)


def _assert_online_equals_recomputation(store: cs.ContextStore, rows: list[dict[str, Any]]) -> None:
    by_user: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_user[r["user_id"]].append(r)
    for user, evs in sorted(by_user.items()):
        got = store.get_features("fraud", {"user_id": user}, request_time=T_REQ).feature_values
        amounts = [e["amount"] for e in evs]
        last_hour = [e["amount"] for e in evs if e["ts"] >= T_REQ - timedelta(hours=1)]
        assert got["txn_stats.amount_count_1d"] == len(evs), user
        assert got["txn_stats.amount_sum_lifetime"] == sum(amounts), user
        assert got["txn_stats.amount_sum_1h"] == sum(last_hour), user
        assert got["txn_stats.amount_max_1d"] == max(amounts), user


def _events(prefix: str, n: int, users: int = 12, start: float = 0, span: float = 300) -> list[dict[str, Any]]:
    """``n`` events of users ``prefix0..``, in time order over ``span`` minutes from T0 + ``start`` (none late)."""
    return [event(f"{prefix}{(i * 7) % users}", start + span * i / n, float(i % 11), f"m{i % 3}") for i in range(n)]


def _push_all(store: cs.ContextStore, rows: list[dict[str, Any]], size: int = 20) -> None:
    for i in range(0, len(rows), size):
        assert store.push("transactions", rows[i : i + size]).visible


def test_second_repo_is_refused_everywhere_and_nothing_crosses(
    tmp_path: Path, redis_url: str, workspace_name: str, redis_cleanup: list[str], make_store: StoreFactory
) -> None:
    ws = workspace_name
    redis_cleanup.append(f"cs:{ws}:*")
    a = make_store(tmp_path / "a", online_store=redis_url, workspace=ws)  # the first apply claims the namespace
    a_id = a.registry.deployment_id(create=False)
    assert a_id and cs.ContextStore(tmp_path / "a", workspace=ws, online_store=redis_url).ping()  # same repo: agrees
    b_root = tmp_path / "b"
    b_id = _applied_elsewhere(b_root, ws)
    assert b_id != a_id
    needles = (f"workspace '{ws}'", a_id, str(tmp_path / "a"), b_id, "--take-over")

    worker = _start_worker(tmp_path / "a", ws, redis_url)
    try:
        _wait(lambda: _owned_by_worker(a), 30, "the first repo's worker took no partition")

        # apply, worker and push of the second repo: refused with one line, exit 1, nothing written.
        _one_line_error(_cli("apply", "-y", *_where(b_root, ws, redis_url)), *needles)
        assert Registry(cs.ContextStore(b_root, workspace=ws).config).applied_version() == 1  # no new version
        _one_line_error(_cli("worker", *_where(b_root, ws, redis_url)), *needles)
        rec = tmp_path / "b_events.json"
        b_rows = _events("u", 30)
        rec.write_bytes(orjson.dumps(b_rows))
        _one_line_error(_cli("push", "transactions", str(rec), *_where(b_root, ws, redis_url)), *needles)
        with cs.ContextStore(b_root, workspace=ws, online_store=redis_url) as b:
            with pytest.raises(DeploymentConflictError, match=a_id):
                b.push("transactions", b_rows)
            with pytest.raises(DeploymentConflictError):
                b.get_features("fraud", {"user_id": "u1"})

        # serve of the second repo: /readyz not ready with the reason (no credentials), requests 409.
        port = free_port()
        server = subprocess.Popen(
            [*CLI, "serve", *_where(b_root, ws, redis_url), "--port", str(port), "--no-auth", "--no-workers"],
            env=_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            url = f"http://127.0.0.1:{port}"

            def up() -> bool:
                assert server.poll() is None, server.stderr.read().decode() if server.stderr else ""
                try:
                    return httpx.get(url + "/healthz", timeout=1).status_code == 200
                except httpx.HTTPError:
                    return False

            _wait(up, 60, "server did not start")
            ready = httpx.get(url + "/readyz", timeout=5)
            assert ready.status_code == 503 and ready.json()["ready"] is False
            assert all(n in ready.json()["message"] for n in needles)
            body = {"params": {"featureServiceName": "fraud", "joinKeyMap": {"user_id": "u1"}}}
            r = httpx.post(url + "/api/v1/feature-service/get-features", json=body, timeout=5)
            assert r.status_code == 409 and a_id in r.json()["message"], r.text
            rec0 = {"user_id": "u1", "ts": T0.isoformat(), "amount": 1.0, "merchant": "m0"}
            r = httpx.post(url + "/v1/ingest", json={"records": {"transactions": [{"record": rec0}]}}, timeout=5)
            assert r.status_code == 409 and a_id in r.json()["message"], r.text
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(30)

        # The first repo streams on, its worker alone consuming.
        a_rows = _events("u", 600)
        _push_all(a, a_rows)
        _wait(lambda: len(_offline_rows(a)) == len(a_rows), 15, "offline log incomplete")
        assert worker.poll() is None
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0, worker.stderr.read().decode() if worker.stderr else ""
        if worker.stderr:
            worker.stderr.close()

    # Nothing crossed: A's online and offline are exactly its own events; B wrote nothing anywhere.
    _assert_online_equals_recomputation(a, a_rows)
    assert _offline_rows(a) == _rows(a_rows)
    assert a.offline.count("fv__txn_stats") == len(a_rows)
    with cs.ContextStore(b_root, workspace=ws, online_store="sqlite") as b_own:
        assert _offline_rows(b_own) == []
    log = a.ingestor.stream_log
    assert log.lag([log.stream_key("transactions", p) for p in range(4)]) == 0


def test_take_over_moves_the_claim_and_the_old_worker_stops(
    tmp_path: Path, redis_url: str, workspace_name: str, redis_cleanup: list[str], make_store: StoreFactory
) -> None:
    ws = workspace_name
    redis_cleanup.append(f"cs:{ws}:*")
    a = make_store(tmp_path / "a", online_store=redis_url, workspace=ws)
    a_id = a.registry.deployment_id(create=False)
    b_root = tmp_path / "b"
    b_id = _applied_elsewhere(b_root, ws)
    old = _start_worker(tmp_path / "a", ws, redis_url)
    new: subprocess.Popen[bytes] | None = None
    try:
        _wait(lambda: _owned_by_worker(a), 30, "the first repo's worker took no partition")
        a_rows = _events("u", 200)
        _push_all(a, a_rows)
        _wait(lambda: len(_offline_rows(a)) == len(a_rows), 15, "offline log incomplete")

        out = _cli("apply", "-y", "--take-over", *_where(b_root, ws, redis_url))
        assert out.returncode == 0, out.stderr
        assert f"Moved workspace '{ws}'" in out.stdout and a_id in out.stdout
        # The old worker noticed (it re-checks on its rebalance cadence) and stopped consuming: exit 1, one line.
        assert old.wait(10) != 0
        err = old.stderr.read().decode() if old.stderr else ""
        assert "Error:" in err and b_id in err and "Traceback" not in err
        with pytest.raises(DeploymentConflictError, match=b_id):
            a.push("transactions", [event("u1", 5, 1.0)])  # the old repo's pusher re-checks within a second

        new = _start_worker(b_root, ws, redis_url)
        with cs.ContextStore(b_root, workspace=ws, online_store=redis_url) as b:
            _wait(lambda: _owned_by_worker(b), 30, "the new owner's worker took no partition")
            b_rows = _events("v", 300, start=250, span=100)
            _push_all(b, b_rows)
            _wait(lambda: len(_offline_rows(b)) == len(b_rows), 15, "new owner's offline log incomplete")
            _assert_online_equals_recomputation(b, b_rows)  # v* users: only B's events
            assert _offline_rows(b) == _rows(b_rows)
        assert _offline_rows(a) == _rows(a_rows)  # the old deployment got none of the new owner's events
    finally:
        for proc in (old, new):
            if proc is not None:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
                proc.wait(30)
                if proc.stderr:
                    proc.stderr.close()


def test_embedded_single_repo_unchanged_and_a_shared_sqlite_file_is_claimed(
    tmp_path: Path, make_store: StoreFactory
) -> None:
    shared = tmp_path / "shared" / "online.sqlite"
    spec = f"sqlite:{shared}"
    a = make_store(tmp_path / "a", online_store=spec)
    rows = _events("u", 120)
    for i in range(0, len(rows), 30):
        assert a.push("transactions", rows[i : i + 30]).visible
    # In order (embedded: one partition, one watermark): an event older than it by > lateness is rejected.
    more = {**event("w1", 0, 2.0), "ts": max(r["ts"] for r in rows) + timedelta(seconds=1)}
    with cs.ContextStore(tmp_path / "a", online_store=spec) as a2:  # another process of the same repo agrees
        _assert_online_equals_recomputation(a2, rows)
        assert a2.push("transactions", [more]).visible
    assert _offline_rows(a) == _rows([*rows, more])

    make_repo(
        tmp_path / "b", REPO.format(partitions=4, lateness="1h", interval=""), data={"txns.parquet": events_table([])}
    )
    with cs.ContextStore(tmp_path / "b", online_store=spec) as b:
        with pytest.raises(DeploymentConflictError, match=str(shared)):
            b.apply(force=True)
        assert b.registry.applied_version() == 0  # refused before writing anything
        b.apply(force=True, take_over=True)
        assert b.push("transactions", [event("x1", 3, 2.0)]).visible
    with pytest.raises(DeploymentConflictError):
        a.push("transactions", [event("u1", 4, 1.0)])
