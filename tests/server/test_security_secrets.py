"""Credentials never leave the process: a password-protected Redis goes down, and no response body, header,
log line or CLI output names its password (issue: `/readyz` and the 503 bodies printed the store URL)."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

import context_store as cs
from context_store.config import load_config
from context_store.errors import UnavailableError, error_body, tool_error_text
from context_store.server import create_app
from context_store.server.keys import KeyStore, key_store_path
from context_store.vocab.redact import redact_text, redact_url, register_url
from tests.support.repo import make_repo
from tests.support.server import SERVER_DEFINITIONS, free_port, running_server

SECRET = "S3cretPass"
# The server test repo plus a context service, so /v1/context reaches the online store.
DEFINITIONS = (
    SERVER_DEFINITIONS
    + """
ctx = cs.ContextService("ctx", entity=user, features=[txn_stats], recent_events=(transactions, 50))
"""
)
GET = "/api/v1/feature-service/get-features"
BATCH = "/api/v1/feature-service/get-features-batch"
META = "/api/v1/feature-service/metadata"
MCP_H = {
    "accept": "application/json, text/event-stream",
    "content-type": "application/json",
    "mcp-protocol-version": "2025-06-18",
}
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
}

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs the redis-server binary")


def _start_redis(port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--requirepass", SECRET, "--save", "", "--appendonly", "no"]
        + ["--daemonize", "no", "--bind", "127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    import redis

    client = redis.Redis(port=port, password=SECRET, socket_connect_timeout=0.5)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            client.close()
            return proc
        except redis.exceptions.ConnectionError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def protected_redis() -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    proc = _start_redis(port)
    try:
        yield f"redis://:{SECRET}@127.0.0.1:{port}/0", proc
    finally:
        _stop(proc)


def _scan(where: str, text: str) -> None:
    assert SECRET not in text, f"the Redis password leaked in {where}: {text[:2000]}"


def _check_response(what: str, r: httpx.Response) -> None:
    _scan(f"{what} body", r.text)
    _scan(f"{what} headers", "\n".join(f"{k}: {v}" for k, v in r.headers.items()))


def test_redaction_vocabulary(caplog: pytest.LogCaptureFixture) -> None:
    assert redact_url(f"redis://:{SECRET}@127.0.0.1:6396/0") == "redis://:***@127.0.0.1:6396/0"
    assert redact_url(f"rediss://app:{SECRET}@h:1/2") == "rediss://app:***@h:1/2"
    assert redact_url(f"redis://h:1/0?password={SECRET}&db=1") == "redis://h:1/0?password=***&db=1"
    assert redact_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    assert redact_text(f"auth failed with {SECRET}!", (SECRET,)) == "auth failed with ***!"
    # A configured URL registers its password: any message naming it is masked, whatever else it says.
    cfg = load_config(".", online_store=f"redis://:{SECRET}@127.0.0.1:6396/0")
    _scan("Config repr", repr(cfg) + str(cfg))
    assert "redis://:***@127.0.0.1:6396/0" in repr(cfg)
    register_url(f"redis://:{SECRET}@127.0.0.1:6396/0")
    for body in (
        error_body(UnavailableError(f"password {SECRET} rejected")),
        error_body(ConnectionError(f"redis://:{SECRET}@host refused")),
    ):
        _scan("error body", body["message"])
    _scan("MCP error text", tool_error_text(UnavailableError(f"{SECRET}")))
    # Every log record of the process, from any logger, with the secret in its arguments or its traceback.
    try:
        raise ConnectionError(f"cannot reach redis://:{SECRET}@host")
    except ConnectionError:
        logging.getLogger("redis.anything").exception("store %s failed", f"redis://:{SECRET}@h")
    _scan("log records", caplog.text)
    assert "redis://:***@h failed" in caplog.text and "cannot reach redis://:***@host" in caplog.text


def test_no_secret_anywhere_when_the_protected_redis_is_down(
    tmp_path: Path, protected_redis: tuple[str, subprocess.Popen[bytes]], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    url, redis_proc = protected_redis
    ws = "x" + uuid.uuid4().hex[:10]
    repo = make_repo(tmp_path / "repo", DEFINITIONS, config={"online_store": url, "workspace": ws})
    store = cs.ContextStore(repo)
    store.apply()
    keys = KeyStore(key_store_path(store.config.data_dir))
    key = keys.create(ws, "admin")[0]
    h = {"authorization": f"Bearer {key}"}
    get_body = {"params": {"featureServiceName": "user_features", "joinKeyMap": {"user_id": "u1"}}}
    batch_body = {"params": {"featureServiceName": "user_features", "requestData": [{"joinKeyMap": {"user_id": "u1"}}]}}
    ingest = {"records": {"transactions": [{"record": {"user_id": "u1", "amount": 1.0, "ts": _now()}}]}}
    call = {
        "jsonrpc": "2.0",
        "id": 2,
        "method": "tools/call",
        "params": {
            "name": "get_features",
            "arguments": {"feature_service": "user_features", "join_keys": {"user_id": "u1"}},
        },
    }
    responses: list[tuple[str, httpx.Response]] = []
    with running_server(create_app(repo, key_store=keys)) as base:
        # Working first: the password is right and the store answers.
        assert httpx.post(base + "/v1/ingest", json=ingest, headers=h, timeout=30).status_code == 200
        assert httpx.post(base + GET, json=get_body, headers=h).status_code == 200
        assert httpx.get(base + "/readyz").status_code == 200

        _stop(redis_proc)

        def req(name: str, method: str, path: str, **kw: Any) -> httpx.Response:
            r = httpx.request(method, base + path, timeout=30, **kw)
            responses.append((name, r))
            return r

        # The documented statuses: 503 (with Retry-After) wherever the online store is needed.
        assert req("readyz", "GET", "/readyz").status_code == 503
        assert req("healthz", "GET", "/healthz").status_code == 200
        for name, path, body in (("get-features", GET, get_body), ("get-features-batch", BATCH, batch_body)):
            r = req(name, "POST", path, json=body, headers=h)
            assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
        assert req(
            "metadata", "POST", META, json={"params": {"featureServiceName": "fraud"}}, headers=h
        ).status_code in (
            200,
            503,
        )
        assert req("context", "GET", "/v1/context/u1", headers=h).status_code == 503
        req("similar", "POST", "/v1/similar", json={"view": "nope", "text": "x", "k": 3}, headers=h)
        assert req("ingest", "POST", "/v1/ingest", json=ingest, headers=h).status_code == 503
        req("metrics", "GET", "/metrics", headers=h)
        assert req("mcp initialize", "POST", "/mcp", json=INIT, headers={**MCP_H, **h}).status_code == 200
        r = req("mcp tool call", "POST", "/mcp", json=call, headers={**MCP_H, **h})
        assert r.status_code == 200 and r.json()["result"]["isError"] is True, r.text
        assert "unreachable" in r.json()["result"]["content"][0]["text"]
    store.close()

    for name, r in responses:
        _check_response(name, r)
    for rec in caplog.records:
        _scan(f"log record of {rec.name}", logging.Formatter().format(rec))
    _scan("captured log", caplog.text)

    # The CLI (the URL from the environment this time): errors on stderr, masked.
    env = {**os.environ, "CONTEXT_STORE_ONLINE_STORE": url, "CONTEXT_STORE_DEBUG": ""}
    cli = [sys.executable, "-m", "context_store.cli"]
    for args in (["get", "user_features", "user_id=u1"], ["materialize"]):
        p = subprocess.run(
            cli + args + ["-r", str(repo), "-w", ws], capture_output=True, text=True, env=env, timeout=120
        )
        _scan(f"`{' '.join(args)}` stdout", p.stdout)
        _scan(f"`{' '.join(args)}` stderr", p.stderr)
        if args[0] == "get":
            assert p.returncode == 1 and "unreachable" in p.stderr and "redis://:***@127.0.0.1" in p.stderr, p.stderr


def test_serve_process_never_prints_the_secret(
    tmp_path: Path, protected_redis: tuple[str, subprocess.Popen[bytes]]
) -> None:
    """A real ``serve`` process (uvicorn's logging, its warm-up, info level) with the store down."""
    url, redis_proc = protected_redis
    ws = "y" + uuid.uuid4().hex[:10]
    repo = make_repo(tmp_path / "repo", DEFINITIONS, config={"online_store": url, "workspace": ws})
    with cs.ContextStore(repo) as store:
        store.apply()
    _stop(redis_proc)
    port = free_port()
    cmd = [sys.executable, "-m", "context_store.cli", "serve", "-r", str(repo), "--port", str(port)]
    cmd += ["--no-auth", "--no-workers", "--no-mcp", "--log-level", "debug"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(base + "/healthz", timeout=1)
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, "serve did not start"
                time.sleep(0.2)
        for r in (
            httpx.get(base + "/readyz"),
            httpx.post(
                base + GET, json={"params": {"featureServiceName": "user_features", "joinKeyMap": {"user_id": "u"}}}
            ),
            httpx.get(base + "/v1/context/u1"),
        ):
            assert r.status_code == 503, r.text
            _check_response(str(r.url), r)
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    _scan("serve stdout", out)
    _scan("serve stderr", err)


def _now() -> str:
    return datetime.now(UTC).isoformat()
