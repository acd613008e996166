"""Does a BTREE scalar index on the entity key change a per-entity Lance read (rows, order) and how
much faster is it? (issue #15, replay's interest vector read). Builds the MovieLens recs repo of
``bench_recs.py``, backfills to the 0.95 quantile, copies the ``user_interest`` view table, indexes the
copy, then reads ``--users`` users' rows from both, interleaved, comparing the tables exactly.

Run: ``PYTHONPATH=. python evals/lance_btree_check.py --data /work/shared/datasets/movielens-small``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import textwrap
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_recs import DEFAULT_RERANK, REPO, load, services_src  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", required=True)
    ap.add_argument("--users", type=int, default=200)
    ap.add_argument("--view", default="user_interest")
    args = ap.parse_args()
    import lance

    import context_store as cs
    from context_store.vocab.tables import view_table

    u, m, r, ts = load(Path(args.data))
    root = Path(tempfile.mkdtemp(prefix="btree_check_"))
    try:
        (root / "data").mkdir()
        t = {"user_id": u.astype(str), "movie_id": m.astype(str), "rating": r}
        t["ts"] = pa.array(ts * 1_000_000, pa.timestamp("us", tz="UTC"))
        pq.write_table(pa.table(t), root / "data" / "ratings.parquet")
        src = REPO.format(method="pmi_svd", dim=64, params={}, min_interactions=3, min_weight=None, half_life=365)
        (root / "features.py").write_text(textwrap.dedent(src) + services_src([DEFAULT_RERANK]))
        store = cs.ContextStore(root, workspace="btree_check")
        store.apply()
        store.backfill(end=datetime.fromtimestamp(float(np.quantile(ts, 0.95)), tz=UTC), warm=False)
        assert store.offline.path is not None  # type: ignore[attr-defined]
        plain = store.offline.path / f"{view_table(args.view)}.lance"  # type: ignore[attr-defined]
        copy = root / "indexed.lance"
        shutil.copytree(plain, copy)
        a, b = lance.dataset(str(plain)), lance.dataset(str(copy))
        t0 = time.perf_counter()
        b.create_scalar_index("user_id", "BTREE")
        build_ms = 1e3 * (time.perf_counter() - t0)
        print(f"rows {a.count_rows()}, fragments {len(a.get_fragments())}, index build {build_ms:.1f} ms")
        b = lance.dataset(str(copy))
        users = sorted(set(u.astype(str).tolist()))[: args.users]
        ta, tb, diff = [], [], 0
        for x in users:
            flt = f"(user_id = '{x}')"
            s = time.perf_counter()
            ra = a.to_table(filter=flt)
            ta.append(time.perf_counter() - s)
            s = time.perf_counter()
            rb = b.to_table(filter=flt)
            tb.append(time.perf_counter() - s)
            diff += not ra.equals(rb)
        for name, xs in (("no index", ta), ("BTREE", tb)):
            v = np.asarray(xs) * 1e3
            print(f"{name:9} p50 {np.median(v):.2f} ms, p10 {np.percentile(v, 10):.2f}, p90 {np.percentile(v, 90):.2f}")
        print(f"users {len(users)}, tables differing (rows or order): {diff}")
        store.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
