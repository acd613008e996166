"""Online ``get_user_context`` latency on the recs config while ratings are pushed (issue #15 item 5).

``profile_recs.py`` times online calls on a still log within one ``cs.TopItems`` refresh interval;
a live service also gets pushes and crosses the interval. This builds the same MovieLens repo
(``bench_recs.REPO``, the default re-rank, its ``cs.TopItems`` with ``refresh_seconds=--refresh``),
backfills, materializes, then ``--rounds`` times: push one rating (``wait=True``: visible online)
and time the next online call ("after_push"), then ``--between`` more calls ("steady"). Prints
p50/p90/p99/max per kind and the load average.

Run: ``PYTHONPATH=. python evals/bench_recs_push.py --rounds 40 --refresh 2`` (A/B: ``--tree``).
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import shutil
import sys
import tempfile
import textwrap
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_recs import DEFAULT_RERANK, REPO, load, parse_rerank, service_name, services_src, write_ratings  # noqa: E402


def _pct(xs: list[float]) -> dict[str, float]:
    a = np.asarray(xs)
    return {k: round(float(np.percentile(a, q)), 1) for k, q in (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--data", default=str(Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets" / "movielens-small")
    )
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--between", type=int, default=4)
    ap.add_argument("--refresh", type=float, default=2.0, help="the cs.TopItems refresh_seconds")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import context_store as cs

    u, m, r, ts = load(Path(args.data))
    svc = service_name(parse_rerank(DEFAULT_RERANK).recent)
    root = Path(tempfile.mkdtemp(prefix="bench_recs_push_"))
    lat: dict[str, list[float]] = {"after_push": [], "steady": [], "push": []}
    try:
        (root / "data").mkdir()
        write_ratings(root, u, m, r, ts)
        src = REPO.format(method="pmi_svd", dim=64, params={}, min_interactions=3, min_weight=None, half_life=365)
        services = services_src([DEFAULT_RERANK])
        assert "n=50)" in services
        services = services.replace("n=50)", f"n=50, refresh_seconds={args.refresh!r})")
        (root / "features.py").write_text(textwrap.dedent(src) + services)
        store = cs.ContextStore(root, workspace=f"brp_{root.name[-8:]}", online_store="sqlite")
        store.apply()
        store.backfill()
        store.materialize()
        users = sorted({str(x) for x in u})
        movies = sorted({str(x) for x in m})
        rng = random.Random(args.seed)
        store.get_user_context(users[0], svc)  # per-process caches
        gc.collect()
        gc.freeze()  # as `serve` does after its warm-up
        for _ in range(args.rounds):
            t = time.perf_counter()
            row = {"user_id": rng.choice(users), "movie_id": rng.choice(movies), "rating": 4.0, "ts": datetime.now(UTC)}
            assert store.push("ratings", [row]).visible
            lat["push"].append((time.perf_counter() - t) * 1e3)
            for j in range(1 + args.between):
                t = time.perf_counter()
                store.get_user_context(rng.choice(users), svc)
                lat["after_push" if j == 0 else "steady"].append((time.perf_counter() - t) * 1e3)
        store.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    load_avg = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    print(json.dumps({"load": load_avg, **{k: _pct(v) for k, v in lat.items()}, "raw": lat}))


if __name__ == "__main__":
    main()
