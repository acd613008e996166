"""Interleaved A/B of ``get_user_context`` latency on the recs repo (issue #15 item 5): runs
``evals/profile_recs.py`` with ``PYTHONPATH`` on tree A, then tree B, ``--rounds`` times (A B A B ...),
each run a fresh process that builds the MovieLens repo of ``bench_recs.py``; checks that every B
run returns the same similar lists as the first A run; prints medians, p99s and their ranges over
the runs, and the load average before each run.

Run: ``python evals/ab_recs_latency.py --a /path/to/base/tree --b . --rounds 3``
(``--data`` as for bench_recs; a base tree: ``git archive <commit> | tar -x -C /tmp/base``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
KINDS = ("online", "replay", "replay_warm", "first", "cpu_online", "cpu_replay", "backfill")


def _run(tree: str, args: argparse.Namespace, dump: Path, check: Path | None) -> tuple[dict[str, list[float]], str]:
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    cmd = [sys.executable, str(HERE / "profile_recs.py"), "--data", args.data, "--dump", str(dump)]
    cmd += ["--cutoffs", str(args.cutoffs), "--per-cutoff", str(args.per_cutoff), "--online", str(args.online)]
    if check is not None:
        cmd += ["--check", str(check)]
    if args.online_store:
        cmd += ["--online-store", args.online_store]
    if args.freeze_gc:
        cmd += ["--freeze-gc"]
    env = {**os.environ, "PYTHONPATH": str(Path(tree).resolve())}
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"run on {tree} failed ({out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
    if check is not None:
        print("  " + [ln for ln in out.stdout.splitlines() if ln.startswith("check:")][0])
    after = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return json.loads(dump.read_text())["latency_ms"], f"{load} -> {after}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--a", required=True)
    ap.add_argument("--b", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--data", default=str(HERE.parents[0] / ".." / "shared" / "datasets" / "movielens-small"))
    ap.add_argument("--cutoffs", type=int, default=2)
    ap.add_argument("--per-cutoff", type=int, default=20)
    ap.add_argument("--online", type=int, default=200)
    ap.add_argument("--online-store", default=None, help="e.g. redis://127.0.0.1:6379/0 (default: sqlite)")
    ap.add_argument("--freeze-gc", action="store_true", help="profile_recs.py --freeze-gc (as `serve` does)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ab_recs_"))
    runs: dict[str, list[tuple[dict[str, list[float]], str]]] = {"A": [], "B": []}
    ref = tmp / "A0.json"
    for r in range(args.rounds):
        for side, tree in (("A", args.a), ("B", args.b)):
            dump = tmp / f"{side}{r}.json"
            print(f"round {r + 1}/{args.rounds}: {side} ({tree})", flush=True)
            runs[side].append(_run(tree, args, dump, None if (side, r) == ("A", 0) else ref))
    print(f"\n{'':12} {'side':4} {'p50 (median, range over runs)':32} {'p99 (median, range)':28}")
    for kind in KINDS:
        for side in ("A", "B"):
            p50 = [float(np.percentile(x[kind], 50)) for x, _ in runs[side] if x.get(kind)]
            p99 = [float(np.percentile(x[kind], 99)) for x, _ in runs[side] if x.get(kind)]
            if not p50:
                continue
            print(
                f"{kind:12} {side:4} {np.median(p50):7.1f} [{min(p50):6.1f}, {max(p50):6.1f}] ms"
                f"          {np.median(p99):7.1f} [{min(p99):6.1f}, {max(p99):6.1f}] ms"
            )
    for side in ("A", "B"):
        print(f"load before -> after {side} runs: " + "; ".join(load for _, load in runs[side]))
    names = ("online", "replay", "replay_warm")
    pooled = {s: {k: np.concatenate([np.asarray(x[k]) for x, _ in runs[s]]) for k in names} for s in ("A", "B")}
    for side in ("A", "B"):
        rep = np.concatenate([pooled[side]["replay"], pooled[side]["replay_warm"]])
        print(
            f"pooled {side}: online p50 {np.percentile(pooled[side]['online'], 50):.1f} p99 "
            f"{np.percentile(pooled[side]['online'], 99):.1f} (n={len(pooled[side]['online'])}); replay (no first "
            f"calls) p50 {np.percentile(rep, 50):.1f} p99 {np.percentile(rep, 99):.1f} (n={len(rep)})"
        )


if __name__ == "__main__":
    main()
