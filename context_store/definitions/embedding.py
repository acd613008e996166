"""Embedding views (a vector per entity) and knowledge collections (chunked documents for RAG)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from .base import Definition
from .entity import Entity
from .slo import freshness_slo, freshness_spec
from .sources import FileSource, StreamSource

__all__ = ["EmbeddingView", "Knowledge", "DEFAULT_EMBEDDER"]

DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"


class EmbeddingView(Definition):
    """An embedding per entity from a text column: ``cs.EmbeddingView("item_embeddings", [item], items, text="title")``.

    ``attributes`` are source columns stored beside the vector, returned by ``find_similar``
    and usable in its ``filter``.
    """

    kind = "embedding_view"

    def __init__(
        self,
        name: str,
        entities: list[Entity],
        source: FileSource | StreamSource,
        text: str,
        embedder: str = DEFAULT_EMBEDDER,
        attributes: list[str] | None = None,
        index: str = "auto",
        description: str | None = None,
        tags: dict[str, str] | None = None,
        owner: str | None = None,
        expected_freshness: str | timedelta | None = None,
    ) -> None:
        self._init_common(name, description, tags, owner)
        self.expected_freshness = freshness_slo(self, expected_freshness)
        if not isinstance(entities, (list, tuple)) or len(entities) != 1 or not isinstance(entities[0], Entity):
            self.fail("entities must be a list of exactly one cs.Entity")
        self.entities = tuple(entities)
        if len(self.entities[0].join_keys) != 1:
            self.fail("the entity of an embedding view must have a single join key")
        if not isinstance(source, (FileSource, StreamSource)):
            self.fail("source must be a cs.FileSource or cs.StreamSource")
        self.source = source
        if not isinstance(text, str) or not text:
            self.fail("text must be the name of a text column")
        self.text = text
        if not isinstance(embedder, str) or not embedder:
            self.fail("embedder must be an embedder name such as 'all-MiniLM-L6-v2'")
        self.embedder = embedder
        if attributes is not None and (
            not isinstance(attributes, (list, tuple)) or not all(isinstance(a, str) for a in attributes)
        ):
            self.fail("attributes must be a list of column names")
        self.attributes = tuple(attributes or ())
        if index not in ("auto", "flat", "hnsw", "ivf"):
            self.fail(f"index must be auto, flat, hnsw or ivf, got {index!r}")
        self.index = index

    @property
    def join_key(self) -> str:
        return self.entities[0].join_keys[0]

    def spec(self) -> dict[str, Any]:
        return {
            **super().spec(),
            "entities": [e.name for e in self.entities],
            "source": self.source.name,
            "text": self.text,
            "embedder": self.embedder,
            "attributes": list(self.attributes),
            "index": self.index,
            **freshness_spec(self.expected_freshness),
        }


class Knowledge(Definition):
    """Documents (Markdown, text, JSONL; a path or glob relative to the repo) chunked for RAG."""

    kind = "knowledge"

    def __init__(
        self,
        name: str,
        source: str,
        text: str | None = None,
        chunk_size: int = 800,
        chunk_overlap: int = 100,
        embedder: str = DEFAULT_EMBEDDER,
        description: str | None = None,
        tags: dict[str, str] | None = None,
        owner: str | None = None,
    ) -> None:
        self._init_common(name, description, tags, owner)
        if not isinstance(source, str) or not source:
            self.fail("source must be a path or glob of documents")
        self.source = source
        if text is not None and not isinstance(text, str):
            self.fail("text must be the JSONL field holding the document text")
        self.text = text or "text"
        if not isinstance(chunk_size, int) or not 50 <= chunk_size <= 20000:
            self.fail(f"chunk_size must be an int in 50..20000 (characters), got {chunk_size!r}")
        if not isinstance(chunk_overlap, int) or not 0 <= chunk_overlap < chunk_size:
            self.fail(f"chunk_overlap must be an int in 0..chunk_size-1, got {chunk_overlap!r}")
        self.chunk_size = chunk_size
        self.chunk_overlap = chunk_overlap
        self.embedder = embedder

    def spec(self) -> dict[str, Any]:
        return {
            **super().spec(),
            "source": self.source,
            "text": self.text,
            "chunk_size": self.chunk_size,
            "chunk_overlap": self.chunk_overlap,
            "embedder": self.embedder,
        }
