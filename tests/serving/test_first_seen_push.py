"""The first-seen index of an item view over a stream (``serving/first_seen.py``) folds a push in
by reading the pushed log's new fragments only, with the same result as reading the whole source;
a forget (tombstones) falls back to the full read."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow.parquet as pq
import pytest

import context_store as cs
from context_store.serving import first_seen as fs
from tests.support.recs import build_recs_repo, open_built

ITEM_CF = """
item_cf = cs.InteractionEmbeddingView("item_cf", [item], ratings, user="user_id", weight="rating",
    method="pmi_svd", dim=8, min_interactions=2)
"""


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[cs.ContextStore]:
    root = build_recs_repo(tmp_path_factory.mktemp("fseen") / "repo", similar="cs.Similar(items, k=10)")
    with (root / "features.py").open("a") as f:
        f.write(ITEM_CF)
    s = open_built(root)
    yield s
    s.close()


def _cold(store: cs.ContextStore, view: cs.EmbeddingView) -> tuple[list[str], np.ndarray]:
    """The index read from the whole source, as a fresh process would."""
    fs._FIRST_SEEN.clear()
    fs._BUILT.clear()
    return fs.first_seen(store, view)


def _same(a: tuple[list[str], np.ndarray], b: tuple[list[str], np.ndarray]) -> None:
    assert a[0] == b[0]
    assert a[1].dtype == b[1].dtype == np.int64 and a[1].tolist() == b[1].tolist()


def test_a_push_is_merged_into_the_index_exactly(store: cs.ContextStore) -> None:
    view = store.definitions.embedding_views["item_cf"]
    rows = pq.read_table(store.config.repo / "data" / "ratings.parquet").to_pylist()
    proto = rows[0]
    before = _cold(store, view)
    assert "i_new" not in before[0]
    now = datetime.now(UTC).replace(microsecond=0)
    full, appended = fs.STATS["full"], fs.STATS["appended"]
    # a new item, and a known one rated again (its first time must not move)
    assert store.push("ratings", [{**proto, "item_id": "i_new", "ts": now}, {**proto, "ts": now}]).visible
    got = fs.first_seen(store, view)
    assert (fs.STATS["full"], fs.STATS["appended"]) == (full, appended + 1)  # the new fragment only
    assert got[0][-1] == "i_new" and got[1][-1] == int(now.timestamp() * 1e6)
    assert got[0][:-1] == before[0] and got[1][:-1].tolist() == before[1].tolist()
    # pushed again, earlier: its first time moves back (a min over both pushes)
    earlier = now - timedelta(hours=1)
    assert store.push("ratings", [{**proto, "item_id": "i_new", "user_id": "u1", "ts": earlier}]).visible
    merged = fs.first_seen(store, view)
    assert fs.STATS["appended"] == appended + 2 and fs.STATS["full"] == full
    assert dict(zip(merged[0], merged[1].tolist()))["i_new"] == int(earlier.timestamp() * 1e6)
    _same(merged, _cold(store, view))
    # a call with nothing new reads nothing
    assert fs.first_seen(store, view) is fs.first_seen(store, view)


def test_a_forget_reads_the_whole_source_again(store: cs.ContextStore) -> None:
    view = store.definitions.embedding_views["item_cf"]
    now = datetime.now(UTC).replace(microsecond=0)
    rows = pq.read_table(store.config.repo / "data" / "ratings.parquet").to_pylist()
    proto = rows[0]
    # the only rater of "i_gone" is forgotten: the item must leave the index
    assert store.push("ratings", [{**proto, "item_id": "i_gone", "user_id": "u_gone", "ts": now}]).visible
    assert "i_gone" in fs.first_seen(store, view)[0]
    store.forget({"user_id": "u_gone"})
    full = fs.STATS["full"]
    got = fs.first_seen(store, view)
    assert fs.STATS["full"] == full + 1
    assert "i_gone" not in got[0]
    _same(got, _cold(store, view))
