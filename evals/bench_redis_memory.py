"""Redis memory per entity: context-store's layout vs the plain-hash floor vs Feast, interleaved.

    python -m evals.bench_redis_memory [--entities 100000] [--reps 3] [--events 10] [--quick] [--no-feast]

Starts a private ``redis-server`` (default configuration: ``hash-max-listpack-value 64``,
``hash-max-listpack-entries 128``; no persistence) on a free port. Two shapes, N entities each:

- **row**: a batch view of 10 mixed features (3 int64, 4 float64, 1 bool, 2 strings), one row per
  entity; context-store with ``ttl="30d"`` (keys carry a TTL: rows go stale) and without a ttl.
- **agg**: a view with 3 windows (1h, 1d, 7d) x 4 functions (count, sum, mean, max) of one float
  column, continuous windows; ``--events`` events per entity spread uniformly over the last 8 days.

Systems, per repetition in the order A B C A B C (each on a freshly flushed server):
context-store ``materialize`` (from its offline store, ``backfill`` done once before), the
**floor** (one ``HSET`` per entity of the same values as plain fields: for the aggregation shape
the 12 final window values; same key names as context-store, no TTL), and **Feast** 0.67's own
``write_to_online_store`` (the same ``online_write_batch`` as ``feast materialize``) when the
Feast venv exists (evals/peers/feast_setup.py). Bytes per entity = ``INFO memory used_memory``
delta / N; ``MEMORY USAGE`` of 200 sampled keys (median) and their ``OBJECT ENCODING``.
Writes evals/results/redis_memory.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import context_store as cs  # noqa: E402
from tests.support.private_redis import PrivateRedis  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "evals" / "results"
WS = "bench"
DAY_US = 86_400 * 10**6
WINDOWS = {"1h": 3_600 * 10**6, "1d": DAY_US, "7d": 7 * DAY_US}
FUNCS = ("count", "sum", "mean", "max")
ROW_FEATURES = [
    ("age", "Int64"),
    ("tenure_days", "Int64"),
    ("n_orders", "Int64"),
    ("score", "Float64"),
    ("credit_limit", "Float64"),
    ("avg_basket", "Float64"),
    ("churn_risk", "Float64"),
    ("is_verified", "Bool"),
    ("city", "String"),
    ("segment", "String"),
]

DEFS = f"""
import context_store as cs
user = cs.Entity("user", join_keys=["user_id"])
profiles = cs.FileSource("data/profiles.parquet", timestamp_field="ts")
txns = cs.FileSource("data/txns.parquet", timestamp_field="ts")
FEATS = [{", ".join(f'cs.Field("{n}", cs.{t})' for n, t in ROW_FEATURES)}]
profile = cs.FeatureView("profile", [user], profiles, ttl="30d", features=FEATS)
profile_nottl = cs.FeatureView("profile_nottl", [user], profiles, features=FEATS)
txn_stats = cs.FeatureView("txn_stats", [user], txns, aggregations=[
    cs.Aggregate("amount", f, w) for w in ("1h", "1d", "7d") for f in ("count", "sum", "mean", "max")])
"""


@dataclass
class Sample:
    bytes_per_entity: float
    usage_median: float
    encoding: str
    expires: int
    seconds: float
    cpu_s: float  # client CPU (this process or the Feast child) + the Redis server's CPU


@dataclass
class Case:
    name: str
    shape: str
    run: Callable[[], float]  # writes the shape's N entities, returns seconds
    samples: list[Sample] = field(default_factory=list)
    key_prefix: bytes | None = None  # None: sample by SCAN


def make_data(root: Path, n: int, events: int, now_us: int, seed: int = 0) -> tuple[pa.Table, pa.Table]:
    """Source tables in ``root/data`` and the floor values: (profile rows, 12 final window values)."""
    rng = np.random.default_rng(seed)
    ids = np.array([f"u{i}" for i in range(n)])
    prof = pa.table(
        {
            "user_id": ids,
            "ts": pa.array(now_us - rng.integers(DAY_US // 24, DAY_US, n), pa.timestamp("us", tz="UTC")),
            "age": rng.integers(18, 90, n),
            "tenure_days": rng.integers(0, 4000, n),
            "n_orders": rng.integers(0, 500, n),
            "score": np.round(rng.random(n), 4),
            "credit_limit": np.round(rng.random(n) * 1e4, 2),
            "avg_basket": np.round(rng.lognormal(3, 1, n), 2),
            "churn_risk": rng.random(n),
            "is_verified": rng.random(n) > 0.3,
            "city": rng.choice(["Paris", "Oslo", "Lima", "Pune", "Austin"], n),
            "segment": rng.choice(["gold", "silver", "bronze"], n),
        }
    )
    uidx = np.repeat(np.arange(n), events)
    ts = now_us - rng.integers(1, 8 * DAY_US, n * events)
    amount = np.round(rng.lognormal(3, 1, n * events), 2)
    txns = pa.table({"user_id": ids[uidx], "ts": pa.array(ts, pa.timestamp("us", tz="UTC")), "amount": amount})
    (root / "data").mkdir(parents=True, exist_ok=True)
    (root / "features.py").write_text(DEFS)
    pq.write_table(prof, root / "data" / "profiles.parquet")
    pq.write_table(txns, root / "data" / "txns.parquet")
    finals: dict[str, Any] = {"user_id": ids, "ts": prof["ts"]}
    for wn, w in WINDOWS.items():
        m = ts >= now_us - w
        cnt = np.bincount(uidx[m], minlength=n)
        sm = np.bincount(uidx[m], weights=amount[m], minlength=n)
        mx = np.full(n, -np.inf)
        np.maximum.at(mx, uidx[m], amount[m])
        has = cnt > 0
        finals[f"amount_count_{wn}"] = cnt.astype(np.int64)
        finals[f"amount_sum_{wn}"] = sm
        finals[f"amount_mean_{wn}"] = pa.array(np.where(has, sm / np.maximum(cnt, 1), 0.0), mask=~has)
        finals[f"amount_max_{wn}"] = pa.array(np.where(has, mx, 0.0), mask=~has)
    return prof, pa.table(finals)


def _str(v: Any) -> bytes:
    if isinstance(v, bool):
        return b"1" if v else b"0"
    return str(v).encode() if not isinstance(v, float) else repr(v).encode()


def floor_writer(r: Any, table: pa.Table) -> Callable[[], float]:
    """One HSET per entity of the values as plain fields (nulls omitted), pipelined."""
    cols = [c for c in table.column_names if c not in ("user_id", "ts")]
    data = [table[c].to_pylist() for c in cols]
    keys = [f"cs:{WS}:e:user_id={u}".encode() for u in table["user_id"].to_pylist()]
    fnames = [c.encode() for c in cols]

    def run() -> float:
        t0 = time.perf_counter()
        pipe = r.pipeline(transaction=False)
        for i, k in enumerate(keys):
            args: list[bytes] = []
            for f, col in zip(fnames, data):
                v = col[i]
                if v is not None:
                    args += [f, _str(v)]
            pipe.execute_command("HSET", k, *args)
            if len(pipe) >= 2000:
                pipe.execute()
        pipe.execute()
        return time.perf_counter() - t0

    return run


def feast_python() -> Path | None:
    """The Feast venv's python: ``$FEAST_PYTHON`` or ``.venv-feast`` (evals/peers/feast_setup.py)."""
    env = os.environ.get("FEAST_PYTHON")
    py = Path(env) if env else ROOT / ".venv-feast" / "bin" / "python"
    return py if py.exists() else None


def feast_writer(py: Path, url: str, rows: Path, shape: str, tmp: Path) -> Callable[[], float]:
    def run() -> float:
        repo = Path(tempfile.mkdtemp(prefix="feastrepo_", dir=tmp))
        out = subprocess.run(
            [str(py), str(ROOT / "evals" / "peers" / "feast_memory.py"), "--redis", url, "--rows", str(rows)]
            + ["--shape", shape, "--repo", str(repo)],
            check=True,
            capture_output=True,
            text=True,
        )
        return float(json.loads(out.stdout.strip().splitlines()[-1])["seconds"])

    return run


def _cpu(r: Any) -> float:
    """This process's and its children's CPU plus the Redis server's, in seconds."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    info = r.info("cpu")
    return time.process_time() + ru.ru_utime + ru.ru_stime + float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def measure(r: Any, case: Case, n: int) -> Sample:
    r.flushall()
    m0 = int(r.info("memory")["used_memory"])
    c0 = _cpu(r)
    secs = case.run()
    cpu = _cpu(r) - c0
    m1 = int(r.info("memory")["used_memory"])
    if case.key_prefix is not None:
        keys = [case.key_prefix + str(i).encode() for i in random.Random(1).sample(range(n), min(200, n))]
    else:
        keys = [k for _, k in zip(range(200), r.scan_iter(count=1000))]
    usage = [int(r.memory_usage(k, samples=0) or 0) for k in keys]
    encs = sorted({r.object("encoding", k).decode() for k in keys if r.exists(k)})
    ks = r.info("keyspace").get("db0", {})
    return Sample((m1 - m0) / n, statistics.median(usage), ",".join(encs), int(ks.get("expires", 0)), secs, cpu)


def fmt_range(xs: list[float], f: str = "{:.0f}") -> str:
    med = statistics.median(xs)
    return f"{f.format(med)} ({f.format(min(xs))}–{f.format(max(xs))})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--entities", type=int, default=100_000)
    ap.add_argument("--events", type=int, default=10, help="events per entity of the aggregation shape")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="10k entities, 1 repetition")
    ap.add_argument("--no-feast", action="store_true")
    ap.add_argument("--out", type=Path, default=RESULTS / "redis_memory.md")
    args = ap.parse_args()
    n, reps = (10_000, 1) if args.quick else (args.entities, args.reps)
    import redis

    tmp = Path(tempfile.mkdtemp(prefix="bench_redis_mem_"))
    srv = PrivateRedis(tmp).start()  # a redis-server of this run's own, on a free port
    url = srv.url
    try:
        r = redis.Redis.from_url(url)
        conf = {k: r.config_get(k)[k] for k in ("hash-max-listpack-value", "hash-max-listpack-entries")}
        version = r.info("server")["redis_version"]
        now_us = time.time_ns() // 1000
        prof, finals = make_data(tmp, n, args.events, now_us)
        store = cs.ContextStore(tmp, online_store=url, workspace=WS)
        store.apply()
        store.backfill()
        rows_path, finals_path = tmp / "feast_rows.parquet", tmp / "feast_finals.parquet"
        pq.write_table(prof, rows_path)
        pq.write_table(finals, finals_path)

        def mat(view: str) -> Callable[[], float]:
            def run() -> float:
                rep = store.materialize(views=[view], full=True)
                return rep.seconds

            return run

        prefix = f"cs:{WS}:e:user_id=u".encode()
        cases = [
            Case("context-store, ttl=30d", "row", mat("profile"), key_prefix=prefix),
            Case("context-store, no ttl", "row", mat("profile_nottl"), key_prefix=prefix),
            Case("floor (plain HSET)", "row", floor_writer(r, prof), key_prefix=prefix),
            Case(f"context-store ({args.events} events/entity)", "agg", mat("txn_stats"), key_prefix=prefix),
            Case("floor (12 final values)", "agg", floor_writer(r, finals), key_prefix=prefix),
        ]
        py = None if args.no_feast else feast_python()
        if py is not None:
            cases.insert(3, Case("Feast 0.67", "row", feast_writer(py, url, rows_path, "row", tmp)))
            cases.append(Case("Feast 0.67 (12 final values)", "agg", feast_writer(py, url, finals_path, "agg", tmp)))
        load0 = open("/proc/loadavg").read().split()[:3]
        for i in range(reps):
            for c in cases:
                s = measure(r, c, n)
                c.samples.append(s)
                print(
                    f"rep {i + 1} {c.shape:3} {c.name:36} {s.bytes_per_entity:7.1f} B/entity "
                    f"(MEMORY USAGE {s.usage_median:.0f}, {s.encoding}, expires {s.expires}) {s.seconds:.2f}s "
                    f"cpu {s.cpu_s:.2f}s",
                    flush=True,
                )
        load1 = open("/proc/loadavg").read().split()[:3]
        write_report(args, n, reps, cases, version, conf, load0, load1, py is not None)
    finally:
        srv.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def write_report(
    args: argparse.Namespace,
    n: int,
    reps: int,
    cases: list[Case],
    version: str,
    conf: dict[str, str],
    load0: list[str],
    load1: list[str],
    feast: bool,
) -> None:
    lines = [
        "# Redis memory per entity: context-store vs plain-hash floor vs Feast",
        "",
        f"`python -m evals.bench_redis_memory --entities {n} --reps {reps} --events {args.events}`"
        + ("" if feast else " (Feast venv missing: no Feast rows)"),
        "",
        f"Redis {version} (private server, defaults: hash-max-listpack-value {conf['hash-max-listpack-value']}, "
        f"hash-max-listpack-entries {conf['hash-max-listpack-entries']}), {n:,} entities per shape, "
        f"{reps} repetitions interleaved (every system once per repetition, server flushed before each). "
        f"Load average before {' '.join(load0)}, after {' '.join(load1)} (2 shared cores).",
        "",
        "Bytes per entity = `used_memory` delta / N (median (min–max) over repetitions); `MEMORY USAGE` = "
        "median of 200 sampled keys (the key's own allocation, without the keyspace dict entry and the "
        "expires entry); write time = materialize wall time for context-store (offline read included), "
        "pipelined HSETs for the floor, `write_to_online_store` for Feast (its process start and imports "
        "excluded from the time, included in the CPU). rows/s by CPU = N / (client CPU + Redis server CPU): "
        "robust to a loaded machine, where wall time is not.",
        "",
    ]
    for shape, title in (
        ("row", "Row view: 10 mixed features (3 int64, 4 float64, 1 bool, 2 strings)"),
        ("agg", f"Aggregation view: 3 windows (1h, 1d, 7d) x 4 functions, {args.events} events per entity over 8 days"),
    ):
        lines += [f"## {title}", ""]
        lines += [
            "| system | bytes/entity | MEMORY USAGE | encoding | keys with TTL | write s | rows/s | rows/s by CPU |"
        ]
        lines += ["|---|---|---|---|---|---|---|---|"]
        floor = statistics.median(
            [s.bytes_per_entity for c in cases if c.shape == shape and c.name.startswith("floor") for s in c.samples]
        )
        for c in cases:
            if c.shape != shape:
                continue
            b = [s.bytes_per_entity for s in c.samples]
            secs = [s.seconds for s in c.samples]
            rate = [n / x for x in secs]
            crate = [n / max(s.cpu_s, 1e-9) for s in c.samples]
            lines.append(
                f"| {c.name} | {fmt_range(b)} ({statistics.median(b) / floor:.2f}x floor) | "
                f"{statistics.median([s.usage_median for s in c.samples]):.0f} | {c.samples[-1].encoding} | "
                f"{c.samples[-1].expires:,} | {fmt_range(secs, '{:.2f}')} | {fmt_range(rate, '{:,.0f}')} | "
                f"{fmt_range(crate, '{:,.0f}')} |"
            )
        lines.append("")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
