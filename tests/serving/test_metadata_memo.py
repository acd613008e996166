"""Metadata memo of single lookups: a continuous window's effective time is the request time, so its
metadata is built per lookup and never memoised (memoising it filled the memo with one-off entries)."""

from __future__ import annotations

from datetime import timedelta

import context_store as cs
from tests.serving.test_get_features import NOW, store  # noqa: F401


def test_single_lookups_do_not_fill_the_memo(store: cs.ContextStore) -> None:  # noqa: F811
    store.get_features("pair", {"user_id": "u1", "merchant_id": 10})
    memo = store.features._memo
    before = len(memo)
    for i in range(40):
        t = NOW - timedelta(seconds=7 * i)
        fv = store.get_features("pair", {"user_id": "u1", "merchant_id": 10}, request_time=t)
        meta = {m.name: m for m in fv.metadata}
        assert meta["txn_stats.amount_count_1d"].effective_time == t  # a continuous window ends at the request
        assert meta["merchant_stats.amount_max_1d"].effective_time == t.replace(minute=0, second=0)
        assert [m.name for m in fv.metadata] == list(fv.feature_values)
    assert len(store.features._memo) - before < 10
    # batches still share metadata objects between entities
    batch = store.get_features_batch("pair", [{"user_id": "u1", "merchant_id": 10}] * 3, request_time=NOW)
    assert batch[0].metadata[0] is batch[2].metadata[0]
