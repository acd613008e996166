"""Redis goes away and comes back: 503 with a clear message (never a hang or a 500), then recovery."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

import context_store as cs
from context_store.server import create_app
from tests.support.server import SERVING_MODES, free_port, make_server_repo, running_server

pytestmark = [pytest.mark.redis, pytest.mark.slow]

GET = "/api/v1/feature-service/get-features"


def _start_redis(port: int, tmp: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [
            shutil.which("redis-server") or "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            import redis

            if redis.Redis(port=port, socket_timeout=0.5).ping():
                return proc
        except Exception:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("redis-server did not start")


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server binary not found (apt-get install redis-server)")
    port = free_port()
    yield port, tmp_path


@pytest.mark.parametrize("fast_path", SERVING_MODES)
def test_redis_down_gives_503_then_recovers(private_redis: tuple[int, Path], fast_path: bool) -> None:
    port, tmp = private_redis
    proc = _start_redis(port, tmp)
    try:
        repo = make_server_repo(tmp / "repo", f"redis://127.0.0.1:{port}/0", "default")
        cs.ContextStore(repo).apply()
        with running_server(create_app(repo, auth=False, mcp=False, fast_path=fast_path)) as url:
            body = {"params": {"featureServiceName": "user_features", "joinKeyMap": {"user_id": "u1"}}}
            rec = {
                "records": {
                    "transactions": [{"record": {"user_id": "u1", "amount": 3.0, "ts": datetime.now(UTC).isoformat()}}]
                }
            }
            assert httpx.post(url + "/v1/ingest", json=rec, timeout=30).status_code == 200
            r = httpx.post(url + GET, json=body, timeout=30)
            assert r.status_code == 200 and r.json()["result"]["features"][0] == "1"

            proc.terminate()
            proc.wait(timeout=10)
            t0 = time.monotonic()
            r = httpx.post(url + GET, json=body, timeout=30)
            assert r.status_code == 503, r.text
            assert "redis" in r.json()["message"].lower() or "unreachable" in r.json()["message"].lower()
            assert time.monotonic() - t0 < 10  # an error, not a hang
            ready = httpx.get(url + "/readyz", timeout=30)
            assert ready.status_code == 503 and ready.json()["ready"] is False
            assert httpx.post(url + "/v1/ingest", json=rec, timeout=30).status_code == 503
            assert httpx.get(url + "/healthz").status_code == 200  # alive, just not ready

            proc = _start_redis(port, tmp)  # empty: this Redis keeps nothing on disk
            deadline = time.monotonic() + 30  # generous: a loaded 2-core CI box restarts Redis slowly
            while "missing" not in (ready := httpx.get(url + "/readyz", timeout=30)).json()["message"]:
                # Reachable again, and readiness says the state died with it (never "ready" on stale markers).
                assert time.monotonic() < deadline, f"server did not see Redis come back: {ready.text}"
                time.sleep(0.2)
            assert ready.status_code == 503 and "materialize --full" in ready.json()["message"]
            r = httpx.post(url + GET, json=body, timeout=30)
            assert r.status_code == 200, r.text  # serving recovered; the value is missing, not a made-up 0
            assert r.json()["result"]["features"][0] is None, r.text

            cs.ContextStore(repo).materialize(full=True)  # the acknowledged event is in the offline log
            while (ready := httpx.get(url + "/readyz", timeout=30)).status_code != 200:
                assert time.monotonic() < deadline + 30, f"server did not recover after materialize: {ready.text}"
                time.sleep(0.2)
            r = httpx.post(url + GET, json=body, timeout=30)
            assert r.status_code == 200 and r.json()["result"]["features"][0] == "1", r.text
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_apply_while_serving_is_picked_up(tmp_path: Path, redis_url: str) -> None:
    """Another process applies a new registry version: the running server serves it without a restart."""
    import uuid

    from tests.support.server import SERVER_DEFINITIONS

    ws = "r" + uuid.uuid4().hex[:10]
    repo = make_server_repo(tmp_path / "repo", redis_url, ws)
    cs.ContextStore(repo).apply()
    meta = "/api/v1/feature-service/metadata"
    with running_server(create_app(repo, auth=False, mcp=False, refresh_interval=0.2)) as url:
        body = {"params": {"featureServiceName": "extra"}}
        assert httpx.post(url + meta, json=body).status_code == 404
        (repo / "features.py").write_text(
            SERVER_DEFINITIONS + '\nextra = cs.FeatureService("extra", [txn_stats[["amount_max_1d"]]])\n'
        )
        cs.ContextStore(repo).apply()
        deadline = time.monotonic() + 10
        while (r := httpx.post(url + meta, json=body)).status_code != 200:
            assert time.monotonic() < deadline, r.text
            time.sleep(0.1)
        assert [f["name"] for f in r.json()["featureValues"]] == ["txn_stats.amount_max_1d"]
