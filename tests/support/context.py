"""A small feature repo with a context service, for the get_user_context and MCP tests and the benchmark.

Users with transaction history (stream source with a batch history), a profile with an interest
vector (the hash-64 embedding of a phrase), items with hash-64 embeddings, and one help document.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa

from tests.support.repo import make_repo

__all__ = ["DEFINITIONS", "ITEMS", "build_context_repo", "interest_of", "txn_rows"]

DEFINITIONS = """
import context_store as cs

user = cs.Entity("user", join_keys=["user_id"])
item = cs.Entity("item", join_keys=["item_id"])

txn_history = cs.FileSource("data/transactions.parquet", timestamp_field="ts")
transactions = cs.StreamSource(
    "transactions",
    schema=[
        cs.Field("user_id", cs.String), cs.Field("item_id", cs.String), cs.Field("amount", cs.Float64),
        cs.Field("note", cs.String), cs.Field("ts", cs.Timestamp),
    ],
    timestamp_field="ts",
    batch_source=txn_history,
)
txn_stats = cs.FeatureView(
    "txn_stats", [user], transactions,
    aggregations=[
        cs.Aggregate("amount", "sum", "1d"),
        cs.Aggregate("amount", "count", "1d"),
        cs.Aggregate("item_id", "last_distinct_n", "7d", n=3),
    ],
    description="Spending of a user",
)
profiles = cs.FileSource("data/profiles.parquet", timestamp_field="ts")
user_profile = cs.FeatureView(
    "user_profile", [user], profiles,
    features=[cs.Field("segment", cs.String), cs.Field("interest", cs.Embedding(64))],
    ttl="3650d",
)
items = cs.FileSource("data/items.parquet", timestamp_field="ts")
item_embeddings = cs.EmbeddingView(
    "item_embeddings", [item], items, text="title", embedder="hash-64", attributes=["title", "category"],
)
help_articles = cs.Knowledge("help_articles", source="docs/*.md", chunk_size=200, chunk_overlap=20, embedder="hash-64")
user_features = cs.FeatureService("user_features", [txn_stats, user_profile], description="Features of a user")
user_context = cs.ContextService(
    "user_context", entity=user, features=user_features, recent_events=(transactions, 5),
    similar=cs.Similar(item_embeddings, 3, exclude_seen=False), interest="user_profile.interest",
    knowledge=(help_articles, 2),
    description="What an agent should know about a user",
)
# No interest feature: similar items come from the items of the recent events.
user_context_events = cs.ContextService(
    "user_context_events", entity=user, features=user_features, recent_events=(transactions, 5),
    similar=(item_embeddings, 2),
)
"""

ITEMS = [
    ("i1", "red running shoes", "shoes"),
    ("i2", "blue running shoes", "shoes"),
    ("i3", "espresso coffee beans", "food"),
    ("i4", "green tea leaves", "food"),
    ("i5", "wireless noise cancelling headphones", "audio"),
    ("i6", "bluetooth speaker", "audio"),
]
INTERESTS = {"u1": "red running shoes", "u2": "espresso coffee beans", "u3": "wireless noise cancelling headphones"}

HELP = """# Refunds

Refunds are issued to the original payment method within 5 business days after we receive the item.

# Shipping

Standard shipping takes 3 to 7 days. Express shipping takes 1 to 2 days and costs extra.
"""


def interest_of(user: str) -> list[float]:
    from context_store.embedders.registry import get_embedder

    return [float(x) for x in get_embedder("hash-64").embed([INTERESTS[user]])[0]]


def txn_rows(user: str, start: datetime, n: int, step: timedelta, amount0: float = 1.0) -> list[dict[str, Any]]:
    return [
        {
            "user_id": user,
            "item_id": f"i{1 + i % 6}",
            "amount": amount0 + i,
            "note": f"order {i}",
            "ts": start + i * step,
        }
        for i in range(n)
    ]


def build_context_repo(root: Path, config: dict[str, Any] | None = None, history_end: datetime | None = None) -> Path:
    """Write the repo. Each user has 20 transactions 2h apart, the last 9h before ``history_end`` (default: now)."""
    end = history_end or datetime.now(UTC).replace(microsecond=0)
    t0 = end - timedelta(hours=47)  # events at ages 47h, 45h, ..., 9h: none on a 1d window edge
    hist: list[dict[str, Any]] = []
    for u in INTERESTS:
        hist += txn_rows(u, t0, 20, timedelta(hours=2))
    ts_type = pa.timestamp("us", tz="UTC")
    txn = pa.Table.from_pylist(
        hist,
        schema=pa.schema(
            [
                ("user_id", pa.string()),
                ("item_id", pa.string()),
                ("amount", pa.float64()),
                ("note", pa.string()),
                ("ts", ts_type),
            ]
        ),
    )
    profiles = pa.table(
        {
            "user_id": list(INTERESTS),
            "segment": ["runner", "coffee lover", "audiophile"],
            "interest": pa.array([interest_of(u) for u in INTERESTS], type=pa.list_(pa.float32(), 64)),
            "ts": pa.array([t0] * len(INTERESTS), type=ts_type),
        }
    )
    items = pa.table(
        {
            "item_id": [i for i, _, _ in ITEMS],
            "title": [t for _, t, _ in ITEMS],
            "category": [c for _, _, c in ITEMS],
            "ts": pa.array([t0] * len(ITEMS), type=ts_type),
        }
    )
    make_repo(
        root, DEFINITIONS, {"transactions.parquet": txn, "profiles.parquet": profiles, "items.parquet": items}, config
    )
    (root / "docs").mkdir(exist_ok=True)
    (root / "docs" / "help.md").write_text(HELP)
    return root
