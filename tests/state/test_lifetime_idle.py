"""A Lifetime view read for an entity idle for longer than the retention (no tile in the read range,
only the folded base): the fast path gives the values of the general path, exactly."""

from __future__ import annotations

import pyarrow as pa

import context_store as cs
from context_store.state.codec import entity_key
from context_store.state.ops import Ops
from context_store.state.tiles import ViewState
from context_store.state.writes import bulk_writes

US = 1_000_000
DAY = 86_400 * US
BASE = 1_750_000_000 * US

item = cs.Entity("item", join_keys=["item_id"])
POP = cs.FeatureView(  # the shape of a recs popularity view (evals/bench_recs.py movie_pop)
    "pop",
    [item],
    cs.FileSource("data/r.parquet", timestamp_field="ts"),
    aggregations=[
        cs.Aggregate("rating", "count", "7d"),
        cs.Aggregate("rating", "count", "180d"),
        cs.Aggregate("rating", "count", cs.Lifetime()),
        cs.Aggregate("rating", "mean", cs.Lifetime()),
        cs.Aggregate("rating", "sum", "30d"),
    ],
)


def test_idle_entity_reads_the_lifetime_base_and_empty_windows() -> None:
    state = ViewState(POP, {"rating": cs.Float64})
    written_at = BASE
    ratings = [0.5, 3.0, 4.5, 1.0, 5.0, 2.5, 0.1, 0.2]
    ts = [written_at - (400 + 3 * i) * DAY for i in range(len(ratings))]  # beyond the retention: folded
    table = pa.table(
        {
            "item_id": pa.array(["a"] * len(ts), pa.string()),
            "ts": pa.array(ts, pa.timestamp("us", tz="UTC")),
            "rating": pa.array(ratings, pa.float64()),
        }
    ).sort_by([("ts", "ascending")])
    ops = Ops()
    for o, _ in bulk_writes(state, table, written_at):
        ops.update(o)
    fields = ops.sets[entity_key(["item_id"], ["a"])]
    for now in (written_at + DAY, written_at + 3000 * DAY):  # no tile in the read range
        ctx = state.read_ctx(now)
        values = [fields.get(f) for f in ctx.fields]
        assert all(v is None for v in values[:-1]) and values[-1] is not None  # the idle case: base only
        got = state.evaluate(now, ctx, values)
        general = state.evaluate(now, ctx, values, extra={-1: state.plan.encode(state.plan.empty())})
        assert got == general
        by_name = dict(zip([o.name for o in state.plan.outputs], got))
        assert list(by_name.values()) == [0, 0, len(ratings), sum(ratings) / len(ratings), 0.0], by_name
