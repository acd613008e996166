"""Where the milliseconds of a recs ``get_user_context`` go (issue #15, item 5), and a fixed-call check.

Builds the MovieLens repo of ``bench_recs.py`` once (its ``REPO`` and declared config, imported, not
copied), ``backfill(end=c)`` per cut-off, then per cut-off: the first replay call (per-day caches
cold), the cases' replay calls ``get_user_context(user, as_of=c)`` twice (the second pass: warm
caches), and after the last cut-off ``materialize()`` and ``--online`` online calls (no ``as_of``).

``--dump FILE`` writes every call's similar list (ids, scores, rank scores) and latency as JSON;
``--check FILE`` compares the similar lists with such a dump and exits 1 on any difference: run it
against a dump of the code before a change to show the change is exact. ``--profile`` prints the
top functions of a cProfile of the warm replay pass and the online calls.

Run: ``PYTHONPATH=. python evals/profile_recs.py --cutoffs 2 --per-cutoff 20 --online 200``.
A/B: run it with ``PYTHONPATH`` on two trees in turn (``evals/ab_recs_latency.sh``).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import random
import shutil
import sys
import tempfile
import textwrap
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_recs import DEFAULT_RERANK, REPO, load, make_cases, parse_rerank, service_name, services_src, write_ratings  # noqa: E402


def _pct(xs: list[float]) -> dict[str, float]:
    a = np.asarray(xs, dtype=np.float64)
    if not len(a):
        return {}
    return {
        "n": float(len(a)),
        "p50": float(np.percentile(a, 50)),
        "p90": float(np.percentile(a, 90)),
        "p99": float(np.percentile(a, 99)),
        "max": float(a.max()),
    }


def _sim(ctx: Any) -> list[list[Any]]:
    return [[str(i.entity_id), round(float(i.score), 6), i.rank_score] for i in ctx.similar]


_KIND: list[str] = ["-"]


def _wrap_sections() -> dict[str, dict[str, list[float]]]:
    """Wrap the main steps of a call with timers (module attributes: callers look them up at call time)."""
    import importlib

    out: dict[str, dict[str, list[float]]] = {}
    targets = [
        ("context_store.serving.context", "_features_as_of"),
        ("context_store.serving.context", "_features_online"),
        ("context_store.serving.context", "render"),
        ("context_store.serving.retrieval", "seen_items"),
        ("context_store.serving.retrieval", "recent_items_query"),
        ("context_store.serving.retrieval", "catalogue_after"),
        ("context_store.serving.retrieval", "retrieve"),
        ("context_store.serving.retrieval", "_also"),
        ("context_store.serving.retrieval", "top_items"),
        ("context_store.serving.retrieval", "first_seen"),
        ("context_store.serving.retrieval", "_signature"),
        ("context_store.serving.retrieval", "_offline_values"),
        ("context_store.serving.similar", "compile_filter"),
        ("context_store.stores.vector.faiss_index", "FaissIndex.search"),
        ("context_store.stores.vector.faiss_index", "FaissIndex._id_mask"),
        ("context_store.serving.retrieval", "rerank"),
        ("context_store.serving.retrieval", "_feature_values"),
        ("context_store.serving.similar", "VectorService.find_similar"),
        ("context_store.serving.warm", "warm_replay_caches"),
        ("context_store.serving.warm", "index_entity_tables"),
        ("context_store.stores.online.base", "BaseOnlineStore.read_entities"),
        ("context_store.stores.online.redis", "RedisOnlineStore._hmget"),
        ("context_store.stores.online.redis", "RedisOnlineStore._recent_read"),
    ]
    for mod_name, attr in targets:
        mod = importlib.import_module(mod_name)
        owner: Any = mod
        name = attr
        if "." in attr:
            cls, name = attr.split(".")
            owner = getattr(mod, cls)
        fn = getattr(owner, name, None)
        if fn is None:
            continue

        def timed(*a: Any, _fn: Any = fn, _n: str = attr, **kw: Any) -> Any:
            t = time.perf_counter()
            try:
                return _fn(*a, **kw)
            finally:
                per = out.setdefault(_KIND[0], {})
                per.setdefault(_n, []).append((time.perf_counter() - t) * 1e3)

        setattr(owner, name, timed)
    return out


def _loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--data", default=str(Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets" / "movielens-small")
    )
    ap.add_argument("--cutoffs", type=int, default=2)
    ap.add_argument("--per-cutoff", type=int, default=20)
    ap.add_argument("--online", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--dump", default=None)
    ap.add_argument("--check", default=None)
    ap.add_argument("--sections", action="store_true", help="time the main steps of a call (wrapped functions)")
    ap.add_argument("--profile-first", action="store_true", help="cProfile the first call after each backfill")
    ap.add_argument(
        "--online-store", default=None, help="e.g. redis://127.0.0.1:6379/0 (a unique workspace, its keys deleted)"
    )
    ap.add_argument(
        "--freeze-gc",
        action="store_true",
        help="gc.collect() + gc.freeze() before the online calls, as `serve` does after its warm-up (without it a "
        "full collection of the process's heap, ~40 ms CPU here, lands on an online call every few hundred calls)",
    )
    args = ap.parse_args()

    import context_store as cs

    sections = _wrap_sections() if args.sections else None

    u, m, r, ts = load(Path(args.data))
    cases, _ = make_cases(u, m, r, ts, args.cutoffs, args.per_cutoff, args.seed)
    svc = service_name(parse_rerank(DEFAULT_RERANK).recent)
    root = Path(tempfile.mkdtemp(prefix="profile_recs_"))
    calls: list[dict[str, Any]] = []
    lat: dict[str, list[float]] = {
        "first": [],
        "replay": [],
        "replay_warm": [],
        "online": [],
        "cpu_replay": [],
        "cpu_online": [],
        "backfill": [],  # the backfill call itself (wall ms): what warming and indexing add to it
    }
    prof = cProfile.Profile() if args.profile else None
    first_prof = cProfile.Profile() if args.profile_first else None
    try:
        (root / "data").mkdir()
        write_ratings(root, u, m, r, ts)
        src = REPO.format(method="pmi_svd", dim=64, params={}, min_interactions=3, min_weight=None, half_life=365)
        (root / "features.py").write_text(textwrap.dedent(src) + services_src([DEFAULT_RERANK]))
        # A unique workspace: a Redis online store is shared (its keys are deleted at the end).
        workspace = f"profile_recs_{root.name.rsplit('_', 1)[-1]}"
        store = cs.ContextStore(root, workspace=workspace, online_store=args.online_store)
        store.apply()

        def call(kind: str, user: str, at: datetime | None) -> None:
            _KIND[0] = kind
            t, tc = time.perf_counter(), time.process_time()
            ctx = store.get_user_context(user, svc, as_of=at)
            ms = (time.perf_counter() - t) * 1e3
            lat[kind].append(ms)
            if kind.startswith("replay") or kind == "online":
                lat["cpu_online" if kind == "online" else "cpu_replay"].append((time.process_time() - tc) * 1e3)
            calls.append({"kind": kind, "user": user, "as_of": at.isoformat() if at else None, "similar": _sim(ctx)})

        for c in sorted({x.cutoff for x in cases}):
            at = datetime.fromtimestamp(c, tz=UTC)
            tb, _KIND[0] = time.perf_counter(), "backfill"
            store.backfill(end=at)
            lat["backfill"].append((time.perf_counter() - tb) * 1e3)
            users = [str(x.user) for x in cases if x.cutoff == c]
            if first_prof is not None:
                first_prof.enable()
            call("first", users[0], at)
            if first_prof is not None:
                first_prof.disable()
            for user in users[1:]:
                call("replay", user, at)
            if prof is not None:
                prof.enable()
            for user in users:
                call("replay_warm", user, at)
            if prof is not None:
                prof.disable()
        if args.online:
            store.materialize()
            pool = sorted({str(x) for x in u[ts < max(x.cutoff for x in cases)]})
            store.get_user_context(pool[0], svc)  # per-process caches
            if args.freeze_gc:
                import gc

                gc.collect()
                gc.freeze()
            rng = random.Random(args.seed)
            picked = rng.sample(pool, min(args.online, len(pool)))
            online_prof = cProfile.Profile() if args.profile else None
            for user in picked:
                if online_prof is not None:
                    online_prof.enable()
                call("online", user, None)
                if online_prof is not None:
                    online_prof.disable()
        if args.online_store:
            store.online.clear()  # type: ignore[attr-defined]
        store.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)

    summary: dict[str, Any] = {k: _pct(v) for k, v in lat.items()}
    if sections is not None:
        summary["sections_p50_ms"] = {
            kind: {n: round(float(np.median(v)), 2) for n, v in per.items() if v} for kind, per in sections.items()
        }
    print(json.dumps({"load": _loadavg(), **summary}, indent=1))
    if first_prof is not None:
        s = io.StringIO()
        pstats.Stats(first_prof, stream=s).sort_stats("cumulative").print_stats(60)
        print("== cProfile first calls after each backfill ==\n" + s.getvalue())
    if prof is not None:
        for name, p in (("replay (warm pass)", prof), ("online", online_prof)):
            if p is None:
                continue
            s = io.StringIO()
            pstats.Stats(p, stream=s).sort_stats("cumulative").print_stats(45)
            print(f"== cProfile {name} ==\n" + s.getvalue())
    if args.dump:
        Path(args.dump).write_text(json.dumps({"calls": calls, "latency_ms": lat, "load": _loadavg()}))
    if args.check:
        want = json.loads(Path(args.check).read_text())["calls"]
        ok = [(a["kind"], a["user"], a["as_of"]) for a in want] == [(b["kind"], b["user"], b["as_of"]) for b in calls]
        diff = [i for i, (a, b) in enumerate(zip(want, calls)) if a["similar"] != b["similar"]]
        print(f"check: {len(calls)} calls, same calls: {ok}, differing similar lists: {len(diff)}")
        for i in diff[:5]:
            print(" ", calls[i]["kind"], calls[i]["user"], want[i]["similar"][:3], "!=", calls[i]["similar"][:3])
        if not ok or diff:
            sys.exit(1)


if __name__ == "__main__":
    main()
