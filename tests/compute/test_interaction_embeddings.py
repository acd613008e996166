"""Interaction-trained item vectors and declared interest vectors (docs/recommendations.md):
planted clusters are learned, versions commit and prune, training is point-in-time, and an
interest vector pushed through the stream equals the one backfill computes (SQLite and Redis)."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

import context_store as cs
from context_store.compute.vectors.interactions import read_versions, train_vectors
from tests.support.repo import make_repo

US = 1_000_000
NOW = (int(time.time()) // 60) * 60 * US
A = [f"a{i}" for i in range(10)]
B = [f"b{i}" for i in range(10)]


def _interactions(rng: random.Random, users: int, t0: int, t1: int, cross: bool = False) -> pa.Table:
    """Each user consumes items of one cluster (A or B); ``cross``: of both (noise that erases it)."""
    rows: list[tuple[str, str, float, int]] = []
    for u in range(users):
        pool = A + B if cross else (A if u % 2 == 0 else B)
        for item in rng.sample(pool, 6):
            rows.append((f"u{u}", item, float(rng.randint(1, 5)), rng.randint(t0, t1)))
    return pa.table(
        {
            "user_id": [r[0] for r in rows],
            "item_id": [r[1] for r in rows],
            "rating": pa.array([r[2] for r in rows], pa.float64()),
            "ts": pa.array([r[3] for r in rows], pa.timestamp("us", tz="UTC")),
        }
    )


def _view(method: str = "pmi_svd") -> cs.InteractionEmbeddingView:
    item = cs.Entity("item", join_keys=["item_id"])
    src = cs.FileSource("data/interactions.parquet", timestamp_field="ts")
    return cs.InteractionEmbeddingView("item_cf", [item], src, user="user_id", method=method, dim=8, min_interactions=1)


def _nearest_same_cluster(ids: list[str], vecs: np.ndarray) -> float:
    sims = vecs @ vecs.T
    np.fill_diagonal(sims, -np.inf)
    nn = sims.argmax(axis=1)
    return float(np.mean([ids[i][0] == ids[j][0] for i, j in enumerate(nn)]))


@pytest.mark.parametrize("method", ["pmi_svd", "als"])
def test_planted_clusters_are_learned(method: str) -> None:
    if method == "als":
        pytest.importorskip("implicit")
    rows = _interactions(random.Random(1), 60, NOW - 10 * 86400 * US, NOW)
    got = train_vectors(_view(method), rows, None)
    assert sorted(got.ids) == sorted(A + B)
    assert got.vectors.shape == (20, 8)
    assert np.allclose(np.linalg.norm(got.vectors, axis=1), 1.0, atol=1e-5)
    assert _nearest_same_cluster(got.ids, got.vectors) == 1.0


def test_training_is_point_in_time() -> None:
    """Interactions at or after ``end`` change nothing: the vectors equal those trained without them."""
    rng = random.Random(2)
    end = NOW - 5 * 86400 * US
    before = _interactions(rng, 60, NOW - 10 * 86400 * US, end - 1)
    after = _interactions(rng, 60, end, NOW, cross=True)
    both = pa.concat_tables([before, after])
    a = train_vectors(_view(), both, end)
    b = train_vectors(_view(), before, None)
    assert a.ids == b.ids and np.allclose(a.vectors, b.vectors, atol=1e-6)
    assert a.meta["interactions"] == before.num_rows
    c = train_vectors(_view(), both, None)  # without the end, the later noise is learned
    assert not np.allclose(c.vectors, b.vectors, atol=1e-3)


DEFS = """
import context_store as cs
user = cs.Entity("user", join_keys=["user_id"])
item = cs.Entity("item", join_keys=["item_id"])
history = cs.FileSource("data/interactions.parquet", timestamp_field="ts")
ratings = cs.StreamSource("ratings", schema=[
    cs.Field("user_id", cs.String), cs.Field("item_id", cs.String),
    cs.Field("rating", cs.Float64), cs.Field("ts", cs.Timestamp)], timestamp_field="ts",
    allowed_lateness="30d", partitions=1)
item_cf = cs.InteractionEmbeddingView("item_cf", [item], history, user="user_id", dim=8, min_interactions=1)
user_interest = cs.InterestVector("user_interest", user, ratings, item_vectors=item_cf,
    weight="rating", half_life="30d", origin="2025-01-01")
recs = cs.FeatureService("recs", [user_interest])
ctx = cs.ContextService("ctx", user, features=recs, similar=(item_cf, 5), interest="user_interest.interest")
"""


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def store(request: pytest.FixtureRequest, tmp_path: Path, workspace_name: str) -> Iterator[cs.ContextStore]:
    rows = _interactions(random.Random(3), 60, NOW - 20 * 86400 * US, NOW - 10 * 86400 * US)
    root = make_repo(tmp_path / "repo", DEFS, {"interactions.parquet": rows})
    online = request.getfixturevalue("redis_url") if request.param == "redis" else None
    s = cs.ContextStore(root, online_store=online, workspace=workspace_name)
    s.apply()
    s.backfill()
    yield s
    s.online.clear()
    s.close()


def _dt(us: int) -> datetime:
    return datetime.fromtimestamp(us / US, tz=UTC)


def test_versions_commit_and_prune(store: cs.ContextStore) -> None:
    root = str(Path(store.config.offline_path) / "vectors")
    first = read_versions(root, "item_cf")["current"]
    assert first
    hit = store.find_similar("item_cf", entity_id="a0", k=3)
    assert all(i.entity_id.startswith("a") for i in hit.items)
    assert {i.attributes["model_version"] for i in hit.items} == {first}
    store.backfill(views=["item_cf"])
    store.backfill(views=["item_cf"])
    state = read_versions(root, "item_cf")
    assert len(state["versions"]) == 2 and state["current"] != first  # current + previous, older pruned
    files = sorted(p.stem for p in (Path(root) / "cf" / "item_cf").glob("*.npz"))
    assert files == sorted(v["version"] for v in state["versions"])
    hit = store.find_similar("item_cf", entity_id="a0", k=3)
    assert {i.attributes["model_version"] for i in hit.items} == {state["current"]}
    assert all(i.entity_id.startswith("a") for i in hit.items)  # aligned versions keep the structure


def _events(rng: random.Random, user: str, pool: list[str], n: int) -> list[dict[str, Any]]:
    return [
        {
            "user_id": user,
            "item_id": rng.choice(pool),
            "rating": float(rng.randint(1, 5)),
            "ts": _dt(NOW - rng.randint(60, 5 * 86400) * US),
        }
        for _ in range(n)
    ]


def test_interest_stream_equals_backfill(store: cs.ContextStore) -> None:
    rng = random.Random(4)
    events = _events(rng, "ua", A, 6) + _events(rng, "ub", B, 5) + _events(rng, "ua", B, 1)
    events.append({"user_id": "ua", "item_id": "zzz-unknown", "rating": 5.0, "ts": _dt(NOW - 90 * US)})
    for e in events:  # one by one: the stream path, incrementally
        store.push("ratings", [e])
    at = _dt(time.time_ns() // 1000)
    online = {
        u: store.get_features("recs", {"user_id": u}).feature_values["user_interest.interest"] for u in ("ua", "ub")
    }
    # The reference: decayed, weighted mean of the item vectors (unknown items do not count).
    root = str(Path(store.config.offline_path) / "vectors")
    from context_store.compute.vectors.interactions import load_version

    ids, mat = load_version(root, "item_cf", read_versions(root, "item_cf")["current"])
    vecs = dict(zip(ids, mat))
    origin = datetime(2025, 1, 1, tzinfo=UTC).timestamp()
    for u in ("ua", "ub"):
        mine = [e for e in events if e["user_id"] == u and e["item_id"] in vecs]
        want = np.mean(
            [
                e["rating"]
                * 2 ** ((e["ts"].timestamp() - origin) / (30 * 86400))
                * vecs[e["item_id"]].astype(np.float64)
                for e in mine
            ],
            axis=0,
        )
        got = np.asarray(online[u], np.float64)
        assert np.allclose(got / np.linalg.norm(got), want / np.linalg.norm(want), atol=1e-5), u
    # Offline: backfill the interest view from the logged events; point-in-time reads agree.
    store.backfill(views=["user_interest"])
    spine = pa.table({"user_id": ["ua", "ub"], "timestamp": pa.array([at, at], pa.timestamp("us", tz="UTC"))})
    train = store.get_training_data(spine, "recs").to_pylist()
    for row, u in zip(train, ("ua", "ub")):
        off, on = np.asarray(row["user_interest__interest"], np.float64), np.asarray(online[u], np.float64)
        assert np.allclose(off / np.linalg.norm(on), on / np.linalg.norm(on), atol=1e-6), u  # summation order
    # The context service ranks with it: a B-cluster user gets B items.
    ctx = store.get_user_context("ub", "ctx")
    assert ctx.similar and all(i.entity_id.startswith("b") for i in ctx.similar)


def test_cold_start_items_get_projected_text_vectors() -> None:
    """An item with too few interactions gets its text vector mapped into the learned space."""
    rng = np.random.default_rng(5)
    rows = _interactions(random.Random(6), 60, NOW - 10 * 86400 * US, NOW)
    centre = {"a": rng.normal(size=16), "b": rng.normal(size=16)}
    text = {i: centre[i[0]] + 0.1 * rng.normal(size=16) for i in A + B}
    text["a_new"] = centre["a"] + 0.1 * rng.normal(size=16)  # never interacted with
    got = train_vectors(_view(), rows, None, text)
    assert got.meta["projected"] == 1 and got.ids[-1] == "a_new" and got.counts[-1] == 0
    sims = got.vectors[:-1] @ got.vectors[-1]
    assert got.ids[int(np.argmax(sims))].startswith("a")


CUTOFF_DEFS = """
import context_store as cs
user = cs.Entity("user", join_keys=["user_id"])
item = cs.Entity("item", join_keys=["item_id"])
ratings = cs.StreamSource("ratings", schema=[
    cs.Field("user_id", cs.String), cs.Field("item_id", cs.String),
    cs.Field("rating", cs.Float64), cs.Field("ts", cs.Timestamp)], timestamp_field="ts", min_event_time=None,
    batch_source=cs.FileSource("data/interactions.parquet", timestamp_field="ts"))
item_cf = cs.InteractionEmbeddingView("item_cf", [item], ratings, user="user_id", dim=16, min_interactions=3)
user_interest = cs.InterestVector("user_interest", user, ratings, item_vectors=item_cf,
    weight="rating", half_life="30d", origin="2025-01-01")
"""


def test_full_backfill_after_cutoff_backfills_keeps_null_item_vectors(tmp_path: Path, workspace_name: str) -> None:
    """Events whose item has no vector (fewer than ``min_interactions``) carry a null item vector; with
    ``dim >= 10`` LanceDB took the column for a vector column and a whole-table rewrite (the full
    ``backfill()``) failed with "variable length vectors", after cut-off backfills had succeeded."""
    rows = _interactions(random.Random(7), 40, NOW - 20 * 86400 * US, NOW - 86400 * US)
    rare = pa.table(
        {
            "user_id": ["u0", "u1"],
            "item_id": ["rare0", "rare1"],
            "rating": pa.array([5.0, 4.0], pa.float64()),
            "ts": pa.array([NOW - 10 * 86400 * US, NOW - 3 * 86400 * US], pa.timestamp("us", tz="UTC")),
        }
    )
    root = make_repo(tmp_path / "repo", CUTOFF_DEFS, {"interactions.parquet": pa.concat_tables([rows, rare])})
    s = cs.ContextStore(root, workspace=workspace_name)
    try:
        s.apply()
        for days in (8, 2):  # cut-off backfills, then the full one
            s.backfill(end=_dt(NOW - days * 86400 * US))
        s.backfill()
        log = s.offline.read("fv__user_interest")
        items = log.column("item_id").to_pylist()
        vecs = log.column("item_vector__").to_pylist()
        assert len(items) == rows.num_rows + 2
        assert all(v is None for i, v in zip(items, vecs) if i.startswith("rare"))  # no vector: null, kept
        assert all(v is not None and len(v) == 16 for i, v in zip(items, vecs) if not i.startswith("rare"))
    finally:
        s.close()


def test_warm_up_loads_no_model_for_a_learned_view(store: cs.ContextStore, caplog: pytest.LogCaptureFixture) -> None:
    # A learned view's "embedder" only names its method: warm-up used to try to load it as a text model,
    # logged "could not be warmed" and showed it "unavailable" in /readyz.
    with caplog.at_level("WARNING"):
        store.warm()
        store.vectors.wait_ready(60)
    ready = store.vectors.readiness()
    assert ready["state"] == "ready" and ready["error"] is None, ready
    assert not any(e.startswith("interactions:") for e in ready["embedders"]), ready
    assert "could not be warmed" not in caplog.text
    assert ready["collections"]["view:item_cf"] not in ("unbuilt", "pending")
