"""Numpy screen (not the product path) of new re-rank signals for issue #15, on validation cut-offs only.

Starts from the product's scoring as re-implemented in ``screen_recs_fit`` (query: mean unit vector of
the last 50 distinct rated movies; pool: 100 nearest + 50 most rated in 180 days; reciprocal-rank
fusion, constant 10; today's weights sim 1, 180d count 0.5, lifetime mean 0.5, newness 1) and adds
fused terms, each computed from ratings before the cut-off only:

  yr{R}     closeness of the movie's release year (from its title) to the median year of the user's
            last R distinct rated movies (higher = closer)
  pr{R}     closeness of log(1 + lifetime rating count) to the median of the last R movies'
  gen{R}    cosine of the movie's genre vector to the genre mix of the last R movies
  gpop      user's genre share over the whole history (dot the movie's genres) x 180d count
  uknn{N}   user-kNN collaborative popularity: the N users nearest by cosine on the binary user-item
            matrix before c, summed similarity x "rated it in the 180 days before c"
  switch    per-case weights by the time since the user's last rating before c (mid-session or not)

Every config is scored on the same cases; HR@10 with a 95% bootstrap interval, and the paired
bootstrap interval of the difference to the base config (same resamples of cases). Run:
``python evals/screen_recs2.py --quantiles 0.25,0.43 --cutoffs 16 --per-cutoff 60 --seed 1``.
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
import time
from pathlib import Path

import numpy as np
from scipy.sparse import csr_matrix

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_recs as br  # noqa: E402
import screen_recs_fit as sf  # noqa: E402

DAY = br.DAY
RS = (5, 10, 20, 50)
BASE = {"sim": 1.0, "c180": 0.5, "mean": 0.5, "new": 1.0}


def movie_attrs(data: Path, movies: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(release year or nan, binary genre matrix) per movie index."""
    year = np.full(len(movies), np.nan)
    rows: dict[int, tuple[str, str]] = {}
    with open(data / "movies.csv", newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            rows[int(row["movieId"])] = (row["title"], row["genres"])
    names = sorted({g for _, gs in rows.values() for g in gs.split("|") if g != "(no genres listed)"})
    gidx = {g: i for i, g in enumerate(names)}
    gen = np.zeros((len(movies), len(names)), np.float32)
    for i, mid in enumerate(movies):
        title, gs = rows.get(int(mid), ("", ""))
        hit = re.search(r"\((\d{4})\)\s*$", title.strip())
        if hit:
            year[i] = float(hit.group(1))
        for g in gs.split("|"):
            if g in gidx:
                gen[i, gidx[g]] = 1.0
    return year, gen


class UserKnn:
    """Binary user-item matrix before c (row-normalised) and the 180-day one, for collaborative popularity."""

    def __init__(self, u: np.ndarray, mi: np.ndarray, ts: np.ndarray, c: int, n: int) -> None:
        sel = ts < c
        users = np.unique(u[sel])
        self.uidx = {int(x): i for i, x in enumerate(users)}
        rows = np.searchsorted(users, u[sel])
        x = csr_matrix((np.ones(int(sel.sum())), (rows, mi[sel])), shape=(len(users), n))
        x.data[:] = 1.0
        norms = np.sqrt(np.asarray(x.sum(axis=1)).ravel())
        self.xn = csr_matrix(x.multiply(1.0 / np.maximum(norms, 1e-9)[:, None]))
        rec = sel & (ts >= c - 180 * DAY)
        r2 = np.searchsorted(users, u[rec])
        x180 = csr_matrix((np.ones(int(rec.sum())), (r2, mi[rec])), shape=(len(users), n))
        x180.data[:] = 1.0
        self.x180 = x180

    def score(self, user: int, k: int) -> np.ndarray:
        i = self.uidx[user]
        sims = np.asarray((self.xn @ self.xn[i].T).todense()).ravel()
        sims[i] = -1.0
        top = np.argpartition(-sims, k)[:k]
        w = np.maximum(sims[top], 0.0)
        return np.asarray(self.x180[top].T @ w).ravel()


def recent_distinct(hist: list[tuple[int, float, int]], r: int) -> list[int]:
    out: list[int] = []
    for it, _, _ in sorted(hist, key=lambda h: (-h[2], -h[0])):
        if it not in out:
            out.append(it)
        if len(out) >= r:
            break
    return out


def extra_terms(
    p: sf.Period,
    case: br.Case,
    pool: np.ndarray,
    year: np.ndarray,
    gen: np.ndarray,
    uk: UserKnn,
) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    n = len(year)
    yfill = np.where(np.isnan(year), np.nanmedian(year), year)
    lpop = np.log1p(p.f["clife"])
    for r in RS:
        rec = recent_distinct(case.history, r)
        ys = year[rec]
        ys = ys[~np.isnan(ys)]
        my = float(np.median(ys)) if len(ys) else float(np.nanmedian(year))
        out[f"yr{r}"] = sf.rrf(-np.abs(yfill - my), pool)
        out[f"pr{r}"] = sf.rrf(-np.abs(lpop - float(np.median(lpop[rec]))), pool)
        mix = gen[rec].sum(axis=0)
        gn = gen / np.maximum(np.linalg.norm(gen, axis=1, keepdims=True), 1e-9)
        out[f"gen{r}"] = sf.rrf(gn @ (mix / max(float(np.linalg.norm(mix)), 1e-9)), pool)
    # popularity velocity: ratings per day since the item first appeared (capped at the window), so a
    # film out for 3 weeks is compared on the same footing as one out for years
    age = np.clip(-p.f["new"] / DAY, 1.0, None)
    for w in (30, 180):
        for lo in (7, 30):
            out[f"vel{w}_{lo}"] = sf.rrf(p.f[f"c{w}"] / np.clip(age, lo, w), pool)
    allh = [h[0] for h in case.history]
    share = gen[allh].sum(axis=0)
    share = share / max(float(share.sum()), 1e-9)
    out["gpop"] = sf.rrf((gen @ share) * p.f["c180"], pool)
    # short-term and liked-only similarity queries next to the 50-item one
    for r in (5, 10, 20):
        rec = [i for i in recent_distinct(case.history, 10 * r) if p.has[i]][:r]
        if rec:
            out[f"sim{r}"] = sf.rrf(np.where(p.has, p.mat @ p.mat[rec].mean(axis=0), -1e9), pool)
        else:
            out[f"sim{r}"] = np.zeros(n)
    liked = [h for h in case.history if h[1] >= 4.0]
    rec = [i for i in recent_distinct(liked, 500) if p.has[i]][:50]
    out["simlike"] = sf.rrf(np.where(p.has, p.mat @ p.mat[rec].mean(axis=0), -1e9), pool) if rec else np.zeros(n)
    for k in (20, 50):
        out[f"uknn{k}"] = sf.rrf(uk.score(case.user, k), pool)
    assert all(len(v) == n for v in out.values())
    return out


def score_pool(pool: np.ndarray, terms: dict[str, np.ndarray], w: dict[str, float]) -> list[int]:
    return sf.score(pool, terms, w)


def parse_cfg(s: str) -> dict[str, float]:
    return {kv.split("=")[0].strip(): float(kv.split("=")[1]) for kv in s.split(",") if kv.strip()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="/work/shared/datasets/movielens-small")
    ap.add_argument("--cutoffs", type=int, default=16)
    ap.add_argument("--per-cutoff", type=int, default=60)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--quantiles",
        action="append",
        default=[],
        help="validation ranges, repeatable (default 0.25,0.43: the set today's config was selected on)",
    )
    ap.add_argument("--cfg", action="append", default=[], help="extra weights on top of BASE, 'yr10=0.5'")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    ranges = [tuple(float(x) for x in q.split(",")) for q in (args.quantiles or ["0.25,0.43"])]
    if any(hi >= 0.45 for _, hi in ranges):
        sys.exit("validation only: --quantiles must end before the test period (0.45)")
    data = Path(args.data)
    u, m, r, ts = br.load(data)
    cases = []
    part_of: dict[int, int] = {}  # cut-off -> index of its range
    for j, (lo, hi) in enumerate(ranges):
        got, movies = br.make_cases(u, m, r, ts, args.cutoffs, args.per_cutoff, args.seed, lo, hi)
        cases += got
        part_of.update({x.cutoff: j for x in got})
    midx = {int(x): i for i, x in enumerate(movies)}
    mi = np.array([midx[int(x)] for x in m])
    year, gen = movie_attrs(data, movies)
    table = sf.ratings_table(u, m, r, ts)
    view = sf.pmi_view()
    t0 = time.perf_counter()
    tl: list[tuple[np.ndarray, dict[str, np.ndarray]]] = []
    gaps: list[float] = []
    mains: list[float] = []
    inpool: list[bool] = []  # a target in the re-rank pool at all: the ceiling of any re-rank term
    pop: list[list[int]] = []
    ordered: list[br.Case] = []
    for c in sorted({x.cutoff for x in cases}):
        group = [x for x in cases if x.cutoff == c]
        per = sf.Period(c, (u, mi, r, ts), movies, table, view, 0.0)
        uk = UserKnn(u, mi, ts, c, len(movies))
        for x in group:
            pool, terms = sf.case_terms(per, x.history, x.candidates)
            terms.update(extra_terms(per, x, pool, year, gen, uk))
            tl.append((pool, terms))
            inpool.append(bool(np.isin(list(x.targets), pool).any()))
            gaps.append((c - max(h[2] for h in x.history)) / 3600.0)
            # how mainstream the user is: mean percentile of their last 50 movies' lifetime counts
            cl = per.f["clife"][per.released]
            rec = recent_distinct(x.history, 50)
            mains.append(float(np.mean([np.searchsorted(np.sort(cl), per.f["clife"][i]) / len(cl) for i in rec])))
            pop.append(br.top_k(per.f["c180"], x.candidates))
            ordered.append(x)
        print(f"cut-off {c} done {time.perf_counter() - t0:.0f}s", flush=True)
    cases = ordered
    stat = {"gap_h": np.array(gaps), "mainstream": np.array(mains)}
    gap = stat["gap_h"]

    def hr_of(recs: list[list[int]]) -> np.ndarray:
        return br.metrics(recs, cases)["HR@10"]

    base_hr = hr_of([score_pool(pl, tm, BASE) for pl, tm in tl])
    rows: list[tuple[str, np.ndarray]] = [("pop180", hr_of(pop)), ("base " + str(BASE), base_hr)]
    cfgs: list[tuple[str, object]] = []
    singles = [f"{t}{rr}" for t in ("yr", "pr", "gen") for rr in RS] + ["gpop", "uknn20", "uknn50"]
    singles += ["sim5", "sim10", "sim20", "simlike"]
    singles += [f"vel{w}_{lo}" for w in (30, 180) for lo in (7, 30)]
    for w in (30, 180):
        for lo in (7, 30):
            cfgs.append((f"vel{w}_{lo}=0.5 instead of c180", {**BASE, "c180": 0.0, f"vel{w}_{lo}": 0.5}))
    for t in singles:
        for w in (0.3, 0.6, 1.0):
            cfgs.append((f"+{t}={w}", {**BASE, t: w}))
    for s in args.cfg:
        cfgs.append((s, {**BASE, **parse_cfg(s)}))
    # activity switch: mid-session (last rating < H hours before c) vs dormant
    for hrs in (1.0, 24.0, 24.0 * 7, 24.0 * 30, 24.0 * 180):
        for a, b in (
            ({"sim": 2.0}, {}),
            ({}, {"sim": 0.5}),
            ({"sim": 2.0}, {"sim": 0.5}),
            ({"c180": 0.2}, {"c180": 1.0}),
            ({"new": 0.5}, {"new": 1.5}),
        ):
            cfgs.append(
                (f"switch gap<{hrs:g}h: active {a} / dormant {b}", ("gap_h", hrs, {**BASE, **a}, {**BASE, **b}))
            )
    # mainstreamness switch: thresholds at the quartiles of the validation users' values
    for q in (0.25, 0.5, 0.75):
        th = float(np.quantile(stat["mainstream"], q))
        for a, b in (
            ({"c180": 0.2, "sim": 1.5}, {"c180": 1.0}),
            ({"sim": 1.5}, {}),
            ({}, {"c180": 1.0}),
            ({}, {"sim": 0.5}),
        ):
            cfgs.append(
                (
                    f"switch mainstream<q{q:g} ({th:.2f}): niche {a} / mainstream {b}",
                    ("mainstream", th, {**BASE, **a}, {**BASE, **b}),
                )
            )
    for name, cfg in cfgs:
        if isinstance(cfg, tuple):
            key, th, wa, wb = cfg
            recs = [score_pool(pl, tm, wa if g < th else wb) for (pl, tm), g in zip(tl, stat[key])]
        else:
            recs = [score_pool(pl, tm, cfg) for pl, tm in tl]  # type: ignore[arg-type]
        rows.append((name, hr_of(recs)))
    part = np.array([part_of[x.cutoff] for x in cases])
    head = "| config | " + " | ".join(
        f"HR@10 {lo:g}..{hi:g} ({int((part == j).sum())}) | diff to base" for j, (lo, hi) in enumerate(ranges)
    )
    if len(ranges) > 1:
        head += " | pooled HR@10 | pooled diff"
    lines = [
        f"{len(cases)} validation cases, {len({x.user for x in cases})} users, {args.cutoffs} cut-offs per range, "
        f"seed {args.seed}. Mid-session (< 1 h since the last rating): {int((gap < 1).sum())} cases; "
        f"< 24 h: {int((gap < 24).sum())}. Cases with a target in the re-rank pool (the ceiling of any re-rank "
        f"term): {np.mean(inpool):.3f}. Intervals: 95% bootstrap (2,000 resamples of cases); diff: paired.",
        "",
        head + " |",
        "|---" * (head.count("|") + 1) + "|",
    ]
    subsets = [part == j for j in range(len(ranges))] + ([np.ones(len(cases), bool)] if len(ranges) > 1 else [])
    for name, v in rows:
        cells = [name]
        for sub in subsets:
            vs, bs = v[sub], base_hr[sub]
            ix = np.random.default_rng(0).integers(0, len(vs), (2000, len(vs)))
            mean, lo_, hi_ = br.boot(vs)
            d = (vs[ix] - bs[ix]).mean(axis=1)
            cells.append(f"{mean:.3f} [{lo_:.3f}, {hi_:.3f}]")
            cells.append(f"{vs.mean() - bs.mean():+.3f} [{np.quantile(d, 0.025):+.3f}, {np.quantile(d, 0.975):+.3f}]")
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
