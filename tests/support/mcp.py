"""Shared pieces of the MCP tests: the calls every transport must answer, a uvicorn thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import anyio
import jsonschema

import context_store as cs
from tests.support.server import free_port

__all__ = [
    "session_calls",
    "McpStoreFactory",
    "TOOL_CALLS",
    "READ_TOOLS",
    "WRITE_TOOLS",
    "check_all_tools",
    "check_annotations",
    "serve_in_thread",
    "free_port",
]

READ_TOOLS = {
    "get_user_context",
    "get_features",
    "find_similar",
    "search_knowledge",
    "list_feature_services",
    "describe_feature_service",
}
READ_TOOLS.add("search_memories")
READ_TOOLS.add("search_features")  # tools/catalog.py
# Listed to keys that may call them (a read key does not see them): tools/write.py, tools/memory.py.
WRITE_TOOLS = {"record_event", "remember", "forget_memory"}
MEMORY_TOOLS = {"remember", "forget_memory", "search_memories"}
DESTRUCTIVE_TOOLS = {"forget_memory"}
IDEMPOTENT_WRITE_TOOLS = {"remember", "forget_memory"}  # remember dedups; forgetting twice forgets once
TOOL_NAMES = READ_TOOLS | WRITE_TOOLS

# (tool, arguments, check on structured content)
TOOL_CALLS: list[tuple[str, dict[str, Any]]] = [
    ("get_user_context", {"entity_id": "u1", "max_tokens": 200}),
    ("get_features", {"feature_service": "user_features", "join_keys": {"user_id": "u1"}}),
    ("find_similar", {"view": "item_embeddings", "text": "red running shoes", "k": 2}),
    ("search_knowledge", {"knowledge": "help_articles", "query": "refunds", "k": 1}),
    ("list_feature_services", {}),
    ("describe_feature_service", {"name": "user_features"}),
    ("search_features", {"query": "spending", "k": 3}),
]


class McpStoreFactory(Protocol):
    """The module-scoped ``prepare_store`` fixture (tests/tools/conftest.py): the context repo of
    ``tests.support.context`` applied, backfilled, materialized, with 3 fresh pushed events of u1."""

    def __call__(self, root: Path, workspace: str, online: str) -> cs.ContextStore: ...


def _check(name: str, sc: dict[str, Any]) -> None:
    if name == "get_user_context":
        assert sc["entity_id"] == "u1" and sc["context_service"] == "user_context"
        assert sc["features"]["user_profile.segment"] == "runner"
        assert sc["provenance"]["txn_stats.amount_count_1d"]["view"] == "txn_stats"
        assert sc["similar"][0]["entity_id"] == "i1" and sc["tokens"] <= 200
        assert sc["recent_events"][0]["values"]["amount"] == 102.0
        assert "recent_events[].values" in sc["untrusted_fields"]
    elif name == "get_features":
        assert sc["features"]["user_profile.segment"] == "runner"
        assert sc["features"]["txn_stats.amount_count_1d"] >= 3
        assert sc["provenance"]["user_profile.segment"]["status"] == "PRESENT"
        assert sc["provenance"]["user_profile.segment"]["age_ms"] >= 0
    elif name == "find_similar":
        assert [i["entity_id"] for i in sc["items"]][:1] == ["i1"] and len(sc["items"]) == 2
    elif name == "search_knowledge":
        assert len(sc["chunks"]) == 1 and "Refunds" in sc["chunks"][0]["text"]
    elif name == "list_feature_services":
        assert [s["name"] for s in sc["feature_services"]] == ["user_features"]
        assert [c for c in sc["context_services"] if c["name"] == "user_context"] == [
            {
                "name": "user_context",
                "description": "What an agent should know about a user",
                "entity": "user",
                "join_key": "user_id",
            }
        ]
    elif name == "search_features":
        assert sc["query"] == "spending" and 1 <= len(sc["items"]) <= 3
        top = sc["items"][0]
        assert (top["kind"], top["name"], top["description"]) == ("feature_view", "txn_stats", "Spending of a user")
        assert top["upstream"] == [{"kind": "stream_source", "name": "transactions"}] and 0 < top["score"] <= 1
    elif name == "describe_feature_service":
        assert sc["join_keys"] == ["user_id"]
        names = [f["name"] for f in sc["features"]]
        assert "txn_stats.amount_sum_1d" in names and "user_profile.interest" in names


def check_annotations(tools: Any) -> None:
    """Read tools: read-only, idempotent, closed world. Write tools: not read-only, closed world; only
    forget_memory is destructive; remember (dedup) and forget_memory are idempotent, record_event is not
    without a key."""
    for t in tools:
        a = t.annotations
        assert a is not None and a.open_world_hint is False, t.name
        assert a.destructive_hint is (t.name in DESTRUCTIVE_TOOLS), t.name
        if t.name in READ_TOOLS:
            assert a.read_only_hint is True and a.idempotent_hint is True, t.name
        else:
            assert t.name in WRITE_TOOLS and a.read_only_hint is False, t.name
            assert a.idempotent_hint is (t.name in IDEMPOTENT_WRITE_TOOLS), t.name


async def check_all_tools(client: Any) -> dict[str, dict[str, Any]]:
    """List tools, call each one, validate structured content against its output schema; return the contents."""
    tools = {t.name: t for t in (await client.list_tools()).tools}
    assert READ_TOOLS <= set(tools) <= TOOL_NAMES, set(tools)
    check_annotations(tools.values())
    for t in tools.values():
        assert t.output_schema and t.output_schema.get("type") == "object"
        assert t.description
        assert "workspace" not in t.input_schema.get("properties", {})
    k = tools["find_similar"].input_schema["properties"]["k"]
    assert k.get("minimum") == 1 and k.get("maximum") == 100
    out: dict[str, dict[str, Any]] = {}
    for name, args in TOOL_CALLS:
        res = await client.call_tool(name, args)
        assert not res.is_error, (name, res.content)
        sc = res.structured_content
        assert isinstance(sc, dict), name
        jsonschema.validate(sc, tools[name].output_schema)
        _check(name, sc)
        out[name] = sc
    # Errors are isError results with a message naming what to fix.
    bad = await client.call_tool("get_features", {"feature_service": "nope", "join_keys": {"user_id": "u1"}})
    assert bad.is_error and "nope" in bad.content[0].text and "feature_service" in bad.content[0].text
    bad = await client.call_tool("find_similar", {"view": "item_embeddings", "text": "x", "k": 0})
    assert bad.is_error and "k" in bad.content[0].text
    bad = await client.call_tool("get_user_context", {"entity_id": "u1", "as_of": "not a time"})
    assert bad.is_error and "as_of" in bad.content[0].text
    return out


@contextmanager
def serve_in_thread(app: Any, port: int) -> Iterator[str]:
    """Run ``app`` with uvicorn on 127.0.0.1:port in a thread; yields the base URL."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def session_calls(
    url: str, key: str, calls: list[tuple[str, dict[str, Any]]], *, validate: bool = False
) -> tuple[dict[str, Any], list[Any]]:
    """One MCP session over streamable HTTP with ``Authorization: Bearer <key>``: list the tools, then make
    ``calls`` in order. Returns (tool name -> tool, results); ``validate`` checks every successful result's
    structured content against its tool's output schema."""
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client

    async def main() -> tuple[dict[str, Any], list[Any]]:
        http = create_mcp_http_client(headers={"Authorization": f"Bearer {key}"})
        with anyio.fail_after(60):
            async with Client(streamable_http_client(url, http_client=http)) as client:
                tools = {t.name: t for t in (await client.list_tools()).tools}
                out = []
                for name, args in calls:
                    res = await client.call_tool(name, args)
                    if validate and not res.is_error:
                        jsonschema.validate(res.structured_content, tools[name].output_schema)
                    out.append(res)
                return tools, out

    return anyio.run(main)
