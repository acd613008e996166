"""get_user_context latency: in process, through the MCP layer, and over MCP streamable HTTP.

    python -m evals.bench_context [--quick] [--online redis://127.0.0.1:6379/0 | sqlite] [--users 1000]

Builds a context repo (features from a stream + a profile, recent events, similar items from a
hash-64 embedding view), then measures p50/p99 of, each interleaved with a floor measured in the
same loop (so both see the same machine load):
  * ``store.get_user_context`` in process (with the time of each part) vs ``store.get_features``,
  * the ``get_user_context`` MCP tool server-side (``MCPServer.call_tool``, no transport),
  * the same tool over streamable HTTP with a Bearer key, the server in its own process
    (uvicorn, 1 worker), JSON-RPC ``tools/call`` on a keep-alive connection vs ``tools/list``,
  * end to end with the SDK's ``Client`` over HTTP.
Results go to evals/results/context.md (+ context.png). Target: p99 <= 10 ms over HTTP.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "evals" / "results"
Stats = dict[str, float]


def _pct(xs: list[float]) -> Stats:
    a = np.asarray(xs)
    return {
        "p50": float(np.percentile(a, 50)),
        "p99": float(np.percentile(a, 99)),
        "mean": float(a.mean()),
        "n": len(xs),
    }


def build(root: Path, workspace: str, online: str, users: int) -> Any:
    """The test fixture repo, scaled: ``users`` users with history and fresh pushed events."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    import context_store as cs
    from context_store.embedders.registry import get_embedder
    from tests.support.context import build_context_repo, txn_rows

    build_context_repo(root)
    rng = random.Random(7)
    end = datetime.now(UTC).replace(microsecond=0)
    rows: list[dict[str, Any]] = []
    for u in range(users):
        rows += txn_rows(f"u{u}", end - timedelta(hours=47), 20, timedelta(hours=2), amount0=rng.random() * 10)
    ts = pa.timestamp("us", tz="UTC")
    pq.write_table(
        pa.Table.from_pylist(
            rows,
            schema=pa.schema(
                [
                    ("user_id", pa.string()),
                    ("item_id", pa.string()),
                    ("amount", pa.float64()),
                    ("note", pa.string()),
                    ("ts", ts),
                ]
            ),
        ),
        root / "data" / "transactions.parquet",
    )
    words = ["red", "blue", "green", "running", "shoes", "coffee", "tea", "speaker", "headphones", "wireless", "beans"]
    n_items = 2000
    pq.write_table(
        pa.table(
            {
                "item_id": [f"i{i}" for i in range(n_items)],
                "title": [" ".join(rng.sample(words, 3)) for _ in range(n_items)],
                "category": [rng.choice(["shoes", "food", "audio"]) for _ in range(n_items)],
                "ts": pa.array([end - timedelta(days=3)] * n_items, type=ts),
            }
        ),
        root / "data" / "items.parquet",
    )
    emb = get_embedder("hash-64").embed([" ".join(rng.sample(words, 3)) for _ in range(users)])
    pq.write_table(
        pa.table(
            {
                "user_id": [f"u{u}" for u in range(users)],
                "segment": [rng.choice(["a", "b", "c"]) for _ in range(users)],
                "interest": pa.array([list(map(float, v)) for v in emb], type=pa.list_(pa.float32(), 64)),
                "ts": pa.array([end - timedelta(days=3)] * users, type=ts),
            }
        ),
        root / "data" / "profiles.parquet",
    )
    store = cs.ContextStore(root, workspace=workspace, online_store=online)
    store.apply()
    store.backfill()
    store.materialize()
    now = datetime.now(UTC)
    fresh: list[dict[str, Any]] = []
    for u in range(users):
        fresh += txn_rows(f"u{u}", now - timedelta(seconds=120), 6, timedelta(seconds=15), amount0=100.0)
    store.push("transactions", fresh)
    return store


def serve(args: argparse.Namespace) -> None:
    """Child process: the MCP HTTP app for one workspace, keys from a key store file."""
    import uvicorn

    import context_store as cs
    from context_store.server.auth import authenticate
    from context_store.server.keys import KeyStore
    from context_store.tools.http import create_mcp_http_app, create_standalone_app

    store = cs.ContextStore(args.repo, workspace=args.workspace, online_store=args.online)
    keys = KeyStore(args.keys)
    app = create_mcp_http_app(lambda ws: store, lambda h: authenticate(h, keys))
    timed = _ServerTimer(create_standalone_app(app), Path(args.stats))
    uvicorn.run(
        timed,
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
        loop="uvloop" if _has("uvloop") else "asyncio",
        http="httptools" if _has("httptools") else "h11",
    )


class _ServerTimer:
    """ASGI wrapper timing each request inside the server (first byte in -> last byte out), by MCP method:
    the server's own latency, without the client process's share of the CPU."""

    def __init__(self, app: Any, out: Path) -> None:
        self.app, self.out = app, out
        self.times: dict[str, list[float]] = {}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":  # write the times at shutdown (uvicorn re-raises SIGTERM after it)

            async def on_shutdown() -> Any:
                msg = await receive()
                if msg["type"] == "lifespan.shutdown":
                    self.dump()
                return msg

            await self.app(scope, on_shutdown, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0, c0 = time.perf_counter(), time.process_time()
        kind = "call"

        async def recv() -> Any:
            nonlocal kind
            msg = await receive()
            if b'"tools/list"' in msg.get("body", b""):
                kind = "list"
            return msg

        await self.app(scope, recv, send)
        self.times.setdefault(kind, []).append((time.perf_counter() - t0) * 1e3)
        # CPU of the server process during the request (requests arrive one at a time): load-independent.
        self.times.setdefault(kind + "_cpu", []).append((time.process_time() - c0) * 1e3)

    def dump(self) -> None:
        self.out.write_text(json.dumps({k: v[50:] for k, v in self.times.items()}))


def _has(mod: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(mod) is not None


def bench_in_process(store: Any, users: list[str], n: int) -> tuple[Stats, Stats, Stats, dict[str, float]]:
    """get_features (floor), get_user_context, and get_user_context with a budget: interleaved in a
    shuffled order each round, so all three see the same machine load and no position is favoured."""
    rng = random.Random(3)
    lat: dict[str, list[float]] = {"fs": [], "ctx": [], "tok": []}
    parts: dict[str, list[float]] = {}
    for i in range(n):
        u = users[i % len(users)]
        order = ["fs", "ctx", "tok"]
        rng.shuffle(order)
        for what in order:
            t0 = time.perf_counter()
            if what == "fs":
                store.get_features("user_features", {"user_id": u})
            elif what == "ctx":
                uc = store.get_user_context(u)
            else:
                store.get_user_context(u, max_tokens=120)  # below the full size: per-line counts + trimming
            lat[what].append((time.perf_counter() - t0) * 1e3)
        for k, v in uc.timings_ms.items():
            parts.setdefault(k, []).append(v)
    return _pct(lat["fs"]), _pct(lat["ctx"]), _pct(lat["tok"]), {k: float(np.mean(v)) for k, v in parts.items()}


def bench_mcp_server(store: Any, users: list[str], n: int) -> tuple[Stats, Stats]:
    """The MCP layer without a transport (arguments, worker thread, output model, content),
    interleaved with the plain in-process call."""
    import anyio

    from context_store.tools.server import create_mcp_server

    server = create_mcp_server(store)
    lat: list[float] = []
    base: list[float] = []

    async def run() -> None:
        for i in range(n):
            u = users[i % len(users)]
            t0 = time.perf_counter()
            store.get_user_context(u)
            t1 = time.perf_counter()
            res = await server.call_tool("get_user_context", {"entity_id": u})
            t2 = time.perf_counter()
            base.append((t1 - t0) * 1e3)
            lat.append((t2 - t1) * 1e3)
            assert not res.is_error, res.content

    anyio.run(run)
    return _pct(lat), _pct(base)


def bench_http(url: str, key: str, users: list[str], n: int) -> tuple[Stats, Stats]:
    """JSON-RPC POSTs on one keep-alive connection: ``tools/list`` (the floor: MCP over HTTP doing
    no work) interleaved with ``tools/call get_user_context``, alternating which goes first."""
    import httpx

    headers = {
        "Authorization": f"Bearer {key}",
        "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": "2025-06-18",
    }
    lat, ping = [], []
    with httpx.Client(timeout=30) as c:
        for i in range(n + 50):  # 50 warm-up rounds
            body = {
                "jsonrpc": "2.0",
                "id": i,
                "method": "tools/call",
                "params": {"name": "get_user_context", "arguments": {"entity_id": users[i % len(users)]}},
            }
            for what in ("list", "call") if i % 2 else ("call", "list"):  # alternate the order
                t0 = time.perf_counter()
                if what == "list":
                    r = c.post(
                        url, content=json.dumps({"jsonrpc": "2.0", "id": i, "method": "tools/list"}), headers=headers
                    )
                else:
                    r = c.post(url, content=json.dumps(body), headers=headers)
                dt = (time.perf_counter() - t0) * 1e3
                assert r.status_code == 200, r.text
                out = r.json()
                assert "result" in out and not out["result"].get("isError"), out
                if i >= 50:
                    (ping if what == "list" else lat).append(dt)
    return _pct(lat), _pct(ping)


def bench_sdk_client(url: str, key: str, users: list[str], n: int) -> Stats:
    """End to end with the SDK's client over HTTP (includes its output-schema validation of each result)."""
    import anyio
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client

    lat: list[float] = []

    async def run() -> None:
        http = create_mcp_http_client(headers={"Authorization": f"Bearer {key}"})
        async with Client(streamable_http_client(url, http_client=http)) as client:
            for i in range(n + 20):
                t0 = time.perf_counter()
                res = await client.call_tool("get_user_context", {"entity_id": users[i % len(users)]})
                if i >= 20:
                    lat.append((time.perf_counter() - t0) * 1e3)
                assert not res.is_error, res.content

    anyio.run(run)
    return _pct(lat)


def _wait_port(port: int, timeout: float = 60) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("the MCP HTTP server did not start")


def _cleanup(online: str, ws: str) -> None:
    if not online.startswith("redis"):
        return
    import redis

    r = redis.Redis.from_url(online)
    keys = list(r.scan_iter(match=f"*{ws}*", count=1000))
    for i in range(0, len(keys), 500):
        r.delete(*keys[i : i + 500])
    r.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--online", default=os.environ.get("CONTEXT_STORE_REDIS_URL", "redis://127.0.0.1:6379/0"))
    p.add_argument("--users", type=int, default=None)
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--repo", help=argparse.SUPPRESS)
    p.add_argument("--workspace", help=argparse.SUPPRESS)
    p.add_argument("--keys", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--stats", help=argparse.SUPPRESS)
    a = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if a.serve:
        serve(a)
        return
    users_n = a.users or (200 if a.quick else 1000)
    n = 300 if a.quick else 2000
    ws = "bench" + os.urandom(4).hex()
    tmp = Path(tempfile.mkdtemp(prefix="cs-bench-ctx-"))
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    store = build(tmp / "repo", ws, a.online, users_n)
    setup_s = time.perf_counter() - t0
    users = [f"u{i}" for i in random.Random(1).sample(range(users_n), users_n)]
    store.get_user_context(users[0])  # warm: vector index load, tokenizer
    store.get_user_context(users[0], max_tokens=50)
    r: dict[str, Any] = {}
    r["fs"], r["ctx"], r["budget"], r["share"] = bench_in_process(store, users, n)
    r["mcp"], r["mcp_base"] = bench_mcp_server(store, users, n)

    from context_store.server.keys import KeyStore
    from tests.support.server import free_port

    keys = KeyStore(tmp / "keys.sqlite")
    key, _ = keys.create(ws, scope="read")
    port = free_port()
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "evals.bench_context",
            "--serve",
            "--repo",
            str(tmp / "repo"),
            "--workspace",
            ws,
            "--online",
            a.online,
            "--keys",
            str(tmp / "keys.sqlite"),
            "--port",
            str(port),
            "--stats",
            str(tmp / "server_times.json"),
        ],
        cwd=ROOT,
    )
    try:
        _wait_port(port)
        url = f"http://127.0.0.1:{port}/mcp"
        # Three rounds: this machine is shared, so report the median round and show the spread.
        rounds = sorted((bench_http(url, key, users, max(n // 3, 100)) for _ in range(3)), key=lambda x: x[0]["p99"])
        r["http"], r["ping"] = rounds[1]
        r["http_rounds"] = [h["p99"] for h, _ in rounds]
        r["sdk"] = bench_sdk_client(url, key, users, max(n // 4, 100))
    finally:
        child.terminate()
        child.wait(30)
        store.close()
        _cleanup(a.online, ws)
    try:
        inside = json.loads((tmp / "server_times.json").read_text())
        r["srv"], r["srv_list"] = _pct(inside["call"]), _pct(inside["list"])
        r["srv_cpu"], r["srv_list_cpu"] = _pct(inside["call_cpu"]), _pct(inside["list_cpu"])
    except (OSError, KeyError, ValueError):
        r["srv"] = r["srv_list"] = None
    r["load"] = (load0 + os.getloadavg()[0]) / 2
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    report(a, users_n, n, setup_s, r)


def report(a: argparse.Namespace, users: int, n: int, setup_s: float, r: dict[str, Any]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    fs, ctx, budget, share, mcp, mcp_base, http, ping, sdk = (
        r[k] for k in ("fs", "ctx", "budget", "share", "mcp", "mcp_base", "http", "ping", "sdk")
    )
    mcp_layer = max(mcp["mean"] - mcp_base["mean"], 0.0)
    transport = max(http["mean"] - mcp["mean"], 0.0)
    rows = list(share.items()) + [
        ("MCP layer (arguments, output model, content)", mcp_layer),
        ("HTTP transport + auth", transport),
    ]

    def line(name: str, s: Stats, bold: bool = False) -> str:
        b = "**" if bold else ""
        return f"| {name} | {b}{s['p50']:.2f}{b} | {b}{s['p99']:.2f}{b} | {s['mean']:.2f} |"

    lines = [
        "# get_user_context latency (evals/bench_context.py)",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, online store "
        f"`{a.online.split('://')[0]}`; {users} users, 2000 items (hash-64 vectors, FAISS), {n} calls per row"
        f"{' (--quick)' if a.quick else ''}; setup (apply+backfill+materialize+push) {setup_s:.1f}s. "
        f"Load average during the run: {r['load']:.1f} on {os.cpu_count()} cores (other work shares them).",
        "",
        "| path | p50 ms | p99 ms | mean ms |",
        "|---|---:|---:|---:|",
        line("floor: `store.get_features` (one online round trip)", fs),
        line("`store.get_user_context` in process", ctx),
        line("... with `max_tokens=120` (MiniLM token counts + trim by priority)", budget),
        line("MCP tool server side, no transport (`MCPServer.call_tool`)", mcp),
        line("**MCP tool over streamable HTTP** (Bearer key, separate server process)", http, bold=True),
        line("floor: MCP `tools/list` over HTTP (no work)", ping),
        *(
            [
                line("... the HTTP tool call timed inside the server (request in -> response out)", r["srv"]),
                line("... its server CPU time (process time; insensitive to other load)", r["srv_cpu"]),
                line("... `tools/list` timed inside the server", r["srv_list"]),
                line("... its server CPU time", r["srv_list_cpu"]),
            ]
            if r.get("srv")
            else []
        ),
        line("end to end with the SDK `Client` over HTTP (+ client-side schema validation)", sdk),
        "",
        f"HTTP rows: the median of 3 rounds by p99 (p99 per round: "
        f"{' / '.join(f'{x:.1f}' for x in r['http_rounds'])} ms).",
        "",
        f"Target p99 <= 10 ms over HTTP: **{'met' if http['p99'] <= 10 else 'NOT met'}** ({http['p99']:.2f} ms "
        f"at load {r['load']:.1f} on {os.cpu_count()} cores"
        + (
            f"; the server's own CPU per call is p50 {r['srv_cpu']['p50']:.2f} / p99 {r['srv_cpu']['p99']:.2f} ms, "
            "so the rest of the wall time is waiting for a core"
            if r.get("srv")
            else ""
        )
        + "). "
        f"Ratios to the floors measured in the same interleaved loops (p50): get_user_context = "
        f"{ctx['p50'] / fs['p50']:.1f}x get_features in process; the HTTP tool call = "
        f"{http['p50'] / ping['p50']:.1f}x an MCP `tools/list` round trip (p99: {http['p99'] / ping['p99']:.1f}x).",
        "",
        "Where the time goes over HTTP (mean per call; parts from the in-process run, MCP layer and transport",
        "as differences between the runs above):",
        "",
        "| part | ms | share |",
        "|---|---:|---:|",
    ]
    total = sum(v for _, v in rows)  # the phases ran at different moments (load varies): share of the sum
    for k, v in rows:
        lines.append(f"| {k} | {v:.3f} | {100 * v / total:.0f}% |")
    lines += [
        "",
        f"The in-process parts sum to {sum(share.values()):.3f} ms (of {ctx['mean']:.3f} ms measured). The MCP layer",
        "is `MCPServer.call_tool` minus the in-process call interleaved with it; the transport is the HTTP call",
        "minus `MCPServer.call_tool`. HTTP calls are JSON-RPC POSTs on a keep-alive connection (httpx, protocol",
        "2025-06-18); the server is stateless with JSON responses (no SSE, no session), one uvicorn worker",
        "(uvloop, httptools). The SDK `Client` negotiates protocol 2026-07-28 and validates every result",
        "against the tool's output schema with jsonschema on the client side: most of the gap between the",
        "last row and the HTTP row is client CPU, not server time.",
    ]
    (RESULTS / "context.md").write_text("\n".join(lines) + "\n")
    _plot(rows)
    print("\n".join(lines))


def _plot(rows: list[tuple[str, float]]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(7, 2.2))
    left = 0.0
    for name, v in rows:
        ax.barh([0], [v], left=left, label=f"{name} ({v:.2f} ms)")
        left += v
    ax.set_yticks([])
    ax.set_xlabel("ms per get_user_context call over MCP streamable HTTP (mean)")
    ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.45), ncol=2)
    fig.tight_layout()
    fig.savefig(RESULTS / "context.png", dpi=120, bbox_inches="tight")
    plt.close(fig)


if __name__ == "__main__":
    main()
