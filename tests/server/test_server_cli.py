"""``context-store serve`` and ``context-store keys`` as real processes (2 uvicorn workers)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

import context_store as cs
from tests.support.server import free_port, make_server_repo

pytestmark = [pytest.mark.redis, pytest.mark.slow]

CLI = [sys.executable, "-m", "context_store.cli.main"]


def test_serve_with_two_workers_and_cli_keys(tmp_path: Path, redis_url: str) -> None:
    ws = "k" + uuid.uuid4().hex[:10]
    repo = make_server_repo(tmp_path / "repo", redis_url, ws)
    cs.ContextStore(repo).apply()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROMETHEUS_")}
    out = subprocess.run(
        [*CLI, "keys", "create", "--repo", str(repo), "--scope", "read"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    key = out.stdout.strip().splitlines()[-1]
    assert key.startswith("cs_") and " " not in key
    out = subprocess.run(
        [*CLI, "keys", "create", "--repo", str(repo), "--scope", "metrics"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    metrics_key = out.stdout.strip().splitlines()[-1]
    port = free_port()
    proc = subprocess.Popen(
        [*CLI, "serve", "--repo", str(repo), "--port", str(port), "--workers", "2", "--no-workers"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.2)
        body = {"params": {"featureServiceName": "fraud"}}
        for _ in range(6):  # spread over both workers
            r = httpx.post(
                url + "/api/v1/feature-service/metadata", json=body, headers={"authorization": f"Tecton-key {key}"}
            )
            assert r.status_code == 200, r.text
        assert httpx.post(url + "/api/v1/feature-service/metadata", json=body).status_code == 401
        assert httpx.get(url + "/metrics").status_code == 401
        metrics = httpx.get(url + "/metrics", headers={"authorization": f"Bearer {metrics_key}"})
        assert metrics.status_code == 200
        # Multiprocess mode aggregates the workers: all 6 successful metadata requests are counted.
        line = next(
            x
            for x in metrics.text.splitlines()
            if x.startswith("cs_http_requests_total") and 'status="200"' in x and "metadata" in x
        )
        assert float(line.rsplit(" ", 1)[1]) == 6.0
        revoke = subprocess.run(
            [*CLI, "keys", "revoke", key, "--repo", str(repo)], capture_output=True, text=True, env=env, timeout=60
        )
        assert revoke.returncode == 0, revoke.stderr
        time.sleep(1.2)  # key cache TTL
        r = httpx.post(url + "/api/v1/feature-service/metadata", json=body, headers={"authorization": f"Bearer {key}"})
        assert r.status_code == 401
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def test_serve_refuses_no_auth_on_public_address(tmp_path: Path) -> None:
    out = subprocess.run(
        [*CLI, "serve", "--repo", str(tmp_path), "--host", "0.0.0.0", "--no-auth"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0
    assert "loopback" in out.stderr and "Traceback" not in out.stderr
