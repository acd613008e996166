"""Numbers-only tile reads compute only what their outputs read, bit for bit (issue #19's CPU work)."""

from __future__ import annotations

import pytest

import context_store as cs
from context_store.stores.online import BaseOnlineStore
from tests.stores.online.test_online_contract import (  # noqa: F401  (store: the backends fixture)
    NOW,
    NUM_AGGS,
    US,
    agg_state,
    events,
    key,
    store,
    table,
)


@pytest.mark.parametrize("interval", [None, "5m"])
def test_tile_reads_skip_only_unread_slots(store: BaseOnlineStore, interval: str | None) -> None:  # noqa: F811
    """The numbers-only tile read (``_evaluate_num``) merges M2 only for windows with a variance/stddev
    output and finalizes with compiled closures: its values equal, exactly (value and type), the same
    read with M2 always merged and ``AggPlan.finalize`` for every output -- for views with and without
    variance outputs, entities with nulls, missing entities, and request times cutting raw edges."""
    plain = [cs.Aggregate("amount", f, w) for f in ["count", "sum", "mean", "min", "max"] for w in ["1h", "1d"]]
    for name, aggs in (("plain", plain), ("spread", NUM_AGGS)):
        st = agg_state(interval, aggs, name=name)
        assert st.plan is not None and st.numbers_only
        store.apply_events(st, table(events(400, seed=19, span_s=26 * 3600, users=("u1", "u2", "u3"))), now_us=NOW)
        ref = agg_state(interval, aggs, name=name)  # the same view, M2 always merged, generic finalize
        rp = ref.plan
        assert rp is not None
        ref._needs_m2 = [True] * len(ref._finite_windows)
        ref._fins = [
            [(i, lambda num, o=rp.outputs[i], p=rp: p.finalize(o, num, [])) for i in which]
            for _, which in ref._finite_windows
        ]
        for uid in ("u1", "u2", "u3", "nobody"):
            for t in (NOW, NOW - 1800 * US - 17, NOW - 3 * 3600 * US + 3, NOW - 20 * 3600 * US):
                got = store.read_features([(st, key(uid))], t)[0].values
                exp = store.read_features([(ref, key(uid))], t)[0].values
                assert got is not None and exp is not None
                assert [(type(x), x) for x in got] == [(type(x), x) for x in exp], (name, uid, t)
