"""The MCP ``search_features`` tool over streamable HTTP: annotations, scopes, results, errors."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import context_store as cs
from context_store.errors import UnauthorizedError
from context_store.server.auth import Principal, parse_authorization
from context_store.tools.http import create_mcp_http_app, create_standalone_app
from tests.support.catalog import RISK, build_catalog_repo
from tests.support.mcp import free_port, serve_in_thread, session_calls


@pytest.fixture(scope="module")
def mcp_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    store = cs.ContextStore(
        build_catalog_repo(tmp_path_factory.mktemp("catmcp") / "repo"), workspace="catmcp", online_store="sqlite"
    )
    store.apply()
    principals = {"read": Principal("catmcp", "read", key_id="k-read"), "metrics": Principal("catmcp", "metrics")}

    def authenticate(header: str | None) -> Principal:
        p = principals.get(parse_authorization(header))
        if p is None:
            raise UnauthorizedError("invalid API key", field="Authorization")
        return p

    app = create_mcp_http_app(lambda _ws: store, authenticate)
    try:
        with serve_in_thread(create_standalone_app(app), free_port()) as base:
            yield base + "/mcp"
    finally:
        store.close()


def _call(url: str, token: str, calls: list[tuple[str, dict[str, Any]]]) -> list[Any]:
    tools, results = session_calls(url, token, calls, validate=True)
    return [tools, *results]


def test_search_features_over_http(mcp_url: str) -> None:
    tools, found, by_tag, by_feature, bad_k, empty = _call(
        mcp_url,
        "read",
        [
            ("search_features", {"query": "how much a user spends"}),
            ("search_features", {"query": "gold", "k": 1}),
            ("search_features", {"query": "amount_sum_1d", "k": 2}),
            ("search_features", {"query": "x", "k": 0}),
            ("search_features", {"query": ""}),
        ],
    )
    ann = tools["search_features"].annotations
    assert ann.read_only_hint is True and ann.idempotent_hint is True and ann.destructive_hint is False
    assert ann.open_world_hint is False
    assert set(tools["search_features"].input_schema["properties"]) == {"query", "k"}  # no workspace argument
    sc = found.structured_content
    assert sc["workspace"] == "catmcp" and sc["query"] == "how much a user spends"
    top = sc["items"][0]
    assert (top["name"], top["owner"], top["tags"]) == ("txn_stats", RISK, {"team": "risk", "tier": "gold"})
    assert top["downstream"] == [{"kind": "feature_service", "name": "user_features"}]
    assert [i["name"] for i in by_tag.structured_content["items"]] == ["txn_stats"]
    assert [i["name"] for i in by_feature.structured_content["items"]] == ["txn_stats", "user_features"]
    assert bad_k.is_error and "k" in bad_k.content[0].text
    assert empty.is_error and "query" in empty.content[0].text


def test_search_features_needs_read_scope(mcp_url: str) -> None:
    tools, res = _call(mcp_url, "metrics", [("search_features", {"query": "spending"})])
    assert "search_features" not in tools
    assert res.is_error and "read" in res.content[0].text
