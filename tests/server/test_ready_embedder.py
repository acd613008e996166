"""/readyz waits for the embedder: a repo with embedding views is ready only once its model is loaded
and has run, so the first text query after ready does not pay for loading it."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import numpy as np

import context_store as cs
from context_store.embedders import HashEmbedder, register_embedder
from context_store.server import create_app
from tests.support.repo import make_repo
from tests.support.server import running_server
from tests.support.vectors import items_table

DEFS = """
import context_store as cs

item = cs.Entity("item", join_keys=["item_id"])
items = cs.FileSource("data/items.parquet", timestamp_field="ts", name="items")
item_vectors = cs.EmbeddingView("item_vectors", [item], items, text="title", embedder="gated-ready-64")
"""


class _Gated:
    """A real embedder (hashing) whose model load waits for ``gate``: stands for a slow model load."""

    name, dim = "gated-ready-64", 64
    loads = 0
    texts: list[str] = []

    def __init__(self, gate: threading.Event) -> None:
        assert gate.wait(60), "gate never opened"
        type(self).loads += 1

    def embed(self, texts: list[str]) -> np.ndarray:
        type(self).texts.extend(texts)
        return HashEmbedder(64).embed(texts)


def test_readyz_waits_until_the_embedder_is_loaded_and_warm(tmp_path: Path) -> None:
    gate = threading.Event()
    gate.set()
    register_embedder("gated-ready-64", lambda: _Gated(gate))
    repo = make_repo(tmp_path / "repo", DEFS, {"items.parquet": items_table()}, config={"online_store": "sqlite"})
    store = cs.ContextStore(repo)
    try:
        store.apply()
        store.backfill()  # builds the item_vectors index (loads the embedder in this process)
    finally:
        store.close()

    # A fresh model load for the server (as in a new process), held until the gate opens.
    gate.clear()
    register_embedder("gated-ready-64", lambda: _Gated(gate))
    loads_before = _Gated.loads
    with running_server(create_app(repo, auth=False, mcp=False)) as url:
        for _ in range(5):  # not ready while the model loads, whatever the indexes say
            r = httpx.get(url + "/readyz", timeout=30)
            assert r.status_code == 503, r.text
            assert r.json()["vectors"]["embedders"] == {"gated-ready-64": "pending"}
            time.sleep(0.1)
        assert _Gated.loads == loads_before
        _Gated.texts.clear()
        gate.set()
        deadline = time.monotonic() + 30
        while (r := httpx.get(url + "/readyz", timeout=30)).status_code != 200:
            assert time.monotonic() < deadline, r.text
            time.sleep(0.05)
        assert r.json()["ready"] is True
        # loaded once and already run (warmed) by the time it said ready
        assert _Gated.loads == loads_before + 1 and _Gated.texts
        warmed = len(_Gated.texts)
        q = httpx.post(url + "/v1/similar", json={"view": "item_vectors", "text": "running shoes", "k": 3}, timeout=30)
        assert q.status_code == 200, q.text
        assert len(q.json()["items"]) == 3
        assert _Gated.loads == loads_before + 1  # the query found the model loaded
        assert _Gated.texts[warmed:] == ["running shoes"]
