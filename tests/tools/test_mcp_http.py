"""MCP over streamable HTTP: a started server, Bearer keys from the real key store, workspace from the key."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError

import context_store as cs
from context_store.server.auth import authenticate
from context_store.server.keys import KeyStore
from context_store.tools.http import create_mcp_http_app, create_standalone_app
from tests.support.mcp import McpStoreFactory, check_all_tools, free_port, serve_in_thread

pytestmark = pytest.mark.redis

INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}},
}
HEADERS = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}


@pytest.fixture(scope="module")
def http_server(tmp_path_factory: pytest.TempPathFactory, prepare_store: McpStoreFactory) -> Iterator[dict[str, Any]]:
    import redis

    from tests.support.redis import REDIS_URL
    from tests.support.redis import redis_up as _redis_up

    if not _redis_up(REDIS_URL):
        pytest.fail(f"no Redis answers at {REDIS_URL}")
    ws = "t" + uuid.uuid4().hex[:12]
    other_ws = "t" + uuid.uuid4().hex[:12]
    root = tmp_path_factory.mktemp("mcphttp")
    store = prepare_store(root / "repo", ws, REDIS_URL)
    keys = KeyStore(root / "keys.sqlite")
    key, _ = keys.create(ws, scope="read")
    other_key, _ = keys.create(other_ws, scope="read")  # a valid key of a workspace with nothing applied
    stores: dict[str, cs.ContextStore] = {ws: store}

    def get_store(workspace: str | None) -> cs.ContextStore:
        assert workspace is not None
        if workspace not in stores:
            stores[workspace] = cs.ContextStore(root / "repo", workspace=workspace, online_store=REDIS_URL)
        return stores[workspace]

    app = create_mcp_http_app(get_store, lambda header: authenticate(header, keys))
    with serve_in_thread(create_standalone_app(app), free_port()) as base:
        yield {"url": base + "/mcp", "key": key, "other_key": other_key, "ws": ws}
    for s in stores.values():
        s.close()
    keys.close()
    r = redis.Redis.from_url(REDIS_URL)
    for pattern in (f"*{ws}*", f"*{other_ws}*"):
        found = list(r.scan_iter(match=pattern, count=1000))
        if found:
            r.delete(*found)
    r.close()


def _client(url: str, key: str | None) -> Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return Client(streamable_http_client(url, http_client=create_mcp_http_client(headers=headers)))


def test_every_tool_over_http_with_a_key(http_server: dict[str, Any]) -> None:
    async def main() -> None:
        with anyio.fail_after(60):
            async with _client(http_server["url"], http_server["key"]) as client:
                await check_all_tools(client)

    anyio.run(main)


def test_no_key_or_a_bad_key_is_401(http_server: dict[str, Any]) -> None:
    url = http_server["url"]
    r = httpx.post(url, json=INIT, headers=HEADERS)
    assert r.status_code == 401 and "Authorization" in r.json()["message"]
    assert r.headers["www-authenticate"].startswith("Bearer")
    r = httpx.post(url, json=INIT, headers={**HEADERS, "Authorization": "Bearer cs_nope_nope"})
    assert r.status_code == 401 and "invalid" in r.json()["message"]
    r = httpx.post(url, json=INIT, headers={**HEADERS, "Authorization": f"Bearer {http_server['key']}"})
    assert r.status_code == 200 and r.json()["result"]["serverInfo"]["name"] == "context-store"

    async def main() -> None:
        async with _client(url, None) as client:
            await client.list_tools()

    # The SDK client cannot even connect without a key: its initialize request gets an error
    # response (MCPError), which reaches us wrapped in the client's anyio task-group ExceptionGroups.
    with pytest.raises(ExceptionGroup) as exc:
        anyio.run(main)
    assert exc.value.subgroup(MCPError) is not None, exc.value


def test_host_and_origin_are_checked(http_server: dict[str, Any]) -> None:
    auth = {"Authorization": f"Bearer {http_server['key']}"}
    r = httpx.post(http_server["url"], json=INIT, headers={**HEADERS, **auth, "Host": "evil.example"})
    assert r.status_code == 421
    r = httpx.post(http_server["url"], json=INIT, headers={**HEADERS, **auth, "Origin": "http://evil.example"})
    assert r.status_code == 403


def test_workspace_comes_from_the_key(http_server: dict[str, Any]) -> None:
    async def main() -> tuple[Any, Any]:
        async with _client(http_server["url"], http_server["other_key"]) as client:
            listed = await client.call_tool("list_feature_services", {})
            ctx = await client.call_tool("get_user_context", {"entity_id": "u1"})
            return listed, ctx

    listed, ctx = anyio.run(main)
    # The other key's workspace has nothing applied: it cannot see the first workspace's services.
    for res in (listed, ctx):
        assert (
            res.is_error and "nothing applied" in res.content[0].text and http_server["ws"] not in res.content[0].text
        )


def test_agent_loop_example_with_a_bad_key_says_so_in_one_line(http_server: dict[str, Any], tmp_path: Path) -> None:
    """examples/agent_loop.py against the real server with a wrong key: one line naming the HTTP status
    and --key, no ExceptionGroup traceback, exit 1."""
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[2] / "examples" / "agent_loop.py"
    p = subprocess.run(
        [sys.executable, str(script), "--url", http_server["url"], "--key", "cs_not_a_real_key", "--user", "u1"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert p.returncode == 1, (p.stdout, p.stderr)
    assert p.stderr.strip().splitlines() == [
        f"agent_loop: error: {http_server['url']} answered HTTP 401; check --key "
        "(an API key of the workspace: `context-store keys create`)"
    ], p.stderr
    # the good key still works through the same script
    p = subprocess.run(
        [sys.executable, str(script), "--url", http_server["url"], "--key", http_server["key"], "--user", "u1"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert p.returncode == 0 and "[agent] done" in p.stdout, (p.stdout, p.stderr)
