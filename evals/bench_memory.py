"""MCP ``remember`` and ``search_memories`` latency over streamable HTTP.

    python -m evals.bench_memory [--calls 300] [--reps 3] [--users 50] [--online sqlite | redis://127.0.0.1:6379/0]

Builds the memory repo of ``tests.support.memory`` (hash-64 embedder), serves the MCP tools in their
own process (uvicorn, 1 worker, a Bearer token with the ingest scope), then per repetition sends
``--calls`` JSON-RPC ``tools/call`` requests of each tool on one keep-alive connection: ``remember``
with a new text each call (every call stores a memory), ``search_memories`` for a random user.
Reports p50/p99 per repetition, the median and range over repetitions, and the load average.
Results go to evals/results/memory.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "evals" / "results"
TOKEN = "bench-ingest-token"
WORDS = "window aisle seat vegetarian coffee tea jazz opera hotel train flight Lisbon Porto dog cat bike".split()


def serve(args: argparse.Namespace) -> None:
    """The server process: the MCP tools of the applied repo, one token with the ingest scope."""
    import uvicorn

    import context_store as cs
    from context_store.errors import UnauthorizedError
    from context_store.server.auth import Principal, parse_authorization
    from context_store.tools.http import create_mcp_http_app, create_standalone_app

    store = cs.ContextStore(args.repo, workspace=args.workspace, online_store=args.online)
    store.warm()

    def authenticate(header: str | None) -> Principal:
        if parse_authorization(header) != TOKEN:
            raise UnauthorizedError("invalid API key", field="Authorization")
        return Principal(args.workspace, "ingest", key_id="bench")

    app = create_standalone_app(create_mcp_http_app(lambda _ws: store, authenticate))
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


def _wait_port(port: int, timeout: float = 60) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"server on port {port} did not start")


def _call(c: Any, url: str, i: int, name: str, arguments: dict[str, Any]) -> float:
    body = {"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": {"name": name, "arguments": arguments}}
    t0 = time.perf_counter()
    r = c.post(url, json=body)
    dt = (time.perf_counter() - t0) * 1e3
    out = r.json()
    if r.status_code != 200 or out.get("result", {}).get("isError"):
        raise RuntimeError(f"{name} failed: {r.status_code} {r.text[:300]}")
    return dt


def _pct(xs: list[float]) -> tuple[float, float]:
    a = np.asarray(xs)
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


def bench(url: str, users: int, calls: int, rep: int) -> dict[str, list[float]]:
    import httpx

    rng = random.Random(rep)
    headers = {
        "Authorization": f"Bearer {TOKEN}",
        "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream",
    }
    times: dict[str, list[float]] = {"remember": [], "search_memories": []}
    with httpx.Client(timeout=60, headers=headers) as c:
        for i in range(calls):
            user = f"u{rng.randrange(users)}"
            text = f"{' '.join(rng.sample(WORDS, 4))} note {rep}-{i}"  # new text: every call stores one
            times["remember"].append(_call(c, url, 2 * i, "remember", {"text": text, "entity_id": user}))
            query = " ".join(rng.sample(WORDS, 2))
            args = {"query": query, "entity_id": f"u{rng.randrange(users)}", "k": 5}
            times["search_memories"].append(_call(c, url, 2 * i + 1, "search_memories", args))
    return times


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--calls", type=int, default=300)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--users", type=int, default=50)
    p.add_argument("--online", default="sqlite")
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--repo", help=argparse.SUPPRESS)
    p.add_argument("--workspace", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.serve:
        serve(a)
        return

    from tests.support.memory import drop_redis_workspace, memory_store
    from tests.support.server import free_port

    ws = "bench" + uuid.uuid4().hex[:8]
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        memory_store(repo, a.online, ws).close()
        port = free_port()
        cmd = [sys.executable, "-m", "evals.bench_memory", "--serve", "--repo", str(repo), "--workspace", ws]
        cmd += ["--port", str(port), "--online", a.online]
        env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        server = subprocess.Popen(cmd, cwd=ROOT, env=env)
        try:
            _wait_port(port)
            url = f"http://127.0.0.1:{port}/mcp"
            bench(url, a.users, 20, rep=99)  # warm-up: model, collections, connections
            runs, loads = [], []
            for rep in range(a.reps):
                runs.append(bench(url, a.users, a.calls, rep))
                loads.append(os.getloadavg()[0])
        finally:
            server.terminate()
            server.wait(30)
            if a.online != "sqlite":
                drop_redis_workspace(a.online, ws)
    report(a, runs, loads)


def report(a: argparse.Namespace, runs: list[dict[str, list[float]]], loads: list[float]) -> None:
    lines = [
        "# MCP memory tools latency (evals/bench_memory.py)",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; online store "
        f"`{'sqlite' if a.online == 'sqlite' else 'redis'}`; hash-64 embedder; {a.users} users; {a.calls} calls of "
        f"each tool per repetition, {a.reps} repetitions, server in its own process (uvicorn, 1 worker), JSON-RPC "
        "`tools/call` over streamable HTTP on one keep-alive connection. `remember` stores a new text every call "
        "(durable offline + online + vector index before it returns); `search_memories` k=5 for a random user.",
        f"Load average (1 min) after each repetition: {', '.join(f'{x:.1f}' for x in loads)} on {os.cpu_count()} "
        "cores (other work shares them).",
        "",
        "| tool | p50 ms per rep | p99 ms per rep | p50 median (range) | p99 median (range) |",
        "|---|---|---|---:|---:|",
    ]
    for tool in ("remember", "search_memories"):
        stats = [_pct(r[tool]) for r in runs]
        p50s, p99s = [s[0] for s in stats], [s[1] for s in stats]
        lines.append(
            f"| `{tool}` | {' / '.join(f'{x:.2f}' for x in p50s)} | {' / '.join(f'{x:.2f}' for x in p99s)} | "
            f"{np.median(p50s):.2f} ({min(p50s):.2f}-{max(p50s):.2f}) | "
            f"{np.median(p99s):.2f} ({min(p99s):.2f}-{max(p99s):.2f}) |"
        )
    text = "\n".join(lines) + "\n"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "memory.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
