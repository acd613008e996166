"""get_user_context latency with a long event log: as_of replay and online serving.

    python -m evals.bench_context_replay [--users 1000] [--events 100] [--dim 384] [--calls 200]

Builds the ratings repo of tests/support/recs.py at scale (``users * events`` rating events, each
carrying its item's ``dim``-d vector; a lifetime mean of those vectors is the interest feature, as
in issue #15), then measures p50/p99 of ``get_user_context`` replayed at random ``as_of`` times for
random users (offline path), and served online (sqlite online store), with the time of each part.
The first replay (building the per-process history index and opening Lance tables) is reported
apart. Results go to evals/results/context_replay.md. Targets: replay p99 <= 50 ms, online p99 <= 10 ms.
Runs at any revision (bench_revisions.py): the ``cs.Similar`` options are not used.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "evals" / "results"


def _pct(xs: list[float]) -> dict[str, float]:
    a = np.asarray(xs)
    return {"p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99)), "max": float(a.max())}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--events", type=int, default=100, help="events per user")
    ap.add_argument("--items", type=int, default=2000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--out", default=str(RESULTS / "context_replay.md"))
    args = ap.parse_args()

    import context_store as cs
    from tests.support.recs import T0, build_recs_repo

    root = Path(tempfile.mkdtemp()) / "repo"
    t0 = time.perf_counter()
    build_recs_repo(
        root, users=args.users, events_per_user=args.events, n_items=args.items, dim=args.dim, similar="(items, 10)"
    )
    store = cs.ContextStore(root, workspace="bench_replay", online_store="sqlite")
    store.apply()
    store.backfill()
    store.materialize()
    build_s = time.perf_counter() - t0
    n_events = args.users * args.events
    rng = random.Random(5)

    def replay_once() -> tuple[float, dict[str, float]]:
        u = f"u{rng.randrange(args.users)}"
        at = T0 + timedelta(days=rng.uniform(1, 60))
        t = time.perf_counter()
        uc = store.get_user_context(u, as_of=at)
        return (time.perf_counter() - t) * 1e3, uc.timings_ms

    first, _ = replay_once()
    replay: list[float] = []
    parts: dict[str, list[float]] = {}
    online: list[float] = []
    for _ in range(args.calls):  # interleaved: both see the same machine load
        ms, timing = replay_once()
        replay.append(ms)
        for k, v in timing.items():
            parts.setdefault(k, []).append(v)
        u = f"u{rng.randrange(args.users)}"
        t = time.perf_counter()
        store.get_user_context(u)
        online.append((time.perf_counter() - t) * 1e3)
    store.close()

    r, o = _pct(replay), _pct(online)
    load = os.getloadavg()[0]
    lines = [
        "# get_user_context: as_of replay and online serving with a long event log",
        "",
        f"`python -m evals.bench_context_replay --users {args.users} --events {args.events} --items {args.items} "
        f"--dim {args.dim} --calls {args.calls}`",
        "",
        f"{n_events:,} rating events in the log ({args.users} users x {args.events}), each with a {args.dim}-d item "
        f"vector; interest = lifetime mean of those vectors; {args.items} items (hash-{args.dim} vectors). "
        f"{platform.machine()}, {os.cpu_count()} cores, 1-min load average {load:.2f} at the end; repo built "
        f"(backfill + materialize) in {build_s:.1f} s.",
        "",
        "| call | p50 ms | p99 ms | max ms |",
        "|---|---|---|---|",
        f"| replay (as_of) | {r['p50']:.1f} | {r['p99']:.1f} | {r['max']:.1f} |",
        f"| online | {o['p50']:.2f} | {o['p99']:.2f} | {o['max']:.2f} |",
        "",
        f"First replay of the process (history index built, tables opened): {first:.0f} ms.",
        "",
        "Replay, per part (ms):",
        "",
        "| part | p50 | p99 |",
        "|---|---|---|",
        *[f"| {k} | {_pct(v)['p50']:.2f} | {_pct(v)['p99']:.2f} |" for k, v in parts.items()],
        "",
    ]
    text = "\n".join(lines)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)


if __name__ == "__main__":
    main()
