"""Embedding backfill with the real MiniLM: every row encoded once, in batches, on one loaded model;
a rerun over unchanged texts encodes nothing. The encoder is the real one, wrapped to count calls."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from context_store.compute.vectors.views import EMBED_BATCH
from context_store.embedders import Embedder, get_embedder
from tests.support.vectors import build, indexer, items_table

MODEL = "all-MiniLM-L6-v2"


class CountingEmbedder:
    """The real encoder, recording what it was asked to encode (its vectors are the model's)."""

    def __init__(self, inner: Embedder) -> None:
        self.inner = inner
        self.name = inner.name
        self.dim = inner.dim
        self.calls: list[int] = []
        self.texts: Counter[str] = Counter()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.append(len(texts))
        self.texts.update(texts)
        return self.inner.embed(texts)

    def reset(self) -> None:
        self.calls.clear()
        self.texts.clear()


def _titles(n: int) -> list[str]:
    titles = [f"The Quiet Planet {i}" if i % 3 else f"Midnight Robot Returns {i}" for i in range(n)]
    titles[5] = titles[7] = "The Magic Dragon"  # two items sharing a title: encoded once
    return titles


@pytest.mark.model
def test_backfill_encodes_each_text_once_and_a_rerun_encodes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    shared = get_embedder(MODEL)
    counting = CountingEmbedder(shared.inner)
    monkeypatch.setattr(shared, "inner", counting)  # the process-wide model, counted
    n = EMBED_BATCH * 2 + 37  # several batches, the last one partial
    titles = _titles(n)
    opts: dict[str, Any] = {"embedder": MODEL, "docs": {}, "kb_source": "nothing/*", "backfill": False}

    vs = build(tmp_path, items_table(titles), **opts)
    try:
        stats = indexer(vs).backfill(["items"], progress=True)["items"]
        assert stats == {"rows": n, "unchanged": 0, "embedded": n, "updated": n}
        distinct = set(titles)
        assert counting.texts == Counter({t: 1 for t in distinct})  # every text once, nothing else
        assert sum(counting.calls) == len(distinct) and max(counting.calls) == EMBED_BATCH
        assert len(counting.calls) == -(-len(distinct) // EMBED_BATCH)  # full batches, not rows
        coll = vs.collections.views["items"]
        assert len(coll.index) == n
        # the stored vectors are the model's vectors of each row's own title
        for i in (0, 5, 7, n - 1):
            stored = coll.index.get_vector(f"i{i}")
            assert stored is not None
            np.testing.assert_allclose(stored, counting.inner.embed([titles[i]])[0], atol=1e-5)
        err = capsys.readouterr().err
        assert "embed items" in err and "row/s" in err  # the progress bar
        assert f"items: {n} rows, {n} embedded, 0 unchanged" in err
    finally:
        vs.close()

    # A later process: the index reopens from disk and nothing is encoded again.
    counting.reset()
    vs = build(tmp_path, items_table(titles), **opts)
    try:
        stats = indexer(vs).backfill(["items"], progress=True)["items"]
        assert stats["embedded"] == 0 and stats["unchanged"] == n
        assert counting.calls == []
        assert f"items: {n} rows, 0 embedded, {n} unchanged" in capsys.readouterr().err
    finally:
        vs.close()

    # One changed title: exactly that text is encoded.
    titles[3] = "A Brand New Title"
    vs = build(tmp_path, items_table(titles), **opts)
    try:
        stats = indexer(vs).backfill(["items"])["items"]
        assert stats["embedded"] == 1 and stats["unchanged"] == n - 1
        assert counting.texts == Counter({"A Brand New Title": 1}) and counting.calls == [1]
    finally:
        vs.close()
