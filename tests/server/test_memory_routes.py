"""``/v1/memories`` over real HTTP (uvicorn), with real API keys; and the Python client, sync and async."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pytest

from context_store.client import AsyncFeatureServerClient, FeatureServerClient
from context_store.errors import ForbiddenError, NotFoundError
from context_store.memory_types import MemoryRecord
from context_store.server import create_app
from context_store.server.keys import KeyStore, key_store_path
from tests.support.memory import memory_store
from tests.support.server import running_server


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    import uuid

    ws = "m" + uuid.uuid4().hex[:10]
    root = tmp_path_factory.mktemp("memroutes")
    store = memory_store(root / "repo", "sqlite", ws)
    keys = KeyStore(key_store_path(store.config.data_dir), cache_ttl=0.0)
    k = {"read": keys.create(ws, "read"), "ingest": keys.create(ws, "ingest")}
    store.close()
    app = create_app(root / "repo", workspace=ws, online_store="sqlite", key_store=keys, mcp=False)
    with running_server(app) as url:
        yield {
            "url": url,
            "ws": ws,
            "keys": {s: v[0] for s, v in k.items()},
            "ids": {s: v[1].key_id for s, v in k.items()},
        }
    keys.close()


def _h(env: dict[str, Any], scope: str) -> dict[str, str]:
    return {"authorization": f"Bearer {env['keys'][scope]}"}


def test_remember_search_forget(env: dict[str, Any]) -> None:
    url = env["url"] + "/v1/memories"
    body = {"text": "Prefers aisle seats", "entity_id": "u1", "kind": "preference", "metadata": {"via": "rest"}}
    r = httpx.post(url, json=body, headers=_h(env, "ingest"))
    assert r.status_code == 201, r.text
    rec = r.json()
    assert rec["deduplicated"] is False and rec["written_by"] == env["ids"]["ingest"]  # provenance: the key
    assert rec["entity"] == {"user_id": "u1"} and rec["metadata"] == {"via": "rest"} and rec["created_at"].endswith("Z")
    again = httpx.post(url, json={**body, "text": "prefers AISLE seats"}, headers=_h(env, "ingest"))
    assert again.status_code == 200 and again.json()["deduplicated"] is True and again.json()["id"] == rec["id"]
    found = httpx.get(url + "/search", params={"q": "aisle", "entity_id": "u1", "k": 3}, headers=_h(env, "read"))
    assert found.status_code == 200 and [m["id"] for m in found.json()["memories"]] == [rec["id"]]
    gone = httpx.delete(f"{url}/{rec['id']}", headers=_h(env, "ingest"))
    assert gone.status_code == 200 and gone.json() == {"id": rec["id"], "forgotten": True}
    found = httpx.get(url + "/search", params={"q": "aisle", "entity_id": "u1"}, headers=_h(env, "read"))
    assert found.json()["memories"] == []
    missing = httpx.delete(f"{url}/{rec['id']}", headers=_h(env, "ingest"))
    assert missing.status_code == 404 and missing.json()["field"] == "memory_id"


def test_scopes_and_bad_requests(env: dict[str, Any]) -> None:
    url = env["url"] + "/v1/memories"
    r = httpx.post(url, json={"text": "x", "entity_id": "u1"}, headers=_h(env, "read"))
    assert r.status_code == 403 and "ingest" in r.json()["message"]
    assert httpx.delete(url + "/abc", headers=_h(env, "read")).status_code == 403
    assert httpx.post(url, json={"text": "x", "entity_id": "u1"}).status_code == 401
    cases = [
        (httpx.post(url, json={"text": "", "entity_id": "u1"}, headers=_h(env, "ingest")), "text"),
        (httpx.post(url, json={"text": "x" * 4001, "entity_id": "u1"}, headers=_h(env, "ingest")), "text"),
        (httpx.post(url, json={"text": "x", "entity_id": "u1", "nope": 1}, headers=_h(env, "ingest")), "nope"),
        (httpx.post(url, json={"text": "x", "entity_id": "u1", "metadata": 3}, headers=_h(env, "ingest")), "metadata"),
        (httpx.post(url, json={"text": "x"}, headers=_h(env, "ingest")), "entity_id"),
        (httpx.post(url, json=["x"], headers=_h(env, "ingest")), "body"),
        (httpx.get(url + "/search", params={"q": "x", "entity_id": "u1", "top": 3}, headers=_h(env, "read")), "top"),
        (httpx.delete(url + "/" + "a" * 65, headers=_h(env, "ingest")), "memory_id"),
        (httpx.delete(url + "/bad'id", headers=_h(env, "ingest")), "memory_id"),
    ]
    for r, field in cases:
        assert r.status_code == 400, (field, r.status_code, r.text)
        assert field in r.text, (field, r.text)
    for k in (0, 51):
        r = httpx.get(url + "/search", params={"q": "x", "entity_id": "u1", "k": k}, headers=_h(env, "read"))
        assert r.status_code == 400 and "k" in r.text


def test_python_client_sync_and_async(env: dict[str, Any]) -> None:
    with FeatureServerClient(env["url"], env["keys"]["ingest"]) as c:
        rec = c.remember("Speaks French", "u7", kind="fact", metadata={"n": 1})
        assert isinstance(rec, MemoryRecord) and rec.kind == "fact"
        assert c.remember("speaks french", "u7").deduplicated
        res = c.search_memories("French", "u7", k=2)
        assert [m.id for m in res.memories] == [rec.id] and res.memories[0].metadata == {"n": 1}
        assert c.forget_memory(rec.id) is True
        with pytest.raises(NotFoundError):
            c.forget_memory(rec.id)
    with FeatureServerClient(env["url"], env["keys"]["read"]) as c, pytest.raises(ForbiddenError):
        c.remember("nope", "u7")

    async def main() -> None:
        async with AsyncFeatureServerClient(env["url"], env["keys"]["ingest"]) as c:
            rec = await c.remember("Plays chess", "u8")
            assert not rec.deduplicated
            assert [m.id for m in (await c.search_memories("chess", "u8")).memories] == [rec.id]
            assert await c.forget_memory(rec.id)
            assert (await c.search_memories("chess", "u8")).memories == []

    anyio.run(main)


def test_openapi_documents_the_routes(env: dict[str, Any]) -> None:
    spec = httpx.get(env["url"] + "/openapi.json").json()
    assert {"/v1/memories", "/v1/memories/search", "/v1/memories/{memory_id}"} <= set(spec["paths"])
    body = spec["paths"]["/v1/memories"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["properties"]["text"]["maxLength"] == 4000
