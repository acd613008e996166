"""Feature server benchmark: Tecton-style get-features (1 entity x 10 features) against Redis.

    python -m evals.bench_server [--quick] [--workers 2] [--duration 10] [--rate 1000]
    python -m evals.bench_server --overload [--max-in-flight 16 32 64] [--duration 5]

Measures, in the same run and on the same machine:
- the context-store server (``context-store serve`` equivalent, uvicorn + uvloop + httptools), and
- a floor: a bare Starlette endpoint doing one Redis GET of a pre-encoded response;
with (1) max throughput from ``wrk`` (closed loop, 16 connections) and (2) latency at a fixed
request rate from an open-loop generator (separate process; latency counted from each request's
scheduled send time, so queueing behind a stall is not hidden). Results -> evals/results/server.md.

``--overload`` measures load shedding instead: saturation (wrk), then the open-loop generator at half of
it (the unsaturated p99) and at twice it with many connections, for a server with ``--max-in-flight`` and
one without a bound; it reports the p99 of accepted (200) requests against the unsaturated p99 and the
latency of the rejected (503) ones. Printed, not written to the results file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "evals" / "results"
REDIS_URL = os.environ.get("CONTEXT_STORE_REDIS_URL", "redis://127.0.0.1:6379/0")
PATH = "/api/v1/feature-service/get-features"
FEAST_RPS = 881.0

DEFINITIONS = """
import context_store as cs

user = cs.Entity("user", join_keys=["user_id"])
transactions = cs.StreamSource(
    "transactions",
    schema=[cs.Field("user_id", cs.String), cs.Field("amount", cs.Float64), cs.Field("ts", cs.Timestamp)],
    timestamp_field="ts",
)
txn_stats = cs.FeatureView(
    "txn_stats", entities=[user], source=transactions,
    aggregations=[cs.Aggregate("amount", f, w) for w in ("1h", "1d") for f in ("count", "sum", "mean", "min", "max")],
)
bench = cs.FeatureService("bench", [txn_stats])
"""


# -- servers ---------------------------------------------------------------------------------


def floor_app() -> Any:
    """uvicorn factory: the floor -- read the body, one Redis GET, return the bytes."""
    import redis.asyncio as aredis
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    r = aredis.Redis.from_url(os.environ["CS_BENCH_REDIS"])
    key = os.environ["CS_BENCH_KEY"]

    async def get_features(request: Request) -> Response:
        await request.body()
        return Response(await r.get(key), media_type="application/json")

    async def healthz(request: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    return Starlette(routes=[Route(PATH, get_features, methods=["POST"]), Route("/healthz", healthz)])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_up(port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server on port {port} exited with {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"server on port {port} did not start")


def _start_cs(repo: Path, port: int, workers: int, max_in_flight: int | None = None) -> subprocess.Popen[bytes]:
    limit = "" if max_in_flight is None else f", max_in_flight={max_in_flight}"
    code = (
        "from context_store.server.run import ServeOptions, serve; "
        f"serve(ServeOptions(repo={str(repo)!r}, host='127.0.0.1', port={port}, workers={workers}, auth=False, "
        f"mcp=False, stream_workers=False, log_level='error'{limit}))"
    )
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, start_new_session=True)


def _start_floor(port: int, workers: int, key: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "CS_BENCH_REDIS": REDIS_URL, "CS_BENCH_KEY": key}
    cmd = [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        "bench_server:floor_app",
        "--app-dir",
        str(Path(__file__).parent),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--log-level",
        "error",
        "--no-access-log",
    ]
    return subprocess.Popen(cmd, env=env, cwd=ROOT, start_new_session=True)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _median_run(rs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median throughput, and the run with the median fixed-rate p99 (+ all runs)."""
    by_rps = sorted(rs, key=lambda r: r["throughput"]["rps"])
    by_p99 = sorted(rs, key=lambda r: r["fixed"]["p99_ms"])
    return {"throughput": by_rps[len(rs) // 2]["throughput"], "fixed": by_p99[len(rs) // 2]["fixed"], "runs": rs}


def _tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of a process and its children (the uvicorn workers)."""
    tck = os.sysconf("SC_CLK_TCK")
    pids = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids += [int(c) for c in children]
    except OSError:
        pass
    total = 0.0
    for p in pids:
        try:
            f = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(f[11]) + int(f[12])) / tck
        except (OSError, IndexError, ValueError):
            pass
    return total


# -- load generators ---------------------------------------------------------------------------


def wrk_throughput(port: int, body: bytes, seconds: int, connections: int = 16, threads: int = 1) -> dict[str, Any]:
    """Closed-loop max throughput with wrk (POST via a Lua script)."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(
            textwrap.dedent(f"""
            wrk.method = "POST"
            wrk.body = {json.dumps(body.decode())}
            wrk.headers["Content-Type"] = "application/json"
        """)
        )
        script = f.name
    out = subprocess.run(
        [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            "-s",
            script,
            f"http://127.0.0.1:{port}{PATH}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    os.unlink(script)

    def ms(label: str) -> float | None:
        m = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if not m:
            return None
        return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*", out)
    max_lat = re.search(r"^\s+Latency\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)", out, re.M)
    return {
        "rps": rps,
        "p50_ms": ms("50%"),
        "p99_ms": ms("99%"),
        "max_ms": float(max_lat.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[max_lat.group(2)]
        if max_lat
        else None,
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": errors.group(0) if errors else "",
        "connections": connections,
    }


async def _open_loop(port: int, body: bytes, rate: float, seconds: float, conns: int) -> dict[str, Any]:
    req = (
        f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    pool: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    for _ in range(conns):
        pool.put_nowait(await asyncio.open_connection("127.0.0.1", port))
    lat: list[float] = []
    by_status: dict[int, list[float]] = {}
    errors = 0
    statuses: dict[int, int] = {}

    async def one(scheduled: float) -> None:
        nonlocal errors
        reader, writer = await pool.get()
        try:
            writer.write(req)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            m = re.search(rb"(?i)content-length:\s*(\d+)", head)
            await reader.readexactly(int(m.group(1)) if m else 0)
            statuses[status] = statuses.get(status, 0) + 1
            took = time.perf_counter() - scheduled
            lat.append(took)
            by_status.setdefault(status, []).append(took)
        except Exception:
            errors += 1
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        finally:
            pool.put_nowait((reader, writer))

    n = int(rate * seconds)
    tasks = []
    start = time.perf_counter() + 0.05
    i = 0
    while i < n:
        now = time.perf_counter()
        while i < n and start + i / rate <= now:  # dispatch everything that is due
            tasks.append(asyncio.create_task(one(start + i / rate)))
            i += 1
        if i < n:
            await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    lat.sort()

    def pct(p: float, xs: list[float] = lat) -> float:
        return xs[min(len(xs) - 1, int(p * len(xs)))] * 1000 if xs else float("nan")

    for xs in by_status.values():
        xs.sort()
    return {
        "rate": rate,
        "sent": n,
        "achieved_rps": len(lat) / elapsed,
        "p50_ms": pct(0.50),
        "p90_ms": pct(0.90),
        "p99_ms": pct(0.99),
        "p999_ms": pct(0.999),
        "max_ms": lat[-1] * 1000 if lat else None,
        "over_100ms": sum(x > 0.1 for x in lat),
        "errors": errors,
        "statuses": statuses,
        "connections": conns,
        "by_status": {
            st: {"n": len(xs), "p50_ms": pct(0.5, xs), "p99_ms": pct(0.99, xs), "max_ms": xs[-1] * 1000}
            for st, xs in sorted(by_status.items())
        },
    }


def fixed_rate(port: int, body: bytes, rate: float, seconds: float, conns: int = 32) -> dict[str, Any]:
    """Run the open-loop generator in its own process (so it does not share the server's event loop)."""
    code = (
        f"import asyncio, json, uvloop, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
        f"import bench_server as b; uvloop.install(); "
        f"print(json.dumps(asyncio.run(b._open_loop({port}, {body!r}, {rate}, {seconds}, {conns}))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- setup -------------------------------------------------------------------------------------


def seed(repo: Path, users: int) -> None:
    import context_store as cs

    store = cs.ContextStore(repo)
    store.apply()
    now = datetime.now(UTC)
    rows = [
        {"user_id": f"u{u}", "amount": float(1 + (u * 7 + k) % 50), "ts": now - timedelta(minutes=5 + 9 * k)}
        for u in range(users)
        for k in range(5)
    ]
    for i in range(0, len(rows), 5000):
        res = store.push("transactions", rows[i : i + 5000])
        assert res.accepted == len(rows[i : i + 5000])
    store.close()


def _asgi_caller(app: Any, body: bytes) -> Any:
    """An in-process ASGI request (no network) -> status."""

    async def call() -> int:
        status = 0
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if sent:
                await asyncio.sleep(3600)
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(msg: dict[str, Any]) -> None:
            nonlocal status
            if msg["type"] == "http.response.start":
                status = msg["status"]

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": PATH,
            "raw_path": PATH.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 80),
            "state": {},
        }
        await app(scope, receive, send)
        return status

    return call


def profile(repo: Path, n: int = 3000) -> str:
    """Where the server's time goes, in-process (no network): per-layer costs, then a pyinstrument profile."""
    import uvloop
    from pyinstrument import Profiler

    import context_store as cs
    from context_store.server import create_app

    body = json.dumps({"params": {"featureServiceName": "bench", "joinKeyMap": {"user_id": "u1"}}}).encode()
    fast = _asgi_caller(create_app(repo, auth=False, mcp=False), body)
    slow = _asgi_caller(create_app(repo, auth=False, mcp=False, fast_path=False), body)
    store = cs.ContextStore(repo)

    async def timed(fn: Any) -> float:
        # CPU time, not wall time: robust when other processes share the cores; the Redis round trip is I/O wait.
        for _ in range(200):
            await fn()
        best = float("inf")
        for _ in range(3):
            c0 = time.process_time()
            for _ in range(n // 3):
                await fn()
            best = min(best, (time.process_time() - c0) / (n // 3) * 1e6)
        return best

    async def run() -> tuple[dict[str, float], str]:
        costs = {
            "ContextStore.get_features_async alone": await timed(
                lambda: store.get_features_async("bench", {"user_id": "u1"})
            ),
            "full app, fast path (default)": await timed(fast),
            "full app, FastAPI routing (fast_path=False)": await timed(slow),
        }
        prof = Profiler(async_mode="enabled", interval=0.0002)
        with prof:
            for _ in range(n):
                await fast()
        return costs, prof.output_text(unicode=False, color=False, show_all=False)

    costs, text = uvloop.run(run())
    store.close()
    table = "\n".join(f"{name:<48} {us:8.0f} us CPU/request" for name, us in costs.items())
    return "in-process CPU time per request (no network, one process, best of 3):\n" + table + "\n\n" + text


def machine() -> str:
    cpu = "?"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (
        f"{platform.system()} {platform.release()}, {os.cpu_count()} cores ({cpu}), Python {platform.python_version()}"
    )


def overload(repo: Path, ws: str, args: Any, dur: float) -> None:
    """Load shedding under 2x saturation: accepted p99 vs unsaturated p99, and how fast 503s come back."""
    body = json.dumps(
        {"params": {"workspaceName": ws, "featureServiceName": "bench", "joinKeyMap": {"user_id": "u1"}}}
    ).encode()
    rows = []
    sat = 0.0
    # The unbounded server first: its wrk throughput is the saturation rate every server is then driven at
    # (wrk against a bounded server would count its 503s as throughput).
    for limit in (0, *args.max_in_flight):
        port = _free_port()
        proc = _start_cs(repo, port, args.workers, limit)
        try:
            _wait_up(port, proc)
            wrk_throughput(port, body, 2)  # warm-up
            load0 = os.getloadavg()
            sat = sat or wrk_throughput(port, body, int(dur))["rps"]
            calm = fixed_rate(port, body, sat / 2, dur, conns=32)
            hot = fixed_rate(port, body, sat * 2, dur, conns=args.overload_connections)
            load1 = os.getloadavg()
        finally:
            _stop(proc)
        ok = hot["by_status"].get("200", {})
        calm_ok = calm["by_status"].get("200", {})
        row = {
            "max_in_flight": limit or "unbounded",
            "saturation_rps": sat,
            "calm": calm,
            "hot": hot,
            "accepted_p99_ratio": (ok["p99_ms"] / calm_ok["p99_ms"]) if ok and calm_ok else None,
            "loadavg_before": load0,
            "loadavg_after": load1,
        }
        rows.append(row)
        print(json.dumps(row, default=str), file=sys.stderr)
    print(f"\n## Overload: 2x saturation, open loop, {args.overload_connections} connections ({machine()})\n")
    print(
        "| max in flight | saturation req/s (wrk, unbounded server) | p99 ms of 200s at 0.5x | sent req/s at 2x "
        "| 200s | p50 / p99 ms of 200s "
        "| p99 200s / p99 at 0.5x | 503s | p50 / p99 / max ms of 503s | errors | load avg before -> after |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        hot, calm = r["hot"], r["calm"]
        ok, shed = hot["by_status"].get("200", {}), hot["by_status"].get("503", {})
        ratio = f"{r['accepted_p99_ratio']:.1f}x" if r["accepted_p99_ratio"] is not None else "-"
        shed_ms = f"{shed['p50_ms']:.1f} / {shed['p99_ms']:.1f} / {shed['max_ms']:.1f}" if shed else "-"
        print(
            f"| {r['max_in_flight']} | {r['saturation_rps']:.0f} | "
            f"{calm['by_status'].get('200', {}).get('p99_ms', float('nan')):.2f} | "
            f"{hot['sent'] / dur:.0f} | {ok.get('n', 0)} | {ok.get('p50_ms', float('nan')):.1f} / "
            f"{ok.get('p99_ms', float('nan')):.1f} | {ratio} | {shed.get('n', 0)} | {shed_ms} | {hot['errors']} | "
            f"{r['loadavg_before'][0]:.1f} -> {r['loadavg_after'][0]:.1f} |"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short runs (3 s) for a smoke check")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--rate", type=float, default=1000.0)
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3, help="interleaved repeats per server (median reported)")
    ap.add_argument("--profile", action="store_true", help="also profile the request path with pyinstrument")
    ap.add_argument("--out", default=str(RESULTS / "server.md"))
    ap.add_argument("--overload", action="store_true", help="measure load shedding at 2x saturation instead")
    ap.add_argument(
        "--max-in-flight", type=int, nargs="+", default=[32], help="server limits to compare in --overload mode"
    )
    ap.add_argument("--overload-connections", type=int, default=512, help="client connections at 2x saturation")
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk not found: apt-get install -y wrk")
    dur = 3.0 if args.quick else args.duration
    ws = "bench" + uuid.uuid4().hex[:8]
    tmp = Path(tempfile.mkdtemp(prefix="cs-bench-server-"))
    repo = tmp / "repo"
    repo.mkdir()
    (repo / "features.py").write_text(DEFINITIONS)
    (repo / "context_store.yaml").write_text(f"online_store: {REDIS_URL}\nworkspace: {ws}\n")
    import redis

    r = redis.Redis.from_url(REDIS_URL)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        t0 = time.perf_counter()
        seed(repo, 100 if args.quick else args.users)
        print(f"seeded in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
        if args.overload:
            overload(repo, ws, args, dur)
            return
        cs_port, floor_port = _free_port(), _free_port()
        procs.append(_start_cs(repo, cs_port, args.workers))
        _wait_up(cs_port, procs[-1])
        body = json.dumps(
            {"params": {"workspaceName": ws, "featureServiceName": "bench", "joinKeyMap": {"user_id": "u1"}}}
        ).encode()
        import httpx

        sample = httpx.post(
            f"http://127.0.0.1:{cs_port}{PATH}", content=body, headers={"Content-Type": "application/json"}, timeout=10
        )
        assert sample.status_code == 200, sample.text
        features = sample.json()["result"]["features"]
        assert len(features) == 10 and features[0] not in (None, "0"), features
        floor_key = f"cs:{ws}:bench:floor"
        r.set(floor_key, sample.content)
        procs.append(_start_floor(floor_port, args.workers, floor_key))
        _wait_up(floor_port, procs[-1])
        servers = (("context-store", cs_port, procs[0]), ("floor (Starlette + 1 Redis GET)", floor_port, procs[1]))
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in servers}
        for port in (cs_port, floor_port):
            wrk_throughput(port, body, 2)  # warm-up
        # Interleaved repeats: other load on the machine hits both servers alike; report the median run.
        for rep in range(1 if args.quick else args.repeat):
            for name, port, proc in servers:
                load0, cpu0 = os.getloadavg()[0], _tree_cpu_s(proc.pid)
                thr = wrk_throughput(port, body, int(dur))
                cpu = _tree_cpu_s(proc.pid) - cpu0
                thr["server_cpu_us_per_request"] = cpu / (thr["rps"] * int(dur)) * 1e6
                thr["loadavg_1m_before"] = load0
                runs[name].append({"throughput": thr, "fixed": fixed_rate(port, body, args.rate, dur)})
                print(rep, name, json.dumps(runs[name][-1]), file=sys.stderr)
        results = {name: _median_run(rs) for name, rs in runs.items()}
        prof = profile(repo) if args.profile else None
    finally:
        for p in procs:
            _stop(p)
        for k in r.scan_iter(match=f"cs:{ws}:*", count=1000):
            r.delete(k)
        r.close()
        shutil.rmtree(tmp, ignore_errors=True)
    write(Path(args.out), results, args, dur, prof, sample_body=sample.text)


def plot(results: dict[str, Any], rate: float, path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    names = ["Feast 0.67 (reported)"] + list(results)
    rps = [FEAST_RPS] + [r["throughput"]["rps"] for r in results.values()]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    a.bar(names, rps, color=["#999999", "#1f77b4", "#2ca02c"])
    a.axhline(5 * FEAST_RPS, color="red", linestyle="--", label="target 5x Feast")
    a.set_ylabel("req/s (wrk, 16 connections)")
    a.set_title("max throughput")
    a.legend()
    a.tick_params(axis="x", labelsize=8)
    labels = list(results)
    x = range(len(labels))
    for off, key, color in ((-0.2, "p50_ms", "#1f77b4"), (0.2, "p99_ms", "#ff7f0e")):
        b.bar([i + off for i in x], [r["fixed"][key] for r in results.values()], width=0.4, label=key, color=color)
    b.axhline(5, color="red", linestyle="--", label="p99 target 5 ms")
    b.set_xticks(list(x), labels, fontsize=8)
    b.set_yscale("log")
    b.set_ylabel("ms")
    b.set_title(f"latency at a fixed {rate:.0f} req/s")
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write(out: Path, results: dict[str, Any], args: Any, dur: float, prof: str | None, sample_body: str) -> None:
    cs_r = results["context-store"]
    fl = results["floor (Starlette + 1 Redis GET)"]
    lines = [
        "# Feature server benchmark (`python -m evals.bench_server`)",
        "",
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {machine()}; Redis at {REDIS_URL}.",
        f"Server: uvicorn + uvloop + httptools, {args.workers} worker processes, auth off, metrics on. "
        f"Request: Tecton `get-features`, 1 entity x 10 features (window aggregates), {dur:.0f} s per run.",
        "Load generators run on the same 2-core machine as the servers (they compete for CPU; numbers are "
        "conservative).",
        f"Each server measured {1 if args.quick else args.repeat}x, interleaved with the other; the median run is "
        "shown (all runs in server.json). Other sessions were running tests/benchmarks on this machine at the same "
        "time: see the load average column.",
        "",
        "## Max throughput (wrk, closed loop, 16 connections, 1 thread)",
        "",
        "| server | req/s | p50 ms | p99 ms | max ms | non-2xx | server CPU us/request | load avg (1 min) before |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        t = r["throughput"]
        lines.append(
            f"| {name} | {t['rps']:.0f} | {t['p50_ms']:.2f} | {t['p99_ms']:.2f} | {t['max_ms']:.1f} | {t['non_2xx']} | "
            f"{t['server_cpu_us_per_request']:.0f} | {t['loadavg_1m_before']:.1f} |"
        )
    lines += [
        "",
        f"## Latency at a fixed {args.rate:.0f} req/s (open loop, separate process, latency from scheduled send time)",
        "",
        "| server | achieved req/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | >100 ms | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        f = r["fixed"]
        lines.append(
            f"| {name} | {f['achieved_rps']:.0f} | {f['p50_ms']:.2f} | {f['p90_ms']:.2f} | {f['p99_ms']:.2f} | "
            f"{f['p999_ms']:.2f} | {f['max_ms']:.1f} | {f['over_100ms']} | {f['errors']} |"
        )
    lines += [
        "",
        "## Every run (interleaved; the load average shows how busy the shared machine was)",
        "",
        "| run | server | load avg | req/s | CPU us/req | p50 ms @fixed | p99 ms @fixed | max ms @fixed | >100 ms |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    n_runs = max(len(r["runs"]) for r in results.values())
    for i in range(n_runs):
        for name, r in results.items():
            if i < len(r["runs"]):
                t, f = r["runs"][i]["throughput"], r["runs"][i]["fixed"]
                lines.append(
                    f"| {i} | {name} | {t['loadavg_1m_before']:.1f} | {t['rps']:.0f} | "
                    f"{t['server_cpu_us_per_request']:.0f} | {f['p50_ms']:.2f} | {f['p99_ms']:.2f} | "
                    f"{f['max_ms']:.1f} | {f['over_100ms']} |"
                )
    best_rps = max(x["throughput"]["rps"] for x in cs_r["runs"])
    best_p99 = min(x["fixed"]["p99_ms"] for x in cs_r["runs"])
    ratio = cs_r["throughput"]["rps"] / FEAST_RPS
    lines += [
        "",
        "## Against the targets",
        "",
        f"- Throughput (median run): {cs_r['throughput']['rps']:.0f} req/s = **{ratio:.1f}x** Feast 0.67's 881 req/s "
        f"(target >= 5x); {cs_r['throughput']['rps'] / fl['throughput']['rps']:.0%} of the floor's "
        f"{fl['throughput']['rps']:.0f} req/s.",
        f"- Server CPU per request: {cs_r['throughput']['server_cpu_us_per_request']:.0f} us vs the floor's "
        f"{fl['throughput']['server_cpu_us_per_request']:.0f} us (same run). Derived, not measured: with 2 cores to "
        f"itself the server would be CPU-bound near {2e6 / cs_r['throughput']['server_cpu_us_per_request']:.0f} req/s "
        f"(floor: {2e6 / fl['throughput']['server_cpu_us_per_request']:.0f}).",
        f"- Best run (least disturbed by the other sessions): {best_rps:.0f} req/s = {best_rps / FEAST_RPS:.1f}x "
        f"Feast; p99 {best_p99:.2f} ms at {args.rate:.0f} req/s.",
        f"- p99 at {args.rate:.0f} req/s (median run): **{cs_r['fixed']['p99_ms']:.2f} ms** (target <= 5 ms; floor "
        f"{fl['fixed']['p99_ms']:.2f} ms); max {cs_r['fixed']['max_ms']:.1f} ms, {cs_r['fixed']['over_100ms']} "
        "requests over 100 ms (stalls).",
        "",
        "Sample response:",
        "",
        "```json",
        sample_body,
        "```",
    ]
    if prof:
        lines += [
            "",
            "## Where the time goes (in-process ASGI calls, no network; then pyinstrument)",
            "",
            "```",
            prof.strip(),
            "```",
        ]
    out.parent.mkdir(parents=True, exist_ok=True)
    png = plot(results, args.rate, out.with_suffix(".png"))
    if png:
        lines += ["", f"![throughput and latency]({png.name})"]
    out.write_text("\n".join(lines) + "\n")
    (out.with_suffix(".json")).write_text(json.dumps({"results": results, "args": vars(args)}, indent=2, default=str))
    print(out.read_text())


if __name__ == "__main__":
    main()
