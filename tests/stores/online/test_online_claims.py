"""Contract of ``claim_ids`` (idempotent ingest) on every backend, SQLite's ``transaction()``, and
bounded Redis timeouts (a test-owned redis-server is SIGSTOPped: reads and writes fail fast)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

import context_store as cs
from context_store.config import load_config
from context_store.errors import InvalidInputError, UnavailableError
from context_store.stores.online import BaseOnlineStore, open_online_store
from tests.stores.online.test_online_contract import NOW, agg_state, events, key, store, table  # noqa: F401
from tests.support.server import free_port


def test_claim_ids_first_wins_within_the_ttl(store: BaseOnlineStore) -> None:  # noqa: F811
    assert store.claim_ids("eid:s", ["a", "b"], b"v1", 60_000) == [None, None]
    assert store.claim_ids("eid:s", ["b", "c", "a", "c"], b"v2", 60_000) == [b"v1", None, b"v1", b"v2"]
    assert store.claim_ids("eid:other", ["a"], b"v3", 60_000) == [None]  # scopes are separate
    assert store.claim_ids("eid:s", [], b"v4", 60_000) == []
    assert store.claim_ids("eid:s", ["short"], b"v5", 50) == [None]
    time.sleep(0.2)
    assert store.claim_ids("eid:s", ["short", "a"], b"v6", 60_000) == [None, b"v1"]  # expired: claimable again


def test_sqlite_transaction_commits_or_rolls_back_applies_and_claims(tmp_path: Path) -> None:
    s = open_online_store(load_config(tmp_path))
    st = agg_state("1h", [cs.Aggregate("amount", "count", "1d")])
    ev = events(20, seed=2, users=("u1",))

    def count() -> object:
        v = s.read_features([(st, key("u1"))], NOW)[0].values
        return v[0] if v else None

    with pytest.raises(RuntimeError, match="boom"), s.transaction():
        assert s.claim_ids("eid:x", ["e1"], b"1", 60_000) == [None]
        s.apply_events(st, table(ev), now_us=NOW)
        raise RuntimeError("boom")
    assert count() in (None, 0)
    assert s.claim_ids("eid:x", ["e1", "e2"], b"2", 60_000) == [None, None]  # the claims rolled back too
    with s.transaction():
        s.apply_events(st, table(ev), now_us=NOW)
        assert s.claim_ids("eid:x", ["e3"], b"3", 60_000) == [None]
    assert count() == sum(1 for t in ev["ts"] if NOW - 86400 * 1_000_000 <= t < (NOW // st.g) * st.g)
    assert s.claim_ids("eid:x", ["e3"], b"4", 60_000) == [b"3"]
    s.close()


@pytest.mark.parametrize(
    ("setting", "value"),
    [("redis_read_timeout_ms", "0"), ("redis_write_timeout_ms", "soon"), ("redis_read_timeout_ms", True)],
)
def test_bad_timeout_settings_name_the_key(tmp_path: Path, setting: str, value: object) -> None:
    with pytest.raises(InvalidInputError, match=setting) as ei:
        load_config(tmp_path, **{setting: value})
    assert ei.value.field == setting


def test_timeouts_from_yaml_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "context_store.yaml").write_text("redis_read_timeout_ms: 250\n")
    monkeypatch.setenv("CONTEXT_STORE_REDIS_WRITE_TIMEOUT_MS", "1500")
    t = load_config(tmp_path).redis_timeouts
    assert (t.read_s, t.write_s) == (0.25, 1.5)
    monkeypatch.delenv("CONTEXT_STORE_REDIS_WRITE_TIMEOUT_MS")
    assert load_config(tmp_path / "nothing").redis_timeouts == (0.1, 2.0)  # defaults


@pytest.mark.redis
def test_redis_hang_reads_and_writes_fail_fast_then_recover(tmp_path: Path) -> None:
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server binary needed to simulate a hang")
    port = free_port()
    url = f"redis://:s3cr3t-pw@127.0.0.1:{port}/0"
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no", "--requirepass", "s3cr3t-pw"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        s = open_online_store(load_config(tmp_path, workspace="hang", online_store=url))
        deadline = time.monotonic() + 10
        while True:
            try:
                s.ping()
                break
            except UnavailableError:
                assert time.monotonic() < deadline, "own redis-server did not start"
                time.sleep(0.05)
        st = agg_state("1h", [cs.Aggregate("amount", "count", "1d")])
        s.apply_events(st, table(events(10, seed=1, users=("u1",))), now_us=NOW)
        assert s.read_features([(st, key("u1"))], NOW)[0].values is not None
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            took = []
            for _ in range(3):
                t = time.monotonic()
                with pytest.raises(UnavailableError) as ei:
                    s.read_features([(st, key("u1"))], NOW)
                took.append(time.monotonic() - t)
                assert ei.value.status == 503 and "s3cr3t-pw" not in str(ei.value)
            t = time.monotonic()
            with pytest.raises(UnavailableError):
                s.apply_events(st, table(events(5, seed=3, users=("u1",))), token=("0", "99"), now_us=NOW)
            write_s = time.monotonic() - t
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        print(f"reads failed after {[round(x, 3) for x in took]} s, the write after {write_s:.2f} s")
        assert max(took) < 1.0, took  # default 100 ms; generous for a loaded 2-core box (was 10 s)
        assert write_s < 4.0, write_s  # default 2 s (was 10-30 s)
        assert s.read_features([(st, key("u1"))], NOW)[0].values is not None  # recovers by itself
        s.clear()
        s.close()
    finally:
        proc.kill()
        proc.wait(10)
