"""Numpy screen (not the product path) of re-rank weights fitted per period, and of extra terms.

For each cut-off c of ``bench_recs``' cases: item features as of c (rating counts 7d/30d/180d/lifetime,
lifetime mean rating, trend, item age), the product's item vectors (``train_vectors``, ``pmi_svd``) and
the product's scoring re-implemented (query: mean of the unit vectors of the last R distinct rated movies;
pool: nearest 100 + 50 with the most ratings in 180d; reciprocal-rank fusion, constant 10).

"fit": the weights of the fusion chosen per cut-off on pseudo-cases built inside the history: cut-off
c - h, history before it, targets in [c - h, c) (the same rules as the real cases), features and vectors
as of c - h. Nothing at or after c is read. Run:
``python evals/screen_recs_fit.py --quantiles 0.25,0.43 --cutoffs 16 --per-cutoff 60 --seed 1``.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_recs as br  # noqa: E402

DAY = br.DAY
NEWPOOL = 0
CACHE = Path("/tmp/screen_recs_cache")


def ratings_table(u: np.ndarray, m: np.ndarray, r: np.ndarray, ts: np.ndarray) -> pa.Table:
    """The ratings as the product's source table (what ``train_vectors`` reads)."""
    return pa.table(
        {
            "user_id": u.astype(str),
            "movie_id": m.astype(str),
            "rating": r,
            "ts": pa.array(ts * 1_000_000, pa.timestamp("us", tz="UTC")),
        }
    )


def pmi_view() -> Any:
    """The product's interaction-trained item view as bench_recs declares it (``pmi_svd``, 64 dims)."""

    class A:
        method, dim, min_interactions, min_weight, params = "pmi_svd", 64, 3, None, None

    import context_store as cs

    return br._cf_view(cs, A)


def vectors_at(table: pa.Table, c: int, movies: np.ndarray, view: object) -> tuple[np.ndarray, np.ndarray]:
    CACHE.mkdir(exist_ok=True)
    f = CACHE / f"v{c}.npz"
    if f.exists():
        z = np.load(f)
        return z["mat"], z["has"]
    from context_store.compute.vectors.interactions import train_vectors

    midx = {str(int(x)): i for i, x in enumerate(movies)}
    tv = train_vectors(view, table, c * 1_000_000)  # type: ignore[arg-type]
    mat = np.zeros((len(movies), tv.vectors.shape[1]), np.float32)
    has = np.zeros(len(movies), bool)
    for i, v in zip(tv.ids, tv.vectors):
        mat[midx[i]] = v
        has[midx[i]] = True
    np.savez(f, mat=mat, has=has)
    return mat, has


def item_feats(mi: np.ndarray, r: np.ndarray, ts: np.ndarray, c: int, n: int) -> dict[str, np.ndarray]:
    sel = ts < c
    out = {}
    for w in (7, 30, 90, 180, 365):
        s = sel & (ts >= c - w * DAY)
        out[f"c{w}"] = np.bincount(mi[s], minlength=n).astype(float)
    out["clife"] = np.bincount(mi[sel], minlength=n).astype(float)
    sr = np.bincount(mi[sel], weights=r[sel], minlength=n)
    out["mean"] = np.where(out["clife"] > 0, sr / np.maximum(out["clife"], 1), 0.0)
    # Bayesian mean (shrunk to the global mean with 10 pseudo-ratings)
    g = r[sel].mean()
    out["bmean"] = (sr + 10 * g) / (out["clife"] + 10)
    out["trend"] = (out["c30"] + 1) / (out["c180"] + 6)
    first = np.full(n, np.iinfo(np.int64).max)
    np.minimum.at(first, mi[sel], ts[sel])
    out["new"] = -(c - first).astype(float)  # younger = higher
    last = np.full(n, np.iinfo(np.int64).min)
    np.maximum.at(last, mi[sel], ts[sel])
    out["fresh"] = last.astype(float)
    return out


def ease_at(mi: np.ndarray, u: np.ndarray, ts: np.ndarray, c: int, n: int, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """EASE item-item weights over the items with >= 5 ratings before c: (B, kept item index)."""
    f = CACHE / f"e{c}_{lam}.npz"
    if f.exists():
        z = np.load(f)
        return z["b"], z["kept"]
    from scipy.sparse import csr_matrix

    sel = ts < c
    cnt = np.bincount(mi[sel], minlength=n)
    kept = np.flatnonzero(cnt >= 5)
    remap = np.full(n, -1)
    remap[kept] = np.arange(len(kept))
    uu = np.unique(u[sel], return_inverse=True)[1]
    k = remap[mi[sel]] >= 0
    x = csr_matrix((np.ones(int(k.sum())), (uu[k], remap[mi[sel]][k])), shape=(uu.max() + 1, len(kept)))
    x.data[:] = 1.0
    g = (x.T @ x).toarray()
    g[np.diag_indices_from(g)] += lam
    p = np.linalg.inv(g)
    b = p / (-np.diag(p))
    np.fill_diagonal(b, 0.0)
    b = b.astype(np.float32)
    np.savez(f, b=b, kept=kept)
    return b, kept


def rrf(x: np.ndarray, pool: np.ndarray, k: float = 10.0) -> np.ndarray:
    """1/(k + rank) over the pool (rank 1 = highest); ties by index order (as the product: by id)."""
    order = np.lexsort((pool, -x[pool]))
    out = np.zeros(len(x))
    out[pool[order]] = 1.0 / (k + 1 + np.arange(len(pool)))
    return out


class Period:
    """Everything one cut-off's scoring needs."""

    def __init__(self, c: int, data: tuple, movies: np.ndarray, table: pa.Table, view: object, ease: float) -> None:
        u, mi, r, ts = data
        n = len(movies)
        self.c = c
        self.mat, self.has = vectors_at(table, c, movies, view)
        self.f = item_feats(mi, r, ts, c, n)
        self.ease = ease_at(mi, u, ts, c, n, ease) if ease else None
        self.released = self.f["clife"] > 0


def case_terms(
    p: Period, hist: list[tuple[int, float, int]], cand: np.ndarray, recent: int = 50
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    n = len(cand)
    order = sorted(hist, key=lambda h: (-h[2], -h[0]))
    seen: list[int] = []
    for it, _, _ in order:
        if it not in seen and p.has[it]:
            seen.append(it)
        if len(seen) >= recent:
            break
    sim = np.full(n, -np.inf)
    if seen:
        q = p.mat[seen].mean(axis=0)
        sim = p.mat @ q
    ok = cand & p.has
    near = np.flatnonzero(ok)
    near = near[np.lexsort((near, -sim[near]))][:100]
    popc = np.flatnonzero(cand)
    popc = popc[np.lexsort((popc, -p.f["c180"][popc]))][:50]
    pool = np.union1d(near, popc)
    if NEWPOOL:
        newc = np.flatnonzero(cand)
        newc = newc[np.lexsort((newc, -p.f["new"][newc]))][:NEWPOOL]
        pool = np.union1d(pool, newc)
    terms = {"sim": rrf(np.where(p.has, sim, -1e9), pool)}
    for k in ("c7", "c30", "c90", "c180", "c365", "clife", "mean", "bmean", "trend", "new", "fresh"):
        terms[k] = rrf(p.f[k], pool)
    if p.ease is not None:
        b, kept = p.ease
        pos = np.full(n, -1)
        pos[kept] = np.arange(len(kept))
        hi = [pos[h[0]] for h in hist if pos[h[0]] >= 0]
        es = np.full(n, -1e9)
        if hi:
            es[kept] = b[hi].sum(axis=0)
        terms["ease"] = rrf(es, pool)
    return pool, terms


def score(pool: np.ndarray, terms: dict[str, np.ndarray], w: dict[str, float]) -> list[int]:
    s = sum(wt * terms[k][pool] for k, wt in w.items() if wt)
    if isinstance(s, int):
        s = np.zeros(len(pool))
    o = np.lexsort((pool, -s))[: br.K]
    return [int(pool[i]) for i in o]


def pseudo_cases(data: tuple, movies: np.ndarray, start: int, end: int, per: int, seed: int) -> list[br.Case]:
    """Cases at cut-off ``start`` whose targets are rated before ``end`` (only ratings < end are read)."""
    u, mi, r, ts = data
    sel = ts < end
    cases = []
    import random

    rng = random.Random(seed)
    n = len(movies)
    first = np.full(n, np.iinfo(np.int64).max)
    np.minimum.at(first, mi[sel], ts[sel])
    released = first < start
    uu, mm, rr, tt = u[sel], mi[sel], r[sel], ts[sel]
    order = np.argsort(tt, kind="stable")
    by_user: dict[int, list[int]] = {}
    for i in order:
        by_user.setdefault(int(uu[i]), []).append(int(i))
    eligible = []
    for user, idx in by_user.items():
        before = [i for i in idx if tt[i] < start]
        after = [i for i in idx if tt[i] >= start][:10]
        if len(before) < 5 or not after:
            continue
        seen = {int(mm[i]) for i in before}
        tg = {int(mm[i]) for i in after if rr[i] >= 4.0 and released[mm[i]] and int(mm[i]) not in seen}
        if tg:
            eligible.append((user, before, tg, seen))
    for user, before, tg, seen in rng.sample(eligible, min(per, len(eligible))):
        cand = released.copy()
        cand[list(seen)] = False
        hist = [(int(mm[i]), float(rr[i]), int(tt[i])) for i in before]
        cases.append(br.Case(start, user, hist, tg, cand))
    return cases


def hr(recs: list[list[int]], cases: list[br.Case]) -> np.ndarray:
    return br.metrics(recs, cases)["HR@10"]


GRID_TERMS = {
    "c180": [0.0, 0.35, 0.7, 1.0, 1.5, 2.5],
    "mean": [0.0, 0.3, 0.6],
}


def grid(extra: dict[str, list[float]] | None = None) -> list[dict[str, float]]:
    g = dict(GRID_TERMS)
    g.update(extra or {})
    keys = list(g)
    return [dict(zip(keys, vals), sim=1.0) for vals in itertools.product(*g.values())]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--data", default=str(Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets" / "movielens-small")
    )
    ap.add_argument("--cutoffs", type=int, default=16)
    ap.add_argument("--per-cutoff", type=int, default=60)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--quantiles", default="0.25,0.43")
    ap.add_argument("--holdout", default="60", help="days, comma separated")
    ap.add_argument("--pseudo", type=int, default=150)
    ap.add_argument("--span", type=int, default=365, help="days of pseudo cut-offs before c")
    ap.add_argument("--step", type=int, default=90, help="days between pseudo cut-offs")
    ap.add_argument("--ease", type=float, default=0.0)
    ap.add_argument("--no-fit", dest="fit", action="store_false")
    ap.add_argument("--extra", default="", help="extra grid terms, e.g. 'trend=0,0.3;ease=0,0.5'")
    ap.add_argument("--fixed", action="append", default=[], help="fixed weights 'sim=1,c180=0.7,mean=0.3'")
    ap.add_argument("--newpool", type=int, default=0)
    args = ap.parse_args()
    global NEWPOOL
    NEWPOOL = args.newpool
    u, m, r, ts = br.load(Path(args.data))
    lo, hi = (float(x) for x in args.quantiles.split(","))
    cases, movies = br.make_cases(u, m, r, ts, args.cutoffs, args.per_cutoff, args.seed, lo, hi)
    midx = {int(x): i for i, x in enumerate(movies)}
    mi = np.array([midx[int(x)] for x in m])
    data = (u, mi, r, ts)
    table = ratings_table(u, m, r, ts)
    view = pmi_view()
    extra = {}
    for part in args.extra.split(";"):
        if part.strip():
            k, v = part.split("=")
            extra[k.strip()] = [float(x) for x in v.split(",")]
    fixed = [dict((kv.split("=")[0], float(kv.split("=")[1])) for kv in f.split(",")) for f in args.fixed]
    fixed = fixed or [{"sim": 1.0, "c180": 0.7, "mean": 0.3}]
    g = grid(extra)
    holdouts = [int(x) for x in args.holdout.split(",")]
    out: dict[str, list[list[int]]] = {}
    chosen: dict[int, list[str]] = {h: [] for h in holdouts}
    pop: list[list[int]] = []
    t0 = time.perf_counter()
    for c in sorted({x.cutoff for x in cases}):
        group = [x for x in cases if x.cutoff == c]
        per = Period(c, data, movies, table, view, args.ease)
        tl = [case_terms(per, x.history, x.candidates) for x in group]
        for x in group:
            pop.append(br.top_k(per.f["c180"], x.candidates))
        for j, f in enumerate(fixed):
            out.setdefault(f"fixed{j}", []).extend(score(pl, tm, f) for pl, tm in tl)
        for h in holdouts if args.fit else []:
            # pseudo cut-offs on a global grid (shared vector caches): every step days in [c - span, c - h]
            step = args.step * DAY
            pts = [
                s
                for s in range((c - args.span * DAY) // step * step, c - h * DAY + 1, step)
                if s >= c - args.span * DAY
            ]
            if not pts:
                pts = [c - h * DAY]
            pc, ptl = [], []
            for s in pts:
                cs_ = pseudo_cases(data, movies, s, c, args.pseudo, args.seed + s % 1000)
                pp = Period(s, data, movies, table, view, args.ease)
                pc += cs_
                ptl += [case_terms(pp, x.history, x.candidates) for x in cs_]
            best, best_w = -1.0, g[0]
            for w in g:
                v = hr([score(pl, tm, w) for pl, tm in ptl], pc).mean()
                if v > best + 1e-12:
                    best, best_w = v, w
            chosen[h].append(f"{len(pc)}:{best:.2f}:{','.join(f'{k}={v}' for k, v in best_w.items() if k != 'sim')}")
            out.setdefault(f"fit{h}", []).extend(score(pl, tm, best_w) for pl, tm in tl)
        print(
            f"cut-off {c} done {time.perf_counter() - t0:.0f}s",
            {h: chosen[h][-1] for h in holdouts if chosen[h]},
            flush=True,
        )
    print(f"{len(cases)} cases")
    rows = {"pop180": pop, **out}
    for name, recs in rows.items():
        v = hr(recs, cases)
        mean, lo_, hi_ = br.boot(v)
        print(f"{name}: HR@10 {mean:.3f} [{lo_:.3f}, {hi_:.3f}]  NDCG {br.metrics(recs, cases)['NDCG@10'].mean():.3f}")
    for j, f in enumerate(fixed):
        print(f"fixed{j} = {f}")


if __name__ == "__main__":
    main()
