"""MCP (streamable HTTP) is mounted at /mcp of the REST app, behind the same API keys."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

import context_store as cs
from context_store.server import create_app
from context_store.server.keys import KeyStore, key_store_path
from tests.support.server import make_server_repo, running_server

pytestmark = pytest.mark.redis

_H = {
    "accept": "application/json, text/event-stream",
    "content-type": "application/json",
    "mcp-protocol-version": "2025-06-18",
}
_INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "test", "version": "1"}},
}


def test_mcp_at_slash_mcp_uses_the_keys_workspace(tmp_path: Path, redis_url: str) -> None:
    ws = "m" + uuid.uuid4().hex[:10]
    repo = make_server_repo(tmp_path / "repo", redis_url, ws)
    store = cs.ContextStore(repo)
    store.apply()
    keys = KeyStore(key_store_path(store.config.data_dir))
    key = keys.create(ws, "ingest")[0]
    with running_server(create_app(repo, key_store=keys)) as url:
        auth = {**_H, "authorization": f"Bearer {key}"}
        rec = {
            "records": {
                "transactions": [{"record": {"user_id": "m1", "amount": 2.5, "ts": datetime.now(UTC).isoformat()}}]
            }
        }
        assert httpx.post(url + "/v1/ingest", json=rec, headers=auth).status_code == 200
        assert httpx.post(url + "/mcp", json=_INIT, headers={k: v for k, v in _H.items()}).status_code == 401
        r = httpx.post(url + "/mcp", json=_INIT, headers=auth)
        assert r.status_code == 200 and "serverInfo" in r.json()["result"]
        r = httpx.post(url + "/mcp", json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, headers=auth)
        names = {t["name"] for t in r.json()["result"]["tools"]}
        assert {"get_features", "get_user_context", "find_similar", "search_knowledge"} <= names
        call = {
            "jsonrpc": "2.0",
            "id": 3,
            "method": "tools/call",
            "params": {
                "name": "get_features",
                "arguments": {
                    "feature_service": "fraud",
                    "join_keys": {"user_id": "m1"},
                    "request_context": {"amount": 1.0},
                },
            },
        }
        r = httpx.post(url + "/mcp", json=call, headers=auth)
        result = r.json()["result"]
        assert not result.get("isError"), result
        feats = result["structuredContent"]["features"]
        assert feats["txn_stats.amount_count_1h"] == 1 and feats["txn_stats.amount_sum_1d"] == pytest.approx(2.5)
    store.close()
    import redis

    r2 = redis.Redis.from_url(redis_url)
    for k in r2.scan_iter(match=f"cs:{ws}:*", count=1000):
        r2.delete(k)
    r2.close()
