"""Numpy/sklearn screen (not the product path) for issue #15: a learned ranker over the re-rank pool.

Needs scikit-learn, which the project does not depend on: ``pip install scikit-learn``.

For each validation cut-off c: pseudo cut-offs s every ``--step`` days in [c - span, c - 60d] (the
targets of a pseudo case are its next ratings before c, so nothing at or after c is read), the same pool
and terms as ``screen_recs2`` as of s, and a logistic regression (pointwise: is this pool item a target)
on the fused terms' reciprocal ranks. The validation cases at c are then ranked by its probability.
Compared on the same cases with the hand-set fusion (``screen_recs2.BASE``). Run:
``python evals/screen_recs_ltr.py --quantiles 0.25,0.43 --cutoffs 16 --per-cutoff 60 --seed 1``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_recs as br  # noqa: E402
import screen_recs2 as s2  # noqa: E402
import screen_recs_fit as sf  # noqa: E402

DAY = br.DAY
FEATS_BASE = ["sim", "c180", "mean", "new"]


def terms_for(per: sf.Period, x: br.Case, year: np.ndarray, gen: np.ndarray, uk: s2.UserKnn) -> tuple:
    pool, terms = sf.case_terms(per, x.history, x.candidates)
    terms.update(s2.extra_terms(per, x, pool, year, gen, uk))
    return pool, terms


def matrix(pool: np.ndarray, terms: dict[str, np.ndarray], feats: list[str]) -> np.ndarray:
    return np.stack([terms[f][pool] for f in feats], axis=1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="/work/shared/datasets/movielens-small")
    ap.add_argument("--cutoffs", type=int, default=16)
    ap.add_argument("--per-cutoff", type=int, default=60)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--quantiles", default="0.25,0.43")
    ap.add_argument("--span", type=int, default=365)
    ap.add_argument("--step", type=int, default=60)
    ap.add_argument("--pseudo", type=int, default=150)
    args = ap.parse_args()
    lo, hi = (float(v) for v in args.quantiles.split(","))
    if hi >= 0.45:
        sys.exit("validation only: --quantiles must end before the test period (0.45)")
    data = Path(args.data)
    u, m, r, ts = br.load(data)
    cases, movies = br.make_cases(u, m, r, ts, args.cutoffs, args.per_cutoff, args.seed, lo, hi)
    midx = {int(v): i for i, v in enumerate(movies)}
    mi = np.array([midx[int(v)] for v in m])
    year, gen = s2.movie_attrs(data, movies)
    table = sf.ratings_table(u, m, r, ts)
    view = sf.pmi_view()
    dd = (u, mi, r, ts)
    featsets = {
        "base4": FEATS_BASE,
        "all": FEATS_BASE
        + ["c7", "c30", "c90", "c365", "clife", "bmean", "trend", "fresh", "yr10", "pr10", "gen10", "gpop"]
        + ["uknn50", "sim5", "simlike", "vel30_7"],
    }
    periods: dict[int, tuple[sf.Period, s2.UserKnn]] = {}

    def period(s: int) -> tuple[sf.Period, s2.UserKnn]:
        if s not in periods:
            periods[s] = (sf.Period(s, dd, movies, table, view, 0.0), s2.UserKnn(u, mi, ts, s, len(movies)))
        return periods[s]

    recs: dict[str, list[list[int]]] = {"base": []}
    ordered: list[br.Case] = []
    t0 = time.perf_counter()
    step = args.step * DAY
    for c in sorted({x.cutoff for x in cases}):
        group = [x for x in cases if x.cutoff == c]
        per, uk = period(c)
        tl = [terms_for(per, x, year, gen, uk) for x in group]
        ordered += group
        recs["base"] += [sf.score(pl, tm, s2.BASE) for pl, tm in tl]
        pts = [
            s for s in range((c - args.span * DAY) // step * step, c - 60 * DAY + 1, step) if s >= c - args.span * DAY
        ]
        ptl, plab = [], []
        for s in pts:
            pc = sf.pseudo_cases(dd, movies, s, c, args.pseudo, args.seed + s % 1000)
            pp, puk = period(s)
            for x in pc:
                pl, tm = terms_for(pp, x, year, gen, puk)
                ptl.append((pl, tm))
                plab.append(np.isin(pl, list(x.targets)).astype(int))
        for name, feats in featsets.items():
            for cval in (0.1, 1.0):
                key = f"lr[{name},C={cval}]"
                xtr = np.concatenate([matrix(pl, tm, feats) for pl, tm in ptl])
                ytr = np.concatenate(plab)
                model = LogisticRegression(C=cval, max_iter=2000).fit(xtr * 10, ytr)
                out = []
                for pl, tm in tl:
                    p = model.decision_function(matrix(pl, tm, feats) * 10)
                    o = np.lexsort((pl, -p))[: br.K]
                    out.append([int(pl[i]) for i in o])
                recs.setdefault(key, []).extend(out)
        print(f"cut-off {c}: {len(ptl)} pseudo cases, {time.perf_counter() - t0:.0f}s", flush=True)
    base = br.metrics(recs["base"], ordered)["HR@10"]
    idx = np.random.default_rng(0).integers(0, len(ordered), (2000, len(ordered)))
    print(f"{len(ordered)} validation cases")
    print("| config | HR@10 [95% CI] | diff to base [paired 95% CI] |\n|---|---|---|")
    for k, v in recs.items():
        h = br.metrics(v, ordered)["HR@10"]
        mean, lo_, hi_ = br.boot(h)
        d = (h[idx] - base[idx]).mean(axis=1)
        print(
            f"| {k} | {mean:.3f} [{lo_:.3f}, {hi_:.3f}] | {h.mean() - base.mean():+.3f} "
            f"[{np.quantile(d, 0.025):+.3f}, {np.quantile(d, 0.975):+.3f}] |"
        )


if __name__ == "__main__":
    main()
