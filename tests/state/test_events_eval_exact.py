"""The events-mode read path (``decode_events`` + ``ViewState.evaluate_events``) is bit-for-bit the
general formulas: every output equals, exactly (``==`` and the same type, no tolerance), what
``raw_num_block`` + ``AggPlan.finalize`` compute from a straightforward decode of the same bytes -- over
random entities with nulls, integer and float columns, events outside every window, empty windows,
stale entities and request times between events. A faster evaluator that changed one served value
(or its type: "5" vs 5.0 on the wire) fails here."""

from __future__ import annotations

import math
import random
import struct
from typing import Any

import pytest

import context_store as cs
from context_store.state.codec import split_row
from context_store.state.events_codec import _SCALES, _read_uvarint, decode_events, encode_events
from context_store.state.raw_events import raw_num_block
from context_store.state.tiles import EVENT_FIELDS, ViewState

US = 1_000_000
NOW = 1_767_225_600 * US
user = cs.Entity("user", ["user_id"])
src = cs.StreamSource(
    "t",
    schema=[
        cs.Field("user_id", cs.String),
        cs.Field("a", cs.Float64),
        cs.Field("q", cs.Int64),
        cs.Field("ts", cs.Timestamp),
    ],
    timestamp_field="ts",
)
FUNCS = ["count", "sum", "mean", "min", "max", "var_samp", "stddev_pop"]


def reference_decode(buf: bytes, ncols: int) -> tuple[list[int], list[tuple[bytes, list[float]]]]:
    """The format of ``events_codec`` read one varint at a time (the decoder before the fast one)."""
    n, o = _read_uvarint(buf, 0)
    if n == 0:
        return [], [(b"", []) for _ in range(ncols)]
    ts, t = [], 0
    for i in range(n):
        x, o = _read_uvarint(buf, o)
        t = ((x >> 1) ^ -(x & 1)) if i == 0 else t + x
        ts.append(t)
    cols = []
    nb = (n + 7) // 8
    for _ in range(ncols):
        bm = buf[o : o + nb]
        o += nb
        valid = bytes((bm[i >> 3] >> (i & 7)) & 1 for i in range(n))
        scale = buf[o]
        o += 1
        m = sum(valid)
        if scale == 255:
            xs = list(struct.unpack_from(f"<{m}d", buf, o))
            o += 8 * m
        else:
            xs = []
            for _ in range(m):
                x, o = _read_uvarint(buf, o)
                xs.append(((x >> 1) ^ -(x & 1)) / _SCALES[scale])
        it = iter(xs)
        cols.append((valid, [next(it) if ok else 0.0 for ok in valid]))
    return ts, cols


def reference_eval(st: ViewState, t: int, buf: bytes) -> list[Any]:
    plan = st.plan
    assert plan is not None
    ts, cols = reference_decode(buf, len(plan.columns))
    got = dict(zip(plan.columns, cols))
    parsed = (ts, {c: got[c][0] for c in plan.num_cols}, {c: got[c][1] for c in plan.num_cols})
    hi = st.window_end(t)
    out: list[Any] = [None] * len(plan.outputs)
    for w, which in st._finite_windows:
        mnum = raw_num_block(parsed, plan, hi - w, hi)
        for i in which:
            out[i] = plan.finalize(plan.outputs[i], mnum, [])
    return out


def same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


def random_events(rng: random.Random) -> tuple[list[int], list[tuple[list[bool], list[float]]]]:
    n = rng.choice([0, 1, 2, 3, 5, 8, 9, 17])
    span = rng.choice([600, 3 * 3600, 2 * 86400])
    ts = sorted(NOW - rng.randint(0, span * US) for _ in range(n))
    if n > 2 and rng.random() < 0.3:
        ts[1] = ts[0]  # equal timestamps
    p_null = rng.choice([0.0, 0.0, 0.3, 1.0])
    amounts = [float(rng.randint(-5000, 50000)) / rng.choice([1, 4, 100, 3]) for _ in range(n)]
    qty = [float(rng.randint(-20, 1000)) for _ in range(n)]
    return ts, [
        ([rng.random() >= p_null for _ in range(n)], amounts),
        ([rng.random() >= p_null / 2 for _ in range(n)], qty),
    ]


@pytest.mark.parametrize("interval", [None, "5m"])
def test_events_evaluation_is_exactly_the_general_formulas(interval: str | None) -> None:
    view = cs.FeatureView(
        "ev",
        [user],
        src,
        aggregations=[cs.Aggregate(c, f, w) for c in ("a", "q") for w in ("1h", "1d") for f in FUNCS]
        + [cs.Aggregate("a", "count", "10m", name="n_10m")],
        aggregation_interval=interval,
    )
    st = ViewState(view, {"a": cs.Float64, "q": cs.Int64})
    assert st.events_mode and st.plan is not None
    rng = random.Random(19)
    for _ in range(400):
        ts, cols = random_events(rng)
        buf = encode_events(ts, cols)
        assert decode_events(buf, 2) == reference_decode(buf, 2)
        ev: list[bytes | None] = [*split_row(buf, EVENT_FIELDS)]
        ev += [None] * (EVENT_FIELDS - len(ev))
        for t in (
            NOW + 1,
            NOW,
            NOW - 1800 * US - 17,
            NOW - 3 * 86400 * US,
            *(x + d for x in ts[:3] for d in (-1, 0, 1)),
        ):
            got, exp = st.evaluate_events(t, ev), reference_eval(st, t, buf)
            assert all(same(g, e) for g, e in zip(got, exp)), (ts, cols, t, got, exp)


def test_num_finalizers_are_finalize() -> None:
    """``AggPlan.num_finalizer`` (the read paths' per-output closures) == ``finalize``, value and type."""
    view = cs.FeatureView(
        "fin", [user], src, aggregations=[cs.Aggregate(c, f, "1h") for c in ("a", "q") for f in FUNCS + ["stddev_samp"]]
    )
    st = ViewState(view, {"a": cs.Float64, "q": cs.Int64})
    plan = st.plan
    assert plan is not None
    rng = random.Random(5)
    for _ in range(300):
        num: list[float] = [float(rng.randint(0, 3))]
        for _c in plan.num_cols:
            n = float(rng.choice([0, 0, 1, 2, 7]))
            vals = [rng.uniform(-1e3, 1e3) for _ in range(6)]
            num += [n, vals[0], vals[1], vals[2], vals[3], abs(vals[4])]
        for o in plan.outputs:
            assert same(plan.num_finalizer(o)(num), plan.finalize(o, num, [])), (o.name, num)
            assert same(plan.num_finalizer(o)(tuple(num)), plan.finalize(o, tuple(num), []))
