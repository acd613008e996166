"""``DELETE /v1/entities/{entity}/{id}`` over real HTTP: admin scope, 404 for an unknown entity,
the counts per store, and the audit names the key that asked."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx

import context_store as cs
from context_store.server import create_app
from context_store.server.keys import KeyStore, key_store_path
from tests.support.context import build_context_repo
from tests.support.server import running_server


def test_forget_route(tmp_path: Path) -> None:
    ws = "f" + uuid.uuid4().hex[:10]
    repo = build_context_repo(tmp_path / "repo", config={"online_store": "sqlite", "workspace": ws})
    with cs.ContextStore(repo) as s:
        s.apply()
        s.backfill()
        s.materialize()
        data_dir = s.config.data_dir
    keys = KeyStore(key_store_path(data_dir), cache_ttl=0.0)
    read, admin = keys.create(ws, "read")[0], keys.create(ws, "admin")
    app = create_app(repo, key_store=keys, mcp=False)
    with running_server(app) as url:

        def delete(path: str, key: str) -> httpx.Response:
            return httpx.delete(url + path, headers={"authorization": f"Bearer {key}"}, timeout=60)

        r = delete("/v1/entities/user/u1", read)
        assert r.status_code == 403 and "admin" in r.json()["message"]
        r = httpx.delete(url + "/v1/entities/user/u1", timeout=60)
        assert r.status_code == 401
        r = delete("/v1/entities/account/u1", admin[0])
        assert r.status_code == 404 and "unknown entity 'account'" in r.json()["message"]
        r = delete("/v1/entities/user/" + "x" * 300, admin[0])
        assert r.status_code in (400, 422)
        r = delete("/v1/entities/user/u1", admin[0])
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["join_key"] == "user_id" and body["value"] == "u1"
        assert body["offline"] == {"fv__txn_stats": 20, "fv__user_profile": 1}
        assert body["online"] == {"entities": 1, "recent_lists": 1} and body["total"] == 23
        got = httpx.get(url + "/v1/context/u1", headers={"authorization": f"Bearer {read}"}, timeout=60).json()
        assert got["recent_events"] == []
    with cs.ContextStore(repo) as s:
        audit = s.forget_audit()
    assert len(audit) == 1 and audit[0]["actor"] == f"key:{admin[1].key_id}" and audit[0]["total"] == 23
