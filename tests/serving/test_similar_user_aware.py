"""Similar items that know the user: seen items left out, id filters, per-call k/filter (SDK, REST,
MCP), re-ranking by live item features and MMR diversity."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest

import context_store as cs
from context_store.errors import InvalidInputError
from tests.support.mcp import session_calls
from tests.support.recs import T0, build_recs_repo, open_built

SIMILAR = 'cs.Similar(items, k=10, seen_from=ratings, rerank=None, filter={"genre": {"$ne": "none"}})'


@pytest.fixture(scope="module")
def recs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[cs.ContextStore]:
    root = build_recs_repo(tmp_path_factory.mktemp("recs") / "repo", similar=SIMILAR)
    store = open_built(root)
    yield store
    store.close()


def _history(store: cs.ContextStore, user: str, before: datetime | None = None) -> set[str]:
    t = pq.read_table(Path(store.config.repo) / "data" / "ratings.parquet").to_pylist()
    return {r["item_id"] for r in t if r["user_id"] == user and (before is None or r["ts"] < before)}


def test_seen_items_are_excluded_by_default(recs: cs.ContextStore) -> None:
    for user in ("u0", "u1", "u2"):
        uc = recs.get_user_context(user)
        seen = _history(recs, user)
        got = [i.entity_id for i in uc.similar]
        assert got and not set(got) & seen, (user, set(got) & seen)
        assert any(f"{len(seen)} seen items excluded" in n for n in uc.notes), uc.notes
        # The same search without the exclusion does return seen items (the test can fail).
        vec = uc.feature_values["user_interest.interest"]
        plain = recs.find_similar("items", vector=vec, k=10).items
        assert {i.entity_id for i in plain} & seen


def test_filter_on_the_item_id(recs: cs.ContextStore) -> None:
    vec = recs.vectors.get_vectors("items", ["i3"])["i3"]
    only = recs.find_similar("items", vector=vec, k=10, filter={"item_id": {"$in": ["i5", "i7", "i9"]}}).items
    assert sorted(i.entity_id for i in only) == ["i5", "i7", "i9"]
    top = recs.find_similar("items", vector=vec, k=5).items
    without = recs.find_similar("items", vector=vec, k=5, filter={"item_id": {"$nin": [top[0].entity_id]}}).items
    assert top[0].entity_id not in {i.entity_id for i in without}
    assert [i.entity_id for i in without][:4] == [i.entity_id for i in top][1:5]
    eq = recs.find_similar("items", vector=vec, k=3, filter={"item_id": "i4", "genre": "comedy"}).items
    assert [i.entity_id for i in eq] == ["i4"]  # i4 is a comedy (k % 3 == 1)
    with pytest.raises(InvalidInputError) as e:
        recs.find_similar("items", vector=vec, k=3, filter={"item_id": {"$gt": "i1"}})
    assert e.value.field == "filter.item_id"


def test_per_call_k_and_filter_in_the_sdk(recs: cs.ContextStore) -> None:
    uc = recs.get_user_context("u3", k=4, filter={"genre": "drama"})
    assert len(uc.similar) == 4 and all(i.attributes["genre"] == "drama" for i in uc.similar)
    narrowed = recs.get_user_context("u3", filter={"item_id": {"$in": [i.entity_id for i in uc.similar[:2]]}})
    assert [i.entity_id for i in narrowed.similar] == [i.entity_id for i in uc.similar[:2]]
    with pytest.raises(InvalidInputError) as e:
        recs.get_user_context("u3", k=0)
    assert e.value.field == "k"
    with pytest.raises(InvalidInputError) as e:
        recs.get_user_context("u3", filter={"nope": 1})
    assert e.value.field == "filter.nope"


def test_rerank_by_live_features_is_deterministic_and_changes_the_order(recs: cs.ContextStore) -> None:
    base = recs.get_user_context("u4", k=10)
    by_pop = cs.Rerank({"item_stats.popularity": 1.0}, similarity=0.0, candidates=10)
    a = recs.get_user_context("u4", k=10, rerank=by_pop)
    b = recs.get_user_context("u4", k=10, rerank=by_pop)
    assert [i.entity_id for i in a.similar] == [i.entity_id for i in b.similar]
    assert {i.entity_id for i in a.similar} == {i.entity_id for i in base.similar}  # same candidates
    n_items = 60  # the popularity build_recs_repo wrote
    pop = {f"i{k}": float((k * 37) % n_items) for k in range(n_items)}
    got = [pop[i.entity_id] for i in a.similar]
    assert got == sorted(got, reverse=True) and got != [pop[i.entity_id] for i in base.similar]
    assert all(i.rank_score is not None for i in a.similar)
    # A blend: similarity still counts, the order differs from both pure orders.
    blend = recs.get_user_context("u4", k=10, rerank=cs.Rerank({"item_stats.popularity": 0.3}, candidates=10))
    assert [i.entity_id for i in blend.similar] != [i.entity_id for i in a.similar]
    with pytest.raises(InvalidInputError):
        recs.get_user_context("u4", rerank=cs.Rerank({"item_stats.nope": 1.0}))


def test_mmr_reduces_near_duplicates(recs: cs.ContextStore) -> None:
    def mean_pairwise(ids: list[str]) -> float:
        v = recs.vectors.get_vectors("items", ids)
        m = np.stack([v[i] / np.linalg.norm(v[i]) for i in ids])
        s = m @ m.T
        return float((s.sum() - len(ids)) / (len(ids) * (len(ids) - 1)))

    plain = recs.get_user_context("u5", k=5, rerank=cs.Rerank(candidates=30))
    diverse = recs.get_user_context("u5", k=5, rerank=cs.Rerank(candidates=30, diversity=cs.MMR(lambda_=0.3)))
    assert plain.similar[0].entity_id == diverse.similar[0].entity_id  # the most relevant stays first
    assert mean_pairwise([i.entity_id for i in diverse.similar]) < mean_pairwise([i.entity_id for i in plain.similar])


def test_rest_and_mcp_take_k_and_filter(recs: cs.ContextStore) -> None:
    from context_store.server import create_app
    from context_store.server.auth import Principal, parse_authorization
    from context_store.server.keys import KeyStore, key_store_path
    from context_store.tools.http import create_mcp_http_app, create_standalone_app
    from tests.support.mcp import free_port, serve_in_thread
    from tests.support.server import running_server

    ws = recs.workspace
    keys = KeyStore(key_store_path(recs.config.data_dir), cache_ttl=0.0)
    token = keys.create(ws, "read")[0]
    app = create_app(recs.config.repo, workspace=ws, online_store="sqlite", key_store=keys, mcp=False)
    h = {"authorization": f"Bearer {token}"}
    flt = '{"genre": "comedy", "item_id": {"$nin": ["i1"]}}'
    with running_server(app) as url:
        r = httpx.get(f"{url}/v1/context/u6", params={"k": 3, "filter": flt}, headers=h)
        assert r.status_code == 200, r.text
        sim = r.json()["similar"]
        assert len(sim) == 3 and all(i["attributes"]["genre"] == "comedy" for i in sim)
        bad = httpx.get(f"{url}/v1/context/u6", params={"filter": "[1]"}, headers=h)
        assert bad.status_code == 400 and "filter" in bad.text
        vec = [float(x) for x in recs.vectors.get_vectors("items", ["i2"])["i2"]]
        body = {"view": "items", "vector": vec, "k": 4, "filter": {"item_id": {"$nin": ["i2"]}, "genre": "action"}}
        r = httpx.post(f"{url}/v1/similar", json=body, headers=h)
        assert r.status_code == 200, r.text
        items = r.json()["items"]
        assert len(items) == 4 and all(i["entity_id"] != "i2" and i["attributes"]["genre"] == "action" for i in items)
    keys.close()

    def auth(header: str | None) -> Principal:
        assert parse_authorization(header) == "t"
        return Principal(ws, "read", key_id="k")

    mcp = create_mcp_http_app(lambda _ws: recs, auth)
    with serve_in_thread(create_standalone_app(mcp), free_port()) as base:
        found, ctx = _mcp(
            base + "/mcp",
            [
                (
                    "find_similar",
                    {"view": "items", "vector": vec, "k": 3, "filter": {"item_id": {"$in": ["i5", "i8"]}}},
                ),
                ("get_user_context", {"entity_id": "u6", "k": 2, "filter": {"genre": {"$in": ["drama"]}}}),
            ],
        )
    assert sorted(i["entity_id"] for i in found["items"]) == ["i5", "i8"]
    assert len(ctx["similar"]) == 2 and all(i["attributes"]["genre"] == "drama" for i in ctx["similar"])


def _mcp(url: str, calls: list[tuple[str, dict[str, Any]]]) -> list[Any]:
    _, results = session_calls(url, "t", calls)
    for res in results:
        assert not res.is_error, res.content
    return [res.structured_content for res in results]


def test_replayed_seen_set_is_point_in_time(recs: cs.ContextStore) -> None:
    at = T0 + timedelta(days=20)
    uc = recs.get_user_context("u7", as_of=at)
    before = _history(recs, "u7", at)
    assert before != _history(recs, "u7")  # u7 rates more items later: those are not seen yet at as_of
    assert not {i.entity_id for i in uc.similar} & before
    assert any(f"{len(before)} seen items excluded" in n for n in uc.notes), uc.notes
