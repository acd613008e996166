"""Metadata memo of single lookups: a continuous window's effective time is the request time, so its
metadata is built per lookup and never memoised (memoising it filled the memo with one-off entries)."""

from __future__ import annotations

from datetime import timedelta

import context_store as cs
from context_store.serving.feature_assembly import assemble
from context_store.serving.features import to_us
from context_store.vocab.time import us_to_datetime
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


def test_lazy_vectors_equal_the_eagerly_assembled_ones(store: cs.ContextStore) -> None:  # noqa: F811
    """Single lookups build metadata and the request time only when read (``LazyFeatureVector``): what
    they then hold -- and every wire encoding of them -- is exactly the general assembly's, for present,
    missing, stale (ttl) and null values, continuous and interval windows, past request times."""
    from context_store.server.errors import dumps
    from context_store.server.tecton import MetadataOptions, encode_vector
    from context_store.types import LazyFeatureVector

    fs = store.features
    cases = [("pair", {"user_id": u, "merchant_id": m}) for u in ("u1", "u2", "u9") for m in (10, 11, 99)]
    view = store.definitions.feature_views["user_profile"]
    cases += [(view, {"user_id": u}) for u in ("u1", "u2", "u3", "u9")]  # u2: null city; u3: past ttl
    opts = MetadataOptions(names=True, data_types=True, effective_times=True, serving_status=True)
    seen = 0
    for svc, keys in cases:
        for dt in (None, timedelta(0), timedelta(minutes=7), timedelta(hours=2, seconds=3), timedelta(days=2)):
            t_in = None if dt is None else NOW - dt
            if isinstance(svc, str):
                fv = store.get_features(svc, keys, request_time=t_in)
                plan = fs.plan(svc)
            else:
                fv = store.features.get_view_features(svc, keys, request_time=t_in)
                plan = fs._view_plan(svc)
            assert isinstance(fv, LazyFeatureVector)
            t = to_us(t_in if t_in is not None else fv.request_time)
            res = fs.online.read_features(fs._reads(plan, keys), t)
            ref = assemble(plan, fs._keys(plan, keys), {}, res, t, None)  # eager, no memo
            ref.request_time = t_in if t_in is not None else us_to_datetime(t)
            assert fv == ref and ref == fv
            assert fv.metadata == ref.metadata and fv.request_time == ref.request_time
            assert dumps(encode_vector(fv, opts, None)) == dumps(encode_vector(ref, opts, None))
            seen += any(m.status == "MISSING_DATA" for m in fv.metadata)
    assert seen  # missing / stale entities were among the cases
