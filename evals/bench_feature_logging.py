"""Feature logging overhead and completeness: the same server, one feature service logged and one not.

    python evals/bench_feature_logging.py [--rate 1000] [--duration 10] [--repeat 3] [--workers 2]

Setup as ``bench_server`` (Redis, 1 entity x 10 window features, ``context-store serve`` with uvicorn):
the repo has ``bench`` (no logging) and ``bench_logged`` (the same features, ``LoggingConfig(sample_rate=1.0)``).
Each leg is the open-loop generator of ``bench_server`` at a fixed rate (latency from each request's
scheduled send time); legs alternate off/on (A B A B ...) on the same server process, ``--repeat``
times; the report gives medians and ranges and the 1-minute load average before each leg.
Completeness: the server is stopped with SIGTERM (a clean shutdown) and the log must hold exactly the
vectors it answered with 200. A second table times ``ContextStore.get_features`` in-process (no HTTP),
off vs on, interleaved. Results -> evals/results/feature_logging.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_server as bs  # noqa: E402  (the server benchmark's helpers: same generator, same setup)

RESULTS = bs.RESULTS
DEFINITIONS = (
    bs.DEFINITIONS
    + 'bench_logged = cs.FeatureService("bench_logged", [txn_stats], logging=cs.LoggingConfig(sample_rate=1.0))\n'
)
SERVICES = ("bench", "bench_logged")


def _body(ws: str, service: str) -> bytes:
    params = {"workspaceName": ws, "featureServiceName": service, "joinKeyMap": {"user_id": "u1"}}
    return json.dumps({"params": params}).encode()


def _span(xs: list[float]) -> str:
    return f"{statistics.median(xs):.3f} [{min(xs):.3f}–{max(xs):.3f}]"


def in_process(repo: Path, n: int, repeat: int) -> dict[str, list[float]]:
    """µs per ``get_features`` call, off vs on, interleaved; the log is flushed (and counted) at the end."""
    import context_store as cs

    out: dict[str, list[float]] = {s: [] for s in SERVICES}
    with cs.ContextStore(repo) as store:
        for s in SERVICES:
            for _ in range(500):
                store.get_features(s, {"user_id": "u1"})
        for _ in range(repeat):
            for s in SERVICES:
                t0 = time.perf_counter()
                for _ in range(n):
                    store.get_features(s, {"user_id": "u1"})
                out[s].append((time.perf_counter() - t0) / n * 1e6)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=1000.0)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--calls", type=int, default=20000, help="in-process calls per leg")
    ap.add_argument("--out", default=str(RESULTS / "feature_logging.md"))
    args = ap.parse_args()
    import httpx
    import redis

    import context_store as cs

    ws = "benchlog" + uuid.uuid4().hex[:8]
    tmp = Path(tempfile.mkdtemp(prefix="cs-bench-log-"))
    repo = tmp / "repo"
    repo.mkdir()
    (repo / "features.py").write_text(DEFINITIONS)
    (repo / "context_store.yaml").write_text(f"online_store: {bs.REDIS_URL}\nworkspace: {ws}\n")
    r = redis.Redis.from_url(bs.REDIS_URL)
    proc = None
    legs: dict[str, list[dict[str, Any]]] = {s: [] for s in SERVICES}
    loads: list[float] = []
    warm = 0
    try:
        bs.seed(repo, args.users)
        port = bs._free_port()
        proc = bs._start_cs(repo, port, args.workers)
        bs._wait_up(port, proc)
        url = f"http://127.0.0.1:{port}{bs.PATH}"
        for s in SERVICES:
            for _ in range(200):
                resp = httpx.post(url, content=_body(ws, s), headers={"Content-Type": "application/json"})
                assert resp.status_code == 200, resp.text
                warm += s == "bench_logged"
        for rep in range(args.repeat):
            # interleaved A B B A ...: drift on the machine, and going first or second, hit both alike
            for s in SERVICES if rep % 2 == 0 else SERVICES[::-1]:
                loads.append(os.getloadavg()[0])
                cpu0 = bs._tree_cpu_s(proc.pid)
                res = bs.fixed_rate(port, _body(ws, s), args.rate, args.duration)
                res["cpu_us"] = (bs._tree_cpu_s(proc.pid) - cpu0) / max(1, res["sent"]) * 1e6
                res["loadavg_1m_before"] = loads[-1]
                legs[s].append(res)
                print(rep, s, json.dumps({k: res[k] for k in ("p50_ms", "p99_ms", "achieved_rps", "errors")}))
        bs._stop(proc)  # SIGTERM: each worker's lifespan shutdown flushes its log
        proc = None
        answered = warm + sum(leg["statuses"].get("200", leg["statuses"].get(200, 0)) for leg in legs["bench_logged"])
        with cs.ContextStore(repo) as store:
            logged = store.get_logged_features("bench_logged").num_rows
        inproc = in_process(repo, args.calls, args.repeat)
        with cs.ContextStore(repo) as store:
            logged_after_inproc = store.get_logged_features("bench_logged").num_rows
    finally:
        if proc is not None:
            bs._stop(proc)
        for k in r.scan_iter(match=f"cs:{ws}:*", count=1000):
            r.delete(k)
        r.close()
        shutil.rmtree(tmp, ignore_errors=True)

    off, on = legs["bench"], legs["bench_logged"]
    p50_ratio = statistics.median(x["p50_ms"] for x in on) / statistics.median(x["p50_ms"] for x in off)
    p99_ratio = statistics.median(x["p99_ms"] for x in on) / statistics.median(x["p99_ms"] for x in off)
    in_ratio = statistics.median(inproc["bench_logged"]) / statistics.median(inproc["bench"])
    lines = [
        "# Feature logging: overhead and completeness",
        "",
        f"`python evals/bench_feature_logging.py --rate {args.rate:g} --duration {args.duration:g} "
        f"--repeat {args.repeat} --workers {args.workers}` on {bs.machine()}; Redis online store, "
        "1 entity x 10 window features; `bench` (no logging) and `bench_logged` (`sample_rate=1.0`) served by the "
        "same server, legs interleaved (off on, on off, ...). Cells: median [min–max] over the repeats.",
        f"Load average (1 min) before each leg: {', '.join(f'{x:.1f}' for x in loads)}.",
        "",
        f"## HTTP get-features at {args.rate:g} req/s (open loop, {args.duration:g} s a leg)",
        "",
        "| service | p50 ms | p99 ms | achieved req/s | server CPU µs/request | errors |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, xs in (("bench (logging off)", off), ("bench_logged (logging on)", on)):
        lines.append(
            f"| {name} | {_span([x['p50_ms'] for x in xs])} | {_span([x['p99_ms'] for x in xs])} | "
            f"{_span([x['achieved_rps'] for x in xs])} | {_span([x['cpu_us'] for x in xs])} | "
            f"{sum(x['errors'] for x in xs)} |"
        )
    lines += [
        "",
        f"**Overhead ratio (on / off, medians): p50 {p50_ratio:.3f}, p99 {p99_ratio:.3f}** "
        "(target: p50 within 5%, i.e. <= 1.05).",
        "",
        "## Completeness",
        "",
        "| vectors answered 200 (logged service) | rows in log__bench_logged after SIGTERM | complete |",
        "|---:|---:|---|",
        f"| {answered} | {logged} | {'yes' if logged == answered else 'NO'} |",
        "",
        f"## In-process ContextStore.get_features ({args.calls:,} calls a leg)",
        "",
        "| service | µs per call |",
        "|---|---:|",
        f"| bench (logging off) | {_span(inproc['bench'])} |",
        f"| bench_logged (logging on) | {_span(inproc['bench_logged'])} |",
        "",
        f"In-process ratio on/off: {in_ratio:.3f}. Rows logged by the in-process legs (closed store flushes): "
        f"{logged_after_inproc - logged:,} of {args.repeat * args.calls + 500:,}.",
        "",
    ]
    report = "\n".join(lines)
    print(report)
    Path(args.out).write_text(report)


if __name__ == "__main__":
    main()
