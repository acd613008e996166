"""compose.yaml's command sequence, run without Docker: scaffold a repo as the compose header says, run the
``init`` service's commands, then ``api`` and ``worker`` as real processes against real Redis. The API must
serve PRESENT values for a scaffolded user, not the empty online store of a stack that only ran ``apply``.

What Docker adds (image build, volumes, health-check scheduling) is covered statically in test_compose.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.compose import load_compose, service_commands
from tests.support.server import free_port

pytestmark = [pytest.mark.redis, pytest.mark.slow, pytest.mark.model]

CLI = [sys.executable, "-m", "context_store.cli"]


class Stack:
    """The compose services' environment and argv, translated for this machine."""

    def __init__(self, tmp: Path, redis_url: str, workspace: str) -> None:
        self.compose = load_compose()
        self.repo = tmp / "feature_repo"
        self.data = tmp / "data"
        self.tmp = tmp
        self.port = free_port()
        env = dict(self.compose["x-context-store"]["environment"])
        assert env["CONTEXT_STORE_ONLINE_STORE"] == "redis://redis:6379/0"
        assert env["CONTEXT_STORE_DATA_DIR"] == "/data"
        env["CONTEXT_STORE_ONLINE_STORE"] = redis_url
        env["CONTEXT_STORE_DATA_DIR"] = str(self.data)
        env["CONTEXT_STORE_WORKSPACE"] = workspace  # the compose stack uses 'default'; tests share one Redis
        base = {k: v for k, v in os.environ.items() if not k.startswith(("PROMETHEUS_", "CONTEXT_STORE_"))}
        self.env = {**base, **env}

    def argv(self, cmd: list[str]) -> list[str]:
        """``context-store ...`` of a service, with /repo -> the scaffolded repo and the API port -> a free one."""
        assert cmd[0] == "context-store", cmd
        out = [str(self.repo) if a == "/repo" else a for a in cmd[1:]]
        if "--port" in out:
            out[out.index("--port") + 1] = str(self.port)
        return [*CLI, *out]

    def run(self, cmd: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
        out = subprocess.run(
            self.argv(cmd), env=self.env, cwd=self.tmp, capture_output=True, text=True, timeout=timeout
        )
        assert out.returncode == 0, f"{' '.join(cmd)} exited {out.returncode}:\n{out.stdout}\n{out.stderr[-3000:]}"
        return out

    def start(self, name: str) -> subprocess.Popen[bytes]:
        (cmd,) = service_commands(self.compose["services"][name])
        log = open(self.tmp / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        return subprocess.Popen(
            self.argv(cmd), env=self.env, cwd=self.tmp, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")[-3000:]


@pytest.fixture
def stack(tmp_path: Path, redis_url: str, redis_cleanup: list[str]) -> Iterator[Stack]:
    ws = "compose" + uuid.uuid4().hex[:10]
    redis_cleanup.extend([f"cs:{ws}:*", f"*{ws}*"])
    yield Stack(tmp_path, redis_url, ws)


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=10)


def _wait(check: Any, what: str, procs: dict[str, subprocess.Popen[bytes]], stack: Stack, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        for name, p in procs.items():
            assert p.poll() is None, f"{name} exited {p.returncode}:\n{stack.log(name)}"
        assert time.monotonic() < deadline, f"{what} not within {timeout}s:\n" + "\n".join(map(stack.log, procs))
        time.sleep(0.25)


def _readyz(url: str) -> bool:
    try:
        return httpx.get(url + "/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


BLOCK_EMBEDDINGS = """
import sys
# As on an image built with --build-arg EXTRAS=redis,server,mcp: torch and sentence-transformers absent.
sys.modules["torch"] = None
sys.modules["sentence_transformers"] = None
from starlette.testclient import TestClient
from context_store.server.app import create_app

app = create_app(sys.argv[1], auth=False)
with TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False) as client:
    r = client.post("/v1/similar", json={"view": "item_embeddings", "text": "a quiet documentary", "k": 3})
    print(r.status_code)
    print(r.text)
"""


def test_compose_sequence_serves_scaffolded_values(stack: Stack) -> None:
    t0 = time.monotonic()
    # 1. The compose header's first step (small data: this test runs the real MiniLM on CPU).
    scaffold = ["context-store", "init", "feature_repo", "--users", "10", "--events", "200", "--items", "10"]
    stack.run([*scaffold, "--days", "3"])
    assert (stack.repo / "context_store.yaml").exists()
    # 2. The init service, line by line, as `sh -ec` runs it.
    services = stack.compose["services"]
    init = service_commands(services["init"])
    assert [c[1] for c in init] == ["apply", "backfill", "materialize"]
    outputs = [stack.run(cmd) for cmd in init]
    assert "Materialize done." in outputs[-1].stdout
    t_init = time.monotonic() - t0
    # The repo is mounted read-only in compose: nothing may have been written into it.
    assert not (stack.repo / ".context_store").exists()
    assert not list(stack.repo.rglob("__pycache__"))

    # 3. A key, as the compose header creates it (api binds 0.0.0.0: keys required).
    key = stack.run(["context-store", "keys", "create", "--repo", "/repo", "--scope", "read"]).stdout.split()[-1]
    assert key.startswith("cs_")

    # 4. api and worker, the services' own commands.
    procs = {"api": stack.start("api"), "worker": stack.start("worker")}
    try:
        url = f"http://127.0.0.1:{stack.port}"
        _wait(lambda: _readyz(url), "/readyz 200", procs, stack, timeout=60)
        t_ready = time.monotonic() - t0

        # The worker service's own health check: a fresh heartbeat of this workspace.
        health = services["worker"]["healthcheck"]["test"]
        assert health[:3] == ["CMD", "python", "-c"]

        def worker_healthy() -> bool:
            run = subprocess.run([sys.executable, "-c", health[3]], env=stack.env, capture_output=True, timeout=30)
            return run.returncode == 0

        _wait(worker_healthy, "worker healthy", procs, stack, timeout=30)

        body = {
            "params": {
                "featureServiceName": "fraud_detection_service",
                "joinKeyMap": {"user_id": "u0001"},
                "requestContextMap": {"amount": 250},
                "metadataOptions": {"includeNames": True, "includeServingStatus": True},
            }
        }
        r = httpx.post(
            url + "/api/v1/feature-service/get-features",
            json=body,
            headers={"authorization": f"Bearer {key}"},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        values = r.json()["result"]["features"]
        meta = r.json()["metadata"]["features"]
        got = {m["name"]: (m["status"], v) for m, v in zip(meta, values, strict=True)}
        present = {n for n, (status, v) in got.items() if status == "PRESENT" and v is not None}
        # Batch (user_profile) and streaming-window (user_transaction_stats) features were materialized.
        for name in ("user_profile.age", "user_profile.credit_score", "user_transaction_stats.amount_count_7d"):
            assert name in present, got
        assert len(present) >= len(got) // 2, got
        assert int(got["user_transaction_stats.amount_count_7d"][1]) > 0  # int64 travels as a JSON string
        assert httpx.post(url + "/api/v1/feature-service/get-features", json=body).status_code == 401
        ready = httpx.get(url + "/readyz", timeout=10)
        assert ready.status_code == 200, ready.text
    finally:
        _stop(list(procs.values()))

    # 5. The same repo on an install without torch (the slim image): a text query is a 503 that says what to
    # install, not ``500 internal error: ImportError``.
    out = subprocess.run(
        [sys.executable, "-c", BLOCK_EMBEDDINGS, str(stack.repo)],
        env=stack.env,
        cwd=stack.tmp,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    status, text = out.stdout.strip().splitlines()[-2:]
    assert status == "503", text
    assert "torch" in text and "context-store[embeddings]" in text and "EXTRAS" in text, text
    # Numbers for the report (pytest -s).
    print(f"compose sequence: init done {t_init:.1f}s, api ready {t_ready:.1f}s, all {time.monotonic() - t0:.1f}s")
