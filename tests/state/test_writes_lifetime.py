"""Bulk writes of views with ``Lifetime()`` windows over events older than every kept block, with
"now" moved across tile and 4^L-block boundaries: no crash, and the values read back are exact."""

from __future__ import annotations

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

import context_store as cs
from context_store.state.codec import entity_key
from context_store.state.ops import Ops
from context_store.state.tiles import ViewState
from context_store.state.writes import bulk_writes

US = 1_000_000
DAY = 86_400 * US
BASE = 1_750_000_000 * US  # a fixed instant; "now" is moved from here in whole and partial tiles

user = cs.Entity("user", join_keys=["user_id"])
src = cs.FileSource("data/events.parquet", timestamp_field="ts")
LIFETIME_ONLY = cs.FeatureView(
    "life",
    [user],
    src,
    aggregations=[
        cs.Aggregate("amount", "sum", cs.Lifetime(), name="s"),
        cs.Aggregate("amount", "count", cs.Lifetime(), name="n"),
    ],
)
MIXED = cs.FeatureView(
    "mixed",
    [user],
    src,
    aggregations=[
        cs.Aggregate("amount", "sum", cs.Lifetime(), name="s"),
        cs.Aggregate("amount", "count", "1h", name="n_1h"),
    ],
)


def _read(state: ViewState, ops: Ops, key: str, now_us: int) -> list[object]:
    ctx = state.read_ctx(now_us)
    fields = ops.sets.get(key, {})
    return state.evaluate(now_us, ctx, [fields.get(f) for f in ctx.fields])


@settings(max_examples=150, deadline=None)
@given(
    tiles=st.integers(0, 200),
    within_us=st.integers(0, 15 * 60 * US - 1),
    ages_days=st.lists(st.integers(2, 400), min_size=1, max_size=12),
    recent=st.booleans(),
)
def test_lifetime_bulk_writes_across_tile_and_block_boundaries(
    tiles: int, within_us: int, ages_days: list[int], recent: bool
) -> None:
    for view in (LIFETIME_ONLY, MIXED):
        state = ViewState(view, {"amount": cs.Float64})
        now_us = BASE + tiles * state.g + within_us  # every tile offset, hence every 4^L alignment
        ts = [now_us - d * DAY - 1 for d in ages_days]
        if recent:
            ts.append(now_us - 10 * 60 * US)  # one event inside the 1h window
        users = ["u1" if i % 3 else "u2" for i in range(len(ts))]
        amounts = [float(i + 1) for i in range(len(ts))]
        table = pa.table(
            {
                "user_id": pa.array(users, pa.string()),
                "ts": pa.array(ts, pa.timestamp("us", tz="UTC")),
                "amount": pa.array(amounts, pa.float64()),
            }
        ).sort_by([("user_id", "ascending"), ("ts", "ascending")])
        merged = Ops()
        for ops, _ in bulk_writes(state, table, now_us):
            merged.update(ops)
        for u in ("u1", "u2"):
            mine = [(t, a) for t, a, x in zip(ts, amounts, users) if x == u]
            got = _read(state, merged, entity_key(["user_id"], [u]), now_us)
            if not mine:
                continue
            assert got[0] == sum(a for _, a in mine), (view.name, u, got)
            if view is LIFETIME_ONLY:
                assert got[1] == len(mine), (u, got)
            else:
                in_hour = sum(1 for t, _ in mine if t >= now_us - 3600 * US)
                assert got[1] == in_hour, (u, got)
