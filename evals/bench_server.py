"""Feature server benchmark: Tecton-style get-features (1 entity x 10 features) against Redis.

    python -m evals.bench_server [--quick] [--workers 2] [--duration 10] [--rate 1000] [--repeat 3] [--no-feast]
    python -m evals.bench_server --cluster [--repeat 3]       # the same against a Redis Cluster

Measures, interleaved in one run on the same machine and the same Redis (A B C D A B C D ...):
- the context-store server (``context-store serve`` equivalent, uvicorn + uvloop + httptools);
- the floor app of issue #19: a Starlette route that parses the same JSON request, reads one plain
  10-field Redis hash with HGETALL (redis.asyncio) and orjson-encodes the same response shape;
- a stricter reference floor: the same Starlette route doing one Redis GET of the pre-encoded response
  (no decode, no encode; ``--no-get-floor`` leaves it out);
- Feast 0.67 ``feast serve -w 2 --max-requests 0`` over the same Redis, when ``.venv-feast`` exists
  (``python evals/peers/feast_setup.py``; ``--feast-venv DIR`` uses another one, e.g. the main checkout's
  from a worktree; ``--no-feast`` leaves it out);
with (1) max throughput from ``wrk`` (closed loop, 16 connections) plus the server processes' CPU per
request, and (2) latency at a fixed request rate from an open-loop generator (separate process; latency
counted from each request's scheduled send time, so queueing behind a stall is not hidden). Each
repetition measures every server once; medians, ranges, same-repetition ratios, the load average and the
exact commands go to evals/results/server.md (+ server.json, server.png).

``--cluster`` starts a Redis Cluster of its own (3 masters + 3 replicas of redis-server on this machine,
tests/support/cluster.py) and serves from it: context-store with ``online_store: redis+cluster://...``, the
floor app with redis-py's asyncio cluster client (HGETALL routed by slot), no Feast; results go to
evals/results/server_cluster.md.

Load shedding under overload is measured by ``evals/bench_overload.py`` (it reuses ``paced`` and the helpers here).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import statistics
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
    """uvicorn factory: the floor. ``CS_BENCH_FLOOR=hgetall`` (issue #19's floor app): parse the JSON request,
    one HGETALL of a plain 10-field hash, orjson-encode the same response shape as context-store;
    ``get``: one GET of the pre-encoded response (no decode, no encode: a stricter reference)."""
    import orjson
    import redis.asyncio as aredis
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    url = os.environ["CS_BENCH_REDIS"]
    if url.startswith("redis+cluster://"):
        from redis.asyncio.cluster import ClusterNode, RedisCluster

        hosts = [h.rsplit(":", 1) for h in url[len("redis+cluster://") :].split(",")]
        r: Any = RedisCluster(startup_nodes=[ClusterNode(h, int(p)) for h, p in hosts])
    else:
        r = aredis.Redis.from_url(url)

    async def healthz(request: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    if os.environ.get("CS_BENCH_FLOOR", "hgetall") == "get":
        key = os.environ["CS_BENCH_KEY"]

        async def get_features(request: Request) -> Response:
            await request.body()
            return Response(await r.get(key), media_type="application/json")

    else:
        prefix = os.environ["CS_BENCH_PREFIX"]
        meta = orjson.loads(os.environ["CS_BENCH_META"])  # [{"name", "dataType"}] as context-store answers
        fields = [(m["name"].split(".", 1)[1].encode(), m["dataType"]["type"] == "int64") for m in meta]

        async def get_features(request: Request) -> Response:
            params = orjson.loads(await request.body())["params"]
            h = await r.hgetall(prefix + params["joinKeyMap"]["user_id"])
            values = [None if (v := h.get(f)) is None else v.decode() if is_int else float(v) for f, is_int in fields]
            out = {"result": {"features": values}, "metadata": {"features": meta}}
            return Response(orjson.dumps(out), media_type="application/json")

    return Starlette(routes=[Route(PATH, get_features, methods=["POST"]), Route("/healthz", healthz)])


async def paced(one: Any, rate: float, seconds: float) -> float:
    """Open loop: start ``one(scheduled_time)`` at ``rate`` per second for ``seconds`` (each request at its
    scheduled time, whether or not earlier ones answered), wait for all; returns the start time."""
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
    return start


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


def _start_cs(
    repo: Path, port: int, workers: int, max_in_flight: int | None = None, auth: bool = False
) -> subprocess.Popen[bytes]:
    limit = "" if max_in_flight is None else f", max_in_flight={max_in_flight}"
    code = (
        "from context_store.server.run import ServeOptions, serve; "
        f"serve(ServeOptions(repo={str(repo)!r}, host='127.0.0.1', port={port}, workers={workers}, auth={auth}, "
        f"mcp=False, stream_workers=False, log_level='error'{limit}))"
    )
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, start_new_session=True)


def _floor_cmd(port: int, workers: int) -> list[str]:
    return [
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


def _start_floor(port: int, workers: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    env = {**os.environ, "CS_BENCH_REDIS": REDIS_URL, **env}
    return subprocess.Popen(_floor_cmd(port, workers), env=env, cwd=ROOT, start_new_session=True)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


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


def wrk_throughput(
    port: int, body: bytes, seconds: int, connections: int = 16, threads: int = 1, path: str = PATH, auth: str = ""
) -> dict[str, Any]:
    """Closed-loop max throughput with wrk (POST via a Lua script)."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(
            textwrap.dedent(f"""
            wrk.method = "POST"
            wrk.body = {json.dumps(body.decode())}
            wrk.headers["Content-Type"] = "application/json"
        """)
        )
        if auth:
            f.write(f'wrk.headers["Authorization"] = {json.dumps(auth)}\n')
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
            f"http://127.0.0.1:{port}{path}",
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
    total = re.search(r"(\d+) requests in", out)
    if non2xx and total and int(total.group(1)) > 0:  # throughput counts answered (2xx) requests only: a shed 503
        rps *= 1 - int(non2xx.group(1)) / int(total.group(1))  # (lag shedding is on by default) is no answer
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


async def _open_loop(
    port: int, body: bytes, rate: float, seconds: float, conns: int, path: str = PATH, auth: str = ""
) -> dict[str, Any]:
    req = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        + (f"Authorization: {auth}\r\n" if auth else "")
        + f"Content-Length: {len(body)}\r\n\r\n"
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
    start = await paced(one, rate, seconds)
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


def fixed_rate(
    port: int, body: bytes, rate: float, seconds: float, conns: int = 32, path: str = PATH, auth: str = ""
) -> dict[str, Any]:
    """Run the open-loop generator in its own process (so it does not share the server's event loop)."""
    code = (
        f"import asyncio, json, uvloop, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
        f"import bench_server as b; uvloop.install(); "
        f"print(json.dumps(asyncio.run(b._open_loop({port}, {body!r}, {rate}, {seconds}, {conns}, {path!r}, "
        f"{auth!r}))))"
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


def asgi_scope(body: bytes) -> dict[str, Any]:
    """The ASGI scope of one get-features POST carrying ``body`` (in-process calls, no socket)."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": PATH,
        "raw_path": PATH.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"127.0.0.1"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
        "state": {},
    }


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

        scope = asgi_scope(body)
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


# -- the interleaved comparison ------------------------------------------------------------------

CS = "context-store"
CS_KEYED = "context-store, API key"
FLOOR = "floor: Starlette + HGETALL"
FLOOR_GET = "floor-GET: Starlette + GET of the pre-encoded response"
FEAST = "Feast 0.67 feast serve --max-requests 0"
# Feast's own venv (its pins never touch ours): ``--feast-venv`` (or CS_FEAST_VENV); a worktree can point at
# the main checkout's.
FEAST_PY = Path(os.environ.get("CS_FEAST_VENV", ROOT / ".venv-feast")) / "bin" / "python"
_JSON_HEADERS = {"Content-Type": "application/json"}


class Server:
    """One server of the comparison: how to reach it, and how it was started (for the report)."""

    def __init__(
        self,
        name: str,
        port: int,
        proc: subprocess.Popen[bytes],
        body: bytes,
        cmd: str,
        path: str = PATH,
        auth: str = "",
    ):
        self.name, self.port, self.proc, self.body, self.cmd, self.path = name, port, proc, body, cmd, path
        self.auth = auth  # Authorization header value ("" = none)


def _wait_post(port: int, path: str, body: bytes, proc: subprocess.Popen[bytes], timeout: float = 120) -> bytes:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server on port {port} exited with {proc.returncode}")
        try:
            r = httpx.post(f"http://127.0.0.1:{port}{path}", content=body, headers=_JSON_HEADERS, timeout=5)
            if r.status_code == 200:
                return r.content
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"server on port {port} did not answer {path}")


def httpx_post(port: int, body: bytes, auth: str) -> bytes:
    import httpx

    r = httpx.post(
        f"http://127.0.0.1:{port}{PATH}", content=body, headers={**_JSON_HEADERS, "Authorization": auth}, timeout=10
    )
    assert r.status_code == 200, r.text
    return r.content


def _start_feast(tmp: Path, users: int, workers: int) -> tuple[Server, dict[str, Any]]:
    """Feast's repo materialized into the same Redis (``evals/peers/feast_serve.py`` in the Feast venv)."""
    out = subprocess.run(
        [str(FEAST_PY), str(ROOT / "evals" / "peers" / "feast_serve.py"), "setup", "--dir", str(tmp / "feast")]
        + ["--redis", REDIS_URL, "--users", str(users)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    info = json.loads(out.stdout.strip().splitlines()[-1])
    port = _free_port()
    cmd = [*info["cmd"], "-p", str(port), "--max-requests", "0"]
    cmd[cmd.index("-w") + 1] = str(workers)
    proc = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    body = info["body"].encode()
    server = Server(FEAST, port, proc, body, " ".join(cmd), info["path"])
    _wait_post(port, info["path"], body, proc)
    return server, info


def _feast_teardown(tmp: Path, info: dict[str, Any], r: Any) -> None:
    subprocess.run(
        [str(FEAST_PY), str(ROOT / "evals" / "peers" / "feast_serve.py"), "teardown", "--dir", str(tmp / "feast")],
        capture_output=True,
        check=False,
        cwd=ROOT,
    )
    for k in r.scan_iter(match=f"*{info['project']}*".encode(), count=1000):  # what teardown left
        r.delete(k)


def measure(srv: Server, dur: float, rate: float) -> dict[str, Any]:
    """wrk throughput + the server processes' CPU per request, then the open-loop fixed rate (skipped for
    Feast when it cannot sustain the rate: its queue would only grow)."""
    load0, cpu0 = os.getloadavg()[0], _tree_cpu_s(srv.proc.pid)
    thr = wrk_throughput(srv.port, srv.body, int(dur), path=srv.path, auth=srv.auth)
    cpu = _tree_cpu_s(srv.proc.pid) - cpu0
    thr["server_cpu_us_per_request"] = cpu / (thr["rps"] * int(dur)) * 1e6
    thr["loadavg_1m_before"] = load0
    skip = srv.name == FEAST and thr["rps"] < 1.2 * rate
    fixed = None if skip else fixed_rate(srv.port, srv.body, rate, dur, path=srv.path, auth=srv.auth)
    return {"throughput": thr, "fixed": fixed, "loadavg_1m_after": os.getloadavg()[0]}


def _seed_floor(r: Any, prefix: str, users: int, sample: dict[str, Any]) -> None:
    """Plain 10-field hashes (one per user) holding the values context-store answered, as strings."""
    names = [m["name"].split(".", 1)[1] for m in sample["metadata"]["features"]]
    mapping = {n: str(v) for n, v in zip(names, sample["result"]["features"]) if v is not None}
    pipe = r.pipeline(transaction=False)
    for u in range(users):
        pipe.hset(f"{prefix}u{u}", mapping=mapping)
    pipe.execute()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short runs (3 s), one repetition: a smoke check")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--rate", type=float, default=1000.0)
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3, help="interleaved repetitions (every server once each)")
    ap.add_argument("--no-feast", action="store_true", help="leave Feast out even when .venv-feast exists")
    ap.add_argument("--feast-venv", default=None, help="Feast's venv (default: .venv-feast of this checkout)")
    ap.add_argument("--no-get-floor", action="store_true", help="leave the GET reference floor out")
    ap.add_argument("--no-keyed", action="store_true", help="leave out context-store with auth on (an API key)")
    ap.add_argument("--profile", action="store_true", help="also profile the request path with pyinstrument")
    ap.add_argument("--out", default=None, help="results file (default: results/server.md, server_cluster.md)")
    ap.add_argument("--cluster", action="store_true", help="serve from a Redis Cluster this run starts itself")
    args = ap.parse_args()
    global REDIS_URL, FEAST_PY
    if args.feast_venv:
        FEAST_PY = Path(args.feast_venv) / "bin" / "python"
    cluster = None
    if args.cluster:
        sys.path.insert(0, str(ROOT))
        from tests.support.cluster import RedisClusterProcs

        cluster = RedisClusterProcs(Path(tempfile.mkdtemp(prefix="cs-bench-cluster-"))).start()
        REDIS_URL = cluster.url
        args.no_feast = True
    args.out = args.out or str(RESULTS / ("server_cluster.md" if args.cluster else "server.md"))
    try:
        _main(args)
    finally:
        if cluster is not None:
            cluster.stop()


def _main(args: argparse.Namespace) -> None:
    if shutil.which("wrk") is None:
        sys.exit("wrk not found: apt-get install -y wrk")
    dur = 3.0 if args.quick else args.duration
    reps = 1 if args.quick else args.repeat
    users = 100 if args.quick else args.users
    ws = "bench" + uuid.uuid4().hex[:8]
    tmp = Path(tempfile.mkdtemp(prefix="cs-bench-server-"))
    repo = tmp / "repo"
    repo.mkdir()
    (repo / "features.py").write_text(DEFINITIONS)
    (repo / "context_store.yaml").write_text(f"online_store: {REDIS_URL}\nworkspace: {ws}\n")
    import redis

    if REDIS_URL.startswith("redis+cluster://"):
        from redis.cluster import ClusterNode, RedisCluster

        hosts = [h.rsplit(":", 1) for h in REDIS_URL[len("redis+cluster://") :].split(",")]
        r: Any = RedisCluster(startup_nodes=[ClusterNode(h, int(p)) for h, p in hosts])
    else:
        r = redis.Redis.from_url(REDIS_URL)
    servers: list[Server] = []
    feast_info: dict[str, Any] | None = None
    feast_missing = ""
    loadavg_start = Path("/proc/loadavg").read_text().strip()
    try:
        t0 = time.perf_counter()
        seed(repo, users)
        print(f"seeded in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
        body = json.dumps(
            {"params": {"workspaceName": ws, "featureServiceName": "bench", "joinKeyMap": {"user_id": "u1"}}}
        ).encode()
        port = _free_port()
        proc = _start_cs(repo, port, args.workers)
        servers.append(Server(CS, port, proc, body, shlex.join(proc.args)))  # type: ignore[arg-type]
        _wait_up(port, proc)
        sample_raw = _wait_post(port, PATH, body, proc)
        sample = json.loads(sample_raw)
        features = sample["result"]["features"]
        assert len(features) == 10 and features[0] not in (None, "0"), features
        prefix = f"cs:{ws}:floor:h:"
        _seed_floor(r, prefix, users, sample)
        meta = json.dumps(sample["metadata"]["features"])
        floors = [(FLOOR, {"CS_BENCH_FLOOR": "hgetall", "CS_BENCH_PREFIX": prefix, "CS_BENCH_META": meta})]
        if not args.no_get_floor:
            r.set(f"cs:{ws}:floor:get", sample_raw)
            floors.append((FLOOR_GET, {"CS_BENCH_FLOOR": "get", "CS_BENCH_KEY": f"cs:{ws}:floor:get"}))
        for name, env in floors:
            port = _free_port()
            proc = _start_floor(port, args.workers, env)
            shown = " ".join(f"{k}=..." if k == "CS_BENCH_META" else f"{k}={v}" for k, v in env.items())
            servers.append(Server(name, port, proc, body, f"{shown} {shlex.join(_floor_cmd(port, args.workers))}"))
            floor_sample = _wait_post(port, PATH, body, proc)
            if name == FLOOR:
                assert json.loads(floor_sample) == sample, (floor_sample, sample_raw)  # the same response
        if not args.no_keyed:
            from context_store.config import load_config
            from context_store.server.keys import KeyStore, key_store_path

            keys = KeyStore(key_store_path(load_config(repo).data_dir))
            secret, _ = keys.create(ws, "read", description="bench_server")
            keys.close()
            port = _free_port()
            proc = _start_cs(repo, port, args.workers, auth=True)
            srv = Server(CS_KEYED, port, proc, body, shlex.join(proc.args), auth=f"Bearer {secret}")  # type: ignore[arg-type]
            servers.append(srv)
            _wait_up(port, proc)
            keyed = httpx_post(port, body, srv.auth)
            assert json.loads(keyed) == sample, keyed
        if FEAST_PY.exists() and not args.no_feast:
            try:
                srv, feast_info = _start_feast(tmp, users, args.workers)
                servers.append(srv)
            except (subprocess.CalledProcessError, RuntimeError) as e:
                feast_missing = f"Feast failed to start: {e} {getattr(e, 'stderr', '')[-2000:]}"
        elif not args.no_feast:
            feast_missing = "Feast not installed here (no `.venv-feast`: `python evals/peers/feast_setup.py`)"
        else:
            feast_missing = "Feast left out (`--no-feast`)"
        if feast_missing:
            print(feast_missing, file=sys.stderr)
        for srv in servers:
            wrk_throughput(srv.port, srv.body, 2, path=srv.path, auth=srv.auth)  # warm-up
        runs: dict[str, list[dict[str, Any]]] = {srv.name: [] for srv in servers}
        # Interleaved: each repetition measures every server once, so machine load hits them alike.
        for rep in range(reps):
            for srv in servers:
                runs[srv.name].append(measure(srv, dur, args.rate))
                print(rep, srv.name, json.dumps(runs[srv.name][-1]), file=sys.stderr)
        prof = profile(repo) if args.profile else None
    finally:
        for srv in servers:
            _stop(srv.proc)
        for k in r.scan_iter(match=f"cs:{ws}:*", count=1000):
            r.delete(k)
        if feast_info is not None:
            _feast_teardown(tmp, feast_info, r)
        r.close()
        shutil.rmtree(tmp, ignore_errors=True)
    info = {
        "loadavg_start": loadavg_start,
        "loadavg_end": Path("/proc/loadavg").read_text().strip(),
        "commands": {
            srv.name: srv.cmd + ("`, requests with `Authorization: Bearer <a read key>" if srv.auth else "")
            for srv in servers
        },
        "bodies": {srv.name: srv.body.decode() for srv in servers},
        "argv": ["python", "-m", "evals.bench_server", *sys.argv[1:]],
        "reps": reps,
        "feast_missing": feast_missing.splitlines()[0] if feast_missing else "",
    }
    write(Path(args.out), runs, info, args, dur, prof, sample_body=sample_raw.decode())


# -- report ------------------------------------------------------------------------------------


def _stat(xs: list[float]) -> tuple[float, float, float]:
    return statistics.median(xs), min(xs), max(xs)


def _fmt(xs: list[float], digits: int = 0) -> str:
    if not xs:
        return "-"
    m, lo, hi = _stat(xs)
    return f"{m:,.{digits}f} ({lo:,.{digits}f}–{hi:,.{digits}f})" if len(xs) > 1 else f"{m:,.{digits}f}"


def _col(rs: list[dict[str, Any]], part: str, key: str) -> list[float]:
    return [r[part][key] for r in rs if r[part] is not None and r[part].get(key) is not None]


def ratios(runs: dict[str, list[dict[str, Any]]]) -> dict[str, list[float]]:
    """Same-repetition ratios of context-store to the floor app (and to Feast)."""
    cs, fl = runs[CS], runs[FLOOR]
    out: dict[str, list[float]] = {
        "throughput vs floor": [c["throughput"]["rps"] / f["throughput"]["rps"] for c, f in zip(cs, fl)],
        "CPU/request vs floor": [
            c["throughput"]["server_cpu_us_per_request"] / f["throughput"]["server_cpu_us_per_request"]
            for c, f in zip(cs, fl)
        ],
        "p99 at fixed rate vs floor": [
            c["fixed"]["p99_ms"] / f["fixed"]["p99_ms"] for c, f in zip(cs, fl) if c["fixed"] and f["fixed"]
        ],
    }
    if FLOOR_GET in runs:
        out["throughput vs floor-GET"] = [
            c["throughput"]["rps"] / g["throughput"]["rps"] for c, g in zip(cs, runs[FLOOR_GET])
        ]
        out["CPU/request vs floor-GET"] = [
            c["throughput"]["server_cpu_us_per_request"] / g["throughput"]["server_cpu_us_per_request"]
            for c, g in zip(cs, runs[FLOOR_GET])
        ]
    if CS_KEYED in runs:
        out["API key: throughput vs auth off"] = [
            k["throughput"]["rps"] / c["throughput"]["rps"] for c, k in zip(cs, runs[CS_KEYED])
        ]
        out["API key: CPU/request vs floor"] = [
            k["throughput"]["server_cpu_us_per_request"] / f["throughput"]["server_cpu_us_per_request"]
            for k, f in zip(runs[CS_KEYED], fl)
        ]
    if FEAST in runs:
        out["throughput vs Feast"] = [c["throughput"]["rps"] / f["throughput"]["rps"] for c, f in zip(cs, runs[FEAST])]
        out["Feast CPU/request vs context-store"] = [
            f["throughput"]["server_cpu_us_per_request"] / c["throughput"]["server_cpu_us_per_request"]
            for c, f in zip(cs, runs[FEAST])
        ]
    return out


TARGETS = {  # issue #19: (ratio, bound, higher is better)
    "throughput vs floor": (0.9, True),
    "throughput vs Feast": (5.0, True),
    "CPU/request vs floor": (1.25, False),
    "p99 at fixed rate vs floor": (2.0, False),
}


def plot(runs: dict[str, list[dict[str, Any]]], rate: float, path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    names = list(runs)
    short = [n.split(":")[0].split(" feast")[0].replace("context-store, API key", "cs + key") for n in names]
    palette = {CS: "#1f77b4", CS_KEYED: "#aec7e8", FLOOR: "#2ca02c", FLOOR_GET: "#98df8a", FEAST: "#999999"}
    colors = [palette.get(n, "#7f7f7f") for n in names]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))

    def bars(ax: Any, vals: list[list[float]], title: str, ylabel: str) -> None:
        med = [statistics.median(v) if v else 0.0 for v in vals]
        err = [[m - min(v) if v else 0 for m, v in zip(med, vals)], [max(v) - m if v else 0 for m, v in zip(med, vals)]]
        ax.bar(short, med, yerr=err, capsize=4, color=colors)
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        ax.tick_params(axis="x", labelsize=8)

    bars(axes[0], [_col(runs[n], "throughput", "rps") for n in names], "max throughput (median, range)", "req/s")
    bars(
        axes[1],
        [_col(runs[n], "throughput", "server_cpu_us_per_request") for n in names],
        "server CPU per request",
        "µs",
    )
    bars(axes[2], [_col(runs[n], "fixed", "p99_ms") for n in names], f"p99 at a fixed {rate:.0f} req/s", "ms")
    axes[2].set_yscale("log")  # a saturated server's p99 is seconds
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write(
    out: Path,
    runs: dict[str, list[dict[str, Any]]],
    info: dict[str, Any],
    args: Any,
    dur: float,
    prof: str | None,
    sample_body: str,
) -> None:
    reps = info["reps"]
    lines = [
        "# Feature server benchmark (`python -m evals.bench_server`)",
        "",
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {machine()}; Redis at {REDIS_URL}. "
        f"`/proc/loadavg` at the start: `{info['loadavg_start']}`, at the end: `{info['loadavg_end']}`.",
        f"Request: Tecton `get-features`, 1 entity x 10 features (window aggregates), {dur:.0f} s per measurement. "
        f"Every server runs {args.workers} worker processes; context-store with its defaults (auth off, metrics on, "
        "load shedding at 32 in flight).",
        f"**Interleaved:** each of the {reps} repetitions measures every server once, in turn; the tables show "
        "the median and (min–max) over the repetitions, and the ratios are taken within one repetition. Load "
        "generators run on the same 2-core machine as the servers, which other sessions were using too: see "
        "the load averages.",
        "",
        "Floors: **floor** is the floor app of issue #19 — a Starlette route that parses the same JSON request, "
        "does one HGETALL of a plain 10-field hash (redis.asyncio) and orjson-encodes the same response shape "
        "(the benchmark checks its response equals context-store's). **floor-GET** is a stricter reference kept "
        "from earlier runs: one GET of the pre-encoded response, no decode or encode at all.",
        "",
        "## Results (median and range over the repetitions)",
        "",
        f"| server | req/s (wrk, 16 conn) | server CPU µs/request | p50 ms @{args.rate:.0f}/s | "
        f"p99 ms @{args.rate:.0f}/s | max ms @{args.rate:.0f}/s | non-2xx | load avg (1 min) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, rs in runs.items():
        fixed_ok = any(r["fixed"] for r in rs)
        loads = [r["throughput"]["loadavg_1m_before"] for r in rs] + [r["loadavg_1m_after"] for r in rs]
        lines.append(
            f"| {name} | {_fmt(_col(rs, 'throughput', 'rps'))} | "
            f"{_fmt(_col(rs, 'throughput', 'server_cpu_us_per_request'))} | "
            + (
                f"{_fmt(_col(rs, 'fixed', 'p50_ms'), 2)} | {_fmt(_col(rs, 'fixed', 'p99_ms'), 2)} | "
                f"{_fmt(_col(rs, 'fixed', 'max_ms'), 1)} | "
                if fixed_ok
                else "saturated below the rate | - | - | "
            )
            + f"{sum(int(r['throughput']['non_2xx']) for r in rs)} | {min(loads):.1f}–{max(loads):.1f} |"
        )
    rat = ratios(runs)
    lines += [
        "",
        "## context-store against the targets (ratios within each repetition)",
        "",
        "| ratio | median | range | per repetition | target | met (median) |",
        "|---|---:|---:|---|---:|---|",
    ]
    for name, xs in rat.items():
        if not xs:
            continue
        m, lo, hi = _stat(xs)
        bound, higher = TARGETS.get(name, (None, True))
        target = "-" if bound is None else (f">= {bound:g}x" if higher else f"<= {bound:g}x")
        met = "-" if bound is None else ("yes" if (m >= bound if higher else m <= bound) else "**no**")
        per = ", ".join(f"{x:.2f}" for x in xs)
        lines.append(f"| {name} | {m:.2f}x | {lo:.2f}–{hi:.2f}x | {per} | {target} | {met} |")
    if FEAST not in runs:
        lines.append(f"| throughput vs Feast | - | - | {info['feast_missing']} | >= 5x | - |")
    lines += [
        "",
        "## Every measurement (in the order run)",
        "",
        "| run | server | load avg before | req/s | CPU µs/req | p50 ms @fixed | p99 ms @fixed | p99.9 ms @fixed "
        "| max ms @fixed | >100 ms |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for i in range(reps):
        for name, rs in runs.items():
            if i >= len(rs):
                continue
            t, f = rs[i]["throughput"], rs[i]["fixed"]
            fx = (
                f"{f['p50_ms']:.2f} | {f['p99_ms']:.2f} | {f['p999_ms']:.2f} | {f['max_ms']:.1f} | {f['over_100ms']}"
                if f
                else "- | - | - | - | -"
            )
            lines.append(
                f"| {i} | {name} | {t['loadavg_1m_before']:.1f} | {t['rps']:.0f} | "
                f"{t['server_cpu_us_per_request']:.0f} | {fx} |"
            )
    lines += [
        "",
        "## Exact commands",
        "",
        f"- Benchmark: `{shlex.join(info['argv'])}`",
        f"- Throughput: `wrk -t1 -c16 -d{int(dur)}s --latency -s post.lua http://127.0.0.1:PORT{PATH}` (POST of "
        "the body below; a 2 s warm-up per server first). Server CPU: user+system time of the server's process "
        "and its children (the workers) from /proc over the wrk run, divided by the requests served.",
        f"- Fixed rate: the open-loop generator of this file (`_open_loop`, uvloop, 32 keep-alive connections, "
        f"{args.rate:.0f} req/s for {dur:.0f} s, latency from each request's scheduled send time), in its own "
        "process; skipped for Feast when its wrk throughput is below 1.2x the rate (saturated).",
    ]
    for name, cmd in info["commands"].items():
        lines.append(f"- {name}: `{cmd}`")
    for name, b in info["bodies"].items():
        if name in (CS, FEAST):
            lines.append(f"- request body ({name}): `{b}`")
    lines += [
        "",
        "Sample response (context-store; the floor answers the same bytes' JSON):",
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
    png = plot(runs, args.rate, out.with_suffix(".png"))
    if png:
        lines += ["", f"![throughput, CPU and p99]({png.name})"]
    out.write_text("\n".join(lines) + "\n")
    (out.with_suffix(".json")).write_text(
        json.dumps({"runs": runs, "ratios": rat, "info": info, "args": vars(args)}, indent=2, default=str)
    )
    print(out.read_text())


if __name__ == "__main__":
    main()
