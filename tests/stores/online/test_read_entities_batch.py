"""A batch read of many entities (``read_entities``: a re-rank's candidates) returns, for views with
Lifetime windows, exactly what one ``read_features`` per entity returns -- the same values of the same
types -- whichever path each entity takes: idle (only the folded base stored: evaluated in one batch),
active (tiles in the read range), lagging (a base folded before the read range: second round trip),
or absent; mixed with a view without Lifetime and with a row view."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest

import context_store as cs
from context_store.config import load_config
from context_store.state.codec import entity_key
from context_store.state.idle_batch import evaluate_idle_many, idle_batchable, is_idle
from context_store.state.tiles import ViewState
from context_store.stores.online import BaseOnlineStore, open_online_store

US = 1_000_000
DAY = 86_400 * US
NOW = 1_790_000_000 * US + 1234567

user = cs.Entity("user", ["user_id"])
src = cs.FileSource("x.parquet", "ts")
LIFE = ViewState(
    cs.FeatureView(
        "pop",
        [user],
        src,
        aggregations=[
            cs.Aggregate("amount", "count", "7d"),
            cs.Aggregate("amount", "sum", "30d"),
            cs.Aggregate("amount", "count", cs.Lifetime()),
            cs.Aggregate("amount", "mean", cs.Lifetime()),
            cs.Aggregate("amount", "sum", cs.Lifetime(), name="life_sum"),
            cs.Aggregate("amount", "min", cs.Lifetime(), name="life_min"),
            cs.Aggregate("amount", "var_samp", cs.Lifetime(), name="life_var"),  # finalize's own path
        ],
    ),
    {"amount": cs.Float64},
)
FINITE = ViewState(
    cs.FeatureView("recent", [user], src, aggregations=[cs.Aggregate("amount", "sum", "1d")]), {"amount": cs.Float64}
)
ROW = ViewState(
    cs.FeatureView("profile", [user], src, features=[cs.Field("age", cs.Int64), cs.Field("city", cs.String)]), {}
)


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def store(request: pytest.FixtureRequest, tmp_path: Path, workspace_name: str) -> Iterator[BaseOnlineStore]:
    url = None if request.param == "sqlite" else request.getfixturevalue("redis_url")
    s = open_online_store(load_config(tmp_path, workspace=workspace_name, online_store=url))
    yield s
    s.clear()
    s.close()


def _events(uid: str, times: list[int], amounts: list[float]) -> pa.Table:
    return pa.table(
        {
            "user_id": [uid] * len(times),
            "ts": pa.array(times, pa.timestamp("us", tz="UTC")),
            "amount": pa.array(amounts, pa.float64()),
        }
    )


def test_batch_read_equals_one_read_per_entity(store: BaseOnlineStore) -> None:
    assert idle_batchable(LIFE) and not idle_batchable(FINITE) and not idle_batchable(ROW)
    for i in range(12):  # idle: events a year old, written now (folded into the base)
        store.apply_events(
            LIFE, _events(f"idle{i}", [NOW - (400 + j) * DAY for j in range(i + 1)], [1.5] * (i + 1)), now_us=NOW
        )
    store.apply_events(LIFE, _events("idle_odd", [NOW - 500 * DAY, NOW - 450 * DAY], [0.1, 0.7]), now_us=NOW)
    store.apply_events(
        LIFE, _events("active", [NOW - 500 * DAY, NOW - 2 * DAY, NOW - 60 * US], [3.0, 4.0, 5.5]), now_us=NOW
    )
    # lagging: written 100 days ago, so its base was folded before today's read range
    store.apply_events(LIFE, _events("lag", [NOW - 400 * DAY, NOW - 101 * DAY], [2.0, 6.0]), now_us=NOW - 100 * DAY)
    store.apply_events(FINITE, _events("idle3", [NOW - 3600 * US], [9.0]), now_us=NOW)
    store.apply_events(ROW, pa.table({"user_id": ["idle5"], "ts": pa.array([NOW - US], pa.timestamp("us", tz="UTC")),
                                      "age": [41], "city": ["Oslo"]}), now_us=NOW)  # fmt: skip
    uids = [f"idle{i}" for i in range(12)] + ["idle_odd", "active", "lag", "never", "idle3", "idle0"]
    keys = [entity_key(["user_id"], [u]) for u in uids]
    # the paths taken at NOW: only "lag" (also base-only) needs the second round trip
    fields, slots = store._entities_plan([LIFE], keys, NOW)
    raw = store._hmget([(k, fields) for k in keys])
    assert [uids[e] for e, _, _ in store._entities_eval([LIFE], keys, slots, raw, NOW)[1]] == ["lag"]
    n = slots[0][2]
    assert [u for u, r in zip(uids, raw) if is_idle(r[:n]) and r[n - 1] is not None] == [
        *[f"idle{i}" for i in range(12)],
        "idle_odd",
        "lag",
        "idle3",
        "idle0",
    ]
    for t in (NOW, NOW + 3600 * US):
        for states in ([LIFE], [LIFE, FINITE, ROW], [ROW, LIFE]):
            got = store.read_entities(states, keys, t)
            one = [store.read_features([(st, k) for st in states], t) for k in keys]
            assert repr(got) == repr(one)  # values and their types (int, float, None)
            assert repr(asyncio.run(store.read_entities_async(states, keys, t))) == repr(one)
    life = dict(zip(uids, store.read_entities([LIFE], keys, NOW)))
    assert life["idle3"][0].values == [0, 0.0, 4, 1.5, 6.0, 1.5, 0.0]
    assert life["never"][0].values == [0, 0.0, 0, None, 0.0, None, None]
    assert life["lag"][0].values[2:5] == [2, 4.0, 8.0]
    assert life["active"][0].values[:3] == [2, 9.5, 3]


def test_idle_batch_equals_the_idle_path() -> None:
    """The batch over raw bases: ``_evaluate_idle`` per base, None (no base) included."""
    plan = LIFE.plan
    assert plan is not None
    bases = []
    for n, s, lo_, hi_ in [(3, 4.5, 0.5, 2.0), (1, -2.0, -2.0, -2.0), (7, 1e300, 1.0, 1e300)]:
        num = plan.empty().num.copy()
        num[:7] = [n, n, s, lo_, hi_, s / n, 1.25 * n]  # rows, then the column's n, sum, min, max, mean, M2
        bases.append((5).to_bytes(8, "little", signed=True) + plan.encode_parts(num, []))
    lifetimes: list[bytes | None] = [bases[0], None, bases[1], bases[2]]
    assert repr(evaluate_idle_many(LIFE, lifetimes)) == repr([LIFE._evaluate_idle(lv) for lv in lifetimes])
