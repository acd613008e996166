"""A scripted, agent-style MCP client: it discovers the tools, reads a user's context and decides
which tool to call next from what it sees -- the loop an LLM agent runs, with rules instead of a model.

    python examples/agent_loop.py                        # scaffold a demo repo in a temp dir, talk over stdio
    python examples/agent_loop.py --repo my_repo --user u0001
    python examples/agent_loop.py --url http://127.0.0.1:8000/mcp --key cs_... --user u0001   # streamable HTTP

Over stdio the client starts ``context-store mcp --repo ...`` itself (like Claude Desktop would).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import anyio
from mcp import Client
from mcp.client.stdio import StdioServerParameters


def _say(role: str, text: str) -> None:
    print(f"[{role}] {text}")


async def _call(client: Client, tool: str, args: dict[str, Any]) -> dict[str, Any] | None:
    _say("agent", f"call {tool}({json.dumps(args)})")
    res = await client.call_tool(tool, args)
    if res.is_error:
        _say("tool", f"error: {res.content[0].text}")  # an agent reads the message and corrects its call
        return None
    return res.structured_content


async def agent(client: Client, user: str | None, question: str, max_tokens: int) -> None:
    _say("server", (client.instructions or "").strip().splitlines()[0])
    tools = {t.name: t for t in (await client.list_tools()).tools}
    _say(
        "agent",
        f"tools: {', '.join(sorted(tools))} (all read-only: "
        f"{all(t.annotations and t.annotations.read_only_hint for t in tools.values())})",
    )

    services = await _call(client, "list_feature_services", {})
    if not services or not services["context_services"]:
        _say("agent", "no context service here; stopping")
        return
    ctx_service = services["context_services"][0]
    _say("agent", f"using context service {ctx_service['name']!r} keyed by {ctx_service['join_key']}")

    ctx = await _call(
        client,
        "get_user_context",
        {
            "entity_id": user or "u0001",
            "context_service": ctx_service["name"],
            "max_tokens": max_tokens,
        },
    )
    if ctx is None:
        return
    _say("tool", f"{ctx['tokens']} tokens of context; left out: {ctx['omitted'] or 'nothing'}")
    print(ctx["text"])

    # Decide from the data (this is where an LLM would reason). Values are data, never instructions.
    missing = [n for n, p in ctx["provenance"].items() if p["status"] != "PRESENT"]
    stale = [n for n, p in ctx["provenance"].items() if (p["age_ms"] or 0) > 86_400_000]
    if missing or stale:
        _say("agent", f"missing: {missing or 'none'}; older than a day: {stale or 'none'}")
    if ctx["similar"]:
        top = ctx["similar"][0]
        _say("agent", f"the user's interests are close to {top['entity_id']!r}; look for alternatives to it")
        more = await _call(client, "find_similar", {"view": ctx["similar_view"], "entity_id": top["entity_id"], "k": 3})
        if more:
            _say("tool", ", ".join(f"{i['entity_id']} ({i['score']:.2f})" for i in more["items"]))
    for fs in services["feature_services"]:
        desc = await _call(client, "describe_feature_service", {"name": fs["name"]})
        if not desc or desc["request_context"] or desc["join_keys"] != [ctx_service["join_key"]]:
            _say("agent", "needs request data or other keys; skip")  # only call what we can fill in
            continue
        vals = await _call(
            client,
            "get_features",
            {
                "feature_service": fs["name"],
                "join_keys": {ctx_service["join_key"]: ctx["entity_id"]},
            },
        )
        if vals:
            _say("tool", json.dumps(vals["features"], default=str)[:300])
        break
    if ctx["knowledge_name"]:
        kb = await _call(client, "search_knowledge", {"knowledge": ctx["knowledge_name"], "query": question, "k": 2})
        for c in (kb or {}).get("chunks", []):
            _say("tool", f"[{c['source']}] {c['text'][:160]!r}")
    _say("agent", "done: an LLM would now answer the user with this context")


def _demo_repo() -> Path:
    """Scaffold the example repo with the CLI, then apply/backfill/materialize it."""
    exe = shutil.which("context-store") or str(Path(sys.executable).parent / "context-store")
    root = Path(tempfile.mkdtemp(prefix="cs-agent-")) / "repo"
    for cmd in (
        ["init", str(root)],
        ["apply", "--repo", str(root), "--yes"],
        ["backfill", "--repo", str(root)],
        ["materialize", "--repo", str(root)],
    ):
        _say("setup", "context-store " + " ".join(cmd))
        proc = subprocess.run([exe, *cmd], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if proc.returncode:
            sys.exit(f"context-store {cmd[0]} failed:\n{proc.stderr[-2000:]}")
    return root


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repo", type=Path, help="feature repo (default: scaffold a demo repo)")
    p.add_argument("--workspace", default=None)
    p.add_argument("--url", help="MCP endpoint over streamable HTTP, e.g. http://127.0.0.1:8000/mcp")
    p.add_argument("--key", help="API key for --url (Bearer)")
    p.add_argument("--user", default=None, help="entity id (default: u0001, a user of the scaffolded repo)")
    p.add_argument("--question", default="how do refunds work")
    p.add_argument("--max-tokens", type=int, default=300)
    a = p.parse_args()
    if a.url:
        from mcp.client.streamable_http import streamable_http_client
        from mcp.shared._httpx_utils import create_mcp_http_client

        headers = {"Authorization": f"Bearer {a.key}"} if a.key else {}
        server: Any = streamable_http_client(a.url, http_client=create_mcp_http_client(headers=headers))
    else:
        repo = a.repo or _demo_repo()
        exe = shutil.which("context-store") or str(Path(sys.executable).parent / "context-store")
        args = ["mcp", "--repo", str(repo)] + (["--workspace", a.workspace] if a.workspace else [])
        server = StdioServerParameters(command=exe, args=args)

    async def run() -> None:
        async with Client(server) as client:
            await agent(client, a.user, a.question, a.max_tokens)

    anyio.run(run)


if __name__ == "__main__":
    main()
