"""``cs.Rerank(also=cs.TopItems(...))``: items high on a feature join the re-rank pool even when they
are far from the interest vector; point-in-time in a replay; seen items stay out."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import context_store as cs
from context_store.errors import DefinitionError
from context_store.serving.retrieval import top_items
from tests.support.recs import T0, build_recs_repo

ITEM_COUNTS = """
item_counts = cs.FeatureView("item_counts", [item], ratings,
    aggregations=[cs.Aggregate("rating", "count", cs.Lifetime(), name="n")])
"""
USER = "u3"
AT = T0 + timedelta(days=25)  # midnight: the replay's day bucket starts at AT itself
LATE = T0 + timedelta(days=40)  # when the "hit" item becomes popular


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[cs.ContextStore, str]]:
    root = build_recs_repo(
        tmp_path_factory.mktemp("pool") / "repo", similar="cs.Similar(items, k=10, seen_from=ratings)"
    )
    with (root / "features.py").open("a") as f:
        f.write(ITEM_COUNTS)
    path = root / "data" / "ratings.parquet"
    t = pq.read_table(path)
    rows = t.to_pylist()
    seen = {r["item_id"] for r in rows if r["user_id"] == USER}
    # the early item the user never rated that is farthest from its interest vector (the mean of its
    # rated items' vectors); after LATE it gets 300 ratings from new users
    vec = {r["item_id"]: np.asarray(r["item_vec"]) for r in rows}
    interest = np.mean([r["item_vec"] for r in rows if r["user_id"] == USER], axis=0)
    early = [f"i{k}" for k in range(30) if f"i{k}" not in seen and f"i{k}" in vec]
    hit = min(early, key=lambda i: (float(vec[i] @ interest) / float(np.linalg.norm(vec[i])), i))
    proto = next(r for r in rows if r["item_id"] == hit)
    extra = [{**proto, "user_id": f"fan{j}", "ts": LATE + timedelta(minutes=j), "rating": 5.0} for j in range(300)]
    pq.write_table(pa.Table.from_pylist(rows + extra, schema=t.schema), path)
    s = cs.ContextStore(root, workspace="w" + uuid.uuid4().hex[:10], online_store="sqlite")
    s.apply()
    s.backfill()
    s.materialize()
    yield s, hit
    s.close()


def _ids(uc: cs.UserContext) -> list[str]:
    return [str(i.entity_id) for i in uc.similar]


def _rated_by_user(store: cs.ContextStore, before: datetime | None = None) -> set[str]:
    rows = pq.read_table(Path(store.config.repo) / "data" / "ratings.parquet").to_pylist()
    return {r["item_id"] for r in rows if r["user_id"] == USER and (before is None or r["ts"] < before)}


def test_popular_far_item_enters_when_its_weight_is_high(built: tuple[cs.ContextStore, str]) -> None:
    store, hit = built
    pool = cs.TopItems("item_counts.n", n=5)
    near_only = store.get_user_context(USER, k=5, rerank=cs.Rerank({"item_counts.n": 10.0}, candidates=5))
    assert hit not in _ids(near_only)  # not among the user's nearest: only the second source can bring it
    low = store.get_user_context(USER, k=5, rerank=cs.Rerank({"item_counts.n": 0.0}, candidates=5, also=pool))
    assert hit not in _ids(low)  # in the pool, but similarity alone does not pick it
    high = store.get_user_context(USER, k=5, rerank=cs.Rerank({"item_counts.n": 10.0}, candidates=5, also=pool))
    got = _ids(high)
    assert got[0] == hit
    it = high.similar[0]
    assert it.rank_score is not None and it.score > 0  # its real similarity, read from its vector
    assert it.attributes.get("title")


def test_replay_does_not_pull_in_items_popular_only_later(built: tuple[cs.ContextStore, str]) -> None:
    store, hit = built
    view = store.definitions.embedding_views["items"]
    src = cs.TopItems("item_counts.n", n=10, refresh_seconds=0)
    now = top_items(store, view, src, as_of=None, served_at=datetime.now(UTC))
    assert now[0] == hit  # today it is the most rated item
    then_ranked = top_items(store, view, src, as_of=AT + timedelta(hours=5), served_at=datetime.now(UTC))
    rows = pq.read_table(Path(store.config.repo) / "data" / "ratings.parquet").to_pylist()
    counts = Counter(r["item_id"] for r in rows if r["ts"] < AT)  # as of the start of the replay's day
    assert then_ranked[:10] == sorted(counts, key=lambda i: (-counts[i], i))[:10]
    assert hit not in then_ranked[:10]
    rr = cs.Rerank({"item_counts.n": 10.0}, similarity=0.0, candidates=1, also=src)
    uc = store.get_user_context(USER, as_of=AT, k=10, rerank=rr)
    got = _ids(uc)
    assert hit not in got
    unseen = [i for i in sorted(counts, key=lambda i: (-counts[i], i)) if i not in _rated_by_user(store, AT)]
    assert set(got) - set(unseen[:10]) <= set(_ids(store.get_user_context(USER, as_of=AT, k=1)))


def test_seen_items_stay_out_of_the_second_source(built: tuple[cs.ContextStore, str]) -> None:
    store, _ = built
    seen = _rated_by_user(store)
    rr = cs.Rerank({"item_counts.n": 1.0}, candidates=1, also=cs.TopItems("item_counts.n", n=100))
    got = _ids(store.get_user_context(USER, k=60, rerank=rr))
    assert len(got) > 10
    assert not set(got) & seen
    everything = {f"i{k}" for k in range(60)}
    assert set(got) == everything - seen  # every unseen item came in through the second source


def test_top_items_rejects_bad_arguments() -> None:
    with pytest.raises(DefinitionError):
        cs.TopItems("no_dot")
    with pytest.raises(DefinitionError):
        cs.TopItems("v.f", n=0)
    with pytest.raises(DefinitionError):
        cs.Rerank({}, also=["v.f"])  # type: ignore[list-item]
