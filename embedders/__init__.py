"""Embedding backends behind one small protocol: ``get_embedder(name).embed(texts)``."""

from .base import CachedEmbedder, Embedder, l2_normalize
from .hashing import HashEmbedder
from .registry import embedder_dim, get_embedder, known_embedders, register_embedder

__all__ = [
    "Embedder",
    "CachedEmbedder",
    "HashEmbedder",
    "get_embedder",
    "register_embedder",
    "known_embedders",
    "embedder_dim",
    "l2_normalize",
]
