"""``cs.Rerank(newness=w)``: a re-rank term for how recently each candidate first appeared in the item
view's source; point-in-time in a replay (only items first seen before ``as_of``, by their first time)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

import context_store as cs
from context_store.errors import DefinitionError
from context_store.serving.retrieval import _rank_score
from tests.support.recs import T0, build_recs_repo, open_built, release

N_ITEMS = 60  # build_recs_repo's default
POP = {f"i{k}": float((k * 37) % N_ITEMS) for k in range(N_ITEMS)}  # item_stats.popularity it writes
RELEASED = {f"i{k}": release(k, N_ITEMS) for k in range(N_ITEMS)}  # the items view's source rows (one each)
USER = "u3"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[cs.ContextStore]:
    root = build_recs_repo(
        tmp_path_factory.mktemp("new") / "repo", similar="cs.Similar(items, k=10, seen_from=ratings)"
    )
    s = open_built(root)
    yield s
    s.close()


def _seen(store: cs.ContextStore, before: datetime | None = None) -> set[str]:
    rows = pq.read_table(Path(store.config.repo) / "data" / "ratings.parquet").to_pylist()
    return {r["item_id"] for r in rows if r["user_id"] == USER and (before is None or r["ts"] < before)}


def _newest_first(items: set[str]) -> list[str]:
    return sorted(items, key=lambda i: (-RELEASED[i].timestamp(), i))  # ties (same release) by id


def test_newness_alone_orders_by_first_seen_time_as_of_the_replay(store: cs.ContextStore) -> None:
    at = T0 + timedelta(days=25)
    rr = cs.Rerank(similarity=0.0, newness=1.0, candidates=N_ITEMS)
    uc = store.get_user_context(USER, as_of=at, k=40, rerank=rr)
    known = {i for i, t in RELEASED.items() if t <= at} - _seen(store, at)
    got = [str(i.entity_id) for i in uc.similar]
    assert got == _newest_first(known)[:40]
    # online the newest items are later ones: the replay did not see them
    online = [str(i.entity_id) for i in store.get_user_context(USER, k=40, rerank=rr).similar]
    assert online == _newest_first(set(RELEASED) - _seen(store))[:40]
    assert online[0] != got[0] and RELEASED[online[0]] > at


def test_newness_is_one_more_fused_term(store: cs.ContextStore) -> None:
    pool = 20
    rr = cs.Rerank(
        {"item_stats.popularity": 1.0}, similarity=1.0, newness=2.0, candidates=pool, normalize="rank", rank_constant=5
    )
    items = store.get_user_context(USER, k=pool, rerank=rr).similar
    assert len(items) == pool
    sims = np.array([i.score for i in items])
    pops = np.array([POP[str(i.entity_id)] for i in items])
    first = np.array([RELEASED[str(i.entity_id)].timestamp() for i in items])
    want = _rank_score(sims, 5.0) + _rank_score(pops, 5.0) + 2.0 * _rank_score(first, 5.0)
    assert np.allclose([i.rank_score for i in items], want)
    without = cs.Rerank({"item_stats.popularity": 1.0}, candidates=pool, normalize="rank", rank_constant=5)
    other = store.get_user_context(USER, k=pool, rerank=without).similar
    assert [i.entity_id for i in other] != [i.entity_id for i in items]  # the term is not a no-op


def test_newness_argument_and_spec() -> None:
    for bad in (float("nan"), True, "1"):
        with pytest.raises(DefinitionError, match="newness"):
            cs.Rerank(newness=bad)  # type: ignore[arg-type]
    assert "newness" not in cs.Rerank().spec()  # existing definitions keep their spec
    assert cs.Rerank(newness=1).spec()["newness"] == 1.0
