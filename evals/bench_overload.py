"""Load shedding under overload: accepted-request latency at 2x saturation against the unsaturated latency.

    python evals/bench_overload.py [--duration 5] [--repeat 3] [--configs 0:0 32:0 32:10]
    python evals/bench_overload.py --spin-ms 4 --workers 1 --connections 64 --append   # known capacity

Each config is ``max_in_flight:max_lag_ms`` of the server (``0:0`` = unbounded, ``32:0`` = the in-flight
bound alone, ``32:10`` = the ``serve`` default: in-flight bound + event-loop lag shedding). Per repetition, the
configs are run one after the other (A B C A B C ...), each on a fresh server (2 workers, Redis):

1. saturation: ``wrk`` closed loop against the unbounded server (the first config of each repetition: wrk
   against a shedding server would count its 503s as throughput); every config of that repetition is then
   driven at the same rates;
2. calm: an open-loop generator (``bench_server``'s, telling shed 503s from other 503s; latency from each
   request's scheduled send time) at 0.5x saturation, 32 connections: the unsaturated p99 of 200s;
3. hot: the same generator at 2x saturation with 512 connections: p99 of the 200s, speed of the 503s, errors.

The ratio hot p99 (200s) / calm p99 (200s) is computed within one run of one server. Medians and ranges over
the repetitions, with the load average, go to evals/results/overload.md. The generator shares the machine's
cores with the server, as a co-located client would; its own delay (scheduled time -> request written) is
reported, since on a loaded machine it is part of every latency. ``--spin-ms`` serves a request-time view that
holds the event loop that long instead: a capacity that does not depend on the machine's load (no wrk).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
import bench_server as bs  # noqa: E402  (a sibling script, not a package)

OUT = bs.RESULTS / "overload.md"
SPIN_DEFINITIONS = """
import context_store as cs

request = cs.RequestSource(schema=[cs.Field("amount", cs.Float64)])


@cs.realtime_feature_view(sources=[request], output=[cs.Field("spun", cs.Float64)])
def spin(req):
    import time

    end = time.perf_counter() + req["amount"] / 1000  # wall time: the capacity does not depend on the load
    while time.perf_counter() < end:
        pass
    return {"spun": req["amount"]}


busy = cs.FeatureService("busy", [spin])
"""


def _start(repo: Path, port: int, workers: int, max_in_flight: int, max_lag_ms: float) -> subprocess.Popen[bytes]:
    code = (
        "from context_store.server.run import ServeOptions, serve; "
        f"serve(ServeOptions(repo={str(repo)!r}, host='127.0.0.1', port={port}, workers={workers}, auth=False, "
        f"mcp=False, stream_workers=False, log_level='error', max_in_flight={max_in_flight}, "
        f"max_lag_ms={max_lag_ms}))"
    )
    env = {**os.environ, "PYTHONPATH": str(bs.ROOT)}  # this checkout's code in the uvicorn workers too
    return subprocess.Popen([sys.executable, "-c", code], cwd=bs.ROOT, env=env, start_new_session=True)


async def _open_loop(port: int, body: bytes, rate: float, seconds: float, conns: int) -> dict[str, Any]:
    """``bench_server._open_loop`` telling shed 503s (``overloaded``) from others (e.g. a Redis read over its
    bound), and recording the generator's own delay (scheduled time -> request written) to show its share."""
    req = (
        f"POST {bs.PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    pool: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    for _ in range(conns):
        pool.put_nowait(await asyncio.open_connection("127.0.0.1", port))
    lat: dict[str, list[float]] = {"200": [], "shed": [], "other": []}
    send_delay: list[float] = []
    errors = 0

    async def one(scheduled: float) -> None:
        nonlocal errors
        reader, writer = await pool.get()
        try:
            send_delay.append(time.perf_counter() - scheduled)
            writer.write(req)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            m = re.search(rb"(?i)content-length:\s*(\d+)", head)
            payload = await reader.readexactly(int(m.group(1)) if m else 0)
            took = time.perf_counter() - scheduled
            kind = "200" if status == 200 else "shed" if status == 503 and b"overloaded" in payload else "other"
            lat[kind].append(took)
        except Exception:
            errors += 1
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        finally:
            pool.put_nowait((reader, writer))

    n = int(rate * seconds)
    await bs.paced(one, rate, seconds)

    def pct(xs: list[float], p: float) -> float:
        xs = sorted(xs)
        return xs[min(len(xs) - 1, int(p * len(xs)))] * 1000 if xs else float("nan")

    out: dict[str, Any] = {"sent": n, "errors": errors, "send_delay_p99_ms": pct(send_delay, 0.99)}
    for kind, xs in lat.items():
        out[kind] = {"n": len(xs), "p50_ms": pct(xs, 0.5), "p99_ms": pct(xs, 0.99)}
    return out


def fixed_rate(port: int, body: bytes, rate: float, seconds: float, conns: int) -> dict[str, Any]:
    """The generator in its own process (not sharing a loop or the GIL with anything)."""
    code = (
        f"import asyncio, json, uvloop, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
        f"import bench_overload as b; uvloop.install(); "
        f"print(json.dumps(asyncio.run(b._open_loop({port}, {body!r}, {rate}, {seconds}, {conns}))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=bs.ROOT)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def _label(cfg: tuple[int, float]) -> str:
    limit, lag = cfg
    if not limit and not lag:
        return "unbounded"
    parts = ([f"in-flight {limit}"] if limit else []) + ([f"lag {lag:g} ms"] if lag else [])
    return " + ".join(parts)


def run_one(repo: Path, body: bytes, cfg: tuple[int, float], sat: float | None, args: Any) -> dict[str, Any]:
    port = bs._free_port()
    proc = _start(repo, port, args.workers, *cfg)
    try:
        bs._wait_up(port, proc)
        if args.spin_ms:  # known capacity: warm one request, no wrk
            fixed_rate(port, body, 10, 0.5, conns=1)
            sat = args.workers * 1000 / args.spin_ms
        else:
            bs.wrk_throughput(port, body, 2)  # warm-up
        load0 = os.getloadavg()[0]
        if sat is None:
            thr = bs.wrk_throughput(port, body, int(args.duration))
            sat = thr["rps"] - thr["non_2xx"] / int(args.duration)  # 200s only (a 503 is not throughput)
        calm = fixed_rate(port, body, sat / 2, args.duration, conns=32)
        hot = fixed_rate(port, body, sat * 2, args.duration, conns=args.connections)
        load1 = os.getloadavg()[0]
    finally:
        bs._stop(proc)
    ok, shed = hot["200"], hot["shed"]
    return {
        "config": _label(cfg),
        "saturation_rps": sat,
        "calm_p99_ms": calm["200"]["p99_ms"],
        "calm_shed": calm["shed"]["n"],
        "calm_other": calm["other"]["n"] + calm["errors"],
        "calm_send_delay_p99_ms": calm["send_delay_p99_ms"],
        "hot_sent_rps": hot["sent"] / args.duration,
        "hot_200": ok["n"],
        "hot_200_p50_ms": ok["p50_ms"],
        "hot_200_p99_ms": ok["p99_ms"],
        "ratio": ok["p99_ms"] / calm["200"]["p99_ms"],
        "config_args": list(cfg),
        "hot_shed": shed["n"],
        "hot_shed_p50_ms": shed["p50_ms"],
        "hot_shed_p99_ms": shed["p99_ms"],
        "hot_other": hot["other"]["n"],
        "hot_errors": hot["errors"],
        "hot_send_delay_p99_ms": hot["send_delay_p99_ms"],
        "load_before": load0,
        "load_after": load1,
    }


def _cell(rs: list[dict[str, Any]], key: str, fmt: str = "{:.1f}") -> str:
    xs = [r[key] for r in rs]
    med = statistics.median(xs)
    return f"{fmt.format(med)} ({fmt.format(min(xs))}-{fmt.format(max(xs))})" if len(xs) > 1 else fmt.format(med)


def table(runs: dict[str, list[dict[str, Any]]]) -> str:
    head = (
        "| server | p99 ms of 200s at 0.5x | shed at 0.5x | 200s at 2x | p50 / p99 ms of 200s at 2x "
        "| **p99 of 200s at 2x / p99 at 0.5x** | same / median p99 at 0.5x of all servers "
        "| shed (503) at 2x | p50 / p99 ms of shed | other 503s + errors "
        "| generator's own delay p99 ms at 2x | load avg (1 min) before->after each run |"
    )
    lines = [head, "|---|" + "---:|" * 10 + "---|"]
    for name, rs in runs.items():
        shed = (
            f"{_cell(rs, 'hot_shed_p50_ms')} / {_cell(rs, 'hot_shed_p99_ms')}"
            if any(r["hot_shed"] for r in rs)
            else "-"
        )
        cells = [
            _cell(rs, "calm_p99_ms"),
            _cell(rs, "calm_shed", "{:.0f}"),
            _cell(rs, "hot_200", "{:.0f}"),
            f"{_cell(rs, 'hot_200_p50_ms')} / {_cell(rs, 'hot_200_p99_ms')}",
            _cell(rs, "ratio", "{:.1f}x"),
            _cell(rs, "ratio_pooled", "{:.1f}x"),
            _cell(rs, "hot_shed", "{:.0f}"),
            shed,
            str(sum(r["hot_errors"] + r["hot_other"] + r["calm_other"] for r in rs)),
            _cell(rs, "hot_send_delay_p99_ms"),
            ", ".join(f"{r['load_before']:.1f}->{r['load_after']:.1f}" for r in rs),
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--connections", type=int, default=512, help="client connections at 2x saturation")
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--configs", nargs="+", default=["0:0", "32:0", "32:10"], help="max_in_flight:max_lag_ms")
    ap.add_argument(
        "--spin-ms",
        type=float,
        default=0.0,
        help="instead of get-features from Redis: a request-time view holding the event loop this long per "
        "request (known capacity: workers x 1000 / spin-ms req/s, not measured with wrk)",
    )
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--append", action="store_true", help="add this run's section to --out instead of replacing it")
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk not found: apt-get install -y wrk")
    configs = [(int(c.split(":")[0]), float(c.split(":")[1])) for c in args.configs]
    ws = "ovl" + uuid.uuid4().hex[:8]
    tmp = Path(tempfile.mkdtemp(prefix="cs-bench-overload-"))
    repo = tmp / "repo"
    repo.mkdir()
    if args.spin_ms:
        (repo / "features.py").write_text(SPIN_DEFINITIONS)
        (repo / "context_store.yaml").write_text(f"online_store: sqlite\nworkspace: {ws}\n")
        params = {"featureServiceName": "busy", "joinKeyMap": {}, "requestContextMap": {"amount": args.spin_ms}}
    else:
        (repo / "features.py").write_text(bs.DEFINITIONS)
        (repo / "context_store.yaml").write_text(f"online_store: {bs.REDIS_URL}\nworkspace: {ws}\n")
        params = {"featureServiceName": "bench", "joinKeyMap": {"user_id": "u1"}}
    body = json.dumps({"params": {"workspaceName": ws, **params}}).encode()
    import redis

    rds = redis.Redis.from_url(bs.REDIS_URL)
    runs: dict[str, list[dict[str, Any]]] = {_label(c): [] for c in configs}
    started = datetime.now(UTC)
    load_start = Path("/proc/loadavg").read_text().strip()
    try:
        if args.spin_ms:
            import context_store as cs

            cs.ContextStore(repo).apply()
        else:
            bs.seed(repo, args.users)
        for rep in range(args.repeat):
            sat: float | None = None
            for cfg in configs:
                row = run_one(repo, body, cfg, sat, args)
                row["rep"] = rep
                sat = row["saturation_rps"]
                runs[row["config"]].append(row)
                print(rep, json.dumps(row), file=sys.stderr, flush=True)
    finally:
        for k in rds.scan_iter(match=f"cs:{ws}:*", count=1000):
            rds.delete(k)
        rds.close()
        shutil.rmtree(tmp, ignore_errors=True)
    load_end = Path("/proc/loadavg").read_text().strip()
    for rep in range(args.repeat):  # a steadier baseline: the calm p99 of every server of the repetition
        rows = [r for rs in runs.values() for r in rs if r["rep"] == rep]
        base = statistics.median(r["calm_p99_ms"] for r in rows)
        for row in rows:
            row["ratio_pooled"] = row["hot_200_p99_ms"] / base
    sats = [r["saturation_rps"] for r in next(iter(runs.values()))]
    cmd = "python evals/bench_overload.py " + " ".join(sys.argv[1:])
    raw = "\n".join(json.dumps(r) for rs in runs.values() for r in rs)
    what = (
        f"a request-time view holding the event loop {args.spin_ms:g} ms per request (sqlite store): known capacity "
        f"{sats[0]:.0f} req/s"
        if args.spin_ms
        else "get-features of 10 features from Redis; saturation (wrk, unbounded server, per repetition): "
        + ", ".join(f"{s:.0f}" for s in sats)
        + " req/s"
    )
    text = f"""## {"Known capacity" if args.spin_ms else "get-features"}: `{cmd.strip()}`

Run {started:%Y-%m-%d %H:%M} UTC, {bs.machine()}; {args.workers} server worker(s), the load generator and other
sessions' jobs share the cores. /proc/loadavg before: `{load_start}`; after: `{load_end}`.
Served: {what}. The calm run sends half of it (32 connections), the hot run twice it ({args.connections}
connections), open loop, latency from each request's scheduled send time. {args.repeat} interleaved repetitions
of {args.duration:g} s runs: median (min-max). The ratio is taken within each run (one server, same minutes), then
the median of the ratios; as the calm p99 of one 5 s run is itself noisy on a shared machine, the next column
divides by the median calm p99 of all servers in the same repetition.

{table(runs)}

Raw rows (one per run):

```
{raw}
```
"""
    out = Path(args.out)
    out.write_text((out.read_text() if args.append and out.exists() else "") + text)
    print(text)


if __name__ == "__main__":
    main()
