"""Recommendation quality on MovieLens (issue #15): baselines vs context-store's ``get_user_context``.

Leak-free temporal split: many cut-offs c; a test case is a user with >= 5 ratings before c whose
next ratings after c (up to 10) include a movie rated >= 4 (the targets). Candidates for that case:
movies first rated before c (released by then) that the user has not rated before c. Every system
sees only ratings before c. Metrics @10 with 95% bootstrap intervals, catalogue coverage.

Systems (``--systems``, comma separated):
  pop180   most rated movies of the 180 days before c
  itemknn  item-item cosine on the binary user-item matrix before c
  als      ``implicit`` ALS, 64 factors, untuned
  seqknn   sequence-aware: movies rated within 20 positions after the user's newest rated movie in
           other users' time-ordered ratings (counts; ties by pop180)
  cs-math  the product's own trainer and interest formula in numpy (no store): a fast check
  cs       the product path: a repo built from the dataset (ratings as a ``cs.StreamSource``, an
           interaction-trained item view, a declared interest vector, ``movie_pop`` rating counts /
           mean per movie), ``backfill(end=c)``, then ``get_user_context(user, as_of=c)`` whose
           ``cs.Similar(..., exclude_seen=True, seen_from=ratings, rerank=cs.Rerank(...))`` leaves
           out seen and not-yet-released movies and re-ranks by the movie features as of c.

``--cs-rerank "view.feature=w,...;candidates=N;similarity=S;also=view.feature:n"`` (``also``: a
``cs.TopItems`` second candidate source merged into the re-rank pool; repeatable; the first is declared,
the others are per-call overrides, one ``cs[...]`` row each): tune on earlier cut-offs
(``--quantiles 0.25,0.43``), report on the test ones (default ``0.45,0.95``).
``--cs-filter none|eval``: take the product's similar list as is (default) or also remove seen /
not-yet-released movies in this script (counted either way as "recommended items already rated").

Run: ``python evals/bench_recs.py [--data ../shared/datasets/movielens-small] [--cutoffs 12]``.
"""

from __future__ import annotations

import argparse
import gc
import random
import shlex
import shutil
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
from scipy.sparse import csr_matrix

K = 10
DAY = 86400


@dataclass
class Case:
    cutoff: int
    user: int
    history: list[tuple[int, float, int]]  # (movie, rating, ts) before the cut-off
    targets: set[int]
    candidates: np.ndarray  # bool mask over movie index


def load(data: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    t = pcsv.read_csv(data / "ratings.csv")
    return (
        t.column("userId").to_numpy(),
        t.column("movieId").to_numpy(),
        t.column("rating").to_numpy(),
        t.column("timestamp").to_numpy(),
    )


def make_cases(
    u: np.ndarray,
    m: np.ndarray,
    r: np.ndarray,
    ts: np.ndarray,
    n_cut: int,
    per_cut: int,
    seed: int,
    lo: float = 0.45,
    hi: float = 0.95,
) -> tuple[list[Case], np.ndarray]:
    movies = np.unique(m)
    midx = {int(x): i for i, x in enumerate(movies)}
    first = np.full(len(movies), np.iinfo(np.int64).max)
    np.minimum.at(first, np.array([midx[int(x)] for x in m]), ts)
    order = np.argsort(ts, kind="stable")
    cutoffs = [int(np.quantile(ts, q)) for q in np.linspace(lo, hi, n_cut)]
    rng = random.Random(seed)
    by_user: dict[int, list[int]] = {}
    for i in order:
        by_user.setdefault(int(u[i]), []).append(int(i))
    cases: list[Case] = []
    for c in cutoffs:
        released = first < c
        eligible = []
        for user, idx in by_user.items():
            before = [i for i in idx if ts[i] < c]
            after = [i for i in idx if ts[i] >= c][:10]
            if len(before) < 5 or not after:
                continue
            seen = {midx[int(m[i])] for i in before}
            tg = {midx[int(m[i])] for i in after if r[i] >= 4.0}
            tg = {t for t in tg if released[t] and t not in seen}
            if tg:
                eligible.append((user, before, tg, seen))
        for user, before, tg, seen in rng.sample(eligible, min(per_cut, len(eligible))):
            cand = released.copy()
            cand[list(seen)] = False
            hist = [(midx[int(m[i])], float(r[i]), int(ts[i])) for i in before]
            cases.append(Case(c, user, hist, tg, cand))
    return cases, movies


def metrics(recs: list[list[int]], cases: list[Case]) -> dict[str, np.ndarray]:
    hr, rec, ndcg = [], [], []
    for top, case in zip(recs, cases):
        hits = [1.0 if x in case.targets else 0.0 for x in top[:K]]
        hr.append(1.0 if any(hits) else 0.0)
        rec.append(sum(hits) / min(len(case.targets), K))
        dcg = sum(h / np.log2(i + 2) for i, h in enumerate(hits))
        idcg = sum(1 / np.log2(i + 2) for i in range(min(len(case.targets), K)))
        ndcg.append(dcg / idcg)
    return {"HR@10": np.array(hr), "Recall@10": np.array(rec), "NDCG@10": np.array(ndcg)}


def boot(x: np.ndarray, n: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), (n, len(x)))].mean(axis=1)
    return float(x.mean()), float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


TIE_SEED = 0
_tie_keys: dict[int, np.ndarray] = {}


def top_k(scores: np.ndarray, mask: np.ndarray, k: int = K) -> list[int]:
    """The k best, ties broken by a fixed random order of the movies (``--tie-seed``): argpartition's
    order among ties depends on the numpy build and CPU (pop180 scored 0.286 on one machine and 0.295
    on another on the same cases), and the movie index order (movie id: old movies first) is not neutral."""
    s = np.where(mask, scores, -np.inf)
    key = _tie_keys.get(len(s))
    if key is None:
        key = _tie_keys[len(s)] = np.random.default_rng(TIE_SEED).permutation(len(s))
    idx = np.lexsort((key, -s))[:k]
    return [int(i) for i in idx if np.isfinite(s[i])]


# -- baselines (ratings before the cut-off only) -------------------------------------------------
def train_matrix(
    u: np.ndarray, m: np.ndarray, ts: np.ndarray, c: int, midx: dict[int, int]
) -> tuple[Any, dict[int, int]]:
    sel = ts < c
    users = np.unique(u[sel])
    uidx = {int(x): i for i, x in enumerate(users)}
    rows = np.array([uidx[int(x)] for x in u[sel]])
    cols = np.array([midx[int(x)] for x in m[sel]])
    x = csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(len(users), len(midx)))
    x.data[:] = 1.0
    return x, uidx


SEQ_WINDOW = 20  # seqknn: chosen on the validation cut-offs (results/recs_tuning.md)


def follow_matrix(u: np.ndarray, m: np.ndarray, ts: np.ndarray, c: int, midx: dict[int, int], window: int) -> Any:
    """Sparse counts of "movie j rated within ``window`` positions after movie i" in each user's
    time-ordered ratings before ``c`` (ties in time: by movie id)."""
    sel = np.flatnonzero(ts < c)
    mi = np.array([midx[int(x)] for x in m[sel]], np.int64)
    o = np.lexsort((mi, ts[sel], u[sel]))
    uu, ii = u[sel][o], mi[o]
    rows, cols = [], []
    for d in range(1, window + 1):
        same = uu[d:] == uu[:-d]
        rows.append(ii[:-d][same])
        cols.append(ii[d:][same])
    r, cc = np.concatenate(rows), np.concatenate(cols)
    return csr_matrix((np.ones(len(r)), (r, cc)), shape=(len(midx), len(midx)))


def run_baselines(
    systems: list[str], cases: list[Case], u: np.ndarray, m: np.ndarray, ts: np.ndarray, movies: np.ndarray
) -> dict[str, tuple[list[list[int]], float]]:
    midx = {int(x): i for i, x in enumerate(movies)}
    out: dict[str, tuple[list[list[int]], float]] = {s: ([], 0.0) for s in systems}
    recs: dict[str, list[list[int]]] = {s: [] for s in systems}
    secs: dict[str, float] = dict.fromkeys(systems, 0.0)
    for c in sorted({case.cutoff for case in cases}):
        group = [case for case in cases if case.cutoff == c]
        x, uidx = train_matrix(u, m, ts, c, midx)
        models: dict[str, Any] = {}
        t0 = time.perf_counter()
        if "pop180" in systems:
            sel = (ts < c) & (ts >= c - 180 * DAY)
            pop = np.bincount([midx[int(v)] for v in m[sel]], minlength=len(movies)).astype(float)
            models["pop180"] = pop
        t1 = time.perf_counter()
        secs["pop180"] = secs.get("pop180", 0.0) + t1 - t0
        if "itemknn" in systems:
            norms = np.sqrt(np.asarray(x.sum(axis=0)).ravel())
            xn = x.multiply(1 / np.maximum(norms, 1e-9)).tocsc()
            models["itemknn"] = (xn.T @ xn).tocsr()
        t2 = time.perf_counter()
        secs["itemknn"] = secs.get("itemknn", 0.0) + t2 - t1
        if "als" in systems:
            from implicit.cpu.als import AlternatingLeastSquares
            from threadpoolctl import threadpool_limits

            with threadpool_limits(1, "blas"):
                als = AlternatingLeastSquares(factors=64, random_state=0)
                als.fit(x, show_progress=False)
            models["als"] = als
        secs["als"] = secs.get("als", 0.0) + time.perf_counter() - t2
        t3 = time.perf_counter()
        if "seqknn" in systems:
            models["seqknn"] = follow_matrix(u, m, ts, c, midx, SEQ_WINDOW)
        secs["seqknn"] = secs.get("seqknn", 0.0) + time.perf_counter() - t3
        for case in group:
            items = [h[0] for h in case.history]
            for s in systems:
                t = time.perf_counter()
                if s == "pop180":
                    sc = models["pop180"]
                elif s == "itemknn":
                    sc = np.asarray(models["itemknn"][items].sum(axis=0)).ravel()
                elif s == "seqknn":
                    last = max(case.history, key=lambda h: h[2])[0]  # the newest rated movie
                    sc = np.asarray(models["seqknn"][last].todense()).ravel() + 1e-9 * models.get("pop180", 0.0)
                elif s == "als":
                    a = models["als"]
                    sc = a.item_factors @ a.user_factors[uidx[case.user]]
                else:
                    continue
                recs[s].append(top_k(sc, case.candidates))
                secs[s] += time.perf_counter() - t
    for s in systems:
        out[s] = (recs[s], secs[s])
    return out


# -- context-store: the product's math without a store ---------------------------------------------
def interest(
    hist: list[tuple[int, float, int]], vecs: dict[int, np.ndarray], half_life_days: float, origin: int
) -> np.ndarray | None:
    acc = None
    for item, rating, t in hist:
        v = vecs.get(item)
        if v is None:
            continue
        w = rating * 2 ** np.clip((t - origin) / (half_life_days * DAY), -50, 50)
        acc = v * w if acc is None else acc + v * w
    return acc


def run_cs_math(
    cases: list[Case],
    u: np.ndarray,
    m: np.ndarray,
    r: np.ndarray,
    ts: np.ndarray,
    movies: np.ndarray,
    args: argparse.Namespace,
) -> tuple[list[list[int]], float]:
    import context_store as cs
    from context_store.compute.vectors.interactions import train_vectors

    midx = {int(x): i for i, x in enumerate(movies)}
    table = pa.table(
        {
            "user_id": u.astype(str),
            "movie_id": m.astype(str),
            "rating": r,
            "ts": pa.array(ts * 1_000_000, pa.timestamp("us", tz="UTC")),
        }
    )
    view = _cf_view(cs, args)
    origin = int(datetime(2010, 1, 1, tzinfo=UTC).timestamp())
    recs: list[list[int]] = []
    t0 = time.perf_counter()
    for c in sorted({case.cutoff for case in cases}):
        tv = train_vectors(view, table, c * 1_000_000)
        vecs = {midx[int(i)]: v for i, v in zip(tv.ids, tv.vectors)}
        mat = np.zeros((len(movies), tv.vectors.shape[1]), np.float32)
        for j, v in vecs.items():
            mat[j] = v
        has = np.zeros(len(movies), bool)
        has[list(vecs)] = True
        for case in (x for x in cases if x.cutoff == c):
            q = interest(case.history, vecs, args.half_life, origin)
            if q is None:
                recs.append([])
                continue
            sc = mat @ (q / np.linalg.norm(q))
            recs.append(top_k(sc, case.candidates & has))
    return recs, time.perf_counter() - t0


def _cf_view(cs: Any, args: argparse.Namespace) -> Any:
    item = cs.Entity("movie", join_keys=["movie_id"])
    src = cs.FileSource("data/ratings.parquet", timestamp_field="ts")
    return cs.InteractionEmbeddingView(
        "item_cf",
        [item],
        src,
        user="user_id",
        weight="rating",
        method=args.method,
        dim=args.dim,
        min_interactions=args.min_interactions,
        min_weight=args.min_weight,
        params=parse_params(args.params),
    )


def parse_params(text: str | None) -> dict[str, float]:
    """``"shift=5,eig_power=1"`` -> the item view's ``params`` (trainer knobs)."""
    out: dict[str, float] = {}
    for kv in (text or "").split(","):
        if kv.strip():
            k, v = kv.split("=")
            out[k.strip()] = float(v)
    return out


# -- context-store: the product path -----------------------------------------------------------
# Tuned on validation cut-offs (results/recs_tuning.md).
DEFAULT_RERANK = (
    "movie_pop.rating_count_180d=0.5,movie_pop.rating_mean_lifetime=0.5;normalize=rank;rank_k=10;candidates=100;"
    "also=movie_pop.rating_count_180d:50;recent=50;newness=1"
)

REPO = """
import context_store as cs
user = cs.Entity("user", join_keys=["user_id"])
movie = cs.Entity("movie", join_keys=["movie_id"])
ratings = cs.StreamSource("ratings", schema=[cs.Field("user_id", cs.String), cs.Field("movie_id", cs.String),
    cs.Field("rating", cs.Float64), cs.Field("ts", cs.Timestamp)], timestamp_field="ts", min_event_time=None,
    batch_source=cs.FileSource("data/ratings.parquet", timestamp_field="ts"))
item_cf = cs.InteractionEmbeddingView("item_cf", [movie], ratings, user="user_id", weight="rating",
    method={method!r}, dim={dim}, params={params!r},
    min_interactions={min_interactions}, min_weight={min_weight!r})
user_interest = cs.InterestVector("user_interest", user, ratings, item_vectors=item_cf, weight="rating",
    half_life="{half_life}d", origin="2010-01-01")
# Popularity and trend of each movie: the live aggregates the similar items are re-ranked by.
movie_pop = cs.FeatureView("movie_pop", [movie], ratings, aggregations=[
    cs.Aggregate("rating", "count", "7d"), cs.Aggregate("rating", "count", "30d"),
    cs.Aggregate("rating", "count", "180d"), cs.Aggregate("rating", "count", cs.Lifetime()),
    cs.Aggregate("rating", "mean", cs.Lifetime())])
recs = cs.FeatureService("recs", [user_interest])
"""


@dataclass
class Spec:
    feats: dict[str, float]
    cand: int = 50
    sim: float = 1.0
    also: list[tuple[str, int]] | None = None
    normalize: str = "minmax"
    rank_k: float = 10.0
    recent: int | None = None  # cs.Similar(recent_items=...): a context service per value
    newness: float = 0.0  # cs.Rerank(newness=...)


def parse_rerank(spec: str) -> Spec:
    """``"movie_pop.rating_count_180d=2,movie_pop.rating_count_30d=1;candidates=100;similarity=1;
    also=movie_pop.rating_count_180d:100;normalize=rank;rank_k=10;recent=20;newness=1"`` (``also``: a
    ``cs.TopItems(feature, n)`` candidate source; ``recent``: ``cs.Similar(recent_items=n)``; ``newness``:
    ``cs.Rerank(newness=w)``)."""
    out = Spec({}, also=[])
    for part in spec.split(";"):
        part = part.strip()
        key, _, val = part.partition("=")
        if key == "also":
            name, n = val.split(":")
            assert out.also is not None
            out.also.append((name.strip(), int(n)))
        elif key == "candidates":
            out.cand = int(val)
        elif key == "similarity":
            out.sim = float(val)
        elif key == "normalize":
            out.normalize = val
        elif key == "rank_k":
            out.rank_k = float(val)
        elif key == "recent":
            out.recent = int(val) or None
        elif key == "newness":
            out.newness = float(val)
        elif part and part != "none":
            for kv in part.split(","):
                name, w = kv.split("=")
                out.feats[name.strip()] = float(w)
    return out


def rerank_expr(spec: str) -> str:
    p = parse_rerank(spec)
    pool = "[" + ", ".join(f"cs.TopItems({f!r}, n={n})" for f, n in p.also or []) + "]"
    return (
        f"cs.Rerank(features={p.feats!r}, similarity={p.sim!r}, candidates={p.cand}, also={pool}, "
        f"normalize={p.normalize!r}, rank_constant={p.rank_k!r}, newness={p.newness!r})"
    )


def rerank_obj(cs: Any, spec: str) -> Any:
    p = parse_rerank(spec)
    pool = [cs.TopItems(f, n=n) for f, n in p.also or []]
    return cs.Rerank(
        features=p.feats,
        similarity=p.sim,
        candidates=p.cand,
        also=pool,
        normalize=p.normalize,
        rank_constant=p.rank_k,
        newness=p.newness,
    )


def service_name(recent: int | None) -> str:
    return f"ctx_r{recent}" if recent else "ctx"


def services_src(specs: list[str]) -> str:
    """One context service per ``recent`` value of the specs (``ctx``: none), each declared with the
    first spec's re-rank (calls pass their own as an override)."""
    out = []
    for recent in dict.fromkeys(parse_rerank(x).recent for x in specs):
        out.append(
            f"{service_name(recent)} = cs.ContextService({service_name(recent)!r}, user, features=recs, "
            "interest='user_interest.interest', similar=cs.Similar(item_cf, k=10, exclude_seen=True, "
            f"seen_from=ratings, recent_items={recent!r}, rerank={rerank_expr(specs[0])}))"
        )
    return "\n".join(out) + "\n"


def write_ratings(root: Path, u: np.ndarray, m: np.ndarray, r: np.ndarray, ts: np.ndarray) -> None:
    """The ratings as the repo's Parquet source (``data/ratings.parquet``)."""
    pq.write_table(
        pa.table(
            {
                "user_id": u.astype(str),
                "movie_id": m.astype(str),
                "rating": r,
                "ts": pa.array(ts * 1_000_000, pa.timestamp("us", tz="UTC")),
            }
        ),
        root / "data" / "ratings.parquet",
    )


def run_cs(
    cases: list[Case],
    u: np.ndarray,
    m: np.ndarray,
    r: np.ndarray,
    ts: np.ndarray,
    movies: np.ndarray,
    args: argparse.Namespace,
) -> dict[str, tuple[list[list[int]], float, list[float], int]]:
    """One repo; per cut-off ``backfill(end=c)``, then per case and re-rank config one
    ``get_user_context(as_of=c)``: the first config is the declared one, the others per-call overrides.
    Returns label -> (recs, seconds, latencies in ms, recommended items the case may not get)."""
    import context_store as cs

    midx = {str(x): i for i, x in enumerate(movies)}
    specs: list[str] = args.cs_rerank or [DEFAULT_RERANK]
    labels = ["cs" if len(specs) == 1 else f"cs[{s}]" for s in specs]
    overrides: list[Any] = [None] + [rerank_obj(cs, spec) for spec in specs[1:]]
    services = [service_name(parse_rerank(spec).recent) for spec in specs]
    root = Path(tempfile.mkdtemp(prefix="bench_recs_"))
    out: dict[str, tuple[list[list[int]], float, list[float], int]] = {}
    try:
        (root / "data").mkdir()
        write_ratings(root, u, m, r, ts)
        (root / "features.py").write_text(
            textwrap.dedent(
                REPO.format(
                    method=args.method,
                    dim=args.dim,
                    min_interactions=args.min_interactions,
                    min_weight=args.min_weight,
                    params=parse_params(args.params),
                    half_life=int(args.half_life),
                )
            )
            + services_src(specs)
        )
        store = cs.ContextStore(root, workspace="bench_recs")
        store.apply()
        recs: list[list[list[int]]] = [[] for _ in specs]
        lat: list[list[float]] = [[] for _ in specs]
        secs = [0.0 for _ in specs]
        leaks = [0 for _ in specs]
        first: list[int] = []
        cpu: list[list[float]] = [[] for _ in specs]  # CPU time of the process per call: the load-free cost
        for c in sorted({case.cutoff for case in cases}):
            at = datetime.fromtimestamp(c, tz=UTC)
            store.backfill(end=at)  # point-in-time: trains on, and writes, ratings before c only
            first.append(len(lat[0]))  # the first call after a backfill (config 0) fills per-day caches
            for case in (x for x in cases if x.cutoff == c):
                for j, override in enumerate(overrides):
                    t, tc = time.perf_counter(), time.process_time()
                    ctx = store.get_user_context(str(case.user), services[j], as_of=at, rerank=override)
                    dt = time.perf_counter() - t
                    lat[j].append(dt * 1e3)
                    cpu[j].append((time.process_time() - tc) * 1e3)
                    secs[j] += dt
                    got = [midx[str(i.entity_id)] for i in ctx.similar if str(i.entity_id) in midx]
                    leaks[j] += sum(1 for g in got if not case.candidates[g])
                    if args.cs_filter == "eval":
                        got = [g for g in got if case.candidates[g]]
                    recs[j].append(got[:K])
        if args.online:
            # Online: the features of the last cut-off's backfill materialized, then the declared config
            # served from the online store, no as_of; warmed as `serve` warms (``warm()`` and one call).
            # Two blocks on the same users: the heap as an SDK process leaves it, then frozen after a
            # collection as `serve` does after its warm-up (a full collection of a process that imported
            # LanceDB scans its ~120k pydantic/module objects: ~90-120 ms, once every few hundred calls).
            store.materialize()  # the store as of the last cut-off's backfill, served online
            users = sorted({str(x) for x in u[ts < max(case.cutoff for case in cases)]})
            rng = random.Random(args.seed)
            store.warm()
            store.get_user_context(users[0], services[0])
            picked = [rng.choice(users) for _ in range(args.online)]  # with replacement: any N
            for label in ("online", "online_frozen"):
                if label == "online_frozen":
                    gc.collect()
                    gc.freeze()
                ms, cpu_ms = [], []
                for user in picked:
                    t, c = time.perf_counter(), time.process_time()
                    store.get_user_context(user, services[0])
                    ms.append((time.perf_counter() - t) * 1e3)
                    cpu_ms.append((time.process_time() - c) * 1e3)
                out[label] = ([], 0.0, ms, 0)
                out[label + "_cpu"] = ([], 0.0, cpu_ms, 0)
            gc.unfreeze()
        store.close()
        for j, label in enumerate(labels):
            out[label] = (recs[j], secs[j], lat[j], leaks[j])
        out["first"] = ([], 0.0, [float(i) for i in first], 0)
        out["cpu"] = ([], 0.0, cpu[0], 0)
        return out
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--data", default=str(Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets" / "movielens-small")
    )
    ap.add_argument("--cutoffs", type=int, default=12)
    ap.add_argument("--per-cutoff", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--systems", default="pop180,itemknn,als,cs-math,cs")
    ap.add_argument("--method", default="pmi_svd", choices=["pmi_svd", "als"])
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--min-interactions", type=int, default=3)
    ap.add_argument("--min-weight", type=float, default=None)
    ap.add_argument("--params", default=None, help="trainer params of the item view, e.g. 'shift=5,user_norm=1'")
    ap.add_argument("--half-life", type=float, default=365.0, help="days")
    ap.add_argument("--cs-filter", default="none", choices=["eval", "none"])
    ap.add_argument("--online", type=int, default=0, help="also time N online get_user_context calls (no as_of)")
    ap.add_argument(
        "--quantiles", default="0.45,0.95", help="first,last cut-off as quantiles of rating time (tune on earlier ones)"
    )
    ap.add_argument(
        "--cs-rerank",
        action="append",
        help=f"re-rank config of cs (repeatable: one cs row each; the first is declared). Default: {DEFAULT_RERANK!r}",
    )
    ap.add_argument("--tie-seed", type=int, default=0, help="seed of the baselines' tie-breaking order")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "recs.md"))
    args = ap.parse_args()
    global TIE_SEED
    TIE_SEED = args.tie_seed
    data = Path(args.data)
    u, m, r, ts = load(data)
    lo, hi = (float(x) for x in args.quantiles.split(","))
    cases, movies = make_cases(u, m, r, ts, args.cutoffs, args.per_cutoff, args.seed, lo, hi)
    load_before = _loadavg()
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    print(f"{len(cases)} test cases, {len({c.user for c in cases})} users, {len({c.cutoff for c in cases})} cut-offs")
    results: dict[str, tuple[list[list[int]], float]] = {}
    base = [s for s in systems if s in ("pop180", "itemknn", "als", "seqknn")]
    if base:
        results.update(run_baselines(base, cases, u, m, ts, movies))
    if "cs-math" in systems:
        results["cs-math"] = run_cs_math(cases, u, m, r, ts, movies, args)
    lat: dict[str, tuple[list[float], int]] = {}
    if "cs" in systems:
        for label, (recs, secs, ms, leaks) in run_cs(cases, u, m, r, ts, movies, args).items():
            if label not in ("first", "cpu") and not label.startswith("online"):
                results[label] = (recs, secs)
            lat[label] = (ms, leaks)
    args.load = (load_before, _loadavg())
    report(results, cases, movies, lat, args)


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def _argv_without_out() -> list[str]:
    argv, out = sys.argv[1:], []
    skip = False
    for a in argv:
        if skip or a.startswith("--out="):
            skip = False
            continue
        skip = a == "--out"
        if not skip:
            out.append(a)
    return out


def plot_hr(
    hr: list[tuple[str, float, float, float]], n_cases: int, target: float | None, path: Path
) -> dict[str, str] | None:
    """Bars of HR@10 with their intervals and the target line; long cs[...] names become cs#1, cs#2...
    Returns short name -> name (None: no matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    names: dict[str, str] = {}
    for name, *_ in hr:
        names[f"cs#{sum(1 for n in names if n.startswith('cs#')) + 1}" if name.startswith("cs[") else name] = name
    fig, ax = plt.subplots(figsize=(7, 3.5))
    mean = [h[1] for h in hr]
    err = np.array([[h[1] - h[2], h[3] - h[1]] for h in hr]).T
    ax.bar(list(names), mean, yerr=err, capsize=4, color=["#2a7" if n.startswith("cs") else "#888" for n in names])
    if target is not None:
        ax.axhline(target, color="#c33", linestyle="--", linewidth=1, label=f"target {target:.3f} (best baseline +20%)")
        ax.legend(loc="upper right", fontsize=8)
    ax.set_ylim(0, 1.25 * max([target or 0.0, *(h[3] for h in hr)]))  # room for the line and the legend
    ax.set_ylabel("HR@10 (95% CI)")
    ax.set_title(f"MovieLens, {n_cases} temporal test cases")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return names


def report(
    results: dict[str, tuple[list[list[int]], float]],
    cases: list[Case],
    movies: np.ndarray,
    lat: dict[str, tuple[list[float], int]],
    args: argparse.Namespace,
) -> None:
    rows = []
    for s, (recs, secs) in results.items():
        ms = metrics(recs, cases)
        cov = len({x for top in recs for x in top}) / len(movies)
        rows.append((s, {k: boot(v) for k, v in ms.items()}, cov, secs))
        print(s, {k: round(v.mean(), 3) for k, v in ms.items()}, f"coverage {cov:.3f}", f"{secs:.1f}s")
    base = [row for row in rows if row[0] in ("pop180", "itemknn", "als", "seqknn")]
    best = max(base, key=lambda x: x[1]["HR@10"][0]) if base else None
    lines = [
        "# Recommendations on MovieLens (issue #15)",
        "",
        "`python evals/bench_recs.py " + " ".join(shlex.quote(a) for a in _argv_without_out()) + "`",
        "",
        f"{len(cases)} test cases from {len({c.user for c in cases})} users "
        f"at {len({c.cutoff for c in cases})} cut-offs "
        f"({args.quantiles.replace(',', '..')} quantiles of rating time). "
        "Targets: the movies rated >= 4 among the user's next 10 ratings after "
        "the cut-off; candidates: movies first rated before the cut-off and not rated by the user before it. "
        "Every system sees ratings before the cut-off only. 95% bootstrap intervals (2,000 resamples of test cases).",
        "",
        f"Load average (1/5/15 min, 2 cores shared with other jobs): {args.load[0]} before, {args.load[1]} after.",
        "",
        "| system | HR@10 | Recall@10 | NDCG@10 | coverage | time (s) |",
        "|---|---|---|---|---|---|",
    ]
    for s, ms, cov, secs in rows:
        cells = [f"{v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}]" for v in ms.values()]
        lines.append(f"| {s} | {' | '.join(cells)} | {cov:.3f} | {secs:.1f} |")
    if best is not None:
        lines += [
            "",
            f"Best baseline by HR@10: **{best[0]}** ({best[1]['HR@10'][0]:.3f}); "
            f"target (+20%): {1.2 * best[1]['HR@10'][0]:.3f}.",
        ]
        for s, ms, _, _ in rows:
            if s.startswith("cs"):
                rel = ms["HR@10"][0] / best[1]["HR@10"][0] - 1 if best[1]["HR@10"][0] else float("nan")
                lines.append(f"- {s}: HR@10 {ms['HR@10'][0]:.3f}, {rel:+.1%} relative to {best[0]}.")
    first = {int(i) for i in lat.pop("first", ([], 0))[0]}
    cpu = np.array(lat.pop("cpu", ([], 0))[0])
    # config 0: the first call after a backfill
    declared = next((label for label in lat if not label.startswith("online")), None)
    for label, (ms_list, leaks) in lat.items():
        a = np.array(ms_list)
        if label.startswith("online"):
            if label.endswith("_cpu"):
                continue
            c = np.array(lat.get(label + "_cpu", ([], 0))[0])
            how = "heap frozen after a collection, as `serve` does" if label == "online_frozen" else "heap not frozen"
            lines += [
                "",
                f"{label} (declared config, `materialize()` after the last backfill, `warm()`, no as_of; {how}): "
                f"`get_user_context` latency over {len(a)} calls (random users): p50 {np.percentile(a, 50):.1f} ms, "
                f"p90 {np.percentile(a, 90):.1f} ms, p99 {np.percentile(a, 99):.1f} ms, max {a.max():.1f} ms; "
                f"CPU p50 {np.percentile(c, 50):.1f} ms, p99 {np.percentile(c, 99):.1f} ms.",
            ]
            continue
        lines += [
            "",
            f"{label}: `get_user_context(as_of=cut-off)` latency over {len(a)} calls: "
            f"p50 {np.percentile(a, 50):.1f} ms, p90 {np.percentile(a, 90):.1f} ms, p99 {np.percentile(a, 99):.1f} ms; "
            f"{leaks} recommended items already rated or not yet released (--cs-filter {args.cs_filter}).",
        ]
        if label == declared and first:
            warm = np.array([x for i, x in enumerate(ms_list) if i not in first])
            firsts = np.array([ms_list[i] for i in sorted(first) if i < len(ms_list)])
            lines.append(
                f"Of these, the {len(firsts)} first calls after each cut-off's backfill (per-day caches filled): "
                f"median {np.median(firsts):.1f} ms, max {firsts.max():.1f} ms; the other {len(warm)}: "
                f"p50 {np.percentile(warm, 50):.1f} ms, p99 {np.percentile(warm, 99):.1f} ms."
            )
        if label == declared and len(cpu):
            lines.append(
                f"CPU time of the process per call (excludes waiting for a core on the shared machine; includes "
                f"Lance's reader threads): p50 {np.percentile(cpu, 50):.1f} ms, p90 {np.percentile(cpu, 90):.1f} ms, "
                f"p99 {np.percentile(cpu, 99):.1f} ms."
            )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    hr = [(row[0], *row[1]["HR@10"]) for row in rows]
    target = 1.2 * best[1]["HR@10"][0] if best is not None else None
    short = plot_hr(hr, len(cases), target, out.with_suffix(".png"))
    if short:
        lines += ["", f"![HR@10]({out.with_suffix('.png').name})"]
        lines += [f"- {a}: `{b}`" for a, b in short.items() if a != b]
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
