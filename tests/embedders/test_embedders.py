"""Embedders: the protocol, the deterministic hash embedder, the LRU cache and the real MiniLM."""

from __future__ import annotations

import socket

import numpy as np
import pytest

from context_store.embedders import (
    CachedEmbedder,
    Embedder,
    HashEmbedder,
    embedder_dim,
    get_embedder,
    register_embedder,
)


def test_hash_embedder_is_deterministic_unit_norm_and_lexical() -> None:
    e = HashEmbedder(64)
    texts = ["red running shoes", "blue running shoes", "chocolate cake", "", "red running shoes"]
    v = e.embed(texts)
    assert v.shape == (5, 64) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(v[0], v[4])
    np.testing.assert_array_equal(v, HashEmbedder(64).embed(texts))  # a fresh instance agrees
    assert v[0] @ v[1] > v[0] @ v[2]  # shared words give a higher cosine
    assert isinstance(e, Embedder)


def test_hash_embedder_rejects_bad_input() -> None:
    e = HashEmbedder(8)
    with pytest.raises(TypeError):
        e.embed("a single string")
    with pytest.raises(TypeError):
        e.embed(["ok", 3])  # type: ignore[list-item]
    with pytest.raises(ValueError):
        HashEmbedder(1)
    assert e.embed([]).shape == (0, 8)


def test_registry_shares_instances_and_names_unknown() -> None:
    a, b = get_embedder("hash-32"), get_embedder("hash-32")
    assert a is b and a.dim == 32 and a.name == "hash-32"
    assert embedder_dim("hash-384") == 384 and embedder_dim("all-MiniLM-L6-v2") == 384
    with pytest.raises(KeyError, match="unknown embedder 'nope'"):
        get_embedder("nope")
    register_embedder("custom-test-16", lambda: HashEmbedder(16))
    assert get_embedder("custom-test-16").dim == 16


class _Counting:
    def __init__(self) -> None:
        self.inner = HashEmbedder(16)
        self.name, self.dim = "count", 16
        self.calls: list[list[str]] = []

    def embed(self, texts):  # type: ignore[no-untyped-def]
        self.calls.append(list(texts))
        return self.inner.embed(texts)


def test_lru_cache_hits_evicts_and_matches_inner() -> None:
    inner = _Counting()
    c = CachedEmbedder(inner, maxsize=3, batch_bypass=10)
    first = c.embed(["a", "b", "a"])
    assert inner.calls == [["a", "b"]]  # deduplicated
    np.testing.assert_array_equal(first, inner.inner.embed(["a", "b", "a"]))
    c.embed(["a"])
    assert len(inner.calls) == 1 and c.cache_info()["hits"] == 1
    c.embed(["c", "d"])  # evicts "b" (least recently used), keeps "a"
    assert c.cache_info()["size"] == 3
    c.embed(["b"])
    assert inner.calls[-1] == ["b"]
    c.embed([str(i) for i in range(20)])  # a big batch bypasses the cache
    assert c.cache_info()["size"] == 3
    out = c.embed(["a"])
    out[0, 0] = 42.0  # callers get copies: the cache cannot be corrupted
    assert c.embed(["a"])[0, 0] != 42.0


@pytest.mark.model
def test_minilm_loads_offline_and_behaves(monkeypatch: pytest.MonkeyPatch) -> None:
    from context_store.embedders.minilm import SentenceTransformerEmbedder, minilm_dir

    def no_network(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("the model tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    assert (minilm_dir() / "model.safetensors").exists()
    e = SentenceTransformerEmbedder()
    assert e.dim == 384 and e.threads >= 1
    v = e.embed(
        [
            "A man is eating food.",
            "A man is eating a piece of bread.",
            "The stock market fell sharply today.",
            "How do I get a refund for my order?",
            "I want my money back for this purchase.",
            "The weather is sunny in Paris.",
        ]
    )
    assert v.shape == (6, 384) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, rtol=1e-5)
    sim = v @ v.T
    assert sim[0, 1] > 0.6 and sim[0, 1] > sim[0, 2] + 0.3  # paraphrase vs unrelated
    assert sim[3, 4] > sim[3, 5] + 0.2 and sim[3, 4] > sim[3, 2]
    # the same text twice gives the same vector (inference is deterministic)
    np.testing.assert_allclose(e.embed(["A man is eating food."])[0], v[0], atol=1e-5)


@pytest.mark.model
def test_onnx_int8_matches_torch_model() -> None:
    from context_store.embedders.minilm import OnnxEmbedder

    torch_model = get_embedder("all-MiniLM-L6-v2")
    onnx = OnnxEmbedder()
    texts = ["A man is eating food.", "The stock market fell sharply today.", "x " * 400]
    a, b = torch_model.embed(texts), onnx.embed(texts)
    np.testing.assert_allclose(np.linalg.norm(b, axis=1), 1.0, rtol=1e-5)
    assert (np.sum(a * b, axis=1) > 0.99).all()  # int8 weights: close, not identical
