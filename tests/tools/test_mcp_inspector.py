"""Conformance with a third-party client: the MCP Inspector CLI (Node), over stdio and streamable HTTP.

Runs when ``npx`` is on PATH (skipped otherwise). The Inspector version is pinned; ``.ci/run``
pre-installs it (``npm install -g @modelcontextprotocol/inspector@0.17.2`` or an npx cache warm-up)
so the suite does not depend on the registry at test time.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

import context_store as cs
from tests.support.mcp import MEMORY_TOOLS, McpStoreFactory, free_port, serve_in_thread

INSPECTOR = os.environ.get("CONTEXT_STORE_MCP_INSPECTOR", "@modelcontextprotocol/inspector@0.17.2")
NPX = shutil.which("npx")
pytestmark = pytest.mark.skipif(NPX is None, reason="npx (Node.js) is not installed")


def _inspector(*args: str) -> Any:
    assert NPX is not None
    proc = subprocess.run(
        [NPX, "-y", INSPECTOR, "--cli", *args],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "npm_config_update_notifier": "false", "NODE_NO_WARNINGS": "1"},
    )
    assert proc.returncode == 0, f"inspector failed ({proc.returncode}): {proc.stderr[-2000:]} {proc.stdout[-2000:]}"
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def repo(
    tmp_path_factory: pytest.TempPathFactory, prepare_store: McpStoreFactory
) -> Iterator[tuple[cs.ContextStore, str]]:
    ws = "t" + uuid.uuid4().hex[:12]
    store = prepare_store(tmp_path_factory.mktemp("insp") / "repo", ws, "sqlite")
    yield store, ws
    store.close()


def _check_listing(listing: dict[str, Any]) -> dict[str, Any]:
    tools = {t["name"]: t for t in listing["tools"]}
    assert {
        "get_user_context",
        "get_features",
        "find_similar",
        "search_knowledge",
        "list_feature_services",
        "describe_feature_service",
    } <= set(tools)
    for t in tools.values():
        writes = t["name"] in MEMORY_TOOLS and t["name"] != "search_memories"
        assert t["annotations"]["readOnlyHint"] is not writes and t["outputSchema"]["type"] == "object"
    return tools


def test_inspector_over_stdio(repo: tuple[cs.ContextStore, str]) -> None:
    store, ws = repo
    exe = shutil.which("context-store", path=str(Path(sys.executable).parent))
    assert exe
    server = [exe, "mcp", "--repo", str(store.config.repo), "--workspace", ws]
    tools = _check_listing(_inspector(*server, "--method", "tools/list"))
    out = _inspector(
        *server,
        "--method",
        "tools/call",
        "--tool-name",
        "get_user_context",
        "--tool-arg",
        "entity_id=u1",
        "--tool-arg",
        "max_tokens=120",
    )
    assert out["isError"] is False
    jsonschema.validate(out["structuredContent"], tools["get_user_context"]["outputSchema"])
    assert (
        out["structuredContent"]["tokens"] <= 120
        and out["structuredContent"]["features"]["user_profile.segment"] == "runner"
    )


def test_inspector_over_http_with_a_key(repo: tuple[cs.ContextStore, str], tmp_path: Path) -> None:
    from context_store.server.auth import authenticate
    from context_store.server.keys import KeyStore
    from context_store.tools.http import create_mcp_http_app, create_standalone_app

    store, ws = repo
    keys = KeyStore(tmp_path / "keys.sqlite")
    key, _ = keys.create(ws, scope="read")
    app = create_mcp_http_app(lambda _ws: store, lambda h: authenticate(h, keys))
    with serve_in_thread(create_standalone_app(app), free_port()) as base:
        url = base + "/mcp"
        auth = ["--transport", "http", "--header", f"Authorization: Bearer {key}"]
        tools = _check_listing(_inspector(url, *auth, "--method", "tools/list"))
        out = _inspector(
            url,
            *auth,
            "--method",
            "tools/call",
            "--tool-name",
            "find_similar",
            "--tool-arg",
            "view=item_embeddings",
            "--tool-arg",
            "text=red running shoes",
            "--tool-arg",
            "k=2",
        )
        assert out["isError"] is False and out["structuredContent"]["items"][0]["entity_id"] == "i1"
        jsonschema.validate(out["structuredContent"], tools["find_similar"]["outputSchema"])
        bad = _inspector(
            url,
            *auth,
            "--method",
            "tools/call",
            "--tool-name",
            "find_similar",
            "--tool-arg",
            "view=nope",
            "--tool-arg",
            "text=shoes",
        )
        assert bad["isError"] is True and "nope" in bad["content"][0]["text"]  # an error result, not a crash
    keys.close()
