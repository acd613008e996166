"""Every GET route of the REST API answers an unknown query parameter with a 400 naming it (never ignores it);
the health probes tolerate any. ``GET /v1/context/{id}`` takes ``query`` and ``max_tokens``."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

import context_store as cs
from context_store.server import create_app
from context_store.server.keys import KeyStore, key_store_path
from tests.support.context import build_context_repo
from tests.support.server import running_server

pytestmark = pytest.mark.redis

# Probes and scrapes tolerate what a load balancer or scraper appends (context_store/server/params.py).
LENIENT = {"/healthz", "/readyz", "/metrics"}
PATH_VALUES = {"entity_id": "u1", "name": "txn_stats"}


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[dict[str, Any]]:
    ws = "p" + uuid.uuid4().hex[:10]
    repo = build_context_repo(
        tmp_path_factory.mktemp("params") / "repo", config={"online_store": redis_url, "workspace": ws}
    )
    store = cs.ContextStore(repo)
    store.apply()
    store.backfill()
    store.materialize()
    keys = KeyStore(key_store_path(store.config.data_dir))
    read_key = keys.create(ws, "read")[0]
    admin_key = keys.create(ws, "admin")[0]
    app = create_app(repo, key_store=keys, mcp=False)
    with running_server(app) as url:
        yield {"url": url, "app": app, "h": {"Authorization": f"Bearer {read_key}"}, "admin": admin_key}
    store.close()
    import redis

    r = redis.Redis.from_url(redis_url)
    for k in r.scan_iter(match=f"*{ws}*", count=1000):
        r.delete(k)
    r.close()


def _get_routes(app: Any) -> list[str]:
    """Every documented GET route (the OpenAPI paths: what a client is told it may call)."""
    return [path for path, ops in app.openapi()["paths"].items() if "get" in ops]


def test_every_get_route_refuses_an_unknown_parameter(srv: dict[str, Any]) -> None:
    strict = [p for p in _get_routes(srv["app"]) if p not in LENIENT]
    assert "/v1/context/{entity_id}" in strict
    for route in strict:
        url = srv["url"] + route.format(**PATH_VALUES)
        for params in ({"max_token": "200"}, {"service": "user_context", "Query": "x"}):
            r = httpx.get(url, params=params, headers=srv["h"])
            assert r.status_code == 400, (route, params, r.text)
            body = r.json()  # names one parameter the route does not take ("service" is the context's own)
            assert body["field"] in params and repr(body["field"]) in body["message"], body
            assert not (route.startswith("/v1/context/") and body["field"] == "service"), body
    # The same route with only its own parameters is served.
    ok = httpx.get(srv["url"] + "/v1/context/u1", params={"service": "user_context"}, headers=srv["h"])
    assert ok.status_code == 200, ok.text


def test_probes_and_metrics_tolerate_parameters(srv: dict[str, Any]) -> None:
    assert set(_get_routes(srv["app"])) >= LENIENT
    assert httpx.get(srv["url"] + "/healthz", params={"probe": "1"}).status_code == 200
    assert httpx.get(srv["url"] + "/readyz", params={"probe": "1"}).status_code == 200
    m = httpx.get(srv["url"] + "/metrics", params={"x": "1"}, headers={"Authorization": f"Bearer {srv['admin']}"})
    assert m.status_code == 200


def test_context_takes_query_and_max_tokens(srv: dict[str, Any]) -> None:
    r = httpx.get(
        srv["url"] + "/v1/context/u1",
        params={"service": "user_context", "query": "how do refunds work", "max_tokens": "400"},
        headers=srv["h"],
        timeout=60,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["knowledge"] and "Refunds" in body["knowledge"][0]["text"]
    assert body["max_tokens"] == 400 and 0 < body["tokens"] <= 400
    small = httpx.get(srv["url"] + "/v1/context/u1", params={"max_tokens": "40"}, headers=srv["h"], timeout=60)
    assert small.status_code == 200 and small.json()["tokens"] <= 40
    bad = httpx.get(srv["url"] + "/v1/context/u1", params={"max_tokens": "5"}, headers=srv["h"])
    assert bad.status_code == 400 and bad.json()["field"] == "max_tokens"
