"""A tiny deterministic embedder for tests: hashed word and character-trigram features.

No model, no randomness across processes (blake2b, not ``hash()``), so the same text gives
the same vector everywhere. Texts sharing words/trigrams get a higher cosine, which is
enough for tests of search plumbing; it carries no semantics.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

import numpy as np

from .base import check_texts, l2_normalize

__all__ = ["HashEmbedder"]

_WORD = re.compile(r"\w+", re.UNICODE)


class HashEmbedder:
    def __init__(self, dim: int = 64) -> None:
        if not isinstance(dim, int) or not 2 <= dim <= 4096:
            raise ValueError(f"hash embedder dim must be an int in 2..4096, got {dim!r}")
        self.dim = dim
        self.name = f"hash-{dim}"

    def _features(self, text: str) -> list[tuple[str, float]]:
        words = _WORD.findall(text.lower())
        feats: list[tuple[str, float]] = [("w:" + w, 1.0) for w in words]
        for w in words:
            padded = f"#{w}#"
            feats.extend(("c:" + padded[i : i + 3], 0.5) for i in range(len(padded) - 2))
        return feats

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        texts = check_texts(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            feats = self._features(text)
            if not feats:
                # Empty text: a fixed unit vector, so every output row has unit norm.
                out[row, 0] = 1.0
                continue
            for feat, weight in feats:
                h = hashlib.blake2b(feat.encode(), digest_size=8).digest()
                idx = int.from_bytes(h[:4], "little") % self.dim
                sign = 1.0 if h[4] & 1 else -1.0
                out[row, idx] += sign * weight
            if not out[row].any():  # features cancelled out exactly
                out[row, 0] = 1.0
        return l2_normalize(out)

    def __repr__(self) -> str:
        return f"HashEmbedder(dim={self.dim})"
