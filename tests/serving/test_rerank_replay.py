"""Re-ranking during an ``as_of`` replay reads the items' aggregates as of the replay time, not today's."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import context_store as cs
from tests.support.recs import T0, build_recs_repo, open_built

ITEM_COUNTS = """
item_counts = cs.FeatureView("item_counts", [item], ratings,
    aggregations=[cs.Aggregate("rating", "count", cs.Lifetime(), name="n")])
"""


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[cs.ContextStore]:
    root = build_recs_repo(tmp_path_factory.mktemp("rr") / "repo", similar="cs.Similar(items, k=10, seen_from=ratings)")
    with (root / "features.py").open("a") as f:
        f.write(ITEM_COUNTS)
    s = open_built(root)
    yield s
    s.close()


def test_replayed_rerank_reads_item_features_as_of(store: cs.ContextStore) -> None:
    at = T0 + timedelta(days=25)
    rows = pq.read_table(Path(store.config.repo) / "data" / "ratings.parquet").to_pylist()
    then = Counter(r["item_id"] for r in rows if r["ts"] < at)  # a window never sees its own end
    now = Counter(r["item_id"] for r in rows)
    by_count = cs.Rerank({"item_counts.n": 1.0}, similarity=0.0, candidates=40)
    uc = store.get_user_context("u3", as_of=at, k=40, rerank=by_count)
    got = [i.entity_id for i in uc.similar]
    assert len(got) >= 10
    assert got == sorted(got, key=lambda i: (-then[i], i))
    assert got != sorted(got, key=lambda i: (-now[i], i))  # today's counts would order them differently
