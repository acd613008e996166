"""Batch engine benchmark: backfill throughput (events/s) and point-in-time training data (spine rows/s).

    python -m evals.bench_batch            # 10M events, 1M spine rows, 3 windows x 4 functions
    python -m evals.bench_batch --quick    # 1M events, 100k spine rows

Writes ``evals/results/batch.md``. Each phase is run ``--runs`` times (median reported) in a fresh
offline store; a correctness spot check against ``tests/support/reference.py`` runs on sampled rows.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import context_store as cs  # noqa: E402

DAY_US = 86_400 * 1_000_000
T0 = 1_704_067_200_000_000  # 2024-01-01T00:00:00Z

DEFINITIONS = """
import context_store as cs

user = cs.Entity("user", join_keys=["user_id"])
transactions = cs.FileSource("data/transactions.parquet", timestamp_field="ts")
txn_stats = cs.FeatureView(
    "txn_stats", [user], transactions,
    aggregations=[cs.Aggregate("amount", f, w) for w in ("1h", "1d", "7d") for f in ("count", "sum", "mean", "max")],
)
fraud = cs.FeatureService("fraud", [txn_stats])
"""


def generate(n_events: int, n_users: int, days: int, seed: int = 0) -> pa.Table:
    """Bursty users (Zipf-like activity), heavy-tailed amounts (log-normal), unsorted timestamps."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, n_users + 1) ** 0.8
    users = rng.choice(n_users, size=n_events, p=weights / weights.sum())
    ts = T0 + rng.integers(0, days * DAY_US, size=n_events)
    amount = np.round(rng.lognormal(3.0, 1.2, size=n_events), 2)
    names = pa.array([f"u{i:07d}" for i in range(n_users)])
    return pa.table(
        {
            "user_id": names.take(pa.array(users)),
            "ts": pa.array(ts, pa.int64()).cast(pa.timestamp("us", tz="UTC")),
            "amount": amount,
        }
    )


def make_spine(n_rows: int, n_users: int, days: int, seed: int = 1) -> pa.Table:
    rng = np.random.default_rng(seed)
    users = rng.integers(0, int(n_users * 1.05), size=n_rows)  # ~5% unknown users
    names = pa.array([f"u{i:07d}" for i in range(int(n_users * 1.05))])
    ts = T0 + rng.integers(0, (days + 1) * DAY_US, size=n_rows)
    return pa.table(
        {
            "user_id": names.take(pa.array(users)),
            "timestamp": pa.array(ts, pa.int64()).cast(pa.timestamp("us", tz="UTC")),
        }
    )


def spot_check(events: pa.Table, spine: pa.Table, out: pa.Table, view: cs.FeatureView, samples: int = 30) -> int:
    """Compare sampled rows with the brute-force reference (restricted to the row's user)."""
    import pyarrow.compute as pc

    from tests.support.reference import expected_view_row, values_match

    rng = np.random.default_rng(2)
    bad = 0
    for i in rng.choice(spine.num_rows, size=samples, replace=False).tolist():
        user = spine.column("user_id")[i].as_py()
        t = spine.column("timestamp").cast(pa.int64())[i].as_py()
        sub = events.filter(pc.equal(events.column("user_id"), user))
        rows = [
            {"user_id": user, "ts": ts, "amount": a}
            for ts, a in zip(sub.column("ts").cast(pa.int64()).to_pylist(), sub.column("amount").to_pylist())
        ]
        want = expected_view_row(view, rows, {"user_id": user}, t)
        for name, w in want.items():
            if not values_match(out.column(f"txn_stats__{name}")[i].as_py(), w):
                bad += 1
    return bad


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1M events, 100k spine rows")
    ap.add_argument("--events", type=int, default=None)
    ap.add_argument("--spine", type=int, default=None)
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "evals" / "results" / "batch.md"))
    args = ap.parse_args()
    n_events = args.events or (1_000_000 if args.quick else 10_000_000)
    n_spine = args.spine or (100_000 if args.quick else 1_000_000)

    with tempfile.TemporaryDirectory() as d:
        repo = Path(d)
        t = time.perf_counter()
        events = generate(n_events, args.users, args.days)
        (repo / "data").mkdir()
        pq.write_table(events, repo / "data" / "transactions.parquet")
        (repo / "features.py").write_text(textwrap.dedent(DEFINITIONS))
        spine = make_spine(n_spine, args.users, args.days)
        print(f"generated {n_events:,} events, {n_spine:,} spine rows in {time.perf_counter() - t:.1f}s", flush=True)

        store = cs.ContextStore(repo)
        store.apply()
        _ = store.offline  # open (import LanceDB) outside the timed runs
        load_before = os.getloadavg()[0]
        backfill_s: list[float] = []
        backfill_cpu: list[float] = []
        for _ in range(args.runs):
            t, c = time.perf_counter(), time.process_time()
            report = store.backfill()
            backfill_s.append(time.perf_counter() - t)
            backfill_cpu.append(time.process_time() - c)
            print(
                f"backfill: {backfill_s[-1]:.2f}s ({n_events / backfill_s[-1]:,.0f} events/s), "
                f"cpu {backfill_cpu[-1]:.2f}s",
                flush=True,
            )
        assert report.rows == {"txn_stats": n_events}

        training_s: list[float] = []
        training_cpu: list[float] = []
        for _ in range(args.runs):
            t, c = time.perf_counter(), time.process_time()
            out = store.get_training_data(spine, "fraud")
            training_s.append(time.perf_counter() - t)
            training_cpu.append(time.process_time() - c)
            print(
                f"training data: {training_s[-1]:.2f}s ({n_spine / training_s[-1]:,.0f} rows/s), "
                f"cpu {training_cpu[-1]:.2f}s",
                flush=True,
            )
        load_after = os.getloadavg()[0]
        # Floor measured in the same run: one read of the event log plus one numpy sort of its
        # timestamps -- the least any point-in-time join over this log must do.
        floor_s: list[float] = []
        for _ in range(args.runs):
            t = time.perf_counter()
            log = store.offline.read("fv__txn_stats", columns=["user_id", "ts", "amount"])
            np.sort(log.column("ts").cast(pa.int64()).to_numpy())
            floor_s.append(time.perf_counter() - t)
        del log
        assert out.num_rows == n_spine
        assert out.select(["user_id", "timestamp"]).equals(spine)  # order kept, nothing dropped
        bad = spot_check(events, spine, out, store.definitions.feature_view("txn_stats"))
        print(f"spot check: {bad} mismatches", flush=True)
        store.close()

    import duckdb
    import lancedb

    bf = statistics.median(backfill_s)
    tr = statistics.median(training_s)
    fl = statistics.median(floor_s)
    bfc = statistics.median(backfill_cpu)
    trc = statistics.median(training_cpu)
    backfill_row = (
        f"| backfill (Parquet -> transform -> sort -> Lance `fv__txn_stats`) | {bf:.2f}s "
        f"| {n_events / bf:,.0f} events/s | {bfc:.2f}s | {n_events / bfc:,.0f} events/s | >= 1,000,000 events/s |"
    )
    training_row = (
        f"| get_training_data (Lance read + PIT join, spine order kept) | {tr:.2f}s | {n_spine / tr:,.0f} spine rows/s "
        f"| {trc:.2f}s | {n_spine / trc:,.0f} spine rows/s | >= 1,000,000 rows/s |"
    )

    def meets(rate: float) -> str:
        return "meets" if rate >= 1e6 else "misses"

    md = f"""# Batch engine: backfill and point-in-time training data

Command: `python -m evals.bench_batch{" --quick" if args.quick else ""}` (median of {args.runs} runs each).

Data: {n_events:,} transaction events ({args.users:,} users with Zipf-like activity, log-normal amounts,
{args.days} days, unsorted), spine of {n_spine:,} rows (~5% unknown users), feature view with
3 windows (1h, 1d, 7d) x 4 functions (count, sum, mean, max), continuous windows `t - W <= ts < t`.

| phase | median wall | throughput (wall) | median CPU | throughput per CPU-second | target |
|---|---|---|---|---|---|
{backfill_row}
{training_row}

All runs (wall / process CPU): backfill {", ".join(f"{s:.2f}s/{c:.2f}s" for s, c in zip(backfill_s, backfill_cpu))};
training {", ".join(f"{s:.2f}s/{c:.2f}s" for s, c in zip(training_s, training_cpu))}.
Floor measured in the same run (read the 3 log columns from Lance + sort its timestamps once): {fl:.2f}s,
so training data costs {tr / fl:.1f}x that floor. Load average (1 min) before/after the timed runs:
{load_before:.1f} / {load_after:.1f} on {os.cpu_count()} cores -- other work shared the machine, so wall
times are pessimistic; CPU time is the steadier number.
Correctness: every output row present and in spine order; 30 sampled rows x 12 features compared with the
brute-force reference (`tests/support/reference.py`): {bad} mismatches.

How: backfill writes each view's rows sorted by (entity, ts) (one read per source, numpy argsort of an
(entity code, ts) int64 key, one Lance write). `get_training_data` reads the log's needed columns once
(64k-row Lance batches), finds the entity runs of the sorted log (no hashing of 10M keys, no per-event
segment array), sorts the spine by (entity, window end) and answers every window with two binary
searches over the sorted (entity, ts) keys, done block-wise so each block of sorted queries searches a
cache-sized slice: count is `hi - lo`, sum/mean come from compensated prefix sums (float64 plus a
TwoSum error prefix, built in L2-sized chunks: ~1e-16 relative to the window sum however long the
history), min/max from 16-event blocks (in-block prefix/suffix extrema + a flattened sparse table over
blocks: O(1) per window, short in-block windows scanned); numeric results are put back in spine order
in numpy; the view's aggregations run on 2 threads; numpy's huge-page hint is off during the call
(synchronous THP compaction doubled the CPU time of cold calls on this machine). Approximate
functions use Apache DataSketches (HLL lg_k=12: 1.6% RSE; KLL k=200: 1.65% normalized rank error)
and loop per spine row; last/first_distinct_n are vectorised (neither is in this benchmark).

Target status: backfill {meets(n_events / bf)} 1M events/s on wall time
({meets(n_events / bfc)} it per CPU-second); training data {meets(n_spine / tr)} 1M spine rows/s on wall
time ({meets(n_spine / trc)} it per CPU-second).

For reference (issue #2): Feast 0.67 measured on this machine did 73k spine rows/s and dropped 0.5% of spine rows.

Machine: {platform.machine()}, {__import__("os").cpu_count()} cores, Python {platform.python_version()},
pyarrow {pa.__version__}, duckdb {duckdb.__version__}, lancedb {lancedb.__version__}, numpy {np.__version__}.
"""
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(md)
    print(md)


if __name__ == "__main__":
    main()
