"""Feast peer benchmark: the shapes of bench_batch / bench_online / bench_server, measured with Feast.

    python evals/peers/feast_setup.py            # once: .venv-feast with feast[redis,duckdb]==0.67.0
    python evals/peers/bench_feast.py [--quick] [--spine N] [--no-server] [--redis redis://127.0.0.1:6379/0]

Runs itself under ``.venv-feast/bin/python`` (re-exec) so Feast's pins never touch the main venv.
Data is generated here (deterministic, same generator shape as evals/bench_batch.py). Feast has no
window aggregations, so the 3 windows x 4 functions are precomputed per event with numpy (timed
separately) and served by Feast as plain batch features. Writes ``evals/results/feast.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import warnings
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pandas as pd

try:
    from .feast_report import report
except ImportError:  # run as a script (how the Feast venv runs it): the sibling module is on sys.path[0]
    from feast_report import report  # type: ignore[no-redef]

__all__ = ["generate_events", "main", "precompute_windows"]

_HERE = Path(__file__).resolve()
_VENV_PY = _HERE.parents[2] / ".venv-feast" / "bin" / "python"
ROOT = _HERE.parents[2]
OUT_DIR = ROOT / "evals" / "out"  # gitignored: raw numbers of the last run, for --render
DAY_US = 86_400 * 1_000_000
T0 = 1_704_067_200_000_000  # 2024-01-01T00:00:00Z, as in bench_batch
WINDOWS = {"1h": 3_600_000_000, "1d": DAY_US, "7d": 7 * DAY_US}
FUNCS = ("count", "sum", "mean", "max")
AGG_COLS = [f"amount_{f}_{w}" for w in WINDOWS for f in FUNCS]
ONLINE_10 = AGG_COLS[:10]  # 1 entity x 10 features, as bench_online / bench_server


def _ensure_feast_python() -> None:
    """Re-exec under the Feast venv when Feast is missing here (never install Feast into the main venv)."""
    try:
        import feast  # noqa: F401
    except ImportError:
        if _VENV_PY.exists() and Path(sys.executable) != _VENV_PY:
            os.execv(str(_VENV_PY), [str(_VENV_PY), str(_HERE), *sys.argv[1:]])
        raise SystemExit("feast not installed: run `python evals/peers/feast_setup.py` first") from None


# -- data (same shape as evals/bench_batch.py) ------------------------------------------------------


def generate_events(n_events: int, n_users: int, days: int, seed: int = 0) -> pd.DataFrame:
    """Bursty users (Zipf-like activity), log-normal amounts, unsorted timestamps."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, n_users + 1) ** 0.8
    users = rng.choice(n_users, size=n_events, p=weights / weights.sum())
    ts = T0 + rng.integers(0, days * DAY_US, size=n_events)
    amount = np.round(rng.lognormal(3.0, 1.2, size=n_events), 2)
    names = np.array([f"u{i:07d}" for i in range(n_users)], dtype=object)
    return pd.DataFrame({"user_id": names[users], "ts": pd.to_datetime(ts, unit="us", utc=True), "amount": amount})


def make_spine(n_rows: int, n_users: int, days: int, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    users = rng.integers(0, int(n_users * 1.05), size=n_rows)  # ~5% unknown users
    names = np.array([f"u{i:07d}" for i in range(int(n_users * 1.05))], dtype=object)
    ts = T0 + rng.integers(0, (days + 1) * DAY_US, size=n_rows)
    return pd.DataFrame(
        {
            "user_id": names[users],
            "event_timestamp": pd.to_datetime(ts, unit="us", utc=True),
            "spine_id": np.arange(n_rows, dtype=np.int64),
        }
    )


def precompute_windows(events: pd.DataFrame) -> pd.DataFrame:
    """One feature row per event: 3 windows x 4 functions over (ts - W, ts] of the user's events.

    This is what a Feast user must run upstream (Feast serves precomputed columns only). Values are
    as of each event, so between events they do not decay -- unlike a true window at request time.
    Vectorised numpy (binary search + prefix sums + a sparse table for max), same results as
    ``groupby().rolling(W).agg(...)`` (pandas' rolling is ~100x slower with 100k small groups).
    """
    codes, uniq = pd.factorize(events["user_id"], sort=True)
    ts = events["ts"].to_numpy(dtype="datetime64[us]").astype(np.int64)
    rel = ts - ts.min() + 8 * DAY_US  # > longest window, so key - W never reaches the previous user
    key = codes.astype(np.int64) * (1 << 44) + rel
    order = np.argsort(key, kind="stable")
    key, amount = key[order], events["amount"].to_numpy(dtype=np.float64)[order]
    n = len(key)
    csum = np.concatenate([[0.0], np.cumsum(amount)])
    table = [amount]  # sparse table: table[k][i] = max(amount[i : i + 2**k])
    while (1 << len(table)) <= n:
        prev, half = table[-1], 1 << (len(table) - 1)
        table.append(np.maximum(prev[:-half], prev[half:]))
    hi = np.searchsorted(key, key, side="right")  # ties at the same ts are all included
    out: dict[str, Any] = {
        "user_id": uniq.to_numpy()[codes[order]],
        "ts": pd.to_datetime(ts[order], unit="us", utc=True),
    }
    for w, us in WINDOWS.items():
        lo = np.searchsorted(key, key - us, side="right")
        cnt = hi - lo
        sm = csum[hi] - csum[lo]
        mx = np.empty(n)
        lvl = np.floor(np.log2(cnt)).astype(np.int64)
        for k in np.unique(lvl):
            m = lvl == k
            mx[m] = np.maximum(table[k][lo[m]], table[k][hi[m] - (1 << k)])
        out.update(
            {
                f"amount_count_{w}": cnt.astype(np.int64),
                f"amount_sum_{w}": sm,
                f"amount_mean_{w}": sm / cnt,
                f"amount_max_{w}": mx,
            }
        )
    return pd.DataFrame(out)


# -- Feast repo ---------------------------------------------------------------------------------------


def write_repo(repo: Path, project: str, offline: str, redis_url: str) -> None:
    u = urlparse(redis_url)
    db = (u.path or "/0").lstrip("/") or "0"
    (repo / "feature_store.yaml").write_text(
        textwrap.dedent(f"""\
        project: {project}
        registry: {repo / "registry.db"}
        provider: local
        online_store:
          type: redis
          connection_string: "{u.hostname or "127.0.0.1"}:{u.port or 6379},db={db}"
        offline_store:
          type: {offline}
        entity_key_serialization_version: 3
        """)
    )


def feast_objects(features_path: Path, ttl: timedelta | None) -> list[Any]:
    from feast import Entity, FeatureView, Field, FileSource, ValueType
    from feast.types import Float64, Int64

    user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING)
    src = FileSource(name="txn_features_src", path=str(features_path), timestamp_field="ts")
    fv = FeatureView(
        name="txn_stats",
        entities=[user],
        ttl=ttl or timedelta(0),
        source=src,
        online=True,
        schema=[Field(name=c, dtype=Int64 if "_count_" in c else Float64) for c in AGG_COLS],
    )
    return [user, fv]


def open_store(repo: Path, features_path: Path, ttl: timedelta | None) -> Any:
    from feast import FeatureStore

    store = FeatureStore(repo_path=str(repo))
    store.apply(feast_objects(features_path, ttl))
    return store


# -- measurement helpers ------------------------------------------------------------------------------


def timed(fn: Callable[[], Any], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        fn()
        out.append((time.perf_counter_ns() - t0) / 1000)
    return out


def interleaved(
    cases: dict[str, Callable[[], Any]], n: int, rounds: int = 5, warmup: int = 100
) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Same scheme as evals/bench_online.py: floor and measured cases alternate, so noise hits both.

    Returns latencies (µs) per case and this process's CPU µs per call (steadier on a loaded machine).
    """
    for fn in cases.values():
        timed(fn, warmup)
    res: dict[str, list[float]] = {k: [] for k in cases}
    cpu: dict[str, float] = dict.fromkeys(cases, 0.0)
    for _ in range(rounds):
        for k, fn in cases.items():
            c = time.process_time()
            res[k] += timed(fn, max(1, n // rounds))
            cpu[k] += time.process_time() - c
    return res, {k: 1e6 * cpu[k] / len(res[k]) for k in cases}


def check_training(
    spine: pd.DataFrame, out: pd.DataFrame, feats: pd.DataFrame, ttl: timedelta | None
) -> dict[str, Any]:
    """Rows in vs out, why rows went missing, and values vs a pandas merge_asof reference."""
    got_ids = out["spine_id"].to_numpy()
    missing = spine[~spine["spine_id"].isin(got_ids)]
    known = set(feats["user_id"].unique())
    first_ts = feats.groupby("user_id")["ts"].min()
    unknown_user = ~missing["user_id"].isin(known)
    before_first = (~unknown_user) & (missing["event_timestamp"] < missing["user_id"].map(first_ts))
    t0 = time.perf_counter()
    ref = pd.merge_asof(
        spine.sort_values("event_timestamp"),
        feats.sort_values("ts"),
        left_on="event_timestamp",
        right_on="ts",
        by="user_id",
        direction="backward",
        allow_exact_matches=True,
        tolerance=ttl if ttl else None,
    )
    asof_s = time.perf_counter() - t0
    ref = ref.set_index("spine_id")
    o = out.drop_duplicates("spine_id").set_index("spine_id")
    common = o.index.intersection(ref.index)
    bad = 0
    for c in AGG_COLS:
        a = pd.to_numeric(o.loc[common, c], errors="coerce").to_numpy(dtype=float)
        b = pd.to_numeric(ref.loc[common, c], errors="coerce").to_numpy(dtype=float)
        ok = (np.isnan(a) & np.isnan(b)) | np.isclose(a, b, rtol=1e-9, atol=0, equal_nan=False)
        bad += int((~ok).sum())
    return {
        "rows_in": len(spine),
        "rows_out": len(out),
        "dup_out": int(out["spine_id"].duplicated().sum()),
        "missing": len(missing),
        "missing_unknown_user": int(unknown_user.sum()),
        "missing_before_first_row": int(before_first.sum()),
        "missing_other": int(len(missing) - unknown_user.sum() - before_first.sum()),
        "order_kept": bool(len(out) == len(spine) and (got_ids == spine["spine_id"].to_numpy()).all()),
        "value_mismatches": bad,
        "values_compared": len(common) * len(AGG_COLS),
        "merge_asof_s": asof_s,
    }


def bench_historical(
    repo_root: Path,
    offline: str,
    feats_path: Path,
    feats: pd.DataFrame,
    spine: pd.DataFrame,
    ttl: timedelta | None,
    runs: int,
    redis_url: str,
    tag: str = "",
) -> dict[str, Any]:
    repo = repo_root / f"repo_{tag or offline}"
    repo.mkdir()
    project = f"ctxbench_hist_{offline}_{random.getrandbits(24):06x}"
    write_repo(repo, project, offline, redis_url)
    store = open_store(repo, feats_path, ttl)
    refs = [f"txn_stats:{c}" for c in AGG_COLS]
    walls, cpus, out = [], [], None
    for i in range(runs):
        t, c = time.perf_counter(), time.process_time()
        out = store.get_historical_features(entity_df=spine, features=refs).to_df()
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
        print(
            f"  [{offline}] run {i + 1}: {walls[-1]:.2f}s ({len(spine) / walls[-1]:,.0f} spine rows/s), "
            f"{len(out):,} rows out of {len(spine):,}",
            flush=True,
        )
    store.teardown()
    chk = check_training(spine, out, feats, ttl)
    return {"offline": offline, "walls": walls, "cpus": cpus, **chk}  # "events" is added by the caller


def bench_materialize(
    repo_root: Path, offline: str, feats_path: Path, feats: pd.DataFrame, redis_url: str, runs: int
) -> tuple[dict[str, Any], Any, str, Path]:
    """Time ``FeatureStore.materialize`` (what ``feast materialize START END`` runs) into Redis."""
    repo = repo_root / f"repo_online_{offline}"
    repo.mkdir()
    project = f"ctxbench_online_{offline}_{random.getrandbits(24):06x}"
    write_repo(repo, project, offline, redis_url)
    store = open_store(repo, feats_path, None)
    start = feats["ts"].min().to_pydatetime() - timedelta(seconds=1)
    end = feats["ts"].max().to_pydatetime() + timedelta(seconds=1)
    entities = int(feats["user_id"].nunique())
    mat, cpu = [], []
    for i in range(runs):
        t, c = time.perf_counter(), time.process_time()
        store.materialize(start_date=start, end_date=end)
        mat.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
        print(
            f"  [{offline}] materialize run {i + 1}: {entities:,} entities ({len(feats):,} source rows) in "
            f"{mat[-1]:.2f}s = {entities / mat[-1]:,.0f} rows/s, cpu {cpu[-1]:.2f}s",
            flush=True,
        )
    res = {"offline": offline, "mat_s": mat, "cpu_s": cpu, "entities": entities, "source_rows": len(feats)}
    return res, store, project, repo


def bench_online(store: Any, project: str, feats: pd.DataFrame, redis_url: str, n: int) -> dict[str, Any]:
    import redis

    users = sorted(feats["user_id"].unique())
    rng = random.Random(1)
    keys = [users[rng.randrange(len(users))] for _ in range(n)]
    it = {"i": 0}

    def nxt() -> str:
        it["i"] = (it["i"] + 1) % n
        return keys[it["i"]]

    refs = [f"txn_stats:{c}" for c in ONLINE_10]
    r = redis.Redis.from_url(redis_url)
    fk = f"{project}:floor"
    r.hset(fk, mapping={f"feature_{i}": str(1000.5 + i) for i in range(10)})
    sample = store.get_online_features(features=refs, entity_rows=[{"user_id": users[0]}]).to_dict()
    lat, lat_cpu = interleaved(
        {
            "floor: redis-py HGETALL 10-field hash": lambda: r.hgetall(fk),
            "Feast get_online_features 1 entity x 10 features (.to_dict())": lambda: store.get_online_features(
                features=refs, entity_rows=[{"user_id": nxt()}]
            ).to_dict(),
        },
        n,
    )
    batches = [[{"user_id": users[rng.randrange(len(users))]} for _ in range(100)] for _ in range(50)]
    bi = {"i": 0}

    def nb() -> list[dict[str, str]]:
        bi["i"] = (bi["i"] + 1) % len(batches)
        return batches[bi["i"]]

    def floor100() -> None:
        p = r.pipeline(transaction=False)
        for _ in range(100):
            p.hgetall(fk)
        p.execute()

    blat, blat_cpu = interleaved(
        {
            "floor: pipeline of 100 HGETALL": floor100,
            "Feast get_online_features 100 entities x 10 features (.to_dict())": lambda: store.get_online_features(
                features=refs, entity_rows=nb()
            ).to_dict(),
        },
        max(100, n // 20),
        warmup=10,
    )
    r.delete(fk)
    return {
        "lat": lat,
        "blat": blat,
        "lat_cpu": lat_cpu,
        "blat_cpu": blat_cpu,
        "sample": {k: v[0] for k, v in sample.items()},
        "refs": refs,
        "users": users,
    }


# -- feature server -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def session_cpu_s(sid: int) -> float:
    """CPU seconds of every live process in session ``sid`` plus the children they reaped (cutime/cstime).

    gunicorn recycles workers (``--max-requests``); the master reaps them, so their CPU stays counted.
    """
    tck = os.sysconf("SC_CLK_TCK")
    total = 0
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            f = (d / "stat").read_text().rsplit(")", 1)[1].split()
            if int(f[3]) == sid:
                total += int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])
        except (OSError, IndexError, ValueError):
            pass
    return total / tck


def wrk(port: int, body: str, seconds: int, connections: int = 16) -> dict[str, Any]:
    """Closed-loop throughput, same parameters as evals/bench_server.py (1 thread, 16 connections)."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(
            f'wrk.method = "POST"\nwrk.body = {json.dumps(body)}\nwrk.headers["Content-Type"] = "application/json"\n'
        )
        script = f.name
    try:
        out = subprocess.run(
            [
                "wrk",
                "-t1",
                f"-c{connections}",
                f"-d{seconds}s",
                "--latency",
                "-s",
                script,
                f"http://127.0.0.1:{port}/get-online-features",
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=seconds + 60,
        ).stdout
    finally:
        os.unlink(script)

    def ms(label: str) -> float | None:
        m = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.MULTILINE)
        return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)] if m else None

    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errs = re.search(r"Socket errors:.*", out)
    reqs = re.search(r"(\d+) requests in", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "requests": int(reqs.group(1)) if reqs else 0,
        "p50_ms": ms("50%"),
        "p99_ms": ms("99%"),
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": errs.group(0) if errs else "",
    }


def bench_server(repo: Path, refs: list[str], user: str, seconds: int, runs: int, extra: list[str]) -> dict[str, Any]:
    import urllib.request

    port = free_port()
    feast_bin = str(Path(sys.executable).parent / "feast")
    cmd = [
        feast_bin,
        "--chdir",
        str(repo),
        "serve",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
        "-w",
        "2",
        "--no-access-log",
        *extra,
    ]
    log_path = repo / f"serve_{port}.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    body = json.dumps({"features": refs, "entities": {"user_id": [user]}})
    try:
        deadline = time.time() + 90
        while True:
            try:
                req = urllib.request.Request(
                    f"http://127.0.0.1:{port}/get-online-features",
                    data=body.encode(),
                    headers={"Content-Type": "application/json"},
                )
                sample = urllib.request.urlopen(req, timeout=5).read().decode()
                break
            except OSError as err:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"feast serve did not come up: {log_path.read_text()[-2000:]}") from err
                time.sleep(0.5)
        load = os.getloadavg()[0]
        wrk(port, body, 2)  # warm-up
        res = []
        for _ in range(runs):
            c = session_cpu_s(proc.pid)
            x = wrk(port, body, seconds)
            x["server_cpu_us"] = 1e6 * (session_cpu_s(proc.pid) - c) / max(1, x["requests"])
            res.append(x)
        for x in res:
            print(
                f"  feast serve {' '.join(extra) or '(defaults)'}: {x['rps']:.0f} req/s, p50 {x['p50_ms']} ms, "
                f"p99 {x['p99_ms']} ms, non-2xx {x['non_2xx']}, server CPU {x['server_cpu_us']:.0f} us/request",
                flush=True,
            )
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the process group this function started
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    best = sorted(res, key=lambda x: x["rps"])[len(res) // 2]
    return {
        "cmd": " ".join(["feast", "serve", "-w", "2", "--no-access-log", *extra]),
        "runs": res,
        "median": best,
        "load": load,
        "sample": sample,
    }


def main() -> None:
    _ensure_feast_python()
    warnings.filterwarnings("ignore")  # Feast/dask deprecation chatter would bury the numbers
    logging.disable(logging.WARNING)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="200k events, 20k spine rows, short server runs")
    ap.add_argument("--events", type=int, default=None)
    ap.add_argument("--spine", type=int, default=None)
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument(
        "--scale",
        action="append",
        default=[],
        metavar="EVENTS:SPINE",
        help="extra historical scale point (one run per store), e.g. 10000000:100000; repeatable",
    )
    ap.add_argument("--ttl-days", type=int, default=0, help="FeatureView ttl (0 = none)")
    ap.add_argument("--runs", type=int, default=3, help="runs of each historical / server measurement")
    ap.add_argument(
        "--mat-runs", type=int, default=None, help="materialize runs per offline store (default 2, quick 1)"
    )
    ap.add_argument("--offline", default="file,duckdb", help="offline stores to measure (file = dask)")
    ap.add_argument("--samples", type=int, default=None, help="online latency samples per case")
    ap.add_argument("--no-server", action="store_true")
    ap.add_argument("--server-seconds", type=int, default=None)
    ap.add_argument("--redis", default=os.environ.get("CONTEXT_STORE_REDIS_URL", "redis://127.0.0.1:6379/0"))
    ap.add_argument("--out", default=str(ROOT / "evals" / "results" / "feast.md"))
    ap.add_argument(
        "--render", action="store_true", help="only re-render --out from the last run's evals/out/<out name>_raw.json"
    )
    args = ap.parse_args()
    raw_path = OUT_DIR / f"{Path(args.out).stem}_raw.json"
    if args.render:
        raw = json.loads(raw_path.read_text())
        a = argparse.Namespace(**raw["args"])
        md = report(a, raw["meta"], raw["hist"], raw["big"], raw["mats"], raw["online"], raw["server"])
        Path(args.out).write_text(md)
        print(md)
        return
    n_events = args.events or (200_000 if args.quick else 1_000_000)
    n_spine = args.spine or (20_000 if args.quick else 100_000)
    n = args.samples or (1_000 if args.quick else 5_000)
    args.server_seconds = args.server_seconds or (3 if args.quick else 10)
    ttl = timedelta(days=args.ttl_days) if args.ttl_days else None
    meta: dict[str, Any] = {
        "started": datetime.now(UTC).strftime("%Y-%m-%d %H:%M"),
        "argv": sys.argv[1:],
        "load_start": " / ".join(f"{x:.1f}" for x in os.getloadavg()),
        "events": n_events,
        "spine": n_spine,
    }
    import redis

    tmp = Path(tempfile.mkdtemp(prefix="bench_feast_"))
    projects: list[str] = []
    hist: list[dict[str, Any]] = []
    online: dict[str, Any] | None = None
    server: list[dict[str, Any]] = []
    mats: list[dict[str, Any]] = []
    big: list[dict[str, Any]] = []
    try:
        t = time.perf_counter()
        events = generate_events(n_events, args.users, args.days)
        spine = make_spine(n_spine, args.users, args.days)
        print(f"generated {n_events:,} events, {n_spine:,} spine rows in {time.perf_counter() - t:.1f}s", flush=True)
        t = time.perf_counter()
        feats = precompute_windows(events)
        meta["precompute_s"] = time.perf_counter() - t
        print(f"precomputed 12 window features in {meta['precompute_s']:.2f}s", flush=True)
        feats_path = tmp / "txn_features.parquet"
        feats.to_parquet(feats_path, index=False)
        for offline in [o for o in args.offline.split(",") if o]:
            h = bench_historical(tmp, offline, feats_path, feats, spine, ttl, args.runs, args.redis)
            hist.append({**h, "events": n_events})
        for point in args.scale:  # extra scale points, a single run per store each
            ne, ns = (int(x) for x in point.split(":"))
            ev = events if ne == n_events else generate_events(ne, args.users, args.days)
            fe = feats if ne == n_events else precompute_windows(ev)
            fp = feats_path if ne == n_events else tmp / f"txn_features_{ne}.parquet"
            if ne != n_events:
                fe.to_parquet(fp, index=False)
            sp = make_spine(ns, args.users, args.days, seed=3)
            print(f"scale point: {ne:,} events, {ns:,} spine rows", flush=True)
            for offline in [o for o in args.offline.split(",") if o]:
                h = bench_historical(tmp, offline, fp, fe, sp, ttl, 1, args.redis, tag=f"{offline}_{ne}_{ns}")
                big.append({**h, "events": ne})
            del ev, fe, sp
        serving: tuple[Any, str, Path] | None = None
        for offline in [o for o in args.offline.split(",") if o]:
            m, store, project, repo = bench_materialize(
                tmp, offline, feats_path, feats, args.redis, args.mat_runs or (1 if args.quick else 2)
            )
            projects.append(project)
            mats.append(m)
            if serving is None:
                serving = (store, project, repo)
            else:
                store.teardown()
        assert serving is not None
        store, project, repo = serving
        online = bench_online(store, project, feats, args.redis, n)
        if not args.no_server:
            if shutil.which("wrk") is None:
                print("wrk not found (apt-get install -y wrk): skipping the feature server", flush=True)
            else:
                user = online["users"][0]
                server.append(bench_server(repo, online["refs"], user, args.server_seconds, args.runs, []))
                server.append(
                    bench_server(repo, online["refs"], user, args.server_seconds, args.runs, ["--max-requests", "0"])
                )
        store.teardown()
    finally:
        r = redis.Redis.from_url(args.redis)
        left = 0
        for p in projects:  # Feast keys end with the project name; teardown should have removed them all
            for k in r.scan_iter(match=f"*{p}*".encode(), count=1000):
                r.delete(k)
                left += 1
        meta["leftover_keys"] = left
        shutil.rmtree(tmp, ignore_errors=True)
    meta["load_end"] = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    if online:
        online = {k: v for k, v in online.items() if k != "users"} | {"n_users": len(online["users"])}
    raw = {"args": vars(args), "meta": meta, "hist": hist, "big": big, "mats": mats, "online": online, "server": server}
    raw_path.parent.mkdir(parents=True, exist_ok=True)
    raw_path.write_text(json.dumps(raw, default=str))
    md = report(args, meta, hist, big, mats, online, server)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(md)
    print(md)


if __name__ == "__main__":
    main()
