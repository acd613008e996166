"""Probe queries and recall measurement for tuning ANN search breadth: pure numpy, no index state."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["probe_set", "recall_at_k"]


def probe_set(vecs: np.ndarray, dim: int, samples: int, k: int) -> tuple[np.ndarray, np.ndarray, list[list[int]]]:
    """Probe queries, the stored position each one came from (-1: none) and their exact top ``k + 1``."""
    n = len(vecs)
    rng = np.random.default_rng(0)
    m = max(1, min(samples, n) // 3)
    pick = rng.choice(n, m, replace=False)
    # A third of the probes are stored vectors (find_similar by entity); a third are means of
    # two stored vectors (like user-interest vectors); a third are stored vectors plus noise of
    # the same norm (cosine ~0.7 to their source, like a text query against item titles).
    mix = vecs[rng.choice(n, m)] + vecs[rng.choice(n, m)]
    noisy = vecs[rng.choice(n, m)] + rng.normal(size=(m, dim)).astype(np.float32) / math.sqrt(dim)
    probes = np.concatenate([vecs[pick], mix, noisy])
    probes /= np.maximum(np.linalg.norm(probes, axis=1, keepdims=True), 1e-12)
    q = np.ascontiguousarray(probes, dtype=np.float32)
    pick = np.concatenate([pick, np.full(2 * m, -1)])  # -1: no self to exclude
    truth: list[list[int]] = []
    for s in range(0, len(q), 25):
        scores = q[s : s + 25] @ vecs.T
        top = np.argsort(-scores, axis=1)[:, : k + 1]
        truth.extend(t.tolist() for t in top)
    return q, pick, truth


def recall_at_k(found: np.ndarray, truth: list[list[int]], pick: np.ndarray, k: int) -> float:
    """recall@k of an approximate search ``found`` against the exact ``truth``."""
    hits = 0
    for f, t, p in zip(found, truth, pick.tolist()):
        # the query's own vector is excluded on both sides
        want = [i for i in t if i != p][:k]
        got = [i for i in f.tolist() if i != p][:k]
        hits += len(set(want) & set(got))
    return hits / (k * len(truth))
