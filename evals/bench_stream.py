"""Streaming benchmark: freshness (push -> visible in get_features) and sustained ingest rate.

    python -m evals.bench_stream            # 15 s runs at 1,000 events/s; 200k-event ingest runs
    python -m evals.bench_stream --quick    # 5 s; 60k events
    python -m evals.bench_stream --offline-delay   # only the offline completeness delay (3 x 10 s)

Against the local Redis (``--redis``, default redis://127.0.0.1:6379/0). Workers run as separate
``context-store worker`` processes (as in production: a worker container applies, clients push).

- freshness (the issue's definition): open-loop single-event pushes at ``--rate`` that return once
  durable; an observer hears the commit's own applied-offset announcement and reads every 10th
  event back. With 1 and 2 worker processes.
- read-after-write: ``push`` waits until visible (the SDK default), from ``--procs`` processes x
  ``--threads`` pool threads, open loop; every push read back; plus one sequential pusher.
- ingest: a backlog of N events is made durable in the streams (bulk pushes of 500), then 1 or 2
  worker processes drain it; rate = N / (time until every entry is applied and acknowledged).

Writes ``evals/results/stream.md`` (+ ``stream.png``).
"""

from __future__ import annotations

import argparse
import gc
import json
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
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import context_store as cs  # noqa: E402
from context_store.compute.stream.online_adapter import applied_offset  # noqa: E402

DEFINITIONS = """
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
"""
SCHEMA = pa.schema(
    [
        ("user_id", pa.string()),
        ("ts", pa.timestamp("us", tz="UTC")),
        ("amount", pa.float64()),
        ("merchant", pa.string()),
    ]
)


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
        cmd = [
            sys.executable,
            "-c",
            "from context_store.cli.stream import worker; worker()",
            "--repo",
            str(store.config.repo),
            "--workspace",
            store.workspace,
            "--online-store",
            redis_url,
        ]
        # BENCH_WORKER_LOG=path keeps the workers' logs (lease moves, claims, failed steps)
        err = open(os.environ["BENCH_WORKER_LOG"], "ab") if os.environ.get("BENCH_WORKER_LOG") else subprocess.DEVNULL
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err))
    log = store.ingestor.stream_log
    deadline = time.monotonic() + 30
    parts = store.definitions.sources["transactions"].partitions
    share = -(-parts // n)
    while time.monotonic() < deadline:  # every partition owned, by n workers, each its fair share
        owners = [log.lease_owner("transactions", p) for p in range(parts)]
        # (a partition that moves during a run is unowned until the next rebalance, up to ~1 s)
        if all(owners) and len(set(owners)) == n and max(owners.count(o) for o in owners) <= share:
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


def freshness(
    store: cs.ContextStore, rate: float, seconds: float, threads: int, t_start: float | None = None, tag: str = ""
) -> dict[str, Any]:
    """Open-loop single-event pushes at ``rate``: a dispatcher thread hands each event to a pool of
    ``threads`` at its scheduled time (so a slow push never slows the offered rate), and per push
    records the latency until visible (``push`` waits for read-after-write) and until a
    ``get_features`` confirms the new count; also how late the dispatch was (open-loop fidelity)."""
    from concurrent.futures import ThreadPoolExecutor

    now = datetime.now(UTC)
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
    # From the scheduled start (waiting for the other pusher processes to start does not count)
    # to the last push's completion: below the offered rate when the pool could not keep up.
    wall = time.perf_counter() - max(base, wall)
    return {
        "n": len(push_ms),
        "wall": wall,
        "errors": len(errors),
        "push": push_ms,
        "confirm": confirm_ms,
        "sched": sched_ms,
        "lag": lag_ms,
        "error_samples": errors[:3],
    }


def freshness_observed(store: cs.ContextStore, rate: float, seconds: float, confirm_every: int = 10) -> dict[str, Any]:
    """The issue's definition, open loop: single-event pushes paced at ``rate`` by one thread,
    each returning once durable (``wait=False``); an observer thread hears the workers'
    applied-offset announcements, which the commit script itself publishes after writing (so
    an announced event is visible to any read issued after it). Freshness = push returned ->
    announcement covering the event received. Every ``confirm_every``-th event is also read
    back with ``get_features`` right then and its new count checked (mismatches reported).
    Reading every event back would double this load generator's CPU, which on a 2-core box
    shares the cores with the worker and Redis."""
    import queue
    from collections import deque

    import redis

    log = store.ingestor.stream_log
    r = redis.Redis.from_url(store.config.online_store)
    ps = r.pubsub(ignore_subscribe_messages=True)
    ps.subscribe(log.applied_channel)
    while ps.get_message(timeout=0.1) is not None:  # drain the subscribe confirmation
        pass
    now = datetime.now(UTC)
    total = int(rate * seconds)
    run_id = uuid.uuid4().hex[:6]
    users = [f"o{run_id}_{i}" for i in range(1000)]  # a user recurs once per 1,000 events (~1 s)
    q: Any = queue.SimpleQueue()
    vis_ms: list[float] = []
    confirm_ms: list[float] = []
    lag_ms: list[float] = []
    series: list[tuple[float, float]] = []  # (push returned, s since start; freshness ms)
    errors: list[str] = []
    state = {"done": 0, "stop": False}

    def observer() -> None:
        pending: dict[int, Any] = {}
        seen: dict[int, tuple[int, float]] = {}  # partition -> (announced offset, when heard)
        while state["done"] < total and not state["stop"]:
            msg = ps.get_message(timeout=0.005)
            if msg and msg.get("type") == "message":
                t_msg = time.perf_counter()
                for (src, p), off in log.parse_applied(msg["data"]):
                    if src == "transactions" and off > seen.get(p, (-1, 0.0))[0]:
                        seen[p] = (off, t_msg)
            while True:
                try:
                    ev = q.get_nowait()
                except queue.Empty:
                    break
                pending.setdefault(ev[0], deque()).append(ev)
            ready = []
            for p, dq in pending.items():
                off_seen, t_seen = seen.get(p, (-1, 0.0))
                while dq and dq[0][1] <= off_seen:
                    e = dq.popleft()
                    ready.append((e, max(t_seen, e[3])))  # announced before we knew: visible on return
            if not ready:
                continue
            for e, t_vis in ready:
                vis_ms.append((t_vis - e[3]) * 1000)
                series.append((e[3] - wall, (t_vis - e[3]) * 1000))
            check = [e for e, _ in ready if e[6] % confirm_every == 0]
            if check:
                got = store.get_features_batch(
                    "fraud", [{"user_id": e[4]} for e in check], request_time=now + timedelta(seconds=1)
                )
                t = time.perf_counter()
                for e, fv in zip(check, got):
                    n = fv.feature_values["txn_stats.amount_count_1h"]
                    if n != e[5]:
                        errors.append(f"{e[4]}: expected {e[5]}, got {n}")
                    confirm_ms.append((t - e[3]) * 1000)
            state["done"] += len(ready)

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
            res = store.ingestor.push(
                "transactions", [{"user_id": u, "ts": now, "amount": 1.0, "merchant": "m"}], wait=False
            )
            t1 = time.perf_counter()
            lag_ms.append((t0 - t_sched) * 1000)
            ((p, off),) = res.offsets.items()
            q.put((int(p), int(off), t0, t1, u, counts[u], k))
        push_wall = time.perf_counter() - wall
        th.join(30)
    finally:
        state["stop"] = True
        th.join(5)
        ps.close()
        r.close()
    missing = total - state["done"]
    return {
        "n": len(vis_ms),
        "achieved_rate": total / push_wall,
        "errors": len(errors) + missing,
        "error_samples": errors[:3] + ([f"{missing} events never announced"] if missing else []),
        "push_p50": pct(vis_ms, 50),
        "push_p99": pct(vis_ms, 99),
        "n_confirmed": len(confirm_ms),
        "confirm_p50": pct(confirm_ms, 50),
        "confirm_p99": pct(confirm_ms, 99),
        "lag_p99": pct(lag_ms, 99),
        "samples": vis_ms,
        "max": max(vis_ms) if vis_ms else float("nan"),
        "series": series,
    }


def sequential(store: cs.ContextStore, n: int) -> dict[str, Any]:
    """One pusher, closed loop (the next push when the previous is visible): the path's own latency."""
    now = datetime.now(UTC)
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
    return {
        "n": n,
        "wall": wall,
        "errors": errors,
        "push": push_ms,
        "confirm": confirm_ms,
        "sched": push_ms,
        "lag": [0.0],
    }


def _fresh_child(
    repo: str, workspace: str, online: str, rate: float, seconds: float, threads: int, t_start: float, tag: str
) -> dict[str, Any]:
    store = cs.ContextStore(repo, workspace=workspace, online_store=online)
    try:
        store.push("transactions", [{"user_id": "warm" + tag, "ts": datetime.now(UTC), "amount": 1.0}])
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
        futs = [
            ex.submit(
                _fresh_child,
                str(store.config.repo),
                store.workspace,
                store.config.online_store,
                rate / procs,
                seconds,
                threads,
                t_start,
                f"p{i}",
            )
            for i in range(procs)
        ]
        parts = [f.result() for f in futs]
    push = [x for p in parts for x in p["push"]]
    confirm = [x for p in parts for x in p["confirm"]]
    sched = [x for p in parts for x in p["sched"]]
    lag = [x for p in parts for x in p["lag"]]
    wall = max(p["wall"] for p in parts)
    return {
        "n": len(push),
        "achieved_rate": len(push) / wall,
        "errors": sum(p["errors"] for p in parts),
        "error_samples": [e for p in parts for e in p["error_samples"]][:3],
        "push_p50": pct(push, 50),
        "push_p99": pct(push, 99),
        "confirm_p50": pct(confirm, 50),
        "confirm_p99": pct(confirm, 99),
        "samples": push,
        "sched_p99": pct(sched, 99),
        "lag_p99": pct(lag, 99),
        "max": max(push, default=float("nan")),
    }


def summarize(r: dict[str, Any]) -> dict[str, Any]:
    return {
        "n": r["n"],
        "achieved_rate": r["n"] / r["wall"],
        "errors": r["errors"],
        "push_p50": pct(r["push"], 50),
        "push_p99": pct(r["push"], 99),
        "confirm_p50": pct(r["confirm"], 50),
        "confirm_p99": pct(r["confirm"], 99),
        "samples": r["push"],
        "sched_p99": pct(r["sched"], 99),
        "lag_p99": pct(r["lag"], 99),
        "max": max(r["push"], default=float("nan")),
    }


def backlog(store: cs.ContextStore, n: int, users: int = 10_000, chunk: int = 500) -> tuple[dict[int, int], float]:
    """Make ``n`` events durable in the streams (no worker running); returns last offsets, push rate."""
    rng = np.random.default_rng(1)
    now_us = int(time.time() * 1e6)
    ts = now_us - rng.integers(0, 600_000_000, n)  # the last 10 minutes, out of order (< lateness)
    table = pa.table(
        {
            "user_id": pa.array([f"u{i}" for i in rng.integers(0, users, n)]),
            "ts": pa.array(ts, pa.timestamp("us", tz="UTC")),
            "amount": pa.array(rng.lognormal(3, 1, n)),
            "merchant": pa.array([f"m{i}" for i in rng.integers(0, 50, n)]),
        }
    )
    last: dict[int, int] = {}
    t0 = time.perf_counter()
    for i in range(0, n, chunk):
        res = store.ingestor.push("transactions", table.slice(i, chunk), wait=False)
        for p, off in res.offsets.items():
            last[p] = max(last.get(p, 0), off)
    return last, n / (time.perf_counter() - t0)


def drain_rate(store: cs.ContextStore, n: int, workers: int, redis_url: str) -> dict[str, Any]:
    """Workers already running and idle; the clock starts with the first push and stops when every
    event is applied online (and, second number, appended offline and acknowledged)."""
    view = store.definitions.feature_view("txn_stats")
    log = store.ingestor.stream_log
    keys = [log.stream_key("transactions", p) for p in range(4)]
    procs = start_workers(store, workers, redis_url)
    try:
        t0 = time.perf_counter()
        last, push_rate = backlog(store, n)
        t_applied = None
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if t_applied is None and all(applied_offset(store.online, view, p) >= off for p, off in last.items()):
                t_applied = time.perf_counter() - t0
            if t_applied is not None and log.lag(keys) == 0:
                break
            time.sleep(0.01)
        t_acked = time.perf_counter() - t0
    finally:
        stop_workers(procs)
    assert t_applied is not None, "workers did not finish"
    return {
        "workers": workers,
        "events": n,
        "online_rate": n / t_applied,
        "acked_rate": n / t_acked,
        "push_rate": push_rate,
        "t_online": t_applied,
        "t_acked": t_acked,
    }


def offline_delay(store: cs.ContextStore, rate: float, seconds: float) -> dict[str, Any]:
    """Offline completeness delay: single-event pushes paced at ``rate`` by one thread, each
    returning once durable (``wait=False``); an observer polls the offline log every 20 ms and
    records, per event, when both ``src__transactions`` and ``fv__txn_stats`` hold it (each is
    appended whole per worker batch in stream order, tagged ``_partition``/``_offset``, so an
    event is there once the table's highest offset of its partition reaches it). Delay = push
    returned -> first poll that finds it (resolution: the poll period plus a read)."""
    off = store.offline
    tables = ("src__transactions", "fv__txn_stats")
    parts = store.definitions.sources["transactions"].partitions
    seen = {(t, p): -1 for t in tables for p in range(parts)}
    pending: list[tuple[int, int, float]] = []  # (partition, offset, push returned)
    delays_ms: list[float] = []
    lock = threading.Lock()
    state = {"stop": False, "polls": 0, "poll_ms": 0.0}

    def poll() -> None:
        t0 = time.perf_counter()
        for t in tables:
            if not off.exists(t):
                continue
            floor = min(seen[(t, p)] for p in range(parts))
            got = off.read(t, columns=["_partition", "_offset"], filter=f"_offset > {floor}")
            if got.num_rows == 0:
                continue
            g = got.group_by("_partition").aggregate([("_offset", "max")])
            for p, o in zip(g.column("_partition").to_pylist(), g.column("_offset_max").to_pylist()):
                seen[(t, p)] = max(seen[(t, p)], int(o))
        now = time.perf_counter()
        state["polls"] += 1
        state["poll_ms"] += (now - t0) * 1000
        with lock:
            keep = []
            for p, o, t_ret in pending:
                if all(seen[(t, p)] >= o for t in tables):
                    delays_ms.append((now - t_ret) * 1000)
                else:
                    keep.append((p, o, t_ret))
            pending[:] = keep

    def observer() -> None:
        while not state["stop"] or pending:
            poll()
            time.sleep(0.02)
            if state["stop"] and time.perf_counter() - state["t_end"] > 30:
                break  # events never offline: reported as missing

    obs = threading.Thread(target=observer, daemon=True)
    obs.start()
    now_ts = datetime.now(UTC)
    total = int(rate * seconds)
    users = [f"x{uuid.uuid4().hex[:6]}_{i}" for i in range(1000)]
    base = time.perf_counter() + 0.05
    for k in range(total):
        delay = base + k / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        res = store.ingestor.push(
            "transactions", [{"user_id": users[k % 1000], "ts": now_ts, "amount": 1.0, "merchant": "m"}], wait=False
        )
        t_ret = time.perf_counter()
        ((p, o),) = res.offsets.items()
        with lock:
            pending.append((int(p), int(o), t_ret))
    wall = time.perf_counter() - base
    state["t_end"] = time.perf_counter()
    state["stop"] = True
    obs.join(60)
    return {
        "n": total,
        "achieved_rate": total / wall,
        "p50": pct(delays_ms, 50),
        "p99": pct(delays_ms, 99),
        "max": max(delays_ms) if delays_ms else float("nan"),
        "missing": len(pending),
        "poll_ms": state["poll_ms"] / max(1, state["polls"]),
    }


def offline_delay_main(args: Any) -> None:
    """``--offline-delay``: only the offline completeness delay (1 worker process, ``--repeats`` runs)."""
    seconds = 5.0 if args.quick else 10.0
    tmp = Path(tempfile.mkdtemp(prefix="cs-bench-offline-"))
    ws = "bench" + uuid.uuid4().hex[:8]
    load_before = os.getloadavg()
    runs: list[dict[str, Any]] = []
    try:
        store = make_repo(tmp / "offline", args.redis, ws)
        procs = start_workers(store, 1, args.redis)
        try:
            sequential(store, 50)  # warm up
            for i in range(args.repeats):
                runs.append(r := offline_delay(store, args.rate, seconds))
                print(
                    f"offline delay run {i + 1}: {r['achieved_rate']:.0f}/s, p50 {r['p50']:.0f} ms, "
                    f"p99 {r['p99']:.0f} ms, max {r['max']:.0f} ms, missing {r['missing']}",
                    flush=True,
                )
        finally:
            stop_workers(procs)
            store.close()
    finally:
        cleanup(args.redis, ws)
        shutil.rmtree(tmp, ignore_errors=True)
    load_after = os.getloadavg()

    def span(key: str) -> str:
        vals = [r[key] for r in runs]
        return f"{min(vals):.0f}-{max(vals):.0f}"

    lines = [
        "# Streaming: offline completeness delay",
        "",
        f"`python -m evals.bench_stream --offline-delay{' --quick' if args.quick else ''} --rate {args.rate:g} "
        f"--repeats {args.repeats}` — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()}, "
        f"{os.cpu_count()} cores (shared with other jobs), Python {platform.python_version()}, local Redis. "
        f"Load average (1/5/15 min) {load_before[0]:.1f}/{load_before[1]:.1f}/{load_before[2]:.1f} before, "
        f"{load_after[0]:.1f}/{load_after[1]:.1f}/{load_after[2]:.1f} after.",
        "",
        "One `context-store worker` process (default `--flush-interval 1.0`); single-event pushes paced at the "
        f"rate by one thread for {seconds:.0f} s per run, each returning once durable (`wait=False`). Delay = push "
        "returned -> the event is in both `src__transactions` and `fv__txn_stats` (observer polls every 20 ms; "
        f"mean poll {sum(r['poll_ms'] for r in runs) / max(1, len(runs)):.0f} ms). Bound: 2,000 ms.",
        "",
        "| run | events | achieved rate | p50 | p99 | max | missing |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for i, r in enumerate(runs, 1):
        lines.append(
            f"| {i} | {r['n']:,} | {r['achieved_rate']:.0f}/s | {r['p50']:.0f} ms | {r['p99']:.0f} ms | "
            f"{r['max']:.0f} ms | {r['missing']} |"
        )
    lines += [
        "",
        f"Over the runs: p50 {span('p50')} ms, p99 {span('p99')} ms, max {span('max')} ms (min-max).",
        "",
    ]
    Path(args.offline_out).write_text("\n".join(lines))
    print(f"wrote {args.offline_out}")


def cleanup(redis_url: str, workspace: str) -> None:
    import redis

    r = redis.Redis.from_url(redis_url)
    for k in r.scan_iter(match=f"cs:{workspace}:*", count=1000):
        r.delete(k)
    r.close()


def _fmt(r: dict[str, Any]) -> str:
    return (
        f"{r['achieved_rate']:.0f}/s: p50 {r['push_p50']:.2f} ms p99 {r['push_p99']:.2f} ms; "
        f"read-back p99 {r['confirm_p99']:.2f} ms; mismatches {r['errors']} {r.get('error_samples') or ''}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--redis", default=os.environ.get("CONTEXT_STORE_REDIS_URL", "redis://127.0.0.1:6379/0"))
    ap.add_argument("--rate", type=float, default=1000.0)
    ap.add_argument("--procs", type=int, default=2, help="Pusher processes for the read-after-write runs.")
    ap.add_argument("--threads", type=int, default=16, help="Pusher pool threads per process (open loop).")
    ap.add_argument(
        "--nice",
        type=int,
        default=0,
        help="Scheduling priority for this run and its worker/pusher processes (e.g. -10 on a shared "
        "machine, as root); Redis keeps its own.",
    )
    ap.add_argument("--out", default=str(ROOT / "evals" / "results" / "stream.md"))
    ap.add_argument(
        "--offline-delay",
        action="store_true",
        help="Only measure the offline completeness delay (push returned -> row in the offline log).",
    )
    ap.add_argument("--repeats", type=int, default=3, help="Runs of the offline-delay measurement.")
    ap.add_argument("--offline-out", default=str(ROOT / "evals" / "results" / "stream-offline.md"))
    args = ap.parse_args()
    if args.nice:
        os.nice(args.nice)  # inherited by the worker and pusher processes
    if args.offline_delay:
        offline_delay_main(args)
        return
    seconds = 5.0 if args.quick else 15.0
    n_ingest = 60_000 if args.quick else 200_000
    tmp = Path(tempfile.mkdtemp(prefix="cs-bench-stream-"))
    results: dict[str, Any] = {"load_before": os.getloadavg()[0]}
    workspaces: list[str] = []
    try:
        # 1. freshness at the target rate, 1 and 2 worker processes (the definition)
        for n_workers in (1, 2):
            ws = "bench" + uuid.uuid4().hex[:8]
            workspaces.append(ws)
            store = make_repo(tmp / f"fresh{n_workers}", args.redis, ws)
            procs = start_workers(store, n_workers, args.redis)
            try:
                sequential(store, 50)  # warm up
                # The harness's own heap (earlier phases' samples) must not add GC pauses to these
                # timings: freeze what exists now (the product's objects included) before measuring.
                gc.collect()
                gc.freeze()
                results[f"fresh_{n_workers}"] = r = freshness_observed(store, args.rate, seconds)
                if os.environ.get("BENCH_DUMP"):
                    Path(os.environ["BENCH_DUMP"] + f".{n_workers}.json").write_text(json.dumps(r["series"]))
                print(f"freshness, {n_workers} worker(s), durable push -> visible at {_fmt(r)}", flush=True)
                if n_workers == 1:
                    # 2. read-after-write pushes (the SDK default): the push returns once visible
                    results["raw_seq"] = r = summarize(sequential(store, 500 if args.quick else 1000))
                    print(f"read-after-write, one sequential pusher at {_fmt(r)}", flush=True)
                    for key, rate in (("raw_low", args.rate / 5), ("raw", args.rate)):
                        results[key] = r = freshness_procs(store, rate, seconds, args.procs, args.threads)
                        print(f"read-after-write, {args.procs}x{args.threads} pushers at {_fmt(r)}", flush=True)
                    lat = []
                    for i in range(500):
                        t0 = time.perf_counter()
                        store.ingestor.push(
                            "transactions",
                            [{"user_id": f"d{i % 50}", "ts": datetime.now(UTC), "amount": 1.0}],
                            wait=False,
                        )
                        lat.append((time.perf_counter() - t0) * 1000)
                    results["durable_only"] = {"p50": pct(lat, 50), "p99": pct(lat, 99)}
            finally:
                stop_workers(procs)
                store.close()
        # 3. embedded (sqlite) freshness for reference: push applies in-process
        store = make_repo(tmp / "embedded", "sqlite", "default")
        freshness(store, 50, 1.0, 1)
        results["fresh_sqlite"] = r = summarize(freshness(store, 100, min(seconds, 5.0), 1))
        print(f"embedded sqlite at {_fmt(r)}", flush=True)
        store.close()
        # 4. sustained ingest with 1 and 2 worker processes
        for n_workers in (1, 2):
            ws = "bench" + uuid.uuid4().hex[:8]
            workspaces.append(ws)
            store = make_repo(tmp / f"ingest{n_workers}", args.redis, ws)
            results[f"ingest_{n_workers}"] = r = drain_rate(store, n_ingest, n_workers, args.redis)
            print(
                f"ingest with {n_workers} worker(s): {r['online_rate']:,.0f} events/s applied online, "
                f"{r['acked_rate']:,.0f} events/s incl. offline log + ack (push {r['push_rate']:,.0f}/s)",
                flush=True,
            )
            store.close()
    finally:
        for ws in workspaces:
            cleanup(args.redis, ws)
        shutil.rmtree(tmp, ignore_errors=True)
    results["load_after"] = os.getloadavg()[0]
    write_report(Path(args.out), results, args, seconds, n_ingest)


def _row(name: str, r: dict[str, Any]) -> str:
    return (
        f"| {name} | {r['achieved_rate']:.0f}/s | {r['push_p50']:.2f} ms | {r['push_p99']:.2f} ms | "
        f"{r.get('max', float('nan')):.1f} ms | {r['confirm_p99']:.2f} ms | {r['errors']} |"
    )


def write_report(path: Path, res: dict[str, Any], args: Any, seconds: float, n_ingest: int) -> None:
    f1, f2, s = res["fresh_1"], res["fresh_2"], res["fresh_sqlite"]
    i1, i2 = res["ingest_1"], res["ingest_2"]
    ok_f = (
        "meets"
        if max(f1["push_p99"], f2["push_p99"]) <= 20
        and min(f1["achieved_rate"], f2["achieved_rate"]) >= 0.98 * args.rate
        else "misses"
    )
    ok_i = "meets" if max(i1["online_rate"], i2["online_rate"]) >= 20_000 else "misses"
    lines = [
        "# Streaming: freshness and ingest rate",
        "",
        f"`python -m evals.bench_stream{' --quick' if args.quick else ''}` — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, local Redis "
        "(same machine: load generator, workers and Redis share the 2 cores). "
        f"1-min load average {res['load_before']:.1f} before / {res['load_after']:.1f} after the run; "
        f"process priority nice {args.nice:+d}.",
        "View: 9 aggregations (count/sum/mean/max over 1h and 1d, last_distinct_n) on a 4-partition stream source;",
        "workers are `context-store worker` processes.",
        "",
        "## Freshness (push returns → value visible in `get_features`)",
        "",
        f"Open loop: single-event pushes paced at {args.rate:.0f} events/s for {seconds:.0f} s by one thread, each "
        "returning once durable in the stream. An observer hears the workers' applied-offset announcements, which the",
        "commit script publishes itself after writing the state (an announced event is visible to any later read):",
        "freshness = push returned → announcement covering the event. Every 10th event is read back with",
        '`get_features` at that moment and its count checked ("read-back"; mismatches must be 0). The harness',
        "runs `gc.freeze()` before each phase so that its own heap of earlier samples adds no GC pauses.",
        "",
        "| mode | achieved rate | p50 | p99 | max | p99 read-back | mismatches |",
        "|---|---|---|---|---|---|---|",
        _row("Redis + 1 worker", f1),
        _row("Redis + 2 workers", f2),
        "",
        f"Target p99 ≤ 20 ms at {args.rate:,.0f} events/s: **{ok_f}**. (Tecton publishes ~100 ms freshness, "
        "ingest API p99 108–165 ms.)",
        "",
        "### Read-after-write pushes (the SDK default)",
        "",
        f"`push` returns only once the event is visible; latency = the push call. {args.procs} pusher processes × "
        f"{args.threads} threads, open loop (a dispatcher hands each event to the pool at its time), and every push",
        "is read back. This load generator needs ~3× the CPU per event of the one above, so on 2 shared cores it",
        "cannot offer the full rate: the achieved rate is what it managed.",
        "",
        "| mode | achieved rate | p50 | p99 | max | p99 read-back | mismatches |",
        "|---|---|---|---|---|---|---|",
        _row(f"offered {args.rate:.0f}/s", res["raw"]),
        _row(f"offered {args.rate / 5:.0f}/s", res["raw_low"]),
        _row("one sequential pusher (closed loop)", res["raw_seq"]),
        _row("embedded sqlite (in-process apply + offline append)", s),
        "",
        f"Durable-only Redis push (`wait=False`, one Lua script of XADDs): p50 {res['durable_only']['p50']:.2f} ms, "
        f"p99 {res['durable_only']['p99']:.2f} ms.",
        "",
        "## Sustained ingest",
        "",
        f"{n_ingest:,} events (10k users, out of order within 10 min) pushed in bulk pushes of 500 (`wait=False`:",
        "durable in the stream) while idle worker processes run; the clock starts at the first push and stops when",
        "every event is applied online (resp. also appended to the offline log and acknowledged).",
        "",
        "| workers | applied online | incl. offline log (Lance) + XACK | durable push (bulk 500) |",
        "|---|---|---|---|",
        f"| 1 | {i1['online_rate']:,.0f} events/s | {i1['acked_rate']:,.0f} events/s | "
        f"{i1['push_rate']:,.0f} events/s |",
        f"| 2 | {i2['online_rate']:,.0f} events/s | {i2['acked_rate']:,.0f} events/s | "
        f"{i2['push_rate']:,.0f} events/s |",
        "",
        f"Target ≥ 20,000 events/s: **{ok_i}**. On 2 cores a second worker process competes with the first and with",
        "Redis for CPU, so it mostly adds failover rather than throughput here; on more cores partitions spread.",
        "",
        "## How the numbers come about",
        "",
        "- Push (Redis): validate → one Lua script `XADD`s one Arrow-IPC entry per touched partition (all or nothing;",
        "  optional backlog limit `redis_stream_maxlen` answers 429 instead of trimming); read-after-write pushes then",
        "  wait for the announcement (fallback: re-read the applied offsets every 50 ms).",
        "- Worker round: `XREADGROUP` over its leased partitions → per partition decode, fences, watermark, the view",
        "  transform → ONE Lua script for the whole round: every view's tiles (rows of all partitions merged), each",
        "  partition's applied offset compare-and-set against the worker's fence, and the announcement. Three round",
        "  trips per round (read, state read, commit) whatever the number of partitions. Offline appends (Lance)",
        "  and `XACK` run on a background thread about once a second.",
        "- The tail used to be that flush: it took a second's worth of one-event Arrow tables (thousands) and, in",
        "  concatenating and freeing them, held the GIL for tens of ms, stalling the applying thread (p99 ~40 ms at",
        "  1,000 events/s; with flushes disabled p99 was 7 ms). The worker now merges buffered batches as they come.",
        "- Exactly-once is tested, not benchmarked: `tests/compute/stream/test_stream_crash.py` kills a worker",
        "  (SIGKILL) twice during 50,000 events; online aggregates and the offline log match a recomputation exactly.",
        "",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 3.4))
        for r, label in ((f1, "1 worker"), (f2, "2 workers"), (res["raw"], "read-after-write pushes")):
            xs = np.sort(np.maximum(np.asarray(r["samples"]), 0.01))
            ax.plot(xs, np.arange(1, len(xs) + 1) / len(xs), label=f"{label} ({r['achieved_rate']:.0f}/s)")
        ax.axvline(20, color="grey", ls="--", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("push → visible (ms)")
        ax.set_ylabel("CDF")
        ax.set_title(f"Freshness, offered {args.rate:.0f} events/s")
        ax.legend(fontsize=8)
        ts = np.asarray(f1["series"])
        if len(ts):
            bx.plot(ts[:, 0], ts[:, 1], ".", ms=1.5)
            bx.axhline(20, color="grey", ls="--", lw=0.8)
            bx.set_xlabel("time into the run (s)")
            bx.set_ylabel("push → visible (ms)")
            bx.set_title("Freshness over time, 1 worker")
        fig.tight_layout()
        fig.savefig(path.with_suffix(".png"), dpi=120)
    except Exception as e:  # noqa: BLE001 - the plot is optional
        print(f"plot skipped: {e}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
