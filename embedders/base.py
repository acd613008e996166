"""The embedder protocol, plus the helpers every backend shares (normalisation, an LRU cache)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = ["Embedder", "CachedEmbedder", "l2_normalize", "check_texts"]


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into L2-normalised float32 vectors of shape ``(len(texts), dim)``."""

    name: str
    dim: int

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Row-wise unit norm, in place when possible; zero rows stay zero (no NaN)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    np.maximum(norms, 1e-12, out=norms)
    x /= norms
    return x


def check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        # A bare string is a common slip; embedding its characters one by one is never meant.
        raise TypeError("embed() takes a sequence of strings, not a single string")
    out = list(texts)
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise TypeError(f"texts[{i}] must be a str, got {type(t).__name__}")
    return out


class CachedEmbedder:
    """Wraps an embedder with a bounded LRU cache keyed by text.

    Meant for query texts (agents repeat the same questions); large batches (backfills)
    bypass the cache so they do not evict the hot queries.
    """

    def __init__(self, inner: Embedder, maxsize: int = 4096, batch_bypass: int = 64) -> None:
        self.inner = inner
        self.name = inner.name
        self.dim = inner.dim
        self.maxsize = maxsize
        self.batch_bypass = batch_bypass
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        texts = check_texts(texts)
        if len(texts) > self.batch_bypass:
            return self.inner.embed(texts)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        missing: list[int] = []
        with self._lock:
            for i, t in enumerate(texts):
                v = self._cache.get(t)
                if v is None:
                    missing.append(i)
                else:
                    self._cache.move_to_end(t)
                    out[i] = v
            self.hits += len(texts) - len(missing)
            self.misses += len(missing)
        if missing:
            # Dedupe so a batch repeating one text embeds it once.
            uniq = list(dict.fromkeys(texts[i] for i in missing))
            vecs = self.inner.embed(uniq)
            by_text = {t: vecs[j] for j, t in enumerate(uniq)}
            with self._lock:
                for t, v in by_text.items():
                    v = v.copy()
                    v.flags.writeable = False  # cached rows are shared; nobody may mutate them
                    self._cache[t] = v
                    self._cache.move_to_end(t)
                while len(self._cache) > self.maxsize:
                    self._cache.popitem(last=False)
            for i in missing:
                out[i] = by_text[texts[i]]
        return out

    def cache_info(self) -> dict[str, int]:
        with self._lock:
            return {"hits": self.hits, "misses": self.misses, "size": len(self._cache), "maxsize": self.maxsize}

    def clear(self) -> None:
        with self._lock:
            self._cache.clear()

    def __repr__(self) -> str:
        return f"CachedEmbedder({self.inner!r}, maxsize={self.maxsize})"
