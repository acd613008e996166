"""Online serving benchmark: get_features latency vs the raw Redis floor, and materialization rate.

    python -m evals.bench_online [--quick] [--redis redis://127.0.0.1:6379/0]

One process, one Redis. The floor is redis-py ``HGETALL`` of a 10-field hash, measured in the
same run, interleaved with the measured calls (so machine noise hits both alike). Entities are
drawn at random from all materialized users (no hot-key caching effects).
Writes evals/results/online.md (+ online_latency.png).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import context_store as cs  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"

DEFS = """
import context_store as cs
user = cs.Entity("user", join_keys=["user_id"])
txns = cs.FileSource("data/txns.parquet", timestamp_field="ts")
profiles = cs.FileSource("data/profiles.parquet", timestamp_field="ts")
AGGS = [
    cs.Aggregate("amount", "sum", "1h"), cs.Aggregate("amount", "count", "1d"), cs.Aggregate("amount", "mean", "7d"),
]
txn_stats = cs.FeatureView("txn_stats", [user], txns, aggregations=AGGS)                     # continuous windows
txn_stats_1h = cs.FeatureView("txn_stats_1h", [user], txns, aggregations=AGGS, aggregation_interval="1h")
user_profile = cs.FeatureView("user_profile", [user], profiles, ttl="30d", features=[
    cs.Field("age", cs.Int64), cs.Field("city", cs.String), cs.Field("score", cs.Float64),
    cs.Field("tenure_days", cs.Int64), cs.Field("credit_limit", cs.Float64), cs.Field("is_verified", cs.Bool),
    cs.Field("segment", cs.String)])
fraud_continuous = cs.FeatureService("fraud_continuous", [user_profile, txn_stats])
fraud_tiled = cs.FeatureService("fraud_tiled", [user_profile, txn_stats_1h])
"""


def make_data(root: Path, users: int, events: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    now_us = int(time.time() * 1e6)
    ts = now_us - rng.integers(0, 8 * 86400 * 10**6, events)
    ids = np.array([f"u{i}" for i in range(users)])
    txns = pa.table(
        {
            "user_id": pa.array(ids[rng.zipf(1.3, events) % users]),
            "ts": pa.array(ts, pa.timestamp("us", tz="UTC")),
            "amount": np.round(rng.lognormal(3, 1, events), 2),
        }
    )
    now = datetime.now(UTC)
    profiles = pa.table(
        {
            "user_id": pa.array(ids),
            "ts": pa.array([now - timedelta(days=1)] * users, pa.timestamp("us", tz="UTC")),
            "age": rng.integers(18, 90, users),
            "city": rng.choice(["Paris", "Oslo", "Lima", "Pune"], users),
            "score": rng.random(users),
            "tenure_days": rng.integers(0, 4000, users),
            "credit_limit": rng.random(users) * 1e4,
            "is_verified": rng.random(users) > 0.3,
            "segment": rng.choice(["a", "b", "c"], users),
        }
    )
    (root / "data").mkdir(parents=True, exist_ok=True)
    (root / "features.py").write_text(DEFS)
    pq.write_table(txns, root / "data" / "txns.parquet")
    pq.write_table(profiles, root / "data" / "profiles.parquet")


def timed(fn: Callable[[], Any], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        fn()
        out.append((time.perf_counter_ns() - t0) / 1000)
    return out


CPU: dict[str, float] = {}  # case -> this process's CPU µs per call (robust to a busy machine)


def interleaved(
    cases: dict[str, Callable[[], Any]], n: int, rounds: int = 5, warmup: int = 200
) -> dict[str, list[float]]:
    for fn in cases.values():
        timed(fn, warmup)
    res: dict[str, list[float]] = {k: [] for k in cases}
    cpu: dict[str, int] = {k: 0 for k in cases}
    for _ in range(rounds):
        for k, fn in cases.items():
            c0 = time.process_time_ns()
            res[k] += timed(fn, n // rounds)
            cpu[k] += time.process_time_ns() - c0
    for k in cases:
        CPU[k] = cpu[k] / 1000 / max(1, rounds * (n // rounds))
    return res


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(p * len(s)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller data and fewer samples (~30 s)")
    ap.add_argument("--redis", default=os.environ.get("CONTEXT_STORE_REDIS_URL", "redis://127.0.0.1:6379/0"))
    args = ap.parse_args()
    users, events, n = (2_000, 300_000, 3_000) if args.quick else (10_000, 2_000_000, 10_000)
    import redis

    tmp = Path(tempfile.mkdtemp(prefix="bench_online_"))
    ws = f"bench{random.getrandbits(24):06x}"
    lines: list[str] = []
    try:
        make_data(tmp, users, events)
        store = cs.ContextStore(tmp, online_store=args.redis, workspace=ws)
        store.apply()
        bf = store.backfill()
        store.online.clear()
        load0 = os.getloadavg()
        c0 = time.process_time()
        rep = store.materialize()
        mat_rows, mat_s, mat_cpu = rep.rows, rep.seconds, time.process_time() - c0
        rerun = store.materialize()  # incremental: only the watermark's tile is reloaded
        fs = store.features
        rng = random.Random(1)
        keys = [{"user_id": f"u{rng.randrange(users)}"} for _ in range(n)]
        it = {"i": 0}

        def nxt() -> dict[str, str]:
            it["i"] = (it["i"] + 1) % n
            return keys[it["i"]]

        r = redis.Redis.from_url(args.redis)
        fk = f"cs:{ws}:floor"
        r.hset(fk, mapping={f"feature_{i}": str(1000.5 + i) for i in range(10)})
        cases = {
            "floor: HGETALL 10-field hash": lambda: r.hgetall(fk),
            "get_features fraud_tiled (7 row + 3 window, interval 1h)": lambda: fs.get_features("fraud_tiled", nxt()),
            "get_features fraud_continuous (7 row + 3 exact windows)": lambda: fs.get_features(
                "fraud_continuous", nxt()
            ),
        }
        lat = interleaved(cases, n)
        batch_keys = [[{"user_id": f"u{rng.randrange(users)}"} for _ in range(100)] for _ in range(50)]
        bi = {"i": 0}

        def nb() -> list[dict[str, str]]:
            bi["i"] = (bi["i"] + 1) % len(batch_keys)
            return batch_keys[bi["i"]]

        def floor100() -> None:
            p = r.pipeline(transaction=False)
            for _ in range(100):
                p.hgetall(fk)
            p.execute()

        bn = max(200, n // 20)
        blat = interleaved(
            {
                "floor: pipeline of 100 HGETALL": floor100,
                "get_features_batch fraud_tiled x100": lambda: fs.get_features_batch("fraud_tiled", nb()),
                "get_features_batch fraud_continuous x100": lambda: fs.get_features_batch("fraud_continuous", nb()),
            },
            bn,
            warmup=20,
        )

        async def alat() -> dict[str, list[float]]:
            import redis.asyncio as aredis

            ar = aredis.Redis.from_url(args.redis)
            out: dict[str, list[float]] = {"async floor: HGETALL": [], "get_features_async fraud_tiled": []}
            for _ in range(200):
                await ar.hgetall(fk)
                await fs.get_features_async("fraud_tiled", nxt())
            for _ in range(5):
                for _ in range(n // 10):
                    t0 = time.perf_counter_ns()
                    await ar.hgetall(fk)
                    out["async floor: HGETALL"].append((time.perf_counter_ns() - t0) / 1000)
                for _ in range(n // 10):
                    t0 = time.perf_counter_ns()
                    await fs.get_features_async("fraud_tiled", nxt())
                    out["get_features_async fraud_tiled"].append((time.perf_counter_ns() - t0) / 1000)
            await ar.aclose()
            return out

        alats = asyncio.run(alat())
        # embedded default (SQLite) for reference
        sq = cs.ContextStore(tmp, workspace=ws)
        sq.config.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
        srep = sq.materialize()
        sfs = sq.features
        slat = interleaved(
            {
                "get_features fraud_tiled (SQLite, embedded)": lambda: sfs.get_features("fraud_tiled", nxt()),
                "get_features fraud_continuous (SQLite, embedded)": lambda: sfs.get_features("fraud_continuous", nxt()),
            },
            n // 2,
        )
        # Stream-style incremental applies (the stream worker's call): fresh events for random users.
        from context_store.state.tiles import ViewState

        apply_rates: dict[tuple[str, int], tuple[float, float]] = {}  # (view, batch) -> (events/s wall, CPU µs/event)
        nprng = np.random.default_rng(2)
        off = 0
        for vname in ("txn_stats", "txn_stats_1h"):
            st = ViewState(store.definitions.feature_views[vname], store.definitions.input_schemas[vname])
            for bs in (500, 1000, 5000):
                n_batches = max(4, (10_000 if args.quick else 40_000) // bs)
                batches = [
                    pa.table(
                        {
                            "user_id": pa.array([f"u{x}" for x in nprng.integers(0, users, bs)]),
                            "ts": pa.array(
                                int(time.time() * 1e6) - nprng.integers(0, 60 * 10**6, bs), pa.timestamp("us", tz="UTC")
                            ),
                            "amount": np.round(nprng.lognormal(3, 1, bs), 2),
                        }
                    )
                    for _ in range(n_batches)
                ]
                total, t0, c0 = 0, time.perf_counter(), time.process_time()
                for b in batches:
                    off += 1
                    total += store.online.apply_events(st, b, token=("bench", str(off)))
                wall, cpu = time.perf_counter() - t0, time.process_time() - c0
                assert store.online.apply_events(st, batches[0], token=("bench", str(off))) == 0  # replay: no-op
                apply_rates[(vname, bs)] = (total / wall, cpu / total * 1e6)
        load1 = os.getloadavg()
        sample = fs.get_features("fraud_continuous", {"user_id": "u1"}).feature_values
        r.delete(fk)
        store.online.clear()
        store.close()
        sq.close()
        r.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    floor = statistics.median(lat["floor: HGETALL 10-field hash"])
    bfloor = statistics.median(blat["floor: pipeline of 100 HGETALL"])
    afloor = statistics.median(alats["async floor: HGETALL"])

    cpu_floor = {
        "single": CPU.get("floor: HGETALL 10-field hash", 0.0),
        "batch": CPU.get("floor: pipeline of 100 HGETALL", 0.0),
    }

    def row(name: str, xs: list[float], fl: float) -> str:
        p50 = statistics.median(xs)
        c = CPU.get(name)
        base = cpu_floor["batch" if "100" in name else "single"]
        cpu = f"{c:,.1f} ({c / base:.2f}x)" if c and base else "-"
        return f"| {name} | {p50:,.1f} | {pct(xs, 0.99):,.1f} | {p50 / fl:.2f}x | {cpu} |"

    lines += [
        "# Online serving benchmark (`python -m evals.bench_online" + (" --quick" if args.quick else "") + "`)",
        "",
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.machine()} ({os.cpu_count()} cores, "
        f"{platform.python_version()}), Redis at {args.redis} (local, same machine), one process, "
        f"{users:,} users, {events:,} events over 8 days. Latencies in µs; ratio = p50 / floor p50 of the same run, "
        "floor measured interleaved with each case. CPU = this process's CPU time per call (less sensitive to "
        "other load than wall time). Other sessions shared the 2 cores during the run, so wall numbers are noisy.",
        "",
        "## 1 entity x 10 features (7 batch features + 3 windowed aggregates: sum 1h, count 1d, mean 7d)",
        "",
        "| case | p50 | p99 | p50 vs floor | CPU µs/call (vs floor) |",
        "|---|---:|---:|---:|---:|",
    ]
    for k, v in lat.items():
        lines.append(row(k, v, floor))
    for k, v in alats.items():
        lines.append(row(k, v, afloor))
    for k, v in slat.items():
        lines.append(row(k, v, floor))
    lines += [
        "",
        "Feast 0.67 on this machine (issue baseline): p50 0.29 ms vs a 0.045 ms floor (6.5x). Target: <= 2x.",
        "",
        "## 100 entities per call",
        "",
        "| case | p50 | p99 | p50 vs floor | CPU µs/call (vs floor) |",
        "|---|---:|---:|---:|---:|",
    ]
    for k, v in blat.items():
        lines.append(row(k, v, bfloor))
    lines += [
        "",
        "Feast 0.67: p50 7.1 ms for 100 entities.",
        "",
        "## Materialization (offline `fv__*` -> Redis)",
        "",
        f"- full load: {mat_rows:,} rows in {mat_s:.2f} s = **{mat_rows / mat_s:,.0f} rows/s** wall, "
        f"{mat_rows / mat_cpu:,.0f} rows per CPU-second of this process "
        f"(2 aggregation views with 3 windows each, tiles + 4^L blocks + raw edge events for the continuous view, "
        f"plus 1 row view); Feast: 30k rows/s, target >= 600k rows/s.",
        f"- rerun with nothing new: {rerun.rows:,} rows in {rerun.seconds:.2f} s (watermark per view: incremental, "
        "idempotent).",
        f"- embedded SQLite full load: {srep.rows:,} rows in {srep.seconds:.2f} s = {srep.rows / srep.seconds:,.0f} "
        "rows/s.",
        "",
        "## Stream apply (`online.apply_events`, fresh events for random users, one process, one token per batch)",
        "",
        "| view | batch | events/s (wall) | client CPU µs/event |",
        "|---|---:|---:|---:|",
        *[f"| {v} | {bs:,} | {r:,.0f} | {c:.1f} |" for (v, bs), (r, c) in apply_rates.items()],
        "",
        f"Load average (1/5/15 min) at the start: {load0[0]:.1f} / {load0[1]:.1f} / {load0[2]:.1f}; "
        f"at the end: {load1[0]:.1f} / {load1[1]:.1f} / {load1[2]:.1f}.",
        "",
        "- backfill (not this area, for context): " + str(bf).replace("\n", "; "),
        "",
        f"Sample vector: `{sample}`",
        "",
        "## Notes",
        "",
        "- Layout (docs/online-state.md): one hash per entity holding every view's fields; a lookup is one `HMGET` "
        "(~12 fields here: the row + tiles/4^L blocks covering 1h, 1d and 7d; continuous mode adds the raw edge "
        "tiles). A batch of entities is one round trip of pipelined `HMGET`s.",
        "- Where the CPU goes per single lookup (measured in isolation, replies prefetched, min of 7 runs): "
        "the `HMGET` itself ~12-13 µs CPU on the thread's own connection driven with hiredis (the floor's "
        "redis-py `HGETALL` ~21 µs); Python beyond it ~14 µs (interval) / ~21 µs (continuous: exact edges cut "
        "from raw events): window evaluation ~5 / ~10 µs (struct-unpacked blocks merged as tuples, only the "
        "slots the functions need), row decode ~1 µs, layout/validation ~2 µs, FeatureVector + memoised "
        "metadata ~2 µs, request time ~1 µs.",
        "- Batches of entities evaluate numbers-only views for all entities at once (one `frombuffer`, numpy "
        "merges per window across entities); only raw edges and finalize run per entity.",
        "- Stream apply: per batch one offset `HGET`, one round trip of pipelined `HMGET`s (the touched fields per "
        "entity) and one commit script (one `HSET` per entity incl. raw appends, `PEXPIRE GT`, offset CAS); the "
        "partials are merged per (entity, field) with numpy first, so the cost is per touched field, not per event. "
        "Redis CPU (measured on a private server, INFO cpu) is ~12-15 µs per event at 500-5,000-event batches over "
        "10k users; the shared server's `hash-max-listpack-entries 512` makes field lookups in big entity hashes "
        "linear scans (default 128 is cheaper).",
        "- On a shared 2-core machine (other sessions' tests and benchmarks, load average 5-8) the wall "
        "ratios move by +-0.5x between runs; the CPU column is the steadier comparison.",
        "- Materialization is CPU-bound (this process: partials, field dicts, RESP built in Python; Redis: the "
        "commit script), so its wall rate follows the machine's load. Chunks are sent without waiting "
        "(`write_ops(wait=False)`), so Redis executes one chunk while the next is built; the CPU rate is the "
        "steadier number. The embedded SQLite store needs no server and serves faster than a Redis round trip "
        "for one process.",
        "",
    ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "online.md").write_text("\n".join(lines))
    print("\n".join(lines))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        names = list(lat) + list(alats)
        p50 = [statistics.median(v) for v in list(lat.values()) + list(alats.values())]
        p99 = [pct(v, 0.99) for v in list(lat.values()) + list(alats.values())]
        fig, ax = plt.subplots(figsize=(9, 4))
        y = np.arange(len(names))
        ax.barh(y - 0.2, p50, 0.4, label="p50")
        ax.barh(y + 0.2, p99, 0.4, label="p99")
        ax.set_yticks(y, [nm[:60] for nm in names], fontsize=7)
        ax.set_xscale("log")
        ax.set_xlabel("µs (log)")
        ax.legend()
        ax.set_title("get_features vs raw Redis floor (1 entity, 10 features)")
        fig.tight_layout()
        fig.savefig(RESULTS / "online_latency.png", dpi=110)
    except Exception as e:  # a missing plot must not lose the numbers
        print(f"(plot skipped: {e})")


if __name__ == "__main__":
    main()
