"""``cs.Similar(recent_items=n)`` (item-kNN from the entity's last seen items) and
``cs.Rerank(normalize="rank")`` (reciprocal-rank fusion of the re-rank terms); the seen history of a
``seen_from`` source is indexed for replays even without recent events."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import context_store as cs
from context_store.errors import DefinitionError, InvalidInputError
from context_store.serving import context_events
from context_store.serving.retrieval import _rank_score
from context_store.stores.vector.base import compile_filter
from tests.support.recs import T0, build_recs_repo, release

N_ITEMS = 60  # build_recs_repo's default
POP = {f"i{k}": float((k * 37) % N_ITEMS) for k in range(N_ITEMS)}  # item_stats.popularity it writes
RECENT = 3


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[cs.ContextStore]:
    root = build_recs_repo(
        tmp_path_factory.mktemp("recent") / "repo",
        similar=f"cs.Similar(items, k=10, seen_from=ratings, recent_items={RECENT})",
    )
    # Seen items come from seen_from only: no recent events to index the history by.
    defs = root / "features.py"
    defs.write_text(defs.read_text().replace("recent_events=(ratings, 5),", ""))
    s = cs.ContextStore(root, workspace="w" + uuid.uuid4().hex[:10], online_store="sqlite")
    s.apply()
    s.backfill()
    s.materialize()
    yield s
    s.close()


def _newest_first(store: cs.ContextStore, user: str, before: datetime | None = None) -> list[str]:
    rows = pq.read_table(Path(store.config.repo) / "data" / "ratings.parquet").to_pylist()
    mine = sorted(
        (r for r in rows if r["user_id"] == user and (before is None or r["ts"] < before)), key=lambda r: r["ts"]
    )
    return list(dict.fromkeys(r["item_id"] for r in reversed(mine)))


def _expected(store: cs.ContextStore, seen: list[str], later: list[str] | None = None) -> list[str]:
    vecs = store.vectors.get_vectors("items", seen[:RECENT])
    m = np.stack([vecs[i] / np.linalg.norm(vecs[i]) for i in seen[:RECENT]])
    flt = {"item_id": {"$nin": seen + (later or [])}}
    hits = store.find_similar("items", vector=m.mean(axis=0), k=10, filter=flt).items
    return [str(i.entity_id) for i in hits]


def test_recent_items_query_is_the_last_seen_items(store: cs.ContextStore) -> None:
    differs = []
    for user in ("u1", "u2", "u6"):
        uc = store.get_user_context(user)
        seen = _newest_first(store, user)
        got = [str(i.entity_id) for i in uc.similar]
        assert got == _expected(store, seen)
        assert not set(got) & set(seen)
        assert any(f"the last {RECENT} seen items (item-kNN)" in n for n in uc.notes), uc.notes
        # The interest vector (all rated items) would answer differently: the mode is not a no-op.
        vec = uc.feature_values["user_interest.interest"]
        by_interest = store.find_similar("items", vector=vec, k=10, filter={"item_id": {"$nin": seen}}).items
        differs.append([str(i.entity_id) for i in by_interest] != got)
    assert any(differs)


def test_recent_items_replay_uses_the_items_seen_before_as_of(store: cs.ContextStore) -> None:
    at = T0 + timedelta(days=20)
    user = "u7"
    seen = _newest_first(store, user, before=at)
    assert seen[:RECENT] != _newest_first(store, user)[:RECENT]  # later ratings would change the query
    uc = store.get_user_context(user, as_of=at)
    got = [str(i.entity_id) for i in uc.similar]
    assert got and not set(got) & set(seen)
    later = [f"i{k}" for k in range(N_ITEMS) if release(k, N_ITEMS) > at]  # not in the catalogue yet
    assert later
    assert got == _expected(store, seen, later)
    # the seen history of `ratings` was indexed (seen_from alone names the entity keys)
    assert any(k[:2] == (str(store.config.repo), "ratings") for k in context_events._HISTORY)


def test_rank_score_is_reciprocal_rank_with_shared_ties() -> None:
    x = np.array([1.0, 1000.0, 5.0, np.nan, 5.0])
    got = _rank_score(x, 10.0)
    assert got.tolist() == [1 / 14, 1 / 11, 1 / 12, 0.0, 1 / 12]


def test_rank_fusion_scores_by_ranks_in_the_pool(store: cs.ContextStore) -> None:
    pool = 20
    rr = cs.Rerank({"item_stats.popularity": 2.0}, similarity=1.0, candidates=pool, normalize="rank", rank_constant=5)
    uc = store.get_user_context("u3", k=pool, rerank=rr)
    items = uc.similar
    assert len(items) == pool
    sims = np.array([i.score for i in items])
    pops = np.array([POP[str(i.entity_id)] for i in items])
    want = 1.0 * _rank_score(sims, 5.0) + 2.0 * _rank_score(pops, 5.0)
    assert np.allclose([i.rank_score for i in items], want)
    assert [i.rank_score for i in items] == sorted((i.rank_score for i in items), reverse=True)  # type: ignore[misc]
    # min-max over the same pool orders differently (the scale of each term matters there, not here)
    mm = store.get_user_context("u3", k=pool, rerank=cs.Rerank({"item_stats.popularity": 2.0}, candidates=pool))
    assert {i.entity_id for i in mm.similar} == {i.entity_id for i in items}
    assert [i.entity_id for i in mm.similar] != [i.entity_id for i in items]


def test_rerank_and_similar_arguments_are_checked() -> None:
    with pytest.raises(DefinitionError, match="normalize"):
        cs.Rerank(normalize="zscore")
    with pytest.raises(DefinitionError, match="rank_constant"):
        cs.Rerank(normalize="rank", rank_constant=-1)
    assert "normalize" not in cs.Rerank().spec()  # existing definitions keep their spec
    assert cs.Rerank(normalize="rank").spec()["normalize"] == {"method": "rank", "rank_constant": 10.0}
    view = cs.EmbeddingView(
        "v", [cs.Entity("item", join_keys=["item_id"])], cs.FileSource("x.parquet", timestamp_field="ts"), text="t"
    )
    with pytest.raises(DefinitionError, match="recent_items"):
        cs.Similar(view, recent_items=0)
    assert "recent_items" not in cs.Similar(view).spec()
    assert cs.Similar(view, recent_items=5).spec()["recent_items"] == 5


def test_id_lists_of_strings_take_the_fast_path_others_are_still_checked() -> None:
    ids = [f"i{k}" for k in range(5000)]
    (cond,) = compile_filter({"item_id": {"$nin": ids}})
    assert cond.value == tuple(ids)
    assert compile_filter({"item_id": {"$in": ["a", 1, None]}})[0].value == ("a", 1, None)
    with pytest.raises(InvalidInputError):
        compile_filter({"item_id": {"$nin": ["a", {"b": 1}]}})


def test_whole_log_reads_are_reused_until_the_table_changes(tmp_path: Path) -> None:
    from context_store.compute import training
    from context_store.stores.offline.lance import LanceOfflineStore

    off = LanceOfflineStore(tmp_path / "off")
    off.append("fv__t", pa.table({"k": ["a", "b"], "x": [1, 2]}))
    first = training._whole_log(off, "fv__t", ["k", "x"])
    assert training._whole_log(off, "fv__t", ["k", "x"]) is first  # the same version: no second read
    off.append("fv__t", pa.table({"k": ["c"], "x": [3]}))
    again = training._whole_log(off, "fv__t", ["k", "x"])
    assert again is not first and sorted(again.column("x").to_pylist()) == [1, 2, 3]  # a commit: read anew
    off.close()
