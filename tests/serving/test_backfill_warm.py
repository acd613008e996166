"""``backfill(warm=True)`` fills the replay caches as of its end (``serving/warm.py``): the next
``as_of`` replay finds them, returns what a cold process returns, and a later commit by another
store is still seen (every cache stays keyed by the table's change token)."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import context_store as cs
from context_store.compute import training
from context_store.serving import context_events, first_seen, retrieval
from context_store.vocab.tables import view_table
from context_store.vocab.time import datetime_to_us
from tests.support.recs import T0, build_recs_repo

# 90 items: the re-rank's 70 candidates are more than the per-entity read threshold (whole-log path)
SIMILAR = (
    "cs.Similar(items, k=10, seen_from=ratings, rerank=cs.Rerank({'item_counts.n': 1.0}, candidates=70,"
    " normalize='rank', also=cs.TopItems('item_counts.n', n=10)))"
)
ITEM_COUNTS = """
item_counts = cs.FeatureView("item_counts", [item], ratings,
    aggregations=[cs.Aggregate("rating", "count", cs.Lifetime(), name="n")])
"""
USER = "u3"
END = T0 + timedelta(days=30)  # midnight: the replay's top-items day starts at END
LATER = T0 + timedelta(days=50)


def _clear() -> None:
    """A cold process: no replay cache filled."""
    retrieval._TOP.clear()
    first_seen._FIRST_SEEN.clear()
    training._WHOLE.clear()
    training._WHOLE_INDEX.clear()
    context_events._HISTORY.clear()


def _sim(uc: cs.UserContext) -> list[tuple[str, float, float | None]]:
    return [(str(i.entity_id), i.score, i.rank_score) for i in uc.similar]


@pytest.fixture()
def root(tmp_path: Path) -> Iterator[Path]:
    r = build_recs_repo(tmp_path / "repo", n_items=90, similar=SIMILAR)
    with (r / "features.py").open("a") as f:
        f.write(ITEM_COUNTS)
    _clear()
    yield r
    _clear()


def test_backfill_warms_the_replay_caches_and_the_replay_is_unchanged(root: Path) -> None:
    ws = "w" + uuid.uuid4().hex[:10]
    store = cs.ContextStore(root, workspace=ws, online_store="sqlite")
    store.apply()
    store.backfill(end=END)
    day = datetime_to_us(END) // retrieval._DAY_US * retrieval._DAY_US
    assert any(k[-2:] == ("item_counts.n", day) for k in retrieval._TOP)  # the day's top items
    table = view_table("item_counts")
    assert any(k[1] == table for k in training._WHOLE)  # the whole log the top items and re-rank read
    assert training._WHOLE_INDEX  # with their point-in-time index
    assert context_events._HISTORY  # the seen-items history
    warm = store.get_user_context(USER, as_of=END)
    assert len(warm.similar) == 10
    _clear()
    cold = store.get_user_context(USER, as_of=END)
    assert _sim(warm) == _sim(cold)

    # Another store (as another process would) commits a later backfill: the warmed store sees it.
    other = cs.ContextStore(root, workspace=ws, online_store="sqlite")
    other.backfill(end=LATER, warm=False)
    view = store.definitions.embedding_views["items"]
    got = retrieval.top_items(store, view, cs.TopItems("item_counts.n"), as_of=LATER, served_at=LATER)
    rows = pq.read_table(root / "data" / "ratings.parquet").to_pylist()
    counts = Counter(r["item_id"] for r in rows if r["ts"] < LATER)
    assert got[:10] == sorted(counts, key=lambda i: (-counts[i], i))[:10]
    seen_then = Counter(r["item_id"] for r in rows if r["ts"] < END)
    assert got[:10] != sorted(seen_then, key=lambda i: (-seen_then[i], i))[:10]  # the new rows count
    after = store.get_user_context(USER, as_of=LATER)
    _clear()
    assert _sim(after) == _sim(store.get_user_context(USER, as_of=LATER))
    other.close()
    store.close()


def test_backfill_without_warm_fills_nothing(root: Path) -> None:
    store = cs.ContextStore(root, workspace="w" + uuid.uuid4().hex[:10], online_store="sqlite")
    store.apply()
    store.backfill(end=END, warm=False)
    assert not retrieval._TOP and not training._WHOLE and not context_events._HISTORY
    assert len(store.get_user_context(USER, as_of=END).similar) == 10
    store.close()
