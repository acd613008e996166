"""Materialize rate of plain row views (offline -> Redis), the 10-feature shape of bench_redis_memory.

    python -m evals.bench_materialize_rows [--entities 200000] [--reps 5] [--profile]

Starts a private ``redis-server`` (defaults, no persistence) on a free port, backfills once, then per
repetition runs ``materialize(full=True)`` of the view with ``ttl="30d"`` (key TTLs) and of the one
without (``_p`` marker), interleaved, each on a freshly flushed server. Reports wall rows/s (the
offline read included), rows/s by CPU (N / (client CPU + Redis server CPU)), medians and ranges,
and the load average. ``--profile``: one cProfile run of each view instead (top functions).
Prints a markdown table (``--out`` writes it to a file). ``wall / CPU`` is wall time over client + Redis
CPU: 1.0 when nothing overlaps on idle cores, toward max(client, Redis) / sum with full overlap; above 1
the process waited for a core (other load).

Base vs new, interleaved, each side importing its own checkout (a second worktree for the base):

    for i in 1 2 3; do for d in /path/base /path/new; do (cd $d && PYTHONPATH=$d python -m \
        evals.bench_materialize_rows --reps 2); done; done
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import context_store as cs  # noqa: E402
from evals.bench_redis_memory import WS, make_data  # noqa: E402
from tests.support.private_redis import PrivateRedis  # noqa: E402


def _cpu(r: object) -> float:
    info = r.info("cpu")  # type: ignore[attr-defined]
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def _self_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--entities", type=int, default=200_000)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    import redis

    n = args.entities
    tmp = Path(tempfile.mkdtemp(prefix="bench_mat_rows_"))
    srv = PrivateRedis(tmp).start()  # a redis-server of this run's own, on a free port
    url = srv.url
    try:
        r = redis.Redis.from_url(url)
        make_data(tmp, n, 1, time.time_ns() // 1000)
        store = cs.ContextStore(tmp, online_store=url, workspace=WS)
        store.apply()
        store.backfill(views=["profile", "profile_nottl"])
        views = ["profile", "profile_nottl"]
        if args.profile:
            for v in views:
                r.flushall()
                pr = cProfile.Profile()
                pr.enable()
                rep = store.materialize(views=[v], full=True)
                pr.disable()
                print(f"== {v}: {rep.rows / rep.seconds:,.0f} rows/s")
                pstats.Stats(pr).sort_stats("cumulative").print_stats(30)
                pstats.Stats(pr).sort_stats("tottime").print_stats(20)
            return
        load0 = open("/proc/loadavg").read().split()[:3]
        res: dict[str, list[tuple[float, float, float, float, float]]] = {v: [] for v in views}
        for i in range(args.reps):
            for v in views:
                r.flushall()
                c0, s0 = _cpu(r), _self_cpu()
                rep = store.materialize(views=[v], full=True)
                rcpu, ccpu = _cpu(r) - c0, _self_cpu() - s0
                cpu = rcpu + ccpu
                assert rep.rows == n and r.dbsize() >= n, (rep.rows, r.dbsize())
                res[v].append((n / rep.seconds, n / cpu, ccpu / n * 1e6, rcpu / n * 1e6, rep.seconds / cpu))
                print(
                    f"rep {i + 1} {v:14} {n / rep.seconds:10,.0f} rows/s wall {n / cpu:10,.0f} rows/s by CPU "
                    f"(client {ccpu:.2f} s, Redis {rcpu:.2f} s, wall {rep.seconds:.2f} s)",
                    flush=True,
                )
        load1 = open("/proc/loadavg").read().split()[:3]

        def fmt(xs: list[float], f: str = ",.0f") -> str:
            return f"{statistics.median(xs):{f}} ({min(xs):{f}}–{max(xs):{f}})"

        lines = [
            f"{n:,} entities, {args.reps} repetitions interleaved; load average before {' '.join(load0)}, "
            f"after {' '.join(load1)}",
            "",
            "| view | rows/s wall | rows/s by CPU | client CPU µs/row | Redis CPU µs/row | wall / CPU |",
            "|---|---|---|---|---|---|",
        ]
        for v in views:
            c = [list(x) for x in zip(*res[v])]
            cells = [fmt(c[0]), fmt(c[1]), fmt(c[2], ".2f"), fmt(c[3], ".2f"), fmt(c[4], ".2f")]
            lines.append(f"| {v} | " + " | ".join(cells) + " |")
        text = "\n".join(lines)
        print(text)
        if args.out:
            args.out.write_text(text + "\n")
    finally:
        srv.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
