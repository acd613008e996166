"""A ratings repo for the user-aware retrieval, budget and replay tests and evals/bench_context_replay.py.

Users rate items; every rating event carries the rated item's vector (hash-``dim`` of its title), so
a lifetime ``mean`` aggregate is the user's interest vector (the embedding-mean feature whose as_of
replay must stay fast). Items have a title, a genre and a popularity feature (``item_stats``, a
batch view) to re-rank by. Item ``k`` is released at ``release(k)``: items released late exist
only in later replays.
"""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

import context_store as cs
from tests.support.repo import make_repo

__all__ = ["DEFINITIONS", "T0", "build_recs_repo", "item_title", "release"]

T0 = datetime(2024, 1, 1, tzinfo=UTC)
_WORDS = ["red", "blue", "green", "running", "shoes", "coffee", "tea", "speaker", "headphones", "wireless", "jazz"]

DEFINITIONS = """
import context_store as cs

user = cs.Entity("user", join_keys=["user_id"])
item = cs.Entity("item", join_keys=["item_id"])

ratings_log = cs.FileSource("data/ratings.parquet", timestamp_field="ts")
ratings = cs.StreamSource(
    "ratings",
    schema=[
        cs.Field("user_id", cs.String), cs.Field("item_id", cs.String), cs.Field("rating", cs.Float64),
        cs.Field("item_vec", cs.Embedding({dim})), cs.Field("ts", cs.Timestamp),
    ],
    timestamp_field="ts",
    batch_source=ratings_log,
)
user_interest = cs.FeatureView(
    "user_interest", [user], ratings,
    aggregations=[cs.Aggregate("item_vec", "mean", cs.Lifetime(), name="interest"),
                  cs.Aggregate("rating", "count", cs.Lifetime(), name="n_ratings")],
)
catalog = cs.FileSource("data/items.parquet", timestamp_field="ts")
items = cs.EmbeddingView(
    "items", [item], catalog, text="title", embedder="hash-{dim}", attributes=["title", "genre"],
)
stats_src = cs.FileSource("data/item_stats.parquet", timestamp_field="ts")
item_stats = cs.FeatureView(
    "item_stats", [item], stats_src,
    features=[cs.Field("popularity", cs.Float64), cs.Field("trend", cs.Float64)], ttl="3650d",
)
user_features = cs.FeatureService("user_features", [user_interest])
recs = cs.ContextService(
    "recs", entity=user, features=user_features, recent_events=(ratings, 5),
    similar={similar}, interest="user_interest.interest",
)
"""


def release(k: int, n_items: int) -> datetime:
    """Item ``k``'s first appearance: the first half at T0, the rest one day apart after it."""
    return T0 if k < n_items // 2 else T0 + timedelta(days=1 + (k - n_items // 2))


def item_title(k: int) -> str:
    rng = random.Random(k)
    return " ".join(rng.sample(_WORDS, 3)) + f" {k}"


def build_recs_repo(
    root: Path,
    *,
    users: int = 20,
    events_per_user: int = 30,
    n_items: int = 60,
    dim: int = 64,
    similar: str = "cs.Similar(items, k=10)",
) -> Path:
    """Ratings spread over 60 days after T0, each rating at or after its item's release."""
    from context_store.embedders.registry import get_embedder

    titles = [item_title(k) for k in range(n_items)]
    vecs = np.asarray(get_embedder(f"hash-{dim}").embed(titles), dtype=np.float32)
    rng = np.random.default_rng(11)
    ts_type = pa.timestamp("us", tz="UTC")
    n = users * events_per_user
    u = np.repeat(np.arange(users), events_per_user)
    it = rng.integers(0, n_items, n)
    rel_us = np.array([int(release(k, n_items).timestamp() * 1e6) for k in range(n_items)])
    span = 60 * 86400 * 10**6
    t0_us = int(T0.timestamp() * 1e6)
    ts = np.maximum(t0_us + rng.integers(0, span, n), rel_us[it] + rng.integers(1, 3600 * 10**6, n))
    ratings = pa.table(
        {
            "user_id": pa.array([f"u{x}" for x in u.tolist()]),
            "item_id": pa.array([f"i{x}" for x in it.tolist()]),
            "rating": pa.array(rng.integers(1, 6, n).astype(np.float64)),
            "item_vec": pa.FixedSizeListArray.from_arrays(pa.array(vecs[it].ravel(), pa.float32()), dim),
            "ts": pa.array(ts, pa.int64()).cast(ts_type),
        }
    )
    items = pa.table(
        {
            "item_id": [f"i{k}" for k in range(n_items)],
            "title": titles,
            "genre": [["drama", "comedy", "action"][k % 3] for k in range(n_items)],
            "ts": pa.array([release(k, n_items) for k in range(n_items)], type=ts_type),
        }
    )
    stats = pa.table(
        {
            "item_id": [f"i{k}" for k in range(n_items)],
            "popularity": [float((k * 37) % n_items) for k in range(n_items)],
            "trend": [float((k * 11) % 7) for k in range(n_items)],
            "ts": pa.array([T0] * n_items, type=ts_type),
        }
    )
    defs = DEFINITIONS.replace("{dim}", str(dim)).replace("{similar}", similar)
    data: dict[str, Any] = {"ratings.parquet": ratings, "items.parquet": items, "item_stats.parquet": stats}
    return make_repo(root, defs, data)


def open_built(root: Path) -> cs.ContextStore:
    """A ContextStore on ``root`` (embedded SQLite, a fresh workspace), applied, backfilled, materialized."""
    store = cs.ContextStore(root, workspace="w" + uuid.uuid4().hex[:10], online_store="sqlite")
    store.apply()
    store.backfill()
    store.materialize()
    return store
