"""``ContextStore``'s typed components: opened on first use, rebuilt on refresh, closed on close;
the stream path works on a ``StreamContext`` and touches the vector service only through
``EmbeddingSink``, for sources that feed embedding views."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from context_store.compute.stream.context import StreamContext
from context_store.compute.stream.ingestor import Ingestor
from tests.support.stream import T0, StoreFactory, event


def test_components_open_lazily_and_push_goes_through_the_ingestor(tmp_path: Path, make_store: StoreFactory) -> None:
    store = make_store(tmp_path / "repo")
    try:
        assert store.opened_vectors is None
        ing = store.ingestor
        assert isinstance(ing, Ingestor) and isinstance(ing.ctx, StreamContext)
        assert ing.ctx.online is store.online and ing.ctx.offline is store.offline
        res = store.push("transactions", [event("u1", 1, 2.0)])
        assert res.visible and res.accepted == 1
        assert store.opened_vectors is None  # no embedding view on this source: never opened
        fv = store.get_features("fraud", {"user_id": "u1"}, request_time=T0 + timedelta(hours=3))
        assert fv.feature_values["txn_stats.amount_count_1d"] == 1
        # After a refresh (an apply elsewhere): the same ingestor, on the reloaded definitions.
        store.refresh()
        assert store.ingestor is ing and ing.definitions is store.definitions
        assert store.push("transactions", [event("u1", 2, 2.0)]).accepted == 1
    finally:
        store.close()
    assert store.opened_vectors is None and store._ingestor is None and store._online is None


def test_stream_context_reload_refreshes_the_store(tmp_path: Path, make_store: StoreFactory) -> None:
    store = make_store(tmp_path / "repo")
    try:
        ctx = store.stream_context()
        assert ctx.version is not None and ctx.version() >= 1
        assert ctx.states.definitions is ctx.definitions
        assert ctx.reload is not None
        new = ctx.reload()
        assert new.definitions is store.definitions and new.states is not ctx.states
        assert new.embedding_sink() is store.indexer  # the sink is the store's vector indexer, opened on demand
    finally:
        store.close()
