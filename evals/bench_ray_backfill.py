"""Ray backfill vs the local engine on the same events: wall and CPU (process + children), interleaved.

    python -m evals.bench_ray_backfill                 # 10M events, 3 runs per engine (A B A B A B)
    python -m evals.bench_ray_backfill --events 1000000 --runs 2

The Ray side runs on a local Ray cluster of 2 worker CPUs (``ray.init(num_cpus=2)``), started once
before the timed runs (as a job joining an existing cluster would find it); its start-up time is
reported apart. CPU is summed over the benchmark process and every descendant (Ray's GCS, raylet and
workers included) from ``/proc``, so the two engines are charged alike. Each run writes a fresh
offline store. Writes ``evals/results/ray_backfill.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from evals.bench_batch import DEFINITIONS, generate  # noqa: E402

_TICK = os.sysconf("SC_CLK_TCK")


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system, own and reaped children) of ``pid`` and all its live descendants."""
    parent: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
        parent[int(d)] = int(fields[1])
        ticks[int(d)] = sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    total, todo = 0, [pid]
    kids: dict[int, list[int]] = {}
    for p, pp in parent.items():
        kids.setdefault(pp, []).append(p)
    while todo:
        p = todo.pop()
        total += ticks.get(p, 0)
        todo += kids.get(p, [])
    return total / _TICK


def _canon(t: pa.Table) -> pa.Table:
    return t.take(pc.sort_indices(t, [(c, "ascending") for c in t.column_names]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--row-group", type=int, default=250_000)
    ap.add_argument("--out", default=str(ROOT / "evals" / "results" / "ray_backfill.md"))
    args = ap.parse_args()

    import ray

    import context_store as cs
    from context_store.compute.batch import backfill
    from context_store.stores.offline import open_offline_store

    with tempfile.TemporaryDirectory(prefix="bench_ray_") as tmp:
        root = Path(tmp) / "repo"
        (root / "data").mkdir(parents=True)
        (root / "features.py").write_text(DEFINITIONS)
        t = time.perf_counter()
        events = generate(args.events, args.users, args.days)
        pq.write_table(events, root / "data" / "transactions.parquet", row_group_size=args.row_group)
        del events
        print(f"data: {args.events:,} events in {time.perf_counter() - t:.1f}s", flush=True)
        store = cs.ContextStore(root, workspace="bench")
        store.apply()
        defs = store.definitions
        from context_store.compute.ray_backfill import plan_units

        src = defs.feature_view("txn_stats").source
        n_units = len(plan_units(src, [str(root / "data" / "transactions.parquet")], None, None, cpus=2))  # type: ignore[arg-type]

        t = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        ray_start = time.perf_counter() - t
        # warm both (imports, Ray worker processes, DuckDB) on a small range, untimed
        for engine in ("local", "ray"):
            cfg = store.config.with_workspace(f"warm_{engine}")
            backfill(defs, cfg, open_offline_store(cfg), start="2024-01-01", end="2024-01-01T01:00:00", engine=engine)

        load_before = os.getloadavg()
        walls: dict[str, list[float]] = {"local": [], "ray": []}
        cpus: dict[str, list[float]] = {"local": [], "ray": []}
        me = os.getpid()
        tables: dict[str, pa.Table] = {}
        for i in range(args.runs):
            for engine in ("local", "ray"):  # interleaved: A B A B
                cfg = store.config.with_workspace(f"{engine}_{i}")
                offline = open_offline_store(cfg)
                offline.connect()  # type: ignore[attr-defined]
                c0, w0 = tree_cpu(me), time.perf_counter()
                report = backfill(defs, cfg, offline, engine=engine)
                wall, cpu = time.perf_counter() - w0, tree_cpu(me) - c0
                walls[engine].append(wall)
                cpus[engine].append(cpu)
                print(f"run {i} {engine}: wall {wall:.2f}s cpu {cpu:.2f}s rows {report.rows}", flush=True)
                if i == 0:
                    tables[engine] = offline.read("fv__txn_stats")
        load_after = os.getloadavg()
        ray.shutdown()
        same = _canon(tables["ray"]).equals(_canon(tables["local"]))
        n_rows = tables["local"].num_rows
        del tables

    def med(xs: list[float]) -> str:
        return f"{statistics.median(xs):.2f}s ({min(xs):.2f}-{max(xs):.2f})"

    lw, rw = statistics.median(walls["local"]), statistics.median(walls["ray"])
    lc, rc = statistics.median(cpus["local"]), statistics.median(cpus["ray"])
    text = f"""# Ray backfill vs local engine

Command: `python -m evals.bench_ray_backfill --events {args.events} --runs {args.runs}`
(interleaved local, ray, local, ray, ...; each run into a fresh offline store).

Data: {args.events:,} events ({args.users:,} users, Zipf-like activity, {args.days} days, unsorted),
one Parquet file with row groups of {args.row_group:,} rows; the view `txn_stats` of `bench_batch`
(3 windows x 4 functions: backfill writes its event rows sorted by (entity, ts)).
Ray: a local cluster of 2 worker CPUs (`ray.init(num_cpus=2)`), started before the timed runs
({ray_start:.1f}s, not counted); the one big file became {n_units} read tasks (row-group units) and
{2 * 2} write tasks (entity partitions), each writing its own Lance fragments, one commit.

| engine | median wall (min-max) | median CPU, process + children (min-max) | events/s (wall) |
|---|---|---|---|
| local | {med(walls["local"])} | {med(cpus["local"])} | {args.events / lw:,.0f} |
| ray (2 workers) | {med(walls["ray"])} | {med(cpus["ray"])} | {args.events / rw:,.0f} |

Ray / local: wall x{rw / lw:.2f}, CPU x{rc / lc:.2f}.
All runs (wall / CPU): local {", ".join(f"{w:.2f}/{c:.2f}" for w, c in zip(walls["local"], cpus["local"]))};
ray {", ".join(f"{w:.2f}/{c:.2f}" for w, c in zip(walls["ray"], cpus["ray"]))}.
Load average (1/5/15 min) before: {" ".join(f"{x:.1f}" for x in load_before)}, after:
{" ".join(f"{x:.1f}" for x in load_after)} on {os.cpu_count()} cores shared with other work.
Same rows: {"yes" if same else "NO"} ({n_rows:,} rows of `fv__txn_stats`, compared sorted by every column).

Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, Ray {ray.__version__}.
"""
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
