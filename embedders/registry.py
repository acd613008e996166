"""``get_embedder(name)``: one shared, cached instance per embedder name.

Names: ``all-MiniLM-L6-v2`` (sentence-transformers, the reference), ``all-MiniLM-L6-v2-int8``
(ONNX int8), ``hash-<dim>`` (deterministic test embedder, e.g. ``hash-64``, ``hash-384``).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable

from .base import CachedEmbedder, Embedder
from .hashing import HashEmbedder

__all__ = ["get_embedder", "register_embedder", "known_embedders", "embedder_dim"]

_lock = threading.Lock()
_instances: dict[str, CachedEmbedder] = {}
_factories: dict[str, Callable[[], Embedder]] = {}
_HASH = re.compile(r"^hash-(\d{1,4})$")
_DIMS = {"all-MiniLM-L6-v2": 384, "all-MiniLM-L6-v2-int8": 384}


def _builtin(name: str) -> Embedder | None:
    if name == "all-MiniLM-L6-v2":
        from .minilm import SentenceTransformerEmbedder

        return SentenceTransformerEmbedder(name)
    if name == "all-MiniLM-L6-v2-int8":
        from .minilm import OnnxEmbedder

        return OnnxEmbedder(name)
    m = _HASH.match(name)
    if m:
        return HashEmbedder(int(m.group(1)))
    return None


def register_embedder(name: str, factory: Callable[[], Embedder]) -> None:
    """Make a custom embedder available by name (e.g. from a feature repo)."""
    with _lock:
        _factories[name] = factory
        _instances.pop(name, None)


def known_embedders() -> list[str]:
    return sorted({"all-MiniLM-L6-v2", "all-MiniLM-L6-v2-int8", "hash-<dim>", *_factories})


def embedder_dim(name: str) -> int | None:
    """The dimension of a named embedder without loading a model (None if unknown)."""
    if name in _DIMS:
        return _DIMS[name]
    m = _HASH.match(name)
    if m:
        return int(m.group(1))
    inst = _instances.get(name)
    return inst.dim if inst else None


def get_embedder(name: str) -> CachedEmbedder:
    """The shared instance for ``name`` (loaded once per process, with a query LRU cache)."""
    if not isinstance(name, str) or not name:
        raise ValueError("embedder name must be a non-empty string")
    inst = _instances.get(name)
    if inst is not None:
        return inst
    with _lock:
        inst = _instances.get(name)
        if inst is None:
            factory = _factories.get(name)
            emb = factory() if factory else _builtin(name)
            if emb is None:
                raise KeyError(f"unknown embedder {name!r}; known: {', '.join(known_embedders())}")
            inst = emb if isinstance(emb, CachedEmbedder) else CachedEmbedder(emb)
            _instances[name] = inst
    return inst
