"""The one implementation of partial/merge/finalize (AggPlan) against the brute-force reference."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import context_store as cs
from context_store.state.aggregations import AggPlan, aggregate_values
from context_store.state.columns import Columns
from context_store.state.raw_events import decode_raw, encode_raw
from context_store.state.tiles import TILES_PER_WINDOW, ViewState, choose_tile_us, decompose
from tests.support.reference import aggregate, values_match

user = cs.Entity("user", ["user_id"])
src = cs.FileSource("x.parquet", "ts")
NUM_FUNCS = [
    "count",
    "sum",
    "mean",
    "min",
    "max",
    "last",
    "stddev_samp",
    "stddev_pop",
    "var_samp",
    "var_pop",
    "approx_count_distinct",
    "approx_percentile",
]
AGGS = [cs.Aggregate("x", f, "1d") for f in NUM_FUNCS] + [
    cs.Aggregate("x", "approx_percentile", "1d", percentile=0.9, name="p90"),
    cs.Aggregate("i", "sum", "1d", name="isum"),
    cs.Aggregate("i", "max", "1d", name="imax"),
    cs.Aggregate("s", "last", "1d", name="slast"),
    cs.Aggregate("s", "last_distinct_n", "1d", n=3, name="ldn"),
    cs.Aggregate("s", "first_distinct_n", "1d", n=2, name="fdn"),
    cs.Aggregate("s", "approx_count_distinct", "1d", name="shll"),
    cs.Aggregate("b", "last", "1d", name="blast"),
    cs.Aggregate("v", "mean", "1d", name="vmean"),
]
TYPES = {"x": cs.Float64, "i": cs.Int64, "s": cs.String, "b": cs.Bool, "v": cs.Embedding(2)}
PLAN = AggPlan(cs.FeatureView("v", [user], src, aggregations=AGGS), TYPES)

event = st.tuples(
    st.integers(0, 50),  # ts (few values: many ties)
    st.one_of(st.none(), st.integers(-400, 400).map(lambda v: v / 8)),
    st.one_of(st.none(), st.integers(-(2**40), 2**40)),
    st.one_of(st.none(), st.sampled_from(["a", "b", "c", "d", "é"])),
    st.one_of(st.none(), st.booleans()),
    st.one_of(st.none(), st.tuples(st.integers(-8, 8), st.integers(-8, 8)).map(lambda p: [p[0] / 4, p[1] / 4])),
)


def cols_of(evs: list[tuple[Any, ...]]) -> Columns:
    ts = np.array([e[0] for e in evs], dtype=np.int64)
    c = Columns(ts=ts)
    for j, name in enumerate(["x", "i", "s", "b", "v"], start=1):
        vals = [e[j] for e in evs]
        c.valid[name] = np.array([v is not None for v in vals], dtype=bool)
        if name in ("x", "i"):
            c.num[name] = np.array([0.0 if v is None else float(v) for v in vals])
        if name == "v":
            c.emb[name] = np.array([[0.0, 0.0] if v is None else v for v in vals], dtype=np.float32).reshape(-1, 2)
        else:
            c.obj[name] = vals
    return c


def reference(evs: list[tuple[Any, ...]]) -> list[Any]:
    out = []
    for o in PLAN.outputs:
        j = ["x", "i", "s", "b", "v"].index(o.column) + 1
        out.append(aggregate(o.function, [(e[0], e[j]) for e in evs], n=o.n, percentile=o.percentile))
    return out


def check(evs: list[tuple[Any, ...]], got: list[Any]) -> None:
    for o, g, w in zip(PLAN.outputs, got, reference(evs)):
        scale = 1.0
        if o.function.startswith(("var", "stddev")):
            scale = 1e6
        rel = 1e-7 if o.name == "vmean" else 1e-9  # an embedding mean is served as float32
        assert values_match(
            g, w, rel=rel, scale=scale, approx="hll" if "distinct" in o.function and "approx" in o.function else None
        ), (o.name, g, w)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(event, max_size=40), st.lists(st.integers(0, 40), max_size=4))
def test_merge_of_split_partials_equals_reference(evs: list[tuple[Any, ...]], cuts: list[int]) -> None:
    """partial(all) == merge(partials of any split) == the brute-force reference, via encode/decode."""
    whole = PLAN.partial(cols_of(evs))
    check(evs, [PLAN.finalize(o, whole.num, whole.objs) for o in PLAN.outputs])
    bounds = sorted({0, len(evs), *[c for c in cuts if c <= len(evs)]})
    parts = [PLAN.decode(PLAN.encode(PLAN.partial(cols_of(evs[a:b])))) for a, b in zip(bounds, bounds[1:])]
    merged = PLAN.merge(parts)
    check(evs, [PLAN.finalize(o, merged.num, merged.objs) for o in PLAN.outputs])


@settings(max_examples=60, deadline=None)
@given(st.lists(event, min_size=1, max_size=40), st.integers(1, 6))
def test_grouped_partials_equal_single(evs: list[tuple[Any, ...]], groups: int) -> None:
    """The vectorised per-group path (materialize) equals per-group partials (stream)."""
    cols = cols_of(evs)
    starts = np.unique(np.linspace(0, len(evs), groups, endpoint=False).astype(np.int64))
    num, objs = PLAN.partials_grouped(cols, starts)
    ends = list(starts[1:]) + [len(evs)]
    for g, (a, b) in enumerate(zip(starts, ends)):
        single = PLAN.partial(cols_of(evs[a:b]))
        np.testing.assert_allclose(num[g], single.num, rtol=1e-12, atol=1e-12)
        assert PLAN.encode_parts(num[g], objs[g])[8 * PLAN.K :] == PLAN.encode(single)[8 * PLAN.K :]


@settings(max_examples=40, deadline=None)
@given(st.lists(event, max_size=30))
def test_raw_block_roundtrip(evs: list[tuple[Any, ...]]) -> None:
    cols = cols_of(evs)
    half = len(evs) // 2
    buf = encode_raw(cols.take(np.arange(half)), PLAN) + encode_raw(cols.take(np.arange(half, len(evs))), PLAN)
    back = decode_raw(buf, PLAN)
    p1, p2 = PLAN.partial(cols), PLAN.partial(back)
    assert PLAN.encode(p1) == PLAN.encode(p2)


def test_variance_is_stable_with_a_large_offset() -> None:
    """Chan's merge keeps precision where a sum-of-squares formula loses it all."""
    rng = np.random.default_rng(0)
    x = 1e6 + rng.normal(0, 1, 5000)  # a sum-of-squares formula loses ~4 digits here
    plan = AggPlan(
        cs.FeatureView("v", [user], src, aggregations=[cs.Aggregate("x", "var_samp", "1d")]), {"x": cs.Float64}
    )
    parts = []
    for chunk in np.array_split(x, 37):
        c = Columns(ts=np.zeros(len(chunk), dtype=np.int64), valid={"x": np.ones(len(chunk), bool)}, num={"x": chunk})
        parts.append(plan.partial(c))
    m = plan.merge(parts)
    assert plan.finalize(plan.outputs[0], m.num, m.objs) == pytest.approx(np.var(x, ddof=1), rel=1e-9)


def test_empty_window_and_ordering_semantics() -> None:
    e = PLAN.empty()
    by = {o.name: PLAN.finalize(o, e.num, e.objs) for o in PLAN.outputs}
    assert by["x_count_1d"] == 0 and by["x_sum_1d"] == 0.0 and by["isum"] == 0
    assert by["ldn"] == [] and by["fdn"] == [] and by["x_mean_1d"] is None and by["slast"] is None
    # equal timestamps order by value: last = largest; distinct lists oldest -> newest
    assert aggregate_values("last", [5, 5, 5], ["b", "c", "a"]) == "c"
    assert aggregate_values("last_distinct_n", [1, 2, 3, 4, 4], ["a", "b", "a", "d", "c"], n=3) == ["a", "c", "d"]
    assert aggregate_values("first_distinct_n", [1, 2, 3, 3], ["b", "b", "d", "c"], n=2) == ["b", "c"]
    assert aggregate_values("count", [1, 2], [None, None]) == 2
    assert aggregate_values("mean", [1, 2], [[1.0, 2.0], [3.0, 5.0]]) == [2.0, 3.5]
    assert aggregate_values("approx_percentile", list(range(10)), [float(v) for v in range(10)], percentile=0.9) == 8.0
    assert aggregate_values("var_samp", [1], [2.0]) is None and aggregate_values("var_pop", [1], [2.0]) == 0.0


def test_tile_sizes_bounded() -> None:
    def view(w: str, interval: str | None = None) -> cs.FeatureView:
        return cs.FeatureView(
            "v", [user], src, aggregations=[cs.Aggregate("x", "sum", w)], aggregation_interval=interval
        )

    for w in ["1m", "30m", "1h", "1d", "7d", "30d"]:
        g = choose_tile_us(view(w))
        assert view(w).max_window.total_seconds() * 1e6 / g <= TILES_PER_WINDOW  # type: ignore[union-attr]
    assert choose_tile_us(view("1d", "1h")) == 3600 * 10**6
    for v in (view("7d"), view("7d", "1h"), view("30d", "1h")):
        st = ViewState(v, {"x": cs.Float64})
        ctx = st.read_ctx(1_700_000_000_123_456)
        # a long window is a few aligned 4^L blocks (one HMGET of bounded size), not one field per tile
        assert ctx.n_blocks <= 6 * (st.levels + 1), (v.aggregation_interval, ctx.n_blocks)
        assert len(ctx.fields) <= ctx.n_blocks + 2 + len(st.ev_fields)  # raw edges, events fields
        assert math.isfinite(st.retention)


def test_decompose_covers_exactly() -> None:
    for a in range(0, 300, 7):
        for b in range(a, a + 700, 13):
            blocks = decompose(a, b, 4)
            covered = [t for lv, j in blocks for t in range(j * 4**lv, (j + 1) * 4**lv)]
            assert covered == list(range(a, b))
            assert len(blocks) <= 6 * 5
