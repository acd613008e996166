"""A scripted, agent-style MCP client: it discovers the tools, reads a user's context and decides
which tool to call next from what it sees -- the loop an LLM agent runs, with rules instead of a model.

    python examples/agent_loop.py                        # scaffold a demo repo in a temp dir, talk over stdio
    python examples/agent_loop.py --repo my_repo --user u0001
    python examples/agent_loop.py --url http://127.0.0.1:8000/mcp --key cs_... --user u0001   # streamable HTTP

Over stdio the client starts ``context-store mcp --repo ...`` itself (like Claude Desktop would).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable
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


def _demo_repo(root: Path, workspace: str | None) -> None:
    """Scaffold the example repo in ``root`` with the CLI, then apply/backfill/materialize it."""
    exe = shutil.which("context-store") or str(Path(sys.executable).parent / "context-store")
    ws = ["--workspace", workspace] if workspace else []
    for cmd in (
        ["init", str(root)],
        ["apply", "--repo", str(root), "--yes", *ws],
        ["backfill", "--repo", str(root), *ws],
        ["materialize", "--repo", str(root), *ws],
    ):
        _say("setup", "context-store " + " ".join(cmd))
        proc = subprocess.run([exe, *cmd], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if proc.returncode:
            last = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
            raise SetupError(f"context-store {cmd[0]} failed: {last}")


class SetupError(Exception):
    """A step of the demo repo's set-up failed (the message ends with the last line of its stderr)."""


def _leaves(e: BaseException) -> list[BaseException]:
    """The real errors inside (nested) exception groups: anyio task groups wrap whatever a task raised."""
    if isinstance(e, BaseExceptionGroup):
        return [leaf for sub in e.exceptions for leaf in _leaves(sub)]
    return [e]


def _one_line(e: BaseException, a: argparse.Namespace, http_errors: list[int]) -> str:
    """What went wrong, in one line (an agent's operator needs the cause, not an ExceptionGroup traceback).
    ``http_errors``: statuses >= 400 the endpoint answered (the SDK reports them only as an error response)."""
    leaf = next((x for x in _leaves(e) if not isinstance(x, asyncio.CancelledError)), e)
    text = str(leaf).strip().splitlines()[0] if str(leaf).strip() else ""
    if a.url and http_errors:
        code = http_errors[0]
        hint = "; check --key (an API key of the workspace: `context-store keys create`)" if code in (401, 403) else ""
        return f"{a.url} answered HTTP {code}{hint}"
    if not a.url and "Connection closed" in text:
        return "the `context-store mcp` process exited before answering (its error is printed above)"
    return f"{type(leaf).__name__}: {text}" if text else type(leaf).__name__


def _noting(statuses: list[int]) -> Callable[[Any], Awaitable[None]]:
    async def note(response: Any) -> None:
        if response.status_code >= 400:
            statuses.append(response.status_code)

    return note


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
    tmp: Path | None = None
    http_errors: list[int] = []
    try:
        if a.url:
            from mcp.client.streamable_http import streamable_http_client
            from mcp.shared._httpx_utils import create_mcp_http_client

            headers = {"Authorization": f"Bearer {a.key}"} if a.key else {}
            http = create_mcp_http_client(headers=headers)
            http.event_hooks["response"].append(_noting(http_errors))
            server: Any = streamable_http_client(a.url, http_client=http)
        else:
            repo = a.repo
            if repo is None:
                tmp = Path(tempfile.mkdtemp(prefix="cs-agent-"))
                repo = tmp / "repo"
                _demo_repo(repo, a.workspace)
            exe = shutil.which("context-store") or str(Path(sys.executable).parent / "context-store")
            args = ["mcp", "--repo", str(repo)] + (["--workspace", a.workspace] if a.workspace else [])
            server = StdioServerParameters(command=exe, args=args)

        async def run() -> None:
            async with Client(server) as client:
                await agent(client, a.user, a.question, a.max_tokens)

        anyio.run(run)
    except KeyboardInterrupt:
        sys.exit(130)
    except SetupError as e:
        sys.exit(f"agent_loop: {e}")
    except Exception as e:  # noqa: BLE001 - an example script: one line, not a traceback
        sys.exit(f"agent_loop: error: {_one_line(e, a, http_errors)}")
    finally:
        if tmp is not None:  # the demo repo is throw-away, whatever happened
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
