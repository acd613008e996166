"""The memory tools over MCP streamable HTTP: annotations, remember/search/forget, scopes and subjects."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from context_store.access import Subject
from context_store.errors import UnauthorizedError
from context_store.server.auth import Principal, parse_authorization
from context_store.tools.http import create_mcp_http_app, create_standalone_app
from context_store.tools.memory import MEMORY_TOOL_SCOPES
from tests.support.mcp import free_port, serve_in_thread, session_calls
from tests.support.memory import drop_redis_workspace, memory_store


@pytest.fixture(scope="module")
def mcp_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from tests.support.redis import REDIS_URL, redis_up

    if not redis_up(REDIS_URL):
        pytest.fail(f"no Redis answers at {REDIS_URL}")
    ws = "t" + uuid.uuid4().hex[:12]
    store = memory_store(tmp_path_factory.mktemp("memmcp") / "repo", REDIS_URL, ws)
    # Tokens of this test: scope and subject per token (the key store's subjects are another change's).
    principals = {
        "ingest": Principal(ws, "ingest", key_id="k-ingest"),
        "read": Principal(ws, "read", key_id="k-read"),
        "u1": Principal(ws, "ingest", key_id="k-u1", subject=Subject("user_id", "u1")),
    }

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
        drop_redis_workspace(REDIS_URL, ws)


def _call(url: str, token: str, calls: list[tuple[str, dict[str, Any]]]) -> list[Any]:
    tools, results = session_calls(url, token, calls, validate=True)
    return [tools, *results]


def test_annotations_and_scopes(mcp_url: str) -> None:
    (tools,) = _call(mcp_url, "ingest", [])
    (read_tools,) = _call(mcp_url, "read", [])  # a read key is not shown the tools it may not call
    assert "search_memories" in read_tools and not {"remember", "forget_memory"} & set(read_tools)
    ann = {n: tools[n].annotations for n in MEMORY_TOOL_SCOPES}
    assert ann["remember"].read_only_hint is False and ann["remember"].destructive_hint is False
    assert ann["remember"].idempotent_hint is True
    assert ann["forget_memory"].destructive_hint is True and ann["forget_memory"].idempotent_hint is True
    assert ann["search_memories"].read_only_hint is True
    k = tools["search_memories"].input_schema["properties"]["k"]
    assert k.get("minimum") == 1 and k.get("maximum") == 50
    assert tools["remember"].input_schema["properties"]["text"]["maxLength"] == 4000
    assert MEMORY_TOOL_SCOPES == {"remember": "ingest", "forget_memory": "ingest", "search_memories": "read"}


def test_remember_search_forget_over_http(mcp_url: str) -> None:
    args = {"text": "Prefers vegetarian food", "entity_id": "u2", "kind": "preference", "metadata": {"a": 1}}
    _, rem, dup, found = _call(
        mcp_url,
        "ingest",
        [
            ("remember", args),
            ("remember", {**args, "text": "prefers  vegetarian FOOD"}),
            ("search_memories", {"query": "vegetarian", "entity_id": "u2", "k": 3}),
        ],
    )
    assert not rem.is_error, rem.content
    mem = rem.structured_content
    assert mem["written_by"] == "k-ingest" and mem["deduplicated"] is False and mem["metadata"] == {"a": 1}
    assert "text" in mem["untrusted_fields"]
    assert dup.structured_content["deduplicated"] is True and dup.structured_content["id"] == mem["id"]
    assert [m["id"] for m in found.structured_content["memories"]] == [mem["id"]]
    _, gone, again, after = _call(
        mcp_url,
        "ingest",
        [
            ("forget_memory", {"memory_id": mem["id"]}),
            ("forget_memory", {"memory_id": mem["id"]}),
            ("search_memories", {"query": "vegetarian", "entity_id": "u2"}),
        ],
    )
    assert gone.structured_content == {"id": mem["id"], "forgotten": True}
    assert again.is_error and "memory_id" in again.content[0].text
    assert after.structured_content["memories"] == []


def test_read_scope_and_subject_are_enforced(mcp_url: str) -> None:
    _, rem, search = _call(
        mcp_url,
        "read",
        [("remember", {"text": "x", "entity_id": "u1"}), ("search_memories", {"query": "x", "entity_id": "u1"})],
    )
    assert rem.is_error and "ingest" in rem.content[0].text
    assert not search.is_error
    _, mine, other, search_other = _call(
        mcp_url,
        "u1",
        [
            ("remember", {"text": "Owns a bicycle"}),  # the entity defaults to the token's subject
            ("remember", {"text": "Owns a car", "entity_id": "u2"}),
            ("search_memories", {"query": "car", "entity_id": "u2"}),
        ],
    )
    assert not mine.is_error and mine.structured_content["entity"] == {"user_id": "u1"}
    assert mine.structured_content["written_by"] == "k-u1"
    assert other.is_error and "u1" in other.content[0].text
    assert search_other.is_error
    # Another entity's memory cannot be forgotten through a subject-bound token.
    _, theirs = _call(mcp_url, "ingest", [("remember", {"text": "Owns a boat", "entity_id": "u3"})])
    _, refused = _call(mcp_url, "u1", [("forget_memory", {"memory_id": theirs.structured_content["id"]})])
    assert refused.is_error and "u1" in refused.content[0].text


def test_context_tool_carries_memories(mcp_url: str) -> None:
    _, _rem, ctx = _call(
        mcp_url,
        "ingest",
        [
            ("remember", {"text": "Birthday is in May", "entity_id": "u9", "kind": "fact"}),
            ("get_user_context", {"entity_id": "u9", "query": "birthday"}),
        ],
    )
    assert not ctx.is_error, ctx.content
    sc = ctx.structured_content
    assert sc["memory_name"] == "memories" and sc["memories"][0]["text"] == "Birthday is in May"
    assert "memories[].text" in sc["untrusted_fields"] and "Birthday" in sc["text"]
