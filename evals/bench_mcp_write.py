"""MCP write tools over HTTP: latency of ``record_event`` (and any tool in ``CALLS``) against ``context-store serve``.

    python -m evals.bench_mcp_write [--calls 300] [--rounds 3]

A real server process (the CLI's ``serve``: REST + MCP at /mcp, Bearer keys, Redis online store, its
stream worker) on a repo with one stream source feeding a windowed feature view. The
client posts JSON-RPC ``tools/call`` requests one at a time on a keep-alive connection (stateless
streamable HTTP, JSON responses), interleaved with ``tools/list`` (the floor: MCP over HTTP doing no
work). Each ``record_event`` pushes one event, waits until it is applied online (read-after-write)
and reads the view back. Per round: p50/p99 of each call; the rows report the median round (by
p99) and the range over rounds, with the load average. Results -> evals/results/mcp_write.md.

The measured calls are data: add a ``Call`` to ``CALLS`` (e.g. ``remember``) and its rows appear.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "evals" / "results"
REDIS_URL = os.environ.get("CONTEXT_STORE_REDIS_URL", "redis://127.0.0.1:6379/0")

DEFINITIONS = """
import context_store as cs

user = cs.Entity("user", join_keys=["user_id"])
transactions = cs.StreamSource(
    "transactions",
    schema=[
        cs.Field("user_id", cs.String), cs.Field("item_id", cs.String), cs.Field("amount", cs.Float64),
        cs.Field("ts", cs.Timestamp),
    ],
    timestamp_field="ts",
)
txn_stats = cs.FeatureView(
    "txn_stats", entities=[user], source=transactions,
    aggregations=[cs.Aggregate("amount", f, w) for w in ("1h", "1d") for f in ("count", "sum", "mean", "min", "max")]
    + [cs.Aggregate("item_id", "last_distinct_n", "7d", n=3)],
)
user_features = cs.FeatureService("user_features", [txn_stats])
memories = cs.Memory("memories", entity=user)  # the default embedder: MiniLM
"""


@dataclass(frozen=True)
class Call:
    """One measured tool call: ``arguments(i)`` for the i-th call; ``check`` on its structured content."""

    tool: str
    label: str
    arguments: Callable[[int], dict[str, Any]]
    check: Callable[[int, dict[str, Any]], None] = lambda i, sc: None


USERS = 50


def _event(i: int) -> dict[str, Any]:
    ts = datetime.now(UTC) - timedelta(milliseconds=100)
    return {"user_id": f"u{i % USERS}", "item_id": f"i{i % 7}", "amount": float(i % 13), "ts": ts.isoformat()}


def _check_recorded(i: int, sc: dict[str, Any]) -> None:
    assert sc["accepted"] == 1 and sc["visible"] is True, sc
    assert sc["join_keys"] == {"user_id": f"u{i % USERS}"} and sc["features"]["txn_stats.amount_count_1h"] >= 1, sc


_TEXTS = itertools.count()  # warm-up and rounds reuse i: every remembered text must still be new


def _check_remembered(i: int, sc: dict[str, Any]) -> None:
    assert sc["id"] and sc["deduplicated"] is False, sc  # every text is new: stored, not deduplicated


def _check_found(i: int, sc: dict[str, Any]) -> None:
    assert isinstance(sc["memories"], list) and len(sc["memories"]) <= 5, sc


CALLS: list[Call] = [
    Call(
        "record_event",
        "`record_event` (push 1 event, wait until applied, read the view back)",
        lambda i: {"source": "transactions", "record": _event(i)},
        _check_recorded,
    ),
    Call(
        "remember",
        "`remember` (embed 1 text with MiniLM, append the memory event, durable and searchable on return)",
        lambda i: {"text": f"prefers seat {next(_TEXTS)} on long flights", "entity_id": f"u{i % USERS}"},
        _check_remembered,
    ),
    Call(
        "search_memories",
        "`search_memories` (embed the query, filtered vector search, k=5)",
        lambda i: {"query": "seat preference", "entity_id": f"u{i % USERS}", "k": 5},
        _check_found,
    ),
]


# -- server --------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cli() -> list[str]:
    exe = Path(sys.executable).parent / "context-store"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "context_store.cli"]


def setup(root: Path, workspace: str) -> str:
    """Write and apply the repo; an ingest key for the MCP calls."""
    import context_store as cs
    from context_store.server.keys import KeyStore, key_store_path

    root.mkdir(parents=True, exist_ok=True)
    (root / "features.py").write_text(textwrap.dedent(DEFINITIONS))
    (root / "context_store.yaml").write_text(f"workspace: {workspace}\nonline_store: {REDIS_URL}\n")
    with cs.ContextStore(root) as store:
        store.apply()
        keys = KeyStore(key_store_path(store.config.data_dir))
        key = keys.create(workspace, "ingest", description="bench_mcp_write")[0]
        keys.close()
    return key


def start_server(root: Path, port: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTEXT_STORE_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    cmd = [*_cli(), "serve", "--port", str(port), "--repo", str(root)]
    proc = subprocess.Popen(cmd, cwd=root, env=env, start_new_session=True, stdout=subprocess.DEVNULL)
    import httpx

    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"context-store serve exited with {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    stop(proc)
    raise RuntimeError("context-store serve did not become ready")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)  # the server's own process group (start_new_session)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


# -- measurement ---------------------------------------------------------------------------------
def _pct(xs: list[float]) -> dict[str, float]:
    s = sorted(xs)
    return {
        "p50": s[len(s) // 2],
        "p99": s[min(len(s) - 1, int(0.99 * len(s)))],
        "mean": sum(s) / len(s),
        "n": float(len(s)),
    }


def one_round(url: str, key: str, n: int, warmup: int) -> dict[str, dict[str, float]]:
    """Every ``Call`` ``n`` times, each followed (or preceded, alternating) by a ``tools/list``."""
    import httpx

    headers = {
        "Authorization": f"Bearer {key}",
        "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": "2025-06-18",
    }
    lat: dict[str, list[float]] = {c.tool: [] for c in CALLS}
    lat["tools/list"] = []
    listing = json.dumps({"jsonrpc": "2.0", "id": 0, "method": "tools/list"})
    with httpx.Client(timeout=30) as c:
        for i in range(n + warmup):
            for call in CALLS:
                body = json.dumps(
                    {
                        "jsonrpc": "2.0",
                        "id": i + 1,
                        "method": "tools/call",
                        "params": {"name": call.tool, "arguments": call.arguments(i)},
                    }
                )
                for what in ("list", "call") if i % 2 else ("call", "list"):
                    t0 = time.perf_counter()
                    r = c.post(url, content=listing if what == "list" else body, headers=headers)
                    dt = (time.perf_counter() - t0) * 1e3
                    assert r.status_code == 200, r.text
                    out = r.json()["result"]
                    if what == "call":
                        assert not out.get("isError"), out
                        call.check(i, out["structuredContent"])
                    if i >= warmup:
                        lat["tools/list" if what == "list" else call.tool].append(dt)
    return {k: _pct(v) for k, v in lat.items()}


def write_results(rounds: list[dict[str, dict[str, float]]], meta: dict[str, Any]) -> Path:
    names = [(c.tool, c.label) for c in CALLS] + [("tools/list", "floor: `tools/list` (MCP over HTTP, no work)")]
    lines = [
        "# MCP write tools over HTTP (evals/bench_mcp_write.py)",
        "",
        f"Machine: {meta['machine']}, {meta['cores']} cores, Python {meta['python']}; server: `context-store serve` "
        "(REST + MCP, Bearer ingest key, Redis online store at 127.0.0.1, its stream worker in the serve process). "
        f"{meta['calls']} calls per tool per round after {meta['warmup']} warm-up calls, {len(rounds)} rounds, "
        f"one request at a time on a keep-alive connection, each tool call interleaved with a `tools/list`. "
        f"Load average (1 min) before -> after: {meta['load_before']:.1f} -> {meta['load_after']:.1f} on "
        f"{meta['cores']} cores (other work shares them).",
        "",
        "Rows: the median round by p99; the range is min .. max over the rounds.",
        "",
        "| call | p50 ms | p99 ms | mean ms | p50 range | p99 range |",
        "|---|---:|---:|---:|---|---|",
    ]
    for tool, label in names:
        per = sorted((r[tool] for r in rounds), key=lambda s: s["p99"])
        mid = per[len(per) // 2]
        p50s, p99s = [s["p50"] for s in per], [s["p99"] for s in per]
        lines.append(
            f"| {label} | {mid['p50']:.2f} | {mid['p99']:.2f} | {mid['mean']:.2f} | "
            f"{min(p50s):.2f} .. {max(p50s):.2f} | {min(p99s):.2f} .. {max(p99s):.2f} |"
        )
    lines += [
        "",
        "p99 per round: "
        + "; ".join(f"{tool}: " + " / ".join(f"{r[tool]['p99']:.2f}" for r in rounds) for tool, _ in names)
        + " ms.",
        "",
    ]
    out = RESULTS / "mcp_write.md"
    out.write_text("\n".join(lines))
    return out


def _cleanup(ws: str) -> None:
    import redis

    r = redis.Redis.from_url(REDIS_URL)
    keys = list(r.scan_iter(match=f"*{ws}*", count=1000))
    for i in range(0, len(keys), 500):
        r.delete(*keys[i : i + 500])
    r.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=300, help="measured calls per tool per round")
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    ws = "benchw" + uuid.uuid4().hex[:8]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "repo"
        key = setup(root, ws)
        port = _free_port()
        proc = start_server(root, port)
        try:
            load0 = os.getloadavg()[0]
            rounds = [
                one_round(f"http://127.0.0.1:{port}/mcp", key, args.calls, args.warmup) for _ in range(args.rounds)
            ]
            load1 = os.getloadavg()[0]
        finally:
            stop(proc)
            _cleanup(ws)
    meta = {
        "machine": platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "calls": args.calls,
        "warmup": args.warmup,
        "load_before": load0,
        "load_after": load1,
    }
    out = write_results(rounds, meta)
    print(out.read_text())


if __name__ == "__main__":
    main()
