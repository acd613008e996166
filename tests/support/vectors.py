"""Helpers for the embeddings/similarity/knowledge tests: a small repo, a VectorService on it and the
VectorIndexer that builds its indexes (sharing its collections, as in a ContextStore).

Tests under tests/serving get ``build`` as a fixture that closes what it built (tests/serving/conftest.py);
the snapshot tests call it from a module helper, so the plain function stays here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from context_store.compute.vectors import VectorIndexer
from context_store.config import load_config
from context_store.definitions import EmbeddingView, Entity, FileSource, Knowledge
from context_store.registry.repo import RepoDefinitions
from context_store.serving.similar import VectorService
from context_store.stores.vector import CollectionOptions, VectorCollections
from tests.support.repo import make_repo

TITLES = [
    "red running shoes",
    "blue running shoes",
    "chocolate cake recipe",
    "vanilla cake recipe",
    "laptop computer",
    "gaming laptop",
    "garden hose",
    "trail running shoes",
]


def items_table(titles: list[str] | None = None, n: int | None = None) -> pa.Table:
    if titles is None:
        titles = list(TITLES) if n is None else [f"{TITLES[i % len(TITLES)]} model {i}" for i in range(n)]
    m = len(titles)
    return pa.table(
        {
            "item_id": [f"i{i}" for i in range(m)],
            "title": titles,
            "category": [["shoes", "food", "tech", "home"][i % 4] for i in range(m)],
            "price": [float(i % 100) for i in range(m)],
            "ts": pa.array([1_700_000_000_000_000 + i for i in range(m)], pa.timestamp("us", tz="UTC")),
        }
    )


def build(
    root: Path,
    items: pa.Table | None = None,
    *,
    embedder: str = "hash-64",
    index: str = "auto",
    docs: dict[str, str] | None = None,
    chunk_size: int = 200,
    chunk_overlap: int = 20,
    kb_source: str = "docs/*",
    kb_text: str | None = None,
    backfill: bool = True,
    **options: Any,
) -> VectorService:
    """A repo under ``root`` with an ``items`` embedding view and a ``help`` knowledge base.

    ``backfill``: build the indexes that were never built (a deployment's first backfill); a
    repo whose indexes exist (a restarted server) is opened as it is."""
    make_repo(root, "", {"items.parquet": items if items is not None else items_table()})
    for rel, text in (docs or {"docs/readme.md": "# Readme\n\nNothing here.\n"}).items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    item = Entity("item", join_keys=["item_id"])
    src = FileSource("data/items.parquet", timestamp_field="ts")
    view = EmbeddingView(
        "items", [item], src, text="title", embedder=embedder, attributes=["category", "price"], index=index
    )
    kb = Knowledge(
        "help", kb_source, text=kb_text, chunk_size=chunk_size, chunk_overlap=chunk_overlap, embedder=embedder
    )
    defs = RepoDefinitions(
        entities={"item": item}, sources={src.name: src}, embedding_views={"items": view}, knowledge={"help": kb}
    )
    vs = VectorService(VectorCollections(defs, load_config(root), CollectionOptions(**options)))
    if backfill:
        ix = indexer(vs)
        colls = vs.collections
        if not colls.view(view).exists:
            ix.backfill()
        if not colls.knowledge(kb).exists:
            ix.index_knowledge()
    return vs


def indexer(vs: VectorService) -> VectorIndexer:
    """The writer of ``vs``'s collections (what ``ContextStore.indexer`` is to ``ContextStore.vectors``)."""
    return VectorIndexer(vs.collections)


class VectorServiceFactory(Protocol):
    """The ``build`` fixture: ``build`` below, each service closed at teardown."""

    def __call__(self, root: Path, items: pa.Table | None = None, **kwargs: Any) -> VectorService: ...


def clustered(n: int, dim: int, seed: int = 0, clusters: int = 100, spread: float = 1.0) -> np.ndarray:
    """Unit vectors around random centres: closer to real embeddings than uniform noise."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    x = centres[rng.integers(0, clusters, n)] + rng.normal(size=(n, dim)) * spread
    x = x.astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_topk(x: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    scores = q @ x.T
    return np.argsort(-scores, axis=-1, kind="stable")[..., :k]
