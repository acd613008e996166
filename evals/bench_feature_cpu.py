"""CPU per get-features call, in process, A/B between two checkouts (issue #19, branch ``feature-cpu``).

    python -m evals.bench_feature_cpu --base /tmp/feature-cpu-base [--rounds 8] [-n 2000]

``--base`` is a plain copy of the code to compare against (``git archive main | tar -x -C DIR``). Every
round runs one child process per checkout (PYTHONPATH=that checkout), alternating which goes first
(A B, B A, ...); each child times, with ``time.process_time`` (the CPU of the whole call, the Redis
round trip's syscalls included), through the server's ASGI app (fast path, no network) and through
``ContextStore.get_features_async``:
- ``light``: 1 entity x 10 window aggregates, users with 5 events (events mode: the shape of
  ``evals/bench_server.py``), the entity rotating over 200 users (no cache sees the same key twice in a row);
- ``heavy``: the same service, users with 120 events over two days (tile state);
- ``missing``: entities that have no state.
Each child also digests every response byte it produced -- the ASGI answers for all entities, and
``encode_vector`` with every metadata option (effective times, statuses) at fixed past request times --
and the parent checks both checkouts produced the same digests. Results: evals/results/server_cpu.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from bench_server import DEFINITIONS, asgi_scope  # noqa: E402  (a sibling script, not a package)

ROOT = Path(__file__).resolve().parents[1]
REDIS_URL = os.environ.get("CONTEXT_STORE_REDIS_URL", "redis://127.0.0.1:6379/0")
LIGHT, HEAVY = 200, 40


def seed(repo: Path) -> datetime:
    import context_store as cs

    store = cs.ContextStore(repo)
    store.apply()
    now = datetime.now(UTC)
    rows: list[dict[str, Any]] = []
    for u in range(LIGHT):  # bench_server's shape, a null amount for every 7th user
        rows += [
            {
                "user_id": f"u{u}",
                "amount": None if u % 7 == 3 and k == 2 else float(1 + (u * 7 + k) % 50),
                "ts": now - timedelta(minutes=5 + 9 * k + u % 5),
            }
            for k in range(5)
        ]
    for u in range(HEAVY):  # many events: tiles, blocks and raw edges
        rows += [
            {
                "user_id": f"h{u}",
                "amount": float((u * 13 + k * 7) % 90) / 4,
                "ts": now - timedelta(seconds=30 + 1423 * k),
            }
            for k in range(120)
        ]
    rows.sort(key=lambda r: r["ts"])  # oldest first: a stream source refuses events behind its watermark
    for i in range(0, len(rows), 5000):
        res = store.push("transactions", rows[i : i + 5000])
        assert res.accepted == len(rows[i : i + 5000]), res
    store.close()
    return now


def _caller(app: Any) -> Any:
    async def call(body: bytes) -> bytes:
        out: list[bytes] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(msg: dict[str, Any]) -> None:
            if msg["type"] == "http.response.body":
                out.append(msg.get("body", b""))

        scope = asgi_scope(body)
        await app(scope, receive, send)
        return b"".join(out)

    return call


def child(repo: Path, n: int, seeded: datetime) -> dict[str, Any]:
    import uvloop

    import context_store as cs
    from context_store.server import create_app
    from context_store.server.errors import dumps
    from context_store.server.tecton import MetadataOptions, encode_vector

    call = _caller(create_app(repo, auth=False, mcp=False))
    store = cs.ContextStore(repo)
    ents = {
        "light": [f"u{u}" for u in range(LIGHT)],
        "heavy": [f"h{u}" for u in range(HEAVY)],
        "missing": [f"nobody{u}" for u in range(50)],
    }

    def body(uid: str) -> bytes:
        return json.dumps({"params": {"featureServiceName": "bench", "joinKeyMap": {"user_id": uid}}}).encode()

    async def run() -> dict[str, Any]:
        out: dict[str, Any] = {"module": cs.__file__}
        digest = hashlib.sha256()
        for ids in ents.values():  # every entity's response bytes (request time: now)
            for uid in ids:
                digest.update(await call(body(uid)))
        out["asgi_digest"] = digest.hexdigest()
        full = MetadataOptions(names=True, data_types=True, effective_times=True, serving_status=True)
        digest = hashlib.sha256()
        for dt in (timedelta(0), timedelta(minutes=31, microseconds=7), timedelta(hours=20), timedelta(days=3)):
            t = seeded + dt
            for ids in ents.values():
                for uid in ids[:60]:
                    fv = store.get_features("bench", {"user_id": uid}, request_time=t)
                    digest.update(dumps(encode_vector(fv, full, None)))
                    digest.update(repr((fv.request_time, fv.join_keys)).encode())
        out["full_digest"] = digest.hexdigest()
        for kind, ids in ents.items():
            bodies = [body(u) for u in ids]
            for i in range(300):
                await call(bodies[i % len(bodies)])
            c0 = time.process_time()
            for i in range(n):
                await call(bodies[i % len(bodies)])
            out[f"app_{kind}"] = (time.process_time() - c0) / n * 1e6
        ids = ents["light"]
        c0 = time.process_time()
        for i in range(n):
            await store.get_features_async("bench", {"user_id": ids[i % len(ids)]})
        out["store_light"] = (time.process_time() - c0) / n * 1e6
        return out

    res = uvloop.run(run())
    store.close()
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", help="a copy of the baseline code (git archive main)")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("-n", type=int, default=2000)
    ap.add_argument("--out", default=str(ROOT / "evals" / "results" / "server_cpu.md"))
    ap.add_argument("--child", nargs=2, metavar=("REPO", "SEEDED_ISO"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(Path(args.child[0]), args.n, datetime.fromisoformat(args.child[1]))))
        return
    if not args.base:
        ap.error("--base DIR is required")
    tmp = Path(tempfile.mkdtemp(prefix="cs-bench-fcpu-"))
    repo = tmp / "repo"
    repo.mkdir()
    (repo / "features.py").write_text(DEFINITIONS)
    (repo / "context_store.yaml").write_text(f"online_store: {REDIS_URL}\nworkspace: fcpu{uuid.uuid4().hex[:8]}\n")
    seeded = seed(repo)
    sides = {"base": str(Path(args.base).resolve()), "new": str(ROOT)}
    runs: list[dict[str, Any]] = []
    load0 = Path("/proc/loadavg").read_text().strip()
    for r in range(args.rounds):
        for side in ("base", "new") if r % 2 == 0 else ("new", "base"):
            env = {**os.environ, "PYTHONPATH": sides[side]}
            load = Path("/proc/loadavg").read_text().split()[0]
            cmd = [sys.executable, __file__, "--child", str(repo), seeded.isoformat(), "-n", str(args.n)]
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if proc.returncode:
                sys.exit(f"{side} child failed:\n{proc.stderr}")
            res = json.loads(proc.stdout)
            assert res["module"].startswith(sides[side]), (side, res["module"])
            res.update(side=side, round=r, load=load)
            runs.append(res)
            print(json.dumps(res), file=sys.stderr)
    load1 = Path("/proc/loadavg").read_text().strip()
    report(runs, args, load0, load1)
    clear(repo)


def clear(repo: Path) -> None:
    """Delete this run's workspace keys (only its own prefix; the shared Redis keeps everything else)."""
    from context_store.config import load_config
    from context_store.stores.online import open_online_store

    online = open_online_store(load_config(repo))
    online.clear()
    online.close()


def report(runs: list[dict[str, Any]], args: argparse.Namespace, load0: str, load1: str) -> None:
    metrics = ["app_light", "app_heavy", "app_missing", "store_light"]
    same_asgi = len({r["asgi_digest"] for r in runs}) == 1
    same_full = len({r["full_digest"] for r in runs}) == 1
    lines = [
        "# CPU per get-features call, in process: base vs feature-cpu (`python -m evals.bench_feature_cpu`)",
        "",
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores shared with other sessions; "
        f"`/proc/loadavg` at the start `{load0}`, at the end `{load1}`. {args.rounds} rounds, each one child "
        f"process per side (order alternating A B / B A), {args.n} calls per measurement after 300 warm-up calls; "
        "CPU = `time.process_time` per call (user + system, the Redis round trip's syscalls included). "
        "Redis at 127.0.0.1:6379 (same machine).",
        "",
        "| measurement | base µs/call median (min–max) | new µs/call median (min–max) "
        "| new/base per round: median (min–max) |",
        "|---|---:|---:|---:|",
    ]
    for m in metrics:
        b = [r[m] for r in runs if r["side"] == "base"]
        n = [r[m] for r in runs if r["side"] == "new"]
        ratios = [
            next(x[m] for x in runs if x["round"] == r and x["side"] == "new")
            / next(x[m] for x in runs if x["round"] == r and x["side"] == "base")
            for r in range(args.rounds)
        ]
        lines.append(
            f"| {m} | {statistics.median(b):.1f} ({min(b):.1f}–{max(b):.1f}) | {statistics.median(n):.1f} "
            f"({min(n):.1f}–{max(n):.1f}) | {statistics.median(ratios):.3f} ({min(ratios):.3f}–{max(ratios):.3f}) |"
        )
    lines += [
        "",
        f"Byte-identical responses, base vs new: ASGI answers of all {LIGHT + HEAVY + 50} entities (light, heavy, "
        f"missing; request time now): **{'yes' if same_asgi else 'NO'}**; `encode_vector` with names, types, "
        "effective times and statuses at 4 request times (seed time, +31 min, +20 h, +3 days: stale windows) "
        f"for 60 entities of each kind: **{'yes' if same_full else 'NO'}** (sha256 over every response, every run).",
        "",
        "| round | side | load 1 min | app_light | app_heavy | app_missing | store_light |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        lines.append(
            f"| {r['round']} | {r['side']} | {r['load']} | " + " | ".join(f"{r[m]:.1f}" for m in metrics) + " |"
        )
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--clear":  # a crashed run's workspace: --clear REPO
        clear(Path(sys.argv[2]))
    else:
        main()
