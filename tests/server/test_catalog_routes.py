"""``GET /v1/catalog``, ``/v1/catalog/search``, ``/v1/catalog/{name}`` over real HTTP with real keys: the exact
shapes of the contract (docs/catalog.md; the web console reads them), 404, 400 on unknown parameters, read scope."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema
import pytest

import context_store as cs
from context_store.server import create_app
from context_store.server.keys import KeyStore, key_store_path
from tests.support.catalog import RISK, build_catalog_repo
from tests.support.server import running_server

ITEM_KEYS = ["kind", "name", "description", "owner", "tags", "entities", "upstream", "downstream"]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    ws = "c" + uuid.uuid4().hex[:10]
    root = build_catalog_repo(tmp_path_factory.mktemp("catroutes") / "repo")
    with cs.ContextStore(root, workspace=ws, online_store="sqlite") as store:
        store.apply()
        keys = KeyStore(key_store_path(store.config.data_dir), cache_ttl=0.0)
    k = {s: keys.create(ws, s)[0] for s in ("read", "metrics", "admin")}
    other = keys.create("elsewhere", "read")[0]
    app = create_app(root, workspace=ws, online_store="sqlite", key_store=keys, mcp=False)
    with running_server(app) as url:
        yield {"url": url, "ws": ws, "keys": k, "other": other, "app": app}
    keys.close()


def _get(env: dict[str, Any], path: str, scope: str = "read", **params: Any) -> httpx.Response:
    return httpx.get(
        env["url"] + path, params=params, headers={"Authorization": f"Bearer {env['keys'][scope]}"}, timeout=30
    )


def _schema(env: dict[str, Any], path: str) -> dict[str, Any]:
    op = env["app"].openapi()["paths"][path]["get"]
    return op["responses"]["200"]["content"]["application/json"]["schema"]  # type: ignore[no-any-return]


def test_list_shape_and_filters(env: dict[str, Any]) -> None:
    r = _get(env, "/v1/catalog")
    assert r.status_code == 200, r.text
    body = r.json()
    assert list(body) == ["workspace", "items"] and body["workspace"] == env["ws"]
    jsonschema.validate(body, _schema(env, "/v1/catalog"))
    assert all(list(i) == ITEM_KEYS for i in body["items"])
    txn = next(i for i in body["items"] if i["name"] == "txn_stats")
    assert txn == {
        "kind": "feature_view",
        "name": "txn_stats",
        "description": "Spending of a user",
        "owner": RISK,
        "tags": {"team": "risk", "tier": "gold"},
        "entities": ["user"],
        "upstream": [{"kind": "stream_source", "name": "transactions"}],
        "downstream": [{"kind": "feature_service", "name": "user_features"}],
    }
    src = next(i for i in body["items"] if i["name"] == "src_transactions")
    assert src["kind"] == "batch_source" and src["owner"] is None and src["tags"] == {}
    views = _get(env, "/v1/catalog", kind="feature_view").json()["items"]
    assert [i["name"] for i in views] == ["txn_stats", "user_profile"]
    risk = _get(env, "/v1/catalog", tag="team=risk").json()["items"]
    assert [i["name"] for i in risk] == ["txn_stats", "user_features"]
    both = _get(env, "/v1/catalog", kind="feature_service", tag="team=risk").json()["items"]
    assert [i["name"] for i in both] == ["user_features"]
    bad = _get(env, "/v1/catalog", kind="views")
    assert bad.status_code == 400 and bad.json()["field"] == "kind"


def test_search_shape(env: dict[str, Any]) -> None:
    r = _get(env, "/v1/catalog/search", q="spending", k=3)
    assert r.status_code == 200, r.text
    body = r.json()
    assert list(body) == ["workspace", "query", "items"] and body["query"] == "spending"
    jsonschema.validate(body, _schema(env, "/v1/catalog/search"))
    assert body["items"][0]["name"] == "txn_stats" and len(body["items"]) <= 3
    assert all(list(i) == [*ITEM_KEYS, "score"] and 0 < i["score"] <= 1 for i in body["items"])
    assert _get(env, "/v1/catalog/search", q="zzzz qqqq").json()["items"] == []
    for params, field in [({}, "q"), ({"q": ""}, "q"), ({"q": "x", "k": 0}, "k"), ({"q": "x", "k": 101}, "k")]:
        bad = _get(env, "/v1/catalog/search", **params)
        assert bad.status_code == 400 and bad.json()["field"] == field, (params, bad.text)


def test_describe_shape_and_404(env: dict[str, Any]) -> None:
    r = _get(env, "/v1/catalog/user_context")
    assert r.status_code == 200, r.text
    body = r.json()
    assert list(body) == [*ITEM_KEYS, "spec", "features", "lineage"]
    jsonschema.validate(body, _schema(env, "/v1/catalog/{name}"))
    assert body["kind"] == "context_service" and body["spec"]["entity"] == "user"
    assert (
        body["lineage"][-1] == ["context_service", "user_context"] and ["feature_view", "txn_stats"] in body["lineage"]
    )
    assert {"name": "txn_stats.amount_sum_1d", "dtype": "float64", "description": "Spending of a user"} in body[
        "features"
    ]
    assert _get(env, "/v1/catalog/user", kind="entity").json()["kind"] == "entity"
    missing = _get(env, "/v1/catalog/txn_stat")
    assert missing.status_code == 404 and missing.json()["field"] == "name" and "txn_stats" in missing.json()["message"]
    assert _get(env, "/v1/catalog/txn_stats", kind="entity").status_code == 404


def test_unknown_params_and_scopes(env: dict[str, Any]) -> None:
    for path, params in [
        ("/v1/catalog", {"kinds": "x"}),
        ("/v1/catalog/search", {"q": "x", "top": "3"}),
        ("/v1/catalog/search", {"top": "3"}),  # the unknown parameter is named even when q is missing
        ("/v1/catalog/txn_stats", {"verbose": "1"}),
    ]:
        r = _get(env, path, **params)
        bad = next(k for k in params if k != "q")
        assert r.status_code == 400 and r.json()["field"] == bad and repr(bad) in r.json()["message"], (path, r.text)
    assert httpx.get(env["url"] + "/v1/catalog").status_code == 401
    for path in ("/v1/catalog", "/v1/catalog/txn_stats"):
        assert _get(env, path, scope="metrics").status_code == 403  # read scope needed
        assert _get(env, path, scope="admin").status_code == 200
    # A key of another workspace reads only its own (nothing applied there), never this one's.
    r = httpx.get(
        env["url"] + "/v1/catalog", params={"workspace": env["ws"]}, headers={"Authorization": f"Bearer {env['other']}"}
    )
    assert r.status_code == 403
