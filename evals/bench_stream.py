"""Streaming benchmark: freshness (push -> visible in get_features) and sustained ingest rate.

    python -m evals.bench_stream            # 15 s of freshness at 1,000 events/s; 200k-event ingest runs
    python -m evals.bench_stream --quick    # 5 s; 60k events

Against the local Redis (``--redis``, default redis://127.0.0.1:6379/0). Workers run as separate
``context-store worker`` processes (as in production: the server or a worker container applies,
clients push), so the pusher and the workers do not share a GIL.

- freshness: paced single-event pushes at ``--rate`` events/s from ``--threads`` pusher threads;
  ``push`` returns when the event is applied (read-after-write), then ``get_features`` confirms the
  new count. Reported: push->visible (the push latency) and push->confirmed read, p50/p99.
  Also the embedded (sqlite) mode and the durable-only Redis push (``wait=False``) for reference.
- ingest: a backlog of N events is made durable in the streams (bulk pushes of 500), then 1 or 2
  worker processes drain it; rate = N / (time until every entry is applied and acknowledged).

Writes ``evals/results/stream.md`` (+ ``stream.png``: freshness distribution).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import context_store as cs  # noqa: E402
from context_store.compute.stream import ingest  # noqa: E402
from context_store.compute.stream.ingest import _stream_log  # noqa: E402
from context_store.compute.stream.online_adapter import applied_offset  # noqa: E402

DEFINITIONS = '''
import context_store as cs

user = cs.Entity("user", join_keys=["user_id"])
history = cs.FileSource("data/txns.parquet", timestamp_field="ts")
txns = cs.StreamSource(
    "transactions",
    schema=[cs.Field("user_id", cs.String), cs.Field("ts", cs.Timestamp), cs.Field("amount", cs.Float64),
            cs.Field("merchant", cs.String)],
    timestamp_field="ts", batch_source=history, allowed_lateness="1h", partitions=PARTITIONS,
)
txn_stats = cs.FeatureView(
    "txn_stats", [user], txns,
    aggregations=[cs.Aggregate("amount", f, w) for w in ("1h", "1d") for f in ("count", "sum", "mean", "max")]
    + [cs.Aggregate("merchant", "last_distinct_n", "1d", n=3)],
)
fraud = cs.FeatureService("fraud", [txn_stats])
'''
SCHEMA = pa.schema([("user_id", pa.string()), ("ts", pa.timestamp("us", tz="UTC")), ("amount", pa.float64()),
                    ("merchant", pa.string())])


def make_repo(root: Path, online: str, workspace: str, partitions: int = 4) -> cs.ContextStore:
    (root / "data").mkdir(parents=True, exist_ok=True)
    (root / "features.py").write_text(textwrap.dedent(DEFINITIONS).replace("PARTITIONS", str(partitions)))
    pq.write_table(SCHEMA.empty_table(), root / "data" / "txns.parquet")
    store = cs.ContextStore(root, workspace=workspace, online_store=online)
    store.apply(force=True)
    return store


def start_workers(store: cs.ContextStore, n: int, redis_url: str) -> list[subprocess.Popen]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTEXT_STORE_")}
    procs = []
    for _ in range(n):
        cmd = [sys.executable, "-c", "from context_store.cli.stream import worker; worker()", "--repo",
               str(store.config.repo), "--workspace", store.workspace, "--online-store", redis_url]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    log = _stream_log(store)
    deadline = time.monotonic() + 30
    parts = store.definitions.sources["transactions"].partitions
    while time.monotonic() < deadline:  # every partition owned, and by n distinct workers
        owners = [log.lease_owner("transactions", p) for p in range(parts)]
        if all(owners) and len(set(owners)) == n:
            break
        time.sleep(0.05)
    return procs


def stop_workers(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait(30)


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q)) if xs else float("nan")


def freshness(store: cs.ContextStore, rate: float, seconds: float, threads: int, t_start: float | None = None,
              tag: str = "") -> dict[str, Any]:
    """Open-loop single-event pushes at ``rate``: a dispatcher thread hands each event to a pool of
    ``threads`` at its scheduled time (so a slow push never slows the offered rate), and per push
    records the latency until visible (``push`` waits for read-after-write) and until a
    ``get_features`` confirms the new count; also how late the dispatch was (open-loop fidelity)."""
    from concurrent.futures import ThreadPoolExecutor

    now = datetime.now(timezone.utc)
    push_ms: list[float] = []
    confirm_ms: list[float] = []
    sched_ms: list[float] = []  # scheduled time -> visible (includes any dispatch delay)
    lag_ms: list[float] = []
    lock = threading.Lock()
    total = int(rate * seconds)
    errors: list[str] = []
    # Children that finish importing late start late rather than bursting to catch up.
    start = max(time.time() + 0.05, t_start or 0.0)
    run_id = uuid.uuid4().hex[:6] + tag
    # A user recurs once per 1,000 events (~1 s): its count is exact unless a push takes that long.
    users = [f"f{run_id}_{i}" for i in range(1000)]
    expected = [0] * total
    counts = dict.fromkeys(users, 0)
    for k in range(total):
        u = users[k % len(users)]
        counts[u] += 1
        expected[k] = counts[u]

    def one(k: int, t_sched: float) -> None:
        u = users[k % len(users)]
        t0 = time.perf_counter()
        res = store.push("transactions", [{"user_id": u, "ts": now, "amount": 1.0, "merchant": "m"}])
        t1 = time.perf_counter()
        got = store.get_features("fraud", {"user_id": u}, request_time=now + timedelta(seconds=1))
        t2 = time.perf_counter()
        n = got.feature_values["txn_stats.amount_count_1h"]
        with lock:
            if not res.visible or n != expected[k]:
                errors.append(f"{u}: expected {expected[k]}, got {n}")
            push_ms.append((t1 - t0) * 1000)
            confirm_ms.append((t2 - t0) * 1000)
            sched_ms.append((t1 - t_sched) * 1000)
            lag_ms.append((t0 - t_sched) * 1000)

    wall = time.perf_counter()
    with ThreadPoolExecutor(threads, thread_name_prefix="pusher") as pool:
        base = time.perf_counter() + (start - time.time())
        for k in range(total):
            t_sched = base + k / rate
            delay = t_sched - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            pool.submit(one, k, t_sched)
    wall = time.perf_counter() - wall
    return {"n": len(push_ms), "wall": wall, "errors": len(errors), "push": push_ms, "confirm": confirm_ms,
            "sched": sched_ms, "lag": lag_ms, "error_samples": errors[:3]}


def freshness_observed(store: cs.ContextStore, rate: float, seconds: float) -> dict[str, Any]:
    """The issue's definition, open loop: single-event pushes paced at ``rate`` by one thread,
    each returning once durable (``wait=False``); an observer thread hears the workers'
    applied-offset announcements and, for every event they cover, reads ``get_features`` (one
    batch read per announcement) and checks the new count. Freshness = push returned -> that
    read returned with the new value. (Pushers that wait for read-after-write are measured too,
    below; this mode keeps the load generator's own CPU small on a 2-core box.)"""
    import queue
    from collections import deque

    import redis

    log = _stream_log(store)
    r = redis.Redis.from_url(store.config.online_store)
    ps = r.pubsub(ignore_subscribe_messages=True)
    ps.subscribe(log.applied_channel)
    while ps.get_message(timeout=0.1) is not None:  # drain the subscribe confirmation
        pass
    now = datetime.now(timezone.utc)
    total = int(rate * seconds)
    run_id = uuid.uuid4().hex[:6]
    users = [f"o{run_id}_{i}" for i in range(1000)]  # a user recurs once per 1,000 events (~1 s)
    q: Any = queue.SimpleQueue()
    ret_ms: list[float] = []
    start_ms: list[float] = []
    lag_ms: list[float] = []
    series: list[tuple[float, float]] = []  # (push returned, s since start; freshness ms)
    errors: list[str] = []
    state = {"confirmed": 0, "stop": False}

    def observer() -> None:
        pending: dict[int, Any] = {}
        seen: dict[int, int] = {}
        while state["confirmed"] < total and not state["stop"]:
            while True:
                try:
                    ev = q.get_nowait()
                except queue.Empty:
                    break
                pending.setdefault(ev[0], deque()).append(ev)
            msg = ps.get_message(timeout=0.005)
            if msg and msg.get("type") == "message":
                for line in msg["data"].decode().split("\n"):
                    src, p, off = line.rsplit("|", 2)
                    if src == "transactions":
                        seen[int(p)] = max(seen.get(int(p), -1), int(off))
            ready = []
            for p, dq in pending.items():
                s_ = seen.get(p, -1)
                while dq and dq[0][1] <= s_:
                    ready.append(dq.popleft())
            if not ready:
                continue
            got = store.get_features_batch("fraud", [{"user_id": e[4]} for e in ready],
                                           request_time=now + timedelta(seconds=1))
            t = time.perf_counter()
            for e, fv in zip(ready, got):
                n = fv.feature_values["txn_stats.amount_count_1h"]
                if n != e[5]:
                    errors.append(f"{e[4]}: expected {e[5]}, got {n}")
                ret_ms.append((t - e[3]) * 1000)
                start_ms.append((t - e[2]) * 1000)
                series.append((e[3] - wall, (t - e[3]) * 1000))
            state["confirmed"] += len(ready)

    th = threading.Thread(target=observer, name="observer")
    counts = dict.fromkeys(users, 0)
    wall = time.perf_counter()
    th.start()
    base = wall + 0.05
    try:
        for k in range(total):
            t_sched = base + k / rate
            delay = t_sched - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            u = users[k % len(users)]
            counts[u] += 1
            t0 = time.perf_counter()
            res = ingest.push(store, "transactions", [{"user_id": u, "ts": now, "amount": 1.0, "merchant": "m"}],
                              wait=False)
            t1 = time.perf_counter()
            lag_ms.append((t0 - t_sched) * 1000)
            ((p, off),) = res.offsets.items()
            q.put((int(p), int(off), t0, t1, u, counts[u]))
        push_wall = time.perf_counter() - wall
        th.join(30)
    finally:
        state["stop"] = True
        th.join(5)
        ps.close()
        r.close()
    missing = total - state["confirmed"]
    return {"n": len(ret_ms), "achieved_rate": total / push_wall, "errors": len(errors) + missing,
            "error_samples": errors[:3], "push_p50": pct(ret_ms, 50), "push_p99": pct(ret_ms, 99),
            "confirm_p50": pct(start_ms, 50), "confirm_p99": pct(start_ms, 99), "lag_p99": pct(lag_ms, 99),
            "samples": ret_ms, "max": max(ret_ms) if ret_ms else float("nan"), "series": series}


def sequential(store: cs.ContextStore, n: int) -> dict[str, Any]:
    """One pusher, closed loop (the next push when the previous is visible): the path's own latency."""
    now = datetime.now(timezone.utc)
    push_ms: list[float] = []
    confirm_ms: list[float] = []
    errors = 0
    u = f"s{uuid.uuid4().hex[:8]}"
    wall = time.perf_counter()
    for i in range(n):
        t0 = time.perf_counter()
        res = store.push("transactions", [{"user_id": u, "ts": now, "amount": 1.0, "merchant": "m"}])
        t1 = time.perf_counter()
        got = store.get_features("fraud", {"user_id": u}, request_time=now + timedelta(seconds=1))
        t2 = time.perf_counter()
        errors += int(not res.visible or got.feature_values["txn_stats.amount_count_1h"] != i + 1)
        push_ms.append((t1 - t0) * 1000)
        confirm_ms.append((t2 - t0) * 1000)
    wall = time.perf_counter() - wall
    return {"n": n, "wall": wall, "errors": errors, "push": push_ms, "confirm": confirm_ms, "sched": push_ms,
            "lag": [0.0]}


def _fresh_child(repo: str, workspace: str, online: str, rate: float, seconds: float, threads: int,
                 t_start: float, tag: str) -> dict[str, Any]:
    store = cs.ContextStore(repo, workspace=workspace, online_store=online)
    try:
        store.push("transactions", [{"user_id": "warm" + tag, "ts": datetime.now(timezone.utc), "amount": 1.0}])
        return freshness(store, rate, seconds, threads, t_start, tag)
    finally:
        store.close()


def freshness_procs(store: cs.ContextStore, rate: float, seconds: float, procs: int, threads: int) -> dict[str, Any]:
    """``procs`` pusher processes x ``threads`` threads share ``rate`` (clients are separate processes,
    as behind a REST server, so the measurement is not one process's GIL)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    t_start = time.time() + 4.0  # after the children imported and warmed up
    with ProcessPoolExecutor(procs, mp_context=mp.get_context("spawn")) as ex:
        futs = [ex.submit(_fresh_child, str(store.config.repo), store.workspace, store.config.online_store,
                          rate / procs, seconds, threads, t_start, f"p{i}") for i in range(procs)]
        parts = [f.result() for f in futs]
    push = [x for p in parts for x in p["push"]]
    confirm = [x for p in parts for x in p["confirm"]]
    sched = [x for p in parts for x in p["sched"]]
    lag = [x for p in parts for x in p["lag"]]
    wall = max(p["wall"] for p in parts)
    return {
        "n": len(push), "achieved_rate": len(push) / wall, "errors": sum(p["errors"] for p in parts),
        "error_samples": [e for p in parts for e in p["error_samples"]][:3],
        "push_p50": pct(push, 50), "push_p99": pct(push, 99),
        "confirm_p50": pct(confirm, 50), "confirm_p99": pct(confirm, 99), "samples": push,
        "sched_p99": pct(sched, 99), "lag_p99": pct(lag, 99),
    }


def summarize(r: dict[str, Any]) -> dict[str, Any]:
    return {
        "n": r["n"], "achieved_rate": r["n"] / r["wall"], "errors": r["errors"],
        "push_p50": pct(r["push"], 50), "push_p99": pct(r["push"], 99),
        "confirm_p50": pct(r["confirm"], 50), "confirm_p99": pct(r["confirm"], 99), "samples": r["push"],
        "sched_p99": pct(r["sched"], 99), "lag_p99": pct(r["lag"], 99),
    }


def backlog(store: cs.ContextStore, n: int, users: int = 10_000, chunk: int = 500) -> tuple[dict[int, int], float]:
    """Make ``n`` events durable in the streams (no worker running); returns last offsets, push rate."""
    rng = np.random.default_rng(1)
    now_us = int(time.time() * 1e6)
    ts = now_us - rng.integers(0, 600_000_000, n)  # the last 10 minutes, out of order (< lateness)
    table = pa.table({
        "user_id": pa.array([f"u{i}" for i in rng.integers(0, users, n)]),
        "ts": pa.array(ts, pa.timestamp("us", tz="UTC")),
        "amount": pa.array(rng.lognormal(3, 1, n)),
        "merchant": pa.array([f"m{i}" for i in rng.integers(0, 50, n)]),
    })
    last: dict[int, int] = {}
    t0 = time.perf_counter()
    for i in range(0, n, chunk):
        res = ingest.push(store, "transactions", table.slice(i, chunk), wait=False)
        for p, off in res.offsets.items():
            last[p] = max(last.get(p, 0), off)
    return last, n / (time.perf_counter() - t0)


def drain_rate(store: cs.ContextStore, n: int, workers: int, redis_url: str) -> dict[str, Any]:
    """Workers already running and idle; the clock starts with the first push and stops when every
    event is applied online (and, second number, appended offline and acknowledged)."""
    view = store.definitions.feature_view("txn_stats")
    log = _stream_log(store)
    keys = [log.stream_key("transactions", p) for p in range(4)]
    procs = start_workers(store, workers, redis_url)
    try:
        t0 = time.perf_counter()
        last, push_rate = backlog(store, n)
        t_applied = None
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if t_applied is None and all(applied_offset(store, view, p) >= off for p, off in last.items()):
                t_applied = time.perf_counter() - t0
            if t_applied is not None and log.lag(keys) == 0:
                break
            time.sleep(0.01)
        t_acked = time.perf_counter() - t0
    finally:
        stop_workers(procs)
    assert t_applied is not None, "workers did not finish"
    return {"workers": workers, "events": n, "online_rate": n / t_applied, "acked_rate": n / t_acked,
            "push_rate": push_rate, "t_online": t_applied, "t_acked": t_acked}


def cleanup(redis_url: str, workspace: str) -> None:
    import redis

    r = redis.Redis.from_url(redis_url)
    for k in r.scan_iter(match=f"cs:{workspace}:*", count=1000):
        r.delete(k)
    r.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--redis", default=os.environ.get("CONTEXT_STORE_REDIS_URL", "redis://127.0.0.1:6379/0"))
    ap.add_argument("--rate", type=float, default=1000.0)
    ap.add_argument("--procs", type=int, default=2, help="Pusher processes for the freshness run.")
    ap.add_argument("--threads", type=int, default=16, help="Pusher pool threads per process (open loop).")
    ap.add_argument("--workers", type=int, default=1, help="Worker processes during the freshness run.")
    ap.add_argument("--nice", type=int, default=0,
                    help="Scheduling priority for this run and its worker/pusher processes (e.g. -10 on a shared "
                         "machine, as root); Redis keeps its own.")
    ap.add_argument("--out", default=str(ROOT / "evals" / "results" / "stream.md"))
    args = ap.parse_args()
    if args.nice:
        os.nice(args.nice)  # inherited by the worker and pusher processes
    seconds = 5.0 if args.quick else 15.0
    n_ingest = 60_000 if args.quick else 200_000
    tmp = Path(tempfile.mkdtemp(prefix="cs-bench-stream-"))
    results: dict[str, Any] = {"load_before": os.getloadavg()[0]}
    workspaces: list[str] = []
    try:
        # 1. freshness, Redis + 1 worker process
        ws = "bench" + uuid.uuid4().hex[:8]
        workspaces.append(ws)
        store = make_repo(tmp / "fresh", args.redis, ws)
        procs = start_workers(store, args.workers, args.redis)
        try:
            results["fresh_seq"] = r = summarize(sequential(store, 500 if args.quick else 1000))
            print(f"freshness (redis, 1 worker), one sequential pusher: p50 {r['push_p50']:.2f} ms "
                  f"p99 {r['push_p99']:.2f} ms", flush=True)
            results["fresh_redis_low"] = r = freshness_procs(store, args.rate / 5, seconds, args.procs, args.threads)
            print(f"freshness (redis, 1 worker) at {r['achieved_rate']:.0f}/s: push->visible p50 {r['push_p50']:.2f} ms "
                  f"p99 {r['push_p99']:.2f} ms", flush=True)
            results["fresh_redis"] = freshness_procs(store, args.rate, seconds, args.procs, args.threads)
            r = results["fresh_redis"]
            print(f"freshness (redis, 1 worker) at {r['achieved_rate']:.0f}/s: push->visible p50 {r['push_p50']:.2f} ms "
                  f"p99 {r['push_p99']:.2f} ms; +read p99 {r['confirm_p99']:.2f} ms; errors {r['errors']} "
                  f"{r.get('error_samples') or ''}", flush=True)
            # durable-only push (no read-after-write wait), for reference
            lat = []
            for i in range(500):
                t0 = time.perf_counter()
                ingest.push(store, "transactions", [{"user_id": f"d{i % 50}", "ts": datetime.now(timezone.utc),
                                                     "amount": 1.0}], wait=False)
                lat.append((time.perf_counter() - t0) * 1000)
            results["durable_only"] = {"p50": pct(lat, 50), "p99": pct(lat, 99)}
        finally:
            stop_workers(procs)
            store.close()
        # 1b. the same rate with a 1-partition source: one worker applies each step's events in one call
        ws = "bench" + uuid.uuid4().hex[:8]
        workspaces.append(ws)
        store = make_repo(tmp / "fresh1", args.redis, ws, partitions=1)
        procs = start_workers(store, 1, args.redis)
        try:
            results["fresh_p1"] = r = freshness_procs(store, args.rate, seconds, args.procs, args.threads)
            print(f"freshness (redis, 1 worker, 1 partition) at {r['achieved_rate']:.0f}/s: push->visible p50 "
                  f"{r['push_p50']:.2f} ms p99 {r['push_p99']:.2f} ms; errors {r['errors']}", flush=True)
        finally:
            stop_workers(procs)
            store.close()
        # 2. embedded (sqlite) freshness for reference: push applies in-process
        store = make_repo(tmp / "embedded", "sqlite", "default")
        freshness(store, 50, 1.0, 1)
        results["fresh_sqlite"] = summarize(freshness(store, 100, min(seconds, 5.0), 1))
        r = results["fresh_sqlite"]
        print(f"freshness (embedded sqlite) at {r['achieved_rate']:.0f}/s: push p50 {r['push_p50']:.2f} ms p99 {r['push_p99']:.2f} ms", flush=True)
        store.close()
        # 3. sustained ingest with 1 and 2 worker processes
        for n_workers in (1, 2):
            ws = "bench" + uuid.uuid4().hex[:8]
            workspaces.append(ws)
            store = make_repo(tmp / f"ingest{n_workers}", args.redis, ws)
            results[f"ingest_{n_workers}"] = r = drain_rate(store, n_ingest, n_workers, args.redis)
            print(f"ingest with {n_workers} worker(s): {r['online_rate']:,.0f} events/s applied online, "
                  f"{r['acked_rate']:,.0f} events/s incl. offline log + ack (push {r['push_rate']:,.0f}/s)", flush=True)
            store.close()
    finally:
        for ws in workspaces:
            cleanup(args.redis, ws)
        shutil.rmtree(tmp, ignore_errors=True)
    results["load_after"] = os.getloadavg()[0]
    write_report(Path(args.out), results, args, seconds, n_ingest)


def write_report(path: Path, res: dict[str, Any], args: Any, seconds: float, n_ingest: int) -> None:
    f, s, lo, sq = res["fresh_redis"], res["fresh_sqlite"], res["fresh_redis_low"], res["fresh_seq"]
    p1 = res["fresh_p1"]
    i1, i2 = res["ingest_1"], res["ingest_2"]
    ok_f = "meets" if f["push_p99"] <= 20 else "misses"
    ok_i = "meets" if max(i1["online_rate"], i2["online_rate"]) >= 20_000 else "misses"
    lines = [
        "# Streaming: freshness and ingest rate",
        "",
        f"`python -m evals.bench_stream{' --quick' if args.quick else ''}` — {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, "
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, local Redis "
        "(same machine: pushers, workers and Redis share the 2 cores). "
        f"1-min load average {res['load_before']:.1f} before / {res['load_after']:.1f} after the run "
        f"(other jobs on the machine inflate tails); process priority nice {args.nice:+d} "
        "(benchmark, workers and pushers; Redis unchanged).",
        "View: 9 aggregations (count/sum/mean/max over 1h and 1d, last_distinct_n) on a 4-partition stream source.",
        "",
        "## Freshness (push returns → value visible in `get_features`)",
        "",
        f"Single-event pushes paced at {args.rate:.0f} events/s for {seconds:.0f} s from {args.procs} pusher processes x "
        f"{args.threads} threads; "
        "1 worker process. `push` returns once the worker has applied the event (read-after-write), and a",
        "`get_features` right after it confirms the new count (0 mismatches expected).",
        "",
        "| mode | achieved rate | p50 push→visible | p99 push→visible | p99 push→confirmed read | mismatches |",
        "|---|---|---|---|---|---|",
        f"| Redis + 1 worker | {f['achieved_rate']:.0f}/s | {f['push_p50']:.2f} ms | {f['push_p99']:.2f} ms | "
        f"{f['confirm_p99']:.2f} ms | {f['errors']} |",
        f"| Redis + 1 worker, source with partitions=1 | {p1['achieved_rate']:.0f}/s | {p1['push_p50']:.2f} ms | "
        f"{p1['push_p99']:.2f} ms | {p1['confirm_p99']:.2f} ms | {p1['errors']} |",
        f"| Redis + 1 worker (1/5 of the rate) | {lo['achieved_rate']:.0f}/s | {lo['push_p50']:.2f} ms | "
        f"{lo['push_p99']:.2f} ms | {lo['confirm_p99']:.2f} ms | {lo['errors']} |",
        f"| Redis + 1 worker, one sequential pusher (unpaced) | {sq['achieved_rate']:.0f}/s | {sq['push_p50']:.2f} ms | "
        f"{sq['push_p99']:.2f} ms | {sq['confirm_p99']:.2f} ms | {sq['errors']} |",
        f"| embedded sqlite (in-process apply + offline append) | {s['achieved_rate']:.0f}/s | {s['push_p50']:.2f} ms | "
        f"{s['push_p99']:.2f} ms | {s['confirm_p99']:.2f} ms | {s['errors']} |",
        "",
        f"Durable-only Redis push (`wait=False`, one Lua script of XADDs): p50 {res['durable_only']['p50']:.2f} ms, "
        f"p99 {res['durable_only']['p99']:.2f} ms.",
        f"Target p99 ≤ 20 ms at 1,000 events/s: **{ok_f}** ({f['push_p99']:.1f} ms). "
        "(Tecton publishes ~100 ms freshness, ingest API p99 108–165 ms.)",
        "",
        "## Sustained ingest",
        "",
        f"{n_ingest:,} events (10k users, out of order within 10 min) pushed in bulk pushes of 500 (`wait=False`:",
        "durable in the stream) while idle worker processes (`context-store worker`) run; the clock starts at the first",
        "push and stops when every event is applied online (resp. also appended to the offline log and acknowledged).",
        "",
        "| workers | applied online | incl. offline log (Lance) + XACK | durable push (bulk 500) |",
        "|---|---|---|---|",
        f"| 1 | {i1['online_rate']:,.0f} events/s | {i1['acked_rate']:,.0f} events/s | {i1['push_rate']:,.0f} events/s |",
        f"| 2 | {i2['online_rate']:,.0f} events/s | {i2['acked_rate']:,.0f} events/s | {i2['push_rate']:,.0f} events/s |",
        "",
        f"Target ≥ 20,000 events/s: **{ok_i}**. On 2 cores a second worker process competes with the first and with",
        "Redis for CPU, so it mostly adds failover rather than throughput here; on more cores partitions spread.",
        "",
        "## How the numbers come about",
        "",
        "- Push (Redis): validate → one Lua script `XADD`s one Arrow-IPC entry per touched partition (all or nothing;",
        "  optional backlog limit `redis_stream_maxlen` answers 429 instead of trimming) → wait for the worker's",
        "  pub/sub announcement of the applied offset (fallback: re-read the applied offsets every 50 ms).",
        "- Worker step: `XREADGROUP` (block 20 ms) over its leased partitions → per partition (partitions on parallel",
        "  threads, overlapping their Redis round trips): decode, fences,",
        "  watermark, the view transform, `OnlineStore.apply_events` (state + applied offset in one Lua script) →",
        "  announce. Offline appends (Lance) and `XACK` run on a background thread about once a second.",
        "- Most worker CPU is the tile update inside `apply_events` (shared with batch materialization), paid per",
        "  (partition, view) batch: with single-event pushes spread over 4 partitions each step makes ~4 small",
        "  applies, so one worker saturates sooner than with 1 partition (the partitions=1 row). A backlog",
        "  arrives in big batches and drains far faster than single-event pushes.",
        "- Freshness tails on this box are CPU scheduling: pushers, the worker, Redis and other jobs share 2 cores;",
        "  the sequential-pusher row shows the path's own latency. The paced runs are open-loop but bounded by the",
        "  8 pusher threads: when latency grows the achieved rate falls below the target rate.",
        "- Exactly-once is tested, not benchmarked: `tests/test_stream_crash.py` kills a worker (SIGKILL) twice",
        "  during 50,000 events; online aggregates and the offline log match a recomputation exactly.",
        "",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.2))
        xs = np.sort(np.asarray(f["samples"]))
        ax.plot(xs, np.arange(1, len(xs) + 1) / len(xs), label=f"Redis + 1 worker ({f['achieved_rate']:.0f}/s)")
        ys = np.sort(np.asarray(s["samples"]))
        ax.plot(ys, np.arange(1, len(ys) + 1) / len(ys), label=f"embedded sqlite ({s['achieved_rate']:.0f}/s)")
        ax.axvline(20, color="grey", ls="--", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("push → visible (ms)")
        ax.set_ylabel("CDF")
        ax.set_title(f"Freshness (target rate {args.rate:.0f} events/s)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(path.with_suffix(".png"), dpi=120)
    except Exception as e:  # noqa: BLE001 - the plot is optional
        print(f"plot skipped: {e}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
