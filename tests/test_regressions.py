"""Regressions found while integrating the areas."""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

import context_store as cs
from tests.support.repo import make_repo


def test_count_only_string_column_materializes_and_matches_training(tmp_path: Path) -> None:
    # A string column read only by `count` once crashed materialize (no raw bytes for it);
    # count counts rows, so the event with a null user_id counts too.
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    ts = pa.array([now - dt.timedelta(minutes=m) for m in (5, 10, 20, 30)], pa.timestamp("us", tz="UTC"))
    table = pa.table({"user_id": ["u1", "u2", None, "u3"], "item_id": ["a", "b", "a", "a"], "ts": ts})
    repo = make_repo(
        tmp_path / "r",
        """
        import context_store as cs
        item = cs.Entity("item", join_keys=["item_id"])
        src = cs.FileSource("data/v.parquet", timestamp_field="ts")
        pop = cs.FeatureView("pop", [item], src, aggregations=[
            cs.Aggregate("user_id", "count", "1d"), cs.Aggregate("user_id", "count", "25m")])
        svc = cs.FeatureService("s", [pop])
        """,
        {"v.parquet": table},
    )
    store = cs.ContextStore(repo)
    store.apply()
    store.backfill()
    store.materialize()
    online = store.get_features("s", {"item_id": "a"}, request_time=now).feature_values
    assert online == {"pop.user_id_count_1d": 3, "pop.user_id_count_25m": 2}
    offline = store.get_training_data(pd.DataFrame({"item_id": ["a"], "timestamp": [now]}), "s")
    assert offline["pop__user_id_count_1d"].tolist() == [3]
    assert offline["pop__user_id_count_25m"].tolist() == [2]
    store.close()


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_pushed_items_reach_the_embedding_view(tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> None:
    # An EmbeddingView over a StreamSource: a push must update the similarity index.
    online = request.getfixturevalue("redis_url") if backend == "redis" else None
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    items = pa.table(
        {
            "item_id": ["i1", "i2"],
            "title": ["red running shoes", "blue denim jacket"],
            "ts": pa.array([now - dt.timedelta(days=1)] * 2, pa.timestamp("us", tz="UTC")),
        }
    )
    repo = make_repo(
        tmp_path / "r",
        """
        import context_store as cs
        item = cs.Entity("item", join_keys=["item_id"])
        items = cs.StreamSource("items", schema=[cs.Field("item_id", cs.String), cs.Field("title", cs.String),
                                cs.Field("ts", cs.Timestamp)], timestamp_field="ts",
                                batch_source=cs.FileSource("data/items.parquet", timestamp_field="ts"))
        emb = cs.EmbeddingView("item_emb", [item], items, text="title", embedder="hash-64")
        """,
        {"items.parquet": items},
    )
    store = cs.ContextStore(repo, workspace=f"t{uuid.uuid4().hex[:10]}", online_store=online)
    try:
        store.apply()
        store.backfill()
        assert {i.entity_id for i in store.find_similar("item_emb", text="red running shoes", k=5).items} == {
            "i1",
            "i2",
        }
        store.push("items", [{"item_id": "i3", "title": "green garden hose", "ts": now}])
        top = store.find_similar("item_emb", text="green garden hose", k=1).items
        assert [i.entity_id for i in top] == ["i3"]
    finally:
        store.close()


def test_server_warms_vector_indexes_and_readyz_reports_them(tmp_path: Path) -> None:
    # /readyz is 200 only once the FAISS indexes (loaded in the background at start-up) are ready.
    import httpx

    from context_store.server.app import create_app
    from tests.support.server import running_server

    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    items = pa.table(
        {
            "item_id": [f"i{i}" for i in range(50)],
            "title": [f"item number {i}" for i in range(50)],
            "ts": pa.array([now - dt.timedelta(days=1)] * 50, pa.timestamp("us", tz="UTC")),
        }
    )
    repo = make_repo(
        tmp_path / "r",
        """
        import context_store as cs
        item = cs.Entity("item", join_keys=["item_id"])
        items = cs.FileSource("data/items.parquet", timestamp_field="ts")
        emb = cs.EmbeddingView("item_emb", [item], items, text="title", embedder="hash-64")
        """,
        {"items.parquet": items},
    )
    store = cs.ContextStore(repo)
    store.apply()
    store.backfill()
    store.close()
    app = create_app(repo, auth=False)
    with running_server(app) as url:
        store = app.state.cs.resolver(None)
        assert store.opened_vectors is not None  # warm-up started at start-up, before any similarity request
        assert store.vectors.wait_ready(timeout=60)
        r = httpx.get(url + "/readyz", timeout=30)
        assert r.status_code == 200, r.text
        assert r.json()["ready"] is True
        found = httpx.post(url + "/v1/similar", json={"view": "item_emb", "entity_id": "i1", "k": 3}, timeout=30)
        assert found.status_code == 200, found.text
