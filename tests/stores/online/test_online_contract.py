"""One contract suite for every online store backend (embedded SQLite and a real Redis)."""

from __future__ import annotations

import asyncio
import random
import shutil
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

import context_store as cs
from context_store.config import load_config
from context_store.errors import DeploymentConflictError, UnavailableError
from context_store.state.aggregations import aggregate_values
from context_store.state.codec import entity_key
from context_store.state.columns import Columns
from context_store.state.ops import Ops, compare_offsets
from context_store.state.tiles import ViewState
from context_store.state.writes import bulk_writes
from context_store.stores.online import BaseOnlineStore, open_online_store
from context_store.stores.online.claim import NamespaceClaim

US = 1_000_000
NOW = (int(time.time()) // 3600) * 3600 * US + 1234567  # not tile aligned

user = cs.Entity("user", ["user_id"])
src = cs.FileSource("x.parquet", "ts")
ALL_AGGS = [
    cs.Aggregate("amount", f, w)
    for f in [
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
    for w in ["1h", "1d"]
] + [
    cs.Aggregate("cat", "last_distinct_n", "1d", n=3),
    cs.Aggregate("cat", "first_distinct_n", "1h", n=2),
    cs.Aggregate("cat", "last", "1d", name="last_cat"),
    cs.Aggregate("cat", "approx_count_distinct", "1d", name="cat_hll"),
    cs.Aggregate("amount", "sum", cs.Lifetime(), name="amount_sum_life"),
    cs.Aggregate("amount", "count", cs.Lifetime(), name="count_life"),
]
TYPES = {"amount": cs.Float64, "cat": cs.String}


def agg_state(interval: str | None = None, aggs: list[cs.Aggregate] | None = None, name: str = "stats") -> ViewState:
    view = cs.FeatureView(name, [user], src, aggregations=aggs or ALL_AGGS, aggregation_interval=interval)
    return ViewState(view, TYPES)


def row_state(ttl: str | None = "1d") -> ViewState:
    view = cs.FeatureView(
        "profile",
        [user],
        src,
        features=[
            cs.Field("age", cs.Int64),
            cs.Field("city", cs.String),
            cs.Field("score", cs.Float64),
            cs.Field("tags", cs.Array(cs.String)),
            cs.Field("vec", cs.Embedding(3)),
            cs.Field("ok", cs.Bool),
        ],
        ttl=ttl,
    )
    return ViewState(view, {})


def ts_arr(us: list[int]) -> pa.Array:
    return pa.array(us, pa.timestamp("us", tz="UTC"))


def events(n: int, seed: int, span_s: int = 2 * 86400, users: tuple[str, ...] = ("u1", "u2")) -> dict[str, list[Any]]:
    rng = random.Random(seed)
    return {
        "user_id": [rng.choice(users) for _ in range(n)],
        "ts": [NOW - rng.randint(0, span_s * US) for _ in range(n)],
        "amount": [rng.choice([None, float(rng.randint(-50, 500)) / 4]) for _ in range(n)],
        "cat": [rng.choice(["a", "b", "c", "d", None]) for _ in range(n)],
    }


def table(ev: dict[str, list[Any]], lo: int = 0, hi: int | None = None) -> pa.Table:
    hi = len(ev["ts"]) if hi is None else hi
    return pa.table(
        {
            "user_id": ev["user_id"][lo:hi],
            "ts": ts_arr(ev["ts"][lo:hi]),
            "amount": pa.array(ev["amount"][lo:hi], pa.float64()),
            "cat": pa.array(ev["cat"][lo:hi], pa.string()),
        }
    )


def expected(st: ViewState, ev: dict[str, list[Any]], uid: str, t: int) -> list[Any]:
    assert st.plan is not None
    end = (t // st.g) * st.g if st.interval else t
    out = []
    for o in st.plan.outputs:
        sel = [
            i
            for i, u in enumerate(ev["user_id"])
            if u == uid and ev["ts"][i] < end and (o.window_us is None or ev["ts"][i] >= end - o.window_us)
        ]
        out.append(
            aggregate_values(
                o.function, [ev["ts"][i] for i in sel], [ev[o.column][i] for i in sel], n=o.n, percentile=o.percentile
            )
        )
    return out


def assert_same(names: list[str], got: list[Any], exp: list[Any]) -> None:
    for n, g, e in zip(names, got, exp):
        if isinstance(e, float) and isinstance(g, float):
            assert g == pytest.approx(e, rel=1e-9, abs=1e-9), n
        else:
            assert g == e, n


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("redis-cluster", marks=pytest.mark.redis),
    ]
)
def store(request: pytest.FixtureRequest, tmp_path: Path, workspace_name: str) -> Iterator[BaseOnlineStore]:
    if request.param == "sqlite":
        cfg = load_config(tmp_path, workspace=workspace_name)
    elif request.param == "redis-cluster":
        cfg = load_config(tmp_path, workspace=workspace_name, online_store=request.getfixturevalue("redis_cluster").url)
    else:
        url = request.getfixturevalue("redis_url")
        cfg = load_config(tmp_path, workspace=workspace_name, online_store=url)
    s = open_online_store(cfg)
    assert s.backend == request.param
    yield s
    s.clear()
    s.close()


def key(uid: str) -> str:
    return entity_key(["user_id"], [uid])


# -- rows ---------------------------------------------------------------------------------


def test_rows_latest_wins_and_ttl(store: BaseOnlineStore) -> None:
    st = row_state("1d")
    rows = pa.table(
        {
            "user_id": ["u1", "u1", "u2"],
            "ts": ts_arr([NOW - 3600 * US, NOW - 7200 * US, NOW - 2 * 86400 * US]),
            "age": [30, 29, 50],
            "city": ["Paris", "Lyon", None],
            "score": [0.5, 0.25, 1.0],
            "tags": [["a", None], [], None],
            "vec": pa.array([[1.0, 2.0, 3.0], None, [0.5, 0.5, 0.5]], pa.list_(pa.float32(), 3)),
            "ok": [True, False, None],
        }
    )
    assert store.apply_events(st, rows) == 3
    r1, r2, r3 = store.read_features([(st, key("u1")), (st, key("u2")), (st, key("nobody"))], NOW)
    assert r1.values == [30, "Paris", 0.5, ["a", None], [1.0, 2.0, 3.0], True]
    assert r1.effective_us == NOW - 3600 * US
    assert r2.values is None  # older than ttl at NOW
    assert r3 == (None, None)
    # an older event never overwrites a newer row
    store.apply_events(st, rows.slice(1, 1))
    assert store.read_features([(st, key("u1"))], NOW)[0].values[0] == 30
    # a request before the stored row's time does not see it (it is in the future of t)
    assert store.read_features([(st, key("u1"))], NOW - 5000 * US)[0].values is None
    assert store.read_features([(st, key("u2"))], NOW - 2 * 86400 * US + 1)[0].values[0] == 50
    store.delete(st, [key("u1")])
    assert store.read_features([(st, key("u1"))], NOW)[0].values is None


# -- aggregation state ----------------------------------------------------------------------


@pytest.mark.parametrize("interval", [None, "10m"])
def test_tiles_exact_windows_all_functions(store: BaseOnlineStore, interval: str | None) -> None:
    st = agg_state(interval)
    ev = events(400, seed=7)
    for lo in range(0, 400, 90):  # several incremental applies, like a stream
        store.apply_events(st, table(ev, lo, lo + 90), now_us=NOW)
    names = [o.name for o in st.plan.outputs]  # type: ignore[union-attr]
    for t in (NOW, NOW - 1800 * US - 17, NOW + 5 * US, NOW - 86400 * US + 999):
        for uid in ("u1", "u2"):
            res = store.read_features([(st, key(uid))], t)[0]
            assert_same(names, res.values, expected(st, ev, uid, t))  # type: ignore[arg-type]
    empty = store.read_features([(st, key("ghost"))], NOW)[0].values
    assert empty is not None
    by = dict(zip(names, empty))
    assert by["amount_count_1h"] == 0 and by["amount_sum_1d"] == 0.0 and by["amount_mean_1d"] is None
    assert by["cat_last_distinct_3_1d"] == [] and by["cat_first_distinct_2_1h"] == [] and by["last_cat"] is None


NUM_AGGS = [
    cs.Aggregate("amount", f, w)
    for f in ["count", "sum", "mean", "min", "max", "stddev_samp", "var_pop"]
    for w in ["1h", "1d"]
] + [cs.Aggregate("amount", "sum", "10m", name="sum_10m")]


@pytest.mark.parametrize("interval", [None, "5m"])
def test_numbers_only_dense_tiles_stream_batches(store: BaseOnlineStore, interval: str | None) -> None:
    """Numbers-only views take the vectorised apply and the struct/tuple read path; a hot entity
    puts > 48 events in an edge tile (cut with numpy) and batches span several tiles/blocks."""
    st = agg_state(interval, NUM_AGGS, name="numstats")
    ev = events(1500, seed=5, span_s=3 * 3600, users=("hot", "hot", "hot", "cold"))
    for lo, hi in ((0, 700), (700, 701), (701, 1300), (1300, 1500)):
        assert store.apply_events(st, table(ev, lo, hi), token=("p", str(hi)), now_us=NOW) == hi - lo
    assert store.apply_events(st, table(ev, 1300, 1500), token=("p", "1500"), now_us=NOW) == 0  # replay
    names = [o.name for o in st.plan.outputs]  # type: ignore[union-attr]
    for t in (NOW, NOW - 1800 * US - 17, NOW - 2 * 3600 * US + 3, NOW + 7 * US):
        for uid in ("hot", "cold"):
            got = store.read_features([(st, key(uid))], t)[0].values
            assert_same(names, got, expected(st, ev, uid, t))  # type: ignore[arg-type]
        users = ["hot", "cold", "ghost"] * 3  # > 4 entities: evaluated together with numpy (evaluate_many)
        batch = store.read_entities([st], [key(u) for u in users], t)
        for u, b in zip(users, batch):
            assert_same(names, b[0].values, store.read_features([(st, key(u))], t)[0].values)  # type: ignore[arg-type]


def _mine(store: BaseOnlineStore, st: ViewState, uid: str) -> list[str]:
    return sorted(f for f in store._fields([key(uid)])[0] if f.startswith(st.vid + ":"))


@pytest.mark.parametrize("interval", [None, "5m"])
def test_events_mode_few_events_then_tiles(store: BaseOnlineStore, interval: str | None) -> None:
    """A numbers-only entity with few events keeps only them (events fields, <= 64 bytes each);
    past EVENTS_MAX_BYTES it converts to tiles once; windows stay exact all along, on every path
    (stream applies, materialize over either state, batch reads)."""
    st = agg_state(interval, NUM_AGGS, name="evstats")
    assert st.events_mode and st.ev_fields
    ev = events(100, seed=11, span_s=3 * 3600, users=("u1",))
    names = [o.name for o in st.plan.outputs]  # type: ignore[union-attr]

    def check(upto: int) -> None:
        sub = {k: v[:upto] for k, v in ev.items()}
        for t in (NOW, NOW - 1800 * US - 17, NOW - 2 * 3600 * US + 3):
            got = store.read_features([(st, key("u1"))], t)[0].values
            assert_same(names, got, expected(st, sub, "u1", t))  # type: ignore[arg-type]
            for m in store.read_entities([st], [key("u1")] * 6, t):  # > 4 entities: evaluate_many
                assert_same(names, m[0].values, got)  # type: ignore[arg-type]

    store.apply_events(st, table(ev, 0, 3), now_us=NOW)
    check(3)
    assert _mine(store, st, "u1") == [st.ev_fields[0]]  # 3 events: one field, no tiles, no mark
    hi = 3
    for hi in range(7, 100, 4):
        store.apply_events(st, table(ev, hi - 4, hi), now_us=NOW)
        check(hi)
        if st.M in _mine(store, st, "u1"):
            break
    assert 4 < hi < 100 and not set(st.ev_fields) & set(_mine(store, st, "u1"))  # converted to tiles
    store.apply_events(st, table(ev, hi, 100), now_us=NOW)
    check(100)
    # materialize: few events over a tile state -> events (the mark goes); many -> tiles (events go)
    few = table(ev, 0, 2)
    store.write_ops(next(bulk_writes(st, few, NOW))[0])
    check(2)
    assert st.M not in _mine(store, st, "u1") and st.ev_fields[0] in _mine(store, st, "u1")
    # the stream converts it again: stale tile fields from before must not count
    store.apply_events(st, table(ev, 2, 100), now_us=NOW)
    check(100)
    store.write_ops(next(bulk_writes(st, table(ev, 0, 100), NOW))[0])
    check(100)
    assert not set(st.ev_fields) & set(_mine(store, st, "u1"))
    store.delete(st, [key("u1")])
    assert _mine(store, st, "u1") == []


@pytest.mark.redis
def test_redis_events_mode_entity_is_a_small_listpack(tmp_path: Path, workspace_name: str, redis_url: str) -> None:
    import redis

    r = redis.Redis.from_url(redis_url)
    s = open_online_store(load_config(tmp_path, workspace=workspace_name, online_store=redis_url))
    try:
        aggs = [cs.Aggregate("amount", f, w) for w in ("1h", "1d", "7d") for f in ("count", "sum", "mean", "max")]
        st = ViewState(cs.FeatureView("ev10", [user], src, aggregations=aggs), TYPES)
        ev = events(10, seed=2, span_s=6 * 86400, users=("u1",))
        s.write_ops(next(bulk_writes(st, table(ev), NOW))[0])
        k = s.prefix + "e:" + key("u1")  # type: ignore[attr-defined]
        assert r.object("encoding", k) == b"listpack"
        vals = r.hgetall(k)
        assert all(len(v) <= 64 for v in vals.values()) and len(vals) <= len(st.ev_fields)
        assert (r.memory_usage(k) or 0) < 400  # vs ~2,600 bytes as tiles and blocks
        for t in (NOW, NOW - 86400 * US):
            assert_same(
                [o.name for o in st.plan.outputs],
                s.read_features([(st, key("u1"))], t)[0].values,  # type: ignore[union-attr]
                expected(st, ev, "u1", t),
            )  # type: ignore[arg-type]
    finally:
        s.clear()
        s.close()


def test_bulk_writes_may_be_deferred_until_flush(store: BaseOnlineStore) -> None:
    st = agg_state("1h", [cs.Aggregate("amount", "sum", "1d")], name="bulk")
    ops = Ops()
    assert st.plan is not None
    one = Columns(
        ts=np.array([NOW - st.g], dtype=np.int64), valid={"amount": np.array([True])}, num={"amount": np.array([5.5])}
    )
    for u in ("u8", "u9"):
        ops.sets[key(u)] = {st.read_ctx(NOW).fields[0]: st.plan.encode(st.plan.partial(one))}  # a block the read uses
        ops.expire[key(u)] = 3_600_000
    store.write_ops(ops, wait=False)
    store.flush()
    assert [v[0].values for v in store.read_entities([st], [key("u8"), key("u9"), key("u7")], NOW)] == [
        [5.5],
        [5.5],
        [0.0],
    ]
    store.flush()  # nothing pending: a no-op


def test_many_views_many_keys_one_call(store: BaseOnlineStore) -> None:
    a, r = agg_state("1h", [cs.Aggregate("amount", "sum", "1d")]), row_state(None)
    ev = events(100, seed=3, users=("u1", "u2", "u3"))
    store.apply_events(a, table(ev), now_us=NOW)
    store.apply_events(
        r,
        pa.table(
            {
                "user_id": ["u1"],
                "ts": ts_arr([NOW - US]),
                "age": [1],
                "city": ["c"],
                "score": [1.0],
                "tags": [["x"]],
                "vec": pa.array([[0.0, 0.0, 1.0]], pa.list_(pa.float32(), 3)),
                "ok": [True],
            }
        ),
    )
    reads = [(a, key("u1")), (r, key("u1")), (a, key("u2")), (r, key("u2")), (a, key("u3"))]
    out = store.read_features(reads, NOW)
    for (st, k), res in zip(reads, out):
        if st is a:
            assert res.values == pytest.approx(expected(a, ev, k.split("=")[1], NOW))
    assert out[1].values is not None and out[1].values[0] == 1
    assert out[3].values is None
    assert asyncio.run(store.read_features_async(reads, NOW)) == out


def test_apply_is_idempotent_per_token(store: BaseOnlineStore) -> None:
    st = agg_state(None, [cs.Aggregate("amount", "sum", "1d"), cs.Aggregate("amount", "count", "1d")])
    ev = events(60, seed=11, users=("u1",))
    assert store.applied_offset(st, "p0") is None
    assert store.apply_events(st, table(ev, 0, 30), token=("p0", "100-0"), now_us=NOW) == 30
    assert store.apply_events(st, table(ev, 0, 30), token=("p0", "100-0"), now_us=NOW) == 0  # replay
    assert store.apply_events(st, table(ev, 0, 30), token=("p0", "99-5"), now_us=NOW) == 0  # older
    assert store.applied_offset(st, "p0") == "100-0"
    # a batch mixing applied and new messages after a restart: per-row offsets skip the applied ones
    offs = [f"{90 + i}-0" for i in range(30)]  # rows 0..10 are <= 100-0
    n = store.apply_events(st, table(ev, 20, 50), token=("p0", "119-0"), row_offsets=offs, now_us=NOW)
    assert n == 19  # offsets 101..119
    ev_applied = {k: v[:30] + v[31:50] for k, v in ev.items()}
    assert store.read_features([(st, key("u1"))], NOW)[0].values == pytest.approx(expected(st, ev_applied, "u1", NOW))
    # another partition is independent
    assert store.apply_events(st, table(ev, 50, 60), token=("p1", "5"), now_us=NOW) == 10
    assert store.applied_offset(st, "p1") == "5" and store.applied_offset(st, "p0") == "119-0"


def test_commit_compare_and_set(store: BaseOnlineStore) -> None:
    ops = Ops()
    ops.set("k1", "f", b"v1")
    assert store._commit(ops, [("x|p", None, "1")])
    ops2 = Ops()
    ops2.set("k1", "f", b"v2")
    assert not store._commit(ops2, [("x|p", None, "2")])  # stale expectation: nothing written
    assert store._hmget([("k1", ["f"])]) == [[b"v1"]]
    assert store._commit(ops2, [("x|p", "1", "2")])
    assert store._hmget([("k1", ["f", "nope"])]) == [[b"v2", None]]
    assert compare_offsets("10-1", "9-9") == 1 and compare_offsets("5", "5") == 0


def test_apply_many_is_one_atomic_commit(store: BaseOnlineStore) -> None:
    """A stream worker's round: two views, two partitions, one commit CAS'd on every offset."""
    from context_store.state.ops import ApplyItem

    a = agg_state(None, [cs.Aggregate("amount", "sum", "1d"), cs.Aggregate("amount", "count", "1d")])
    b = agg_state(None, [cs.Aggregate("cat", "last_distinct_n", "1d", n=2)], name="cats")
    ev = events(80, seed=21, users=("u1", "u2", "u3"))
    items = [
        ApplyItem(a, table(ev, 0, 40), [("0", "5", None), ("1", "7", None)]),
        ApplyItem(b, table(ev, 0, 40), [("0", "5", None)]),
    ]
    assert store.apply_many(items, now_us=NOW)
    assert (store.applied_offset(a, "0"), store.applied_offset(a, "1"), store.applied_offset(b, "0")) == ("5", "7", "5")
    # a stale expectation on any one offset: nothing of the round is written
    stale = [
        ApplyItem(a, table(ev, 40, 80), [("0", "9", "5"), ("1", "9", "6")]),
        ApplyItem(b, table(ev, 40, 80), [("0", "9", "5")]),
    ]
    assert not store.apply_many(stale, now_us=NOW)
    assert (store.applied_offset(a, "0"), store.applied_offset(b, "0")) == ("5", "5")
    first = {k: v[:40] for k, v in ev.items()}
    for u in ("u1", "u2", "u3"):
        got = store.read_features([(a, key(u)), (b, key(u))], NOW)
        assert_same(["sum", "count"], got[0].values, expected(a, first, u, NOW))  # type: ignore[arg-type]
        assert got[1].values == expected(b, first, u, NOW)
    assert store.apply_many(
        [
            ApplyItem(a, table(ev, 40, 80), [("0", "9", "5"), ("1", "9", "7")]),
            ApplyItem(b, table(ev, 40, 80), [("0", "9", "5")]),
        ],
        now_us=NOW,
    )
    for u in ("u1", "u2", "u3"):
        assert_same(["sum", "count"], store.read_features([(a, key(u))], NOW)[0].values, expected(a, ev, u, NOW))  # type: ignore[arg-type]


def test_recent_appends_are_fenced_per_partition(store: BaseOnlineStore) -> None:
    """Recent-events appends commit with their own applied offset: a replay appends nothing."""
    from context_store.state.ops import ApplyItem, RecentItem

    a = agg_state(None, [cs.Aggregate("amount", "count", "1d")])
    ev = events(6, seed=5, users=("u1",))
    rows = [{"user_id": "u1", "i": i} for i in range(5)]
    first = RecentItem("txns", "0", "10", None, {key("u1"): (rows[:3], 4)})
    assert store.apply_many([ApplyItem(a, table(ev, 0, 3), [("0", "10", None)])], recent=[first], now_us=NOW)
    assert store.read_recent("txns", key("u1"), 10) == rows[:3]
    assert store.applied_offset(store.recent_fence("txns"), "0") == "10"
    # the same batch again (a replay with a stale fence): nothing written, lists unchanged
    assert not store.apply_many([], recent=[first], now_us=NOW)
    assert not store.append_recent_once(first)
    assert store.read_recent("txns", key("u1"), 10) == rows[:3]
    # the next batch: appended and capped at 4, oldest first
    assert store.append_recent_once(RecentItem("txns", "0", "12", "10", {key("u1"): (rows[3:], 4)}))
    assert store.read_recent("txns", key("u1"), 10) == rows[1:]
    # recent appends alone (no view rows) are one commit too; another partition is independent
    assert store.apply_many([], recent=[RecentItem("txns", "1", "3", None, {key("u2"): ([{"x": 1}], 4)})], now_us=NOW)
    assert store.read_recent("txns", key("u2"), 10) == [{"x": 1}]


@pytest.mark.parametrize("kind", ["tiles", "rows"])
def test_guarded_concurrent_writers_lose_nothing(store: BaseOnlineStore, kind: str) -> None:
    """Writers of the same entities from different partitions (a view keyed by another column
    than the stream's partition key): with ``guard`` a read-modify-write that raced another
    commit is redone, so no update is lost."""
    import threading

    st = (
        agg_state(None, [cs.Aggregate("amount", "count", "1d"), cs.Aggregate("amount", "sum", "1d")])
        if kind == "tiles"
        else row_state(None)
    )
    errors: list[BaseException] = []

    def writer(p: int) -> None:
        try:
            for i in range(40):
                t = NOW - (200 - i * 4 - p) * US
                rows = pa.table(
                    {
                        "user_id": ["u1"],
                        "ts": ts_arr([t]),
                        "amount": pa.array([1.0]),
                        "cat": ["a"],
                        "age": [i],
                        "city": [f"p{p}"],
                        "score": [1.0],
                        "tags": pa.array([["x"]]),
                        "vec": pa.array([[1.0, 2.0, 3.0]], pa.list_(pa.float32(), 3)),
                        "ok": [True],
                    }
                )
                store.apply_events(
                    st,
                    rows
                    if kind == "tiles"
                    else rows.select(["user_id", "ts", "age", "city", "score", "tags", "vec", "ok"]),
                    token=(str(p), str(i + 1)),
                    now_us=NOW,
                    guard=True,
                )
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(p,)) for p in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    got = store.read_features([(st, key("u1"))], NOW)[0].values
    if kind == "tiles":
        assert got == [120, 120.0]
    else:  # the latest row wins: partition 2's last event (NOW - 42 µs) is the newest
        assert got is not None and got[0] == 39 and got[1] == "p2"


def test_retention_folds_into_lifetime_and_drops_unreachable(store: BaseOnlineStore) -> None:
    st = agg_state(
        None,
        [
            cs.Aggregate("amount", "sum", "1h"),
            cs.Aggregate("amount", "sum", cs.Lifetime(), name="life"),
            cs.Aggregate("amount", "count", cs.Lifetime(), name="n"),
        ],
    )
    fin = agg_state(None, [cs.Aggregate("amount", "sum", "1h")], name="finite")
    ev = {
        "user_id": ["u1"] * 4,
        "ts": [NOW - 3 * 86400 * US, NOW - 600 * US, NOW - 120 * US, NOW - 60 * US],
        "amount": [1.0, 2.0, 4.0, 8.0],
        "cat": ["a"] * 4,
    }
    # the first event is already older than the retention horizon
    store.apply_events(st, table(ev), now_us=NOW)
    assert store.apply_events(fin, table(ev), now_us=NOW) == 4
    assert store.read_features([(st, key("u1"))], NOW)[0].values == [14.0, 15.0, 4]
    assert store.read_features([(fin, key("u1"))], NOW)[0].values == [14.0]
    # days later a new event arrives: old tiles are folded into L and deleted
    later = NOW + 5 * 86400 * US
    late_ev = {"user_id": ["u1"], "ts": [later - US], "amount": [16.0], "cat": ["b"]}
    store.apply_events(st, table(late_ev), now_us=later)
    store.apply_events(fin, table(late_ev), now_us=later)
    assert store.read_features([(st, key("u1"))], later)[0].values == [16.0, 31.0, 5]
    assert store.read_features([(fin, key("u1"))], later)[0].values == [16.0]
    k_fields = store._hmget([(key("u1"), [st.tile(i) for i in range((NOW - 700 * US) // st.g, NOW // st.g + 1)])])[0]
    assert all(v is None for v in k_fields)  # folded tiles are gone
    # a long idle entity: its tiles are outside the read range but the lifetime base still counts them
    idle = {"user_id": ["u9"] * 2, "ts": [NOW - 100 * US, NOW - 50 * US], "amount": [1.5, 2.5], "cat": ["a", "b"]}
    store.apply_events(st, table(idle), now_us=NOW)
    far = NOW + 40 * 86400 * US
    assert store.read_features([(st, key("u9"))], far)[0].values == [0.0, 4.0, 2]
    assert asyncio.run(store.read_features_async([(st, key("u9"))], far))[0].values == [0.0, 4.0, 2]


def test_recent_events_bounded(store: BaseOnlineStore) -> None:
    store.append_recent("txns", key("u1"), [{"i": i, "v": "x"} for i in range(5)], max_len=4)
    store.append_recent("txns", key("u1"), [{"i": 5, "v": None}], max_len=4)
    assert [e["i"] for e in store.read_recent("txns", key("u1"), 3)] == [3, 4, 5]
    assert [e["i"] for e in store.read_recent("txns", key("u1"), 10)] == [2, 3, 4, 5]
    assert store.read_recent("txns", key("u2"), 3) == []


def test_forget_entity_removes_every_view_and_recent_list_of_that_entity_only(store: BaseOnlineStore) -> None:
    """Right to erasure: every hash naming ``user_id=u1`` (also a composite key) and its recent lists go;
    other entities, a value that merely contains "u1" and a hostile value are untouched."""
    a = agg_state("1h", [cs.Aggregate("amount", "sum", "1d")])
    ev = events(60, seed=5, users=("u1", "u2", "u11"))
    store.apply_events(a, table(ev), now_us=NOW)
    pair = entity_key(["item_id", "user_id"], ["i9", "u1"])
    ops = Ops()
    ops.set(pair, "zz", b"x")
    ops.set(key("u1*"), "zz", b"y")
    store.write_ops(ops)
    for uid in ("u1", "u2", "u11"):
        store.append_recent("txns", key(uid), [{"i": 1}], max_len=4)
    store.append_recent("clicks", key("u1"), [{"i": 2}], max_len=4)
    assert store.forget_entity("user_id", "u1*") == (1, 0)  # a glob/LIKE character matches itself only
    assert store.forget_entity("user_id", "u1' OR '1'='1") == (0, 0)
    got = store.forget_entity("user_id", "u1")
    assert got == (2, 2) and got.entities == 2 and got.recent_lists == 2
    gone = store.read_features([(a, key("u1"))], NOW)[0].values
    assert gone == pytest.approx(expected(a, {**ev, "user_id": []}, "u1", NOW))
    assert store._hmget([(pair, ["zz"])]) == [[None]]  # type: ignore[attr-defined]
    for uid in ("u2", "u11"):
        assert store.read_features([(a, key(uid))], NOW)[0].values == pytest.approx(expected(a, ev, uid, NOW))
        assert store.read_recent("txns", key(uid), 4) == [{"i": 1}]
    assert store.read_recent("txns", key("u1"), 4) == [] and store.read_recent("clicks", key("u1"), 4) == []
    assert store.forget_entity("user_id", "u1") == (0, 0)  # idempotent


def test_meta_ping_clear(store: BaseOnlineStore) -> None:
    assert store.ping()
    assert store.get_meta("wm:x") is None
    store.set_meta("wm:x", b"\x00\x01")
    assert store.get_meta("wm:x") == b"\x00\x01"
    store.clear()
    assert store.get_meta("wm:x") is None


def test_shared_map_set_if_absent_remove(store: BaseOnlineStore) -> None:
    """The small shared maps (the stream cut-overs on Redis): one read returns every field."""
    assert store.get_shared_map("m") == {}
    assert store.set_shared_field("m", "a", b"1") and store.set_shared_field("m", "b:c", b"2")
    assert not store.set_shared_field("m", "a", b"9", if_absent=True)
    assert store.set_shared_field("m", "d", b"3", if_absent=True)
    store.set_shared_field("other", "a", b"x")
    assert store.get_shared_map("m") == {"a": b"1", "b:c": b"2", "d": b"3"}
    assert store.set_shared_field("m", "a", None) and not store.set_shared_field("m", "a", None)
    assert store.get_shared_map("m") == {"b:c": b"2", "d": b"3"}
    store.clear()
    assert store.get_shared_map("m") == {}


def test_claim_meta_is_an_atomic_set_if_absent(store: BaseOnlineStore) -> None:
    """Many writers race for one name: exactly one value wins and every writer is told which."""
    assert store.get_meta("deployment") is None
    values = [f"d{i}".encode() for i in range(16)]
    got: list[bytes] = []
    barrier = threading.Barrier(len(values))

    def claim(v: bytes) -> None:
        barrier.wait()
        got.append(store.claim_meta("deployment", v))

    threads = [threading.Thread(target=claim, args=(v,)) for v in values]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == len(values) and len(set(got)) == 1 and got[0] in values
    assert store.get_meta("deployment") == got[0]
    store.set_meta("deployment", b"moved")  # a deliberate take-over overwrites
    assert store.claim_meta("deployment", b"late") == b"moved"
    assert store.location and "@" not in store.location  # names the namespace, never a credential


def test_namespace_claim_refuses_another_deployment(store: BaseOnlineStore, workspace_name: str) -> None:
    a = NamespaceClaim(store, "aaaa", "/repo/a", workspace_name, interval=0.0)
    b = NamespaceClaim(store, "bbbb", "/repo/b", workspace_name, interval=0.0)
    b.precheck()  # unclaimed: nothing to refuse, nothing written
    assert store.get_meta("deployment") is None
    a.verify()  # the first one claims it
    a.verify()
    with pytest.raises(DeploymentConflictError) as e:
        b.verify()
    msg = str(e.value)
    assert e.value.status == 409 and "\n" not in msg
    assert all(s in msg for s in (workspace_name, "aaaa", "/repo/a", "bbbb", "--take-over", store.location))
    with pytest.raises(DeploymentConflictError):
        b.precheck()
    assert b.take_over(wait=0).id == "aaaa"  # type: ignore[union-attr]
    b.check()
    with pytest.raises(DeploymentConflictError, match="bbbb"):
        a.check()
    assert not a.ok and b.ok
    store.clear()  # the namespace flushed: the next process to look claims it again
    a.verify()
    assert a.ok


# -- backend specifics ------------------------------------------------------------------------


def test_sqlite_reader_while_writer(tmp_path: Path) -> None:
    """A server process reads while a CLI materialize writes the same file (WAL)."""
    cfg = load_config(tmp_path)
    w, r = open_online_store(cfg), open_online_store(cfg)
    st = agg_state("1h", [cs.Aggregate("amount", "count", "1d")])
    ev = events(2000, seed=5, users=tuple(f"u{i}" for i in range(50)))
    errors: list[BaseException] = []

    def write() -> None:
        try:
            for lo in range(0, 2000, 100):
                w.apply_events(st, table(ev, lo, lo + 100), now_us=NOW)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    th = threading.Thread(target=write)
    th.start()
    while th.is_alive():
        r.read_features([(st, key(f"u{i}")) for i in range(50)], NOW)
    th.join()
    assert not errors
    total = sum(v.values[0] for v in r.read_features([(st, key(f"u{i}")) for i in range(50)], NOW))  # type: ignore[index]
    assert total == sum(1 for t in ev["ts"] if NOW - 86400 * US <= t < (NOW // st.g) * st.g)
    w.close()
    r.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.redis
def test_redis_unavailable_then_recovers(tmp_path: Path, workspace_name: str) -> None:
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server binary needed to simulate an outage")
    port = _free_port()
    url = f"redis://127.0.0.1:{port}/0"
    store = open_online_store(load_config(tmp_path, workspace=workspace_name, online_store=url))
    st = agg_state("1h", [cs.Aggregate("amount", "count", "1d")])
    with pytest.raises(UnavailableError, match=f"127.0.0.1:{port}"):
        store.read_features([(st, key("u1"))], NOW)
    with pytest.raises(UnavailableError):
        store.ping()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            try:
                if store.ping():
                    break
            except UnavailableError:
                time.sleep(0.05)
        store.apply_events(st, table(events(10, seed=1, users=("u1",)), 0, 10), now_us=NOW)
        assert store.read_features([(st, key("u1"))], NOW)[0].values is not None
    finally:
        proc.terminate()
        proc.wait(10)
    with pytest.raises(UnavailableError):
        store.read_features([(st, key("u1"))], NOW)
    store.close()


def test_batch_of_entities_equals_single_reads(store: BaseOnlineStore) -> None:
    """Many entities with the same fields (one batch lookup) read in one command on Redis."""
    a, r = (
        agg_state(None, [cs.Aggregate("amount", "sum", "1d"), cs.Aggregate("cat", "last", "1h", name="c")]),
        row_state(None),
    )
    users = tuple(f"u{i}" for i in range(30))
    ev = events(300, seed=9, users=users)
    store.apply_events(a, table(ev), now_us=NOW)
    reads = [x for u in users + ("ghost",) for x in ((a, key(u)), (r, key(u)))]
    batch = store.read_features(reads, NOW)
    assert batch == [store.read_features([rd], NOW)[0] for rd in reads]
    assert asyncio.run(store.read_features_async(reads, NOW)) == batch
    for (st, k), res in zip(reads, batch):
        if st is a:
            assert_same(["sum", "c"], res.values, expected(a, ev, k.split("=")[1], NOW))  # type: ignore[arg-type]


def test_read_entities_matches_read_features(store: BaseOnlineStore) -> None:
    life = agg_state(
        None,
        [cs.Aggregate("amount", "sum", "1h"), cs.Aggregate("amount", "sum", cs.Lifetime(), name="life")],
        name="lv",
    )
    r = row_state(None)
    ev = events(120, seed=4, users=("u1", "u2", "u3"))
    store.apply_events(life, table(ev), now_us=NOW)
    keys = [key(u) for u in ("u1", "u2", "u3", "ghost", "u1")]
    for t in (NOW, NOW + 40 * 86400 * US):  # the second time needs the idle-entity second read
        per = store.read_entities([life, r], keys, t)
        assert per == [store.read_features([(life, k), (r, k)], t) for k in keys]
        assert asyncio.run(store.read_entities_async([life, r], keys, t)) == per
    assert per[0][0].values[1] == pytest.approx(expected(life, ev, "u1", NOW)[1])  # type: ignore[index]


def test_row_codec_roundtrip() -> None:
    from datetime import datetime

    from context_store.state.codec import RowCodec

    codec = RowCodec(
        [cs.Int64, cs.Timestamp, cs.String, cs.Bool, cs.Float64, cs.Array(cs.Int64), cs.Embedding(2), cs.String]
    )
    when = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    full = [7, when, "é", False, -1.5, [1, None, 3], [0.5, 0.25], ""]
    assert codec.decode(codec.encode(42, full)) == (42, full)
    some_null = [None, when, None, True, None, [], None, "x"]
    assert codec.decode(codec.encode(-1, some_null)) == (-1, some_null)
    assert RowCodec.ts_of(codec.encode(123, full)) == 123
    ints = RowCodec([cs.Int64])
    for v in (0, -1, 1, 63, -64, 64, 8191, 8192, -(1 << 40), (1 << 63) - 1, -(1 << 63)):
        assert ints.decode(ints.encode(5, [v])) == (5, [v])
    assert len(ints.encode(5, [42])) == 8 + 1 + 1  # ts, bitmap, one-byte varint
    long = RowCodec([cs.String, cs.Array(cs.String)])
    vals = ["x" * 300, ["y" * 200, None]]
    assert long.decode(long.encode(9, vals)) == (9, vals)


def test_split_row_pieces_fit_listpack_values() -> None:
    from context_store.state.codec import LISTPACK_VALUE_MAX, join_row, split_row

    for n, k in [(9, 1), (64, 2), (65, 2), (128, 2), (129, 2), (300, 2), (500, 8)]:
        buf = bytes(range(256)) * 2
        buf = buf[:n]
        pieces = split_row(buf, k)
        assert 1 <= len(pieces) <= k and join_row(pieces) == buf
        assert len(pieces[0]) >= 9
        if n <= LISTPACK_VALUE_MAX * k:
            assert all(len(p) <= LISTPACK_VALUE_MAX for p in pieces)
        assert join_row([*pieces, *([None] * (k - len(pieces)))]) == buf
    assert join_row([None, b"x"]) is None


def test_rows_longer_than_one_field_and_shorter_after(store: BaseOnlineStore) -> None:
    """A row wider than one 64-byte field spans several; a later shorter row deletes the unused ones."""
    st = row_state(None)
    assert len(st.row_fields) > 1

    def row(t: int, city: str) -> pa.Table:
        return pa.table(
            {
                "user_id": ["u1"],
                "ts": ts_arr([t]),
                "age": [30],
                "city": [city],
                "score": [0.5],
                "tags": [["a"]],
                "vec": pa.array([[1.0, 2.0, 3.0]], pa.list_(pa.float32(), 3)),
                "ok": [True],
            }
        )

    long_city = "Llanfairpwllgwyngyll" * 8
    store.apply_events(st, row(NOW - 10 * US, long_city))
    assert store.read_features([(st, key("u1"))], NOW)[0].values[1] == long_city
    assert len([f for f in store._fields([key("u1")])[0] if f.startswith(st.vid)]) == len(st.row_fields)
    store.apply_events(st, row(NOW - 5 * US, "Oslo"))
    assert store.read_features([(st, key("u1"))], NOW)[0].values == [30, "Oslo", 0.5, ["a"], [1.0, 2.0, 3.0], True]
    assert [f for f in store._fields([key("u1")])[0] if f.startswith(st.vid)] == [st.vid]
    # bulk writes (materialize) the same way
    store.write_ops(next(bulk_writes(st, row(NOW - 1 * US, long_city), NOW))[0])
    assert store.read_features([(st, key("u1"))], NOW)[0].values[1] == long_city
    store.write_ops(next(bulk_writes(st, row(NOW, "Lima"), NOW))[0])
    assert store.read_entities([st], [key("u1")] * 6, NOW)[0][0].values[1] == "Lima"
    assert [f for f in store._fields([key("u1")])[0] if f.startswith(st.vid)] == [st.vid]


@pytest.mark.redis
def test_redis_typical_row_is_a_listpack_without_ttl_unless_the_view_has_one(
    tmp_path: Path, workspace_name: str, redis_url: str
) -> None:
    import redis

    r = redis.Redis.from_url(redis_url)
    if int(r.config_get("hash-max-listpack-value")["hash-max-listpack-value"]) < 64:
        pytest.skip("this Redis runs a non-default hash-max-listpack-value")
    s = open_online_store(load_config(tmp_path, workspace=workspace_name, online_store=redis_url))
    try:
        feats = [cs.Field(f"i{j}", cs.Int64) for j in range(3)] + [cs.Field(f"f{j}", cs.Float64) for j in range(4)]
        feats += [cs.Field("b", cs.Bool), cs.Field("city", cs.String), cs.Field("seg", cs.String)]
        vals = {"i0": [30], "i1": [1200], "i2": [7], "f0": [0.1], "f1": [2.5], "f2": [1e4 / 3], "f3": [0.75]}
        vals |= {"b": [True], "city": ["Austin"], "seg": ["silver"]}
        for ttl, has_ttl in ((None, False), ("30d", True)):
            view = cs.FeatureView(f"p{has_ttl}", [user], src, features=feats, ttl=ttl)
            st = ViewState(view, {})
            s.write_ops(next(bulk_writes(st, pa.table({"user_id": ["u1"], "ts": ts_arr([NOW])} | vals), NOW))[0])
            k = s.prefix + "e:" + key("u1")  # type: ignore[attr-defined]
            assert r.object("encoding", k) == b"listpack"
            assert (r.pttl(k) > 0) is has_ttl
            r.delete(k)
    finally:
        s.clear()
        s.close()


@pytest.mark.redis
def test_redis_scripts_flushed_every_path_reloads(tmp_path: Path, workspace_name: str, redis_url: str) -> None:
    """After a Redis restart (or SCRIPT FLUSH) the cached scripts are gone: every read and write
    path must load them again rather than fail with NOSCRIPT (a fresh CI Redis found one that did)."""
    import redis

    store = open_online_store(load_config(tmp_path, workspace=workspace_name, online_store=redis_url))
    a, r = agg_state(None, [cs.Aggregate("amount", "sum", "1d")]), row_state(None)
    users = ("u1", "u2", "u3")
    ev = events(60, seed=3, users=users)
    reads = [x for u in users for x in ((a, key(u)), (r, key(u)))]
    flush = redis.Redis.from_url(redis_url)
    try:
        flush.script_flush()
        store.apply_events(a, table(ev), token=("0", "1"), now_us=NOW)
        flush.script_flush()
        batch = store.read_features(reads, NOW)
        flush.script_flush()
        assert asyncio.run(store.read_features_async(reads, NOW)) == batch
        flush.script_flush()
        assert asyncio.run(store.read_entities_async([a, r], [key(u) for u in users], NOW)) == [
            batch[i : i + 2] for i in range(0, len(batch), 2)
        ]
        assert_same(["sum"], batch[0].values, expected(a, ev, "u1", NOW))  # type: ignore[arg-type]
    finally:
        flush.close()
        store.close()


def test_events_codec_is_exact_and_compact() -> None:
    from context_store.state.events_codec import decode_events, encode_events

    rng = random.Random(4)
    ts = sorted(NOW - rng.randint(0, 7 * 86400 * US) for _ in range(10))
    cents = [round(rng.lognormvariate(3, 1), 2) for _ in ts]
    ints = [float(rng.randint(-(10**12), 10**12)) for _ in ts]
    wild = [rng.random() * 1e6, -0.0, float("inf"), float("nan"), 1e300, 2.0**60, 0.1, -3.25, 5e-324, 1 / 3]
    valid = [i % 3 != 1 for i in range(10)]
    cols = [([True] * 10, cents), (valid, ints), ([True] * 10, wild), ([False] * 10, [0.0] * 10)]
    buf = encode_events(ts, cols)
    got_ts, got = decode_events(buf, len(cols))
    assert got_ts == ts
    for (v, xs), (gv, gxs) in zip(cols, got):
        assert list(gv) == [int(x) for x in v]
        for ok, x, g in zip(v, xs, gxs):
            if ok:
                assert struct.pack("<d", g) == struct.pack("<d", x)  # bit for bit (-0.0, nan too)
    assert len(encode_events(ts, cols[:1])) < 100  # 10 events with cents: ~9 bytes each
    assert decode_events(encode_events([], [([], [])]), 1) == ([], [(b"", [])])
