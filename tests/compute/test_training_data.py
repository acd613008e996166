"""Point-in-time training data: property tests against tests/support/reference.py, plus edge cases and bad input."""

from __future__ import annotations

import math
import random
import tempfile
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import context_store as cs
from context_store.compute.training import get_training_data
from context_store.errors import DefinitionError, InvalidInputError, NotFoundError
from tests.support.batch import T0, build, rows_of, ts_array, write_parquet
from tests.support.reference import expected_view_row, values_match
from tests.support.repo import make_repo

SEC = 1_000_000
KEYS = ["a", "b", "c"]
NUMERIC_FUNCS = [
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
WINDOWS = ["2m", "5m", cs.Lifetime()]


def _aggs() -> list[cs.Aggregate]:
    aggs = [cs.Aggregate("x", f, w) for f in NUMERIC_FUNCS for w in WINDOWS]
    aggs += [cs.Aggregate("i", f, w) for f in ("sum", "min", "max", "last", "mean") for w in WINDOWS]
    aggs += [cs.Aggregate("x", "approx_percentile", "5m", percentile=0.9)]
    for w in WINDOWS:
        aggs += [
            cs.Aggregate("s", "count", w),
            cs.Aggregate("s", "last", w),
            cs.Aggregate("s", "last_distinct_n", w, n=2),
            cs.Aggregate("s", "first_distinct_n", w, n=3),
            cs.Aggregate("s", "approx_count_distinct", w),
            cs.Aggregate("x", "last_distinct_n", w, n=3),
        ]
    return aggs


# Events on a coarse 15s grid (many ties), values from small sets (ties in value too), nulls.
event_st = st.tuples(
    st.sampled_from(KEYS),
    st.integers(0, 60),
    st.one_of(st.none(), st.integers(-20, 20).map(lambda v: v / 4)),
    st.one_of(st.none(), st.integers(-5, 5)),
    st.one_of(st.none(), st.sampled_from(["p", "q", "r", "s"])),
)


@st.composite
def histories(draw: st.DrawFn) -> tuple[list[tuple], list[tuple[str | None, int]]]:
    events = draw(st.lists(event_st, min_size=0, max_size=40))
    n_spine = draw(st.integers(1, 25))
    spine = []
    for _ in range(n_spine):
        key = draw(st.sampled_from([*KEYS, "zz", None]))
        kind = draw(st.integers(0, 3))
        if events and kind == 0:  # exactly on an event
            t = draw(st.sampled_from(events))[1] * 15 * SEC
        elif events and kind == 1:  # exactly on a window edge after an event
            t = draw(st.sampled_from(events))[1] * 15 * SEC + draw(st.sampled_from([120, 300, 60])) * SEC
        else:
            t = draw(st.integers(-30, 80 * 15)) * SEC
        spine.append((key, T0 + t + draw(st.sampled_from([0, 0, 1, -1]))))
    return events, spine


def _tables(events: list[tuple], spine: list[tuple]) -> tuple[pa.Table, pa.Table]:
    ev = pa.table(
        {
            "user_id": pa.array([e[0] for e in events], pa.string()),
            "ts": ts_array([T0 + e[1] * 15 * SEC for e in events]),
            "x": pa.array([e[2] for e in events], pa.float64()),
            "i": pa.array([e[3] for e in events], pa.int64()),
            "s": pa.array([e[4] for e in events], pa.string()),
        }
    )
    sp = pa.table(
        {"user_id": pa.array([s[0] for s in spine], pa.string()), "timestamp": ts_array([s[1] for s in spine])}
    )
    return ev, sp


def _check(view: cs.FeatureView, out: pa.Table, ev: pa.Table, sp: pa.Table, value: str = "x") -> None:
    rows = rows_of(ev, "ts")
    xs = [abs(r[value]) for r in rows if r[value] is not None] + [1.0]
    scale = max(xs)
    for i, srow in enumerate(sp.to_pylist()):
        t = sp.column("timestamp").cast(pa.int64())[i].as_py()
        want = expected_view_row(view, rows, srow, t)
        for name, w in want.items():
            got = out.column(f"{view.name}__{name}")[i].as_py()
            sc = scale * scale if ("var" in name or "stddev" in name) else scale
            if "stddev" in name:
                sc = scale  # sqrt of an absolute error of scale^2 * rel
                ok = values_match(got, w, rel=1e-6, scale=sc)
            else:
                ok = values_match(got, w, scale=sc, approx="hll" if "approx_count" in name else None)
            assert ok, f"row {i} {srow} t={t}: {name} got {got!r}, want {w!r}"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories(), st.booleans(), st.booleans())
def test_window_aggregates_match_reference(history: tuple, interval_mode: bool, via_backfill: bool) -> None:
    events, spine = history
    ev, sp = _tables(events, spine)
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        write_parquet(root, "ev.parquet", ev)
        user = cs.Entity("user", ["user_id"])
        src = cs.FileSource("data/ev.parquet", "ts")
        view = cs.FeatureView(
            "w", [user], src, aggregations=_aggs(), aggregation_interval="1m" if interval_mode else None
        )
        svc = cs.FeatureService("svc", [view])
        defs, config, offline = build(root, [view], [svc], run_backfill=via_backfill)
        if not via_backfill:  # an unsorted log in two appends, as a stream worker writes it
            half = ev.num_rows // 2
            offline.append("fv__w", ev.slice(half))
            offline.append("fv__w", ev.slice(0, half))
        out = get_training_data(defs, config, offline, sp, "svc")
        assert out.num_rows == sp.num_rows
        assert out.column_names[:2] == ["user_id", "timestamp"]
        assert out.select(["user_id", "timestamp"]).equals(sp)
        _check(view, out, ev, sp)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories(), st.sampled_from([None, "1m", "10m"]))
def test_batch_features_match_reference(history: tuple, ttl: str | None) -> None:
    events, spine = history
    ev, sp = _tables(events, spine)
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        write_parquet(root, "ev.parquet", ev)
        user = cs.Entity("user", ["user_id"])
        src = cs.FileSource("data/ev.parquet", "ts")
        view = cs.FeatureView(
            "prof",
            [user],
            src,
            ttl=ttl,
            features=[cs.Field("x", cs.Float64), cs.Field("i", cs.Int64), cs.Field("s", cs.String)],
        )
        svc = cs.FeatureService("svc", [view])
        defs, config, offline = build(root, [view], [svc])
        out = get_training_data(defs, config, offline, sp, "svc")
        _check(view, out, ev, sp)


def _simple_repo(root: Path, n: int = 200, seed: int = 0) -> tuple[pa.Table, cs.FeatureView]:
    rng = random.Random(seed)
    ev = pa.table(
        {
            "user_id": [rng.choice(KEYS) for _ in range(n)],
            "ts": ts_array([T0 + rng.randrange(0, 3600) * SEC for _ in range(n)]),
            "amount": [float(rng.randrange(1, 100)) for _ in range(n)],
        }
    )
    write_parquet(root, "tx.parquet", ev)
    user = cs.Entity("user", ["user_id"])
    src = cs.FileSource("data/tx.parquet", "ts")
    view = cs.FeatureView(
        "stats",
        [user],
        src,
        aggregations=[
            cs.Aggregate("amount", "sum", "10m"),
            cs.Aggregate("amount", "count", "1h"),
            cs.Aggregate("amount", "max", "30m"),
        ],
    )
    return ev, view


def test_spine_order_kept_and_no_row_dropped(tmp_path: Path) -> None:
    ev, view = _simple_repo(tmp_path, n=6000)  # long histories: min/max cross their 64-event blocks
    defs, config, offline = build(tmp_path, [view], [cs.FeatureService("svc", [view])])
    rng = random.Random(7)
    n = 3000
    keys = [rng.choice([*KEYS, "unknown", None]) for _ in range(n)]
    times = [T0 + rng.randrange(-600, 4000) * SEC for _ in range(n)]
    times[:50] = [times[50]] * 50  # duplicate spine rows
    keys[:50] = [keys[50]] * 50
    sp = pa.table({"row": list(range(n)), "user_id": keys, "timestamp": ts_array(times)})
    out = get_training_data(defs, config, offline, sp, "svc")
    assert out.num_rows == n
    assert out.column("row").to_pylist() == list(range(n))
    assert out.column_names == [
        "row",
        "user_id",
        "timestamp",
        "stats__amount_sum_10m",
        "stats__amount_count_1h",
        "stats__amount_max_30m",
    ]
    rows = rows_of(ev, "ts")
    for i in rng.sample(range(n), 200):
        want = expected_view_row(view, rows, {"user_id": keys[i]}, times[i])
        assert out.column("stats__amount_count_1h")[i].as_py() == want["amount_count_1h"]
        assert values_match(out.column("stats__amount_sum_10m")[i].as_py(), want["amount_sum_10m"])
        assert out.column("stats__amount_max_30m")[i].as_py() == want["amount_max_30m"]
    unknown = [i for i in range(n) if keys[i] in ("unknown", None)]
    assert all(out.column("stats__amount_count_1h")[i].as_py() == 0 for i in unknown)
    assert all(out.column("stats__amount_max_30m")[i].as_py() is None for i in unknown)


def test_pandas_in_pandas_out(tmp_path: Path) -> None:
    ev, view = _simple_repo(tmp_path)
    defs, config, offline = build(tmp_path, [view], [cs.FeatureService("svc", [view])])
    sp = pd.DataFrame(
        {
            "user_id": ["a", "b", "zz"],
            "timestamp": pd.to_datetime([T0 // SEC + 3000, T0 // SEC + 100, T0 // SEC], unit="s"),  # naive = UTC
        },
        index=[10, 5, 7],
    )
    out = get_training_data(defs, config, offline, sp, "svc")
    assert isinstance(out, pd.DataFrame)
    assert list(out.index) == [10, 5, 7]
    assert list(out.columns) == [
        "user_id",
        "timestamp",
        "stats__amount_sum_10m",
        "stats__amount_count_1h",
        "stats__amount_max_30m",
    ]
    arrow = get_training_data(defs, config, offline, pa.Table.from_pandas(sp, preserve_index=False), "svc")
    assert out["stats__amount_count_1h"].tolist() == arrow.column("stats__amount_count_1h").to_pylist()
    assert out["stats__amount_count_1h"].iloc[2] == 0


def test_embedding_mean_is_elementwise(tmp_path: Path) -> None:
    vecs = [[1.0, 0.0, 2.0], [3.0, 4.0, 0.0], None, [0.5, 0.5, 0.5]]
    ev = pa.table(
        {
            "user_id": ["a", "a", "a", "b"],
            "ts": ts_array([T0, T0 + 10 * SEC, T0 + 20 * SEC, T0]),
            "vec": pa.array(vecs, pa.list_(pa.float32(), 3)),
        }
    )
    write_parquet(tmp_path, "views.parquet", ev)
    user = cs.Entity("user", ["user_id"])
    src = cs.FileSource("data/views.parquet", "ts")
    view = cs.FeatureView("interest", [user], src, aggregations=[cs.Aggregate("vec", "mean", "1h", name="v")])
    defs, config, offline = build(tmp_path, [view], [cs.FeatureService("svc", [view])])
    sp = pa.table({"user_id": ["a", "a", "b", "c"], "timestamp": ts_array([T0 + 30 * SEC, T0 + 5 * SEC, T0, T0])})
    out = get_training_data(defs, config, offline, sp, "svc").column("interest__v").to_pylist()
    assert out[0] == pytest.approx([2.0, 2.0, 1.0])
    assert out[1] == pytest.approx([1.0, 0.0, 2.0])
    assert out[2] is None and out[3] is None  # strictly before t: b's only event is at t


def test_realtime_view_from_request_and_features(tmp_path: Path) -> None:
    ev, view = _simple_repo(tmp_path)
    req = cs.RequestSource([cs.Field("amount", cs.Float64)])

    @cs.realtime_feature_view(
        sources=[req, view[["amount_max_30m"]]], output=[cs.Field("over_max", cs.Bool), cs.Field("ratio", cs.Float64)]
    )
    def amount_check(r: dict, f: dict) -> dict:
        m = f["amount_max_30m"]
        return {"over_max": m is not None and r["amount"] > m, "ratio": None if not m else r["amount"] / m}

    svc = cs.FeatureService("svc", [amount_check])  # the dependency view is not in the service itself
    defs, config, offline = build(tmp_path, [view], [svc], realtime=[amount_check])
    sp = pa.table(
        {"user_id": ["a", "b", "zz"], "timestamp": ts_array([T0 + 3000 * SEC] * 3), "amount": [50.0, 1000.0, 3.0]}
    )
    out = get_training_data(defs, config, offline, sp, "svc")
    assert out.column_names == ["user_id", "timestamp", "amount", "amount_check__over_max", "amount_check__ratio"]
    rows = rows_of(ev, "ts")
    for i, key in enumerate(["a", "b", "zz"]):
        m = expected_view_row(view, rows, {"user_id": key}, T0 + 3000 * SEC)["amount_max_30m"]
        amount = sp.column("amount")[i].as_py()
        assert out.column("amount_check__over_max")[i].as_py() == (m is not None and amount > m)
        assert out.column("amount_check__ratio")[i].as_py() == (None if not m else amount / m)
    with pytest.raises(InvalidInputError, match="'amount'") as e:
        get_training_data(defs, config, offline, sp.drop_columns(["amount"]), "svc")
    assert e.value.field == "amount"


def test_bad_input(tmp_path: Path) -> None:
    _, view = _simple_repo(tmp_path)
    defs, config, offline = build(tmp_path, [view], [cs.FeatureService("svc", [view])])
    sp = pa.table({"user_id": ["a"], "timestamp": ts_array([T0])})
    with pytest.raises(InvalidInputError, match="user_id") as e:
        get_training_data(defs, config, offline, sp.drop_columns(["user_id"]), "svc")
    assert e.value.field == "user_id"
    with pytest.raises(InvalidInputError, match="'event_time'") as e:
        get_training_data(defs, config, offline, sp, "svc", timestamp_field="event_time")
    assert e.value.field == "event_time"
    with pytest.raises(NotFoundError, match="nope") as e:
        get_training_data(defs, config, offline, sp, "nope")
    with pytest.raises(InvalidInputError, match="null"):
        get_training_data(
            defs, config, offline, pa.table({"user_id": ["a"], "timestamp": pa.nulls(1, pa.timestamp("us"))}), "svc"
        )
    with pytest.raises(InvalidInputError, match="spine must be"):
        get_training_data(defs, config, offline, [{"user_id": "a"}], "svc")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="already has a column"):
        get_training_data(defs, config, offline, sp.append_column("stats__amount_sum_10m", pa.array([1.0])), "svc")
    with pytest.raises(InvalidInputError, match="user_id"):
        get_training_data(defs, config, offline, pa.table({"user_id": [[1]], "timestamp": ts_array([T0])}), "svc")


def test_empty_spine_and_every_function_on_no_events(tmp_path: Path) -> None:
    ev, _ = _tables([], [])
    write_parquet(tmp_path, "ev.parquet", ev)
    view = cs.FeatureView(
        "w", [cs.Entity("user", ["user_id"])], cs.FileSource("data/ev.parquet", "ts"), aggregations=_aggs()
    )
    defs, config, offline = build(tmp_path, [view], [cs.FeatureService("svc", [view])])
    empty = pa.table({"user_id": pa.array([], pa.string()), "timestamp": ts_array([])})
    out = get_training_data(defs, config, offline, empty, "svc")
    assert out.num_rows == 0 and len(out.column_names) == 2 + len(view.feature_names)
    _, sp = _tables([], [("a", T0)])
    row = get_training_data(defs, config, offline, sp, "svc").to_pylist()[0]
    for a in view.aggregations:
        want = {"count": 0, "sum": 0, "last_distinct_n": [], "first_distinct_n": []}.get(a.function)
        assert row[f"w__{a.output_name}"] == want, a.output_name


def test_online_only_view_has_no_training_data(tmp_path: Path) -> None:
    write_parquet(tmp_path, "tx.parquet", _simple_repo(tmp_path)[0])
    user = cs.Entity("user", ["user_id"])
    view = cs.FeatureView(
        "live",
        [user],
        cs.FileSource("data/tx.parquet", "ts"),
        offline=False,
        aggregations=[cs.Aggregate("amount", "sum", "1h")],
    )
    defs, config, offline = build(tmp_path, [view], [cs.FeatureService("svc", [view])])
    with pytest.raises(InvalidInputError, match="online-only"):
        get_training_data(defs, config, offline, pa.table({"user_id": ["a"], "timestamp": ts_array([T0])}), "svc")


def test_not_backfilled_is_a_clear_error(tmp_path: Path) -> None:
    _, view = _simple_repo(tmp_path)
    defs, config, offline = build(tmp_path, [view], [cs.FeatureService("svc", [view])], run_backfill=False)
    with pytest.raises(NotFoundError, match="backfill"):
        get_training_data(defs, config, offline, pa.table({"user_id": ["a"], "timestamp": ts_array([T0])}), "svc")


def test_through_context_store(tmp_path: Path) -> None:
    """The whole user path: definitions file -> apply -> backfill -> get_training_data."""
    rng = random.Random(3)
    n = 500
    ev = pa.table(
        {
            "user_id": [rng.choice(KEYS) for _ in range(n)],
            "ts": ts_array([T0 + rng.randrange(0, 7200) * SEC for _ in range(n)]),
            "amount": [float(rng.randrange(1, 1000)) / 10 for _ in range(n)],
            "merchant": [rng.choice(["m1", "m2", "m3", "m4"]) for _ in range(n)],
        }
    )
    make_repo(
        tmp_path,
        """
        import context_store as cs
        user = cs.Entity("user", join_keys=["user_id"])
        tx = cs.FileSource("data/tx.parquet", timestamp_field="ts")
        stats = cs.FeatureView(
            "stats", [user], tx,
            transform="SELECT user_id, ts, amount * 2 AS amount2, merchant FROM source",
            aggregations=[
                cs.Aggregate("amount2", "sum", "30m"),
                cs.Aggregate("amount2", "stddev_samp", "1h"),
                cs.Aggregate("merchant", "last_distinct_n", "1h", n=2),
            ],
            aggregation_interval="5m",
        )
        req = cs.RequestSource([cs.Field("amount", cs.Float64)])

        @cs.realtime_feature_view(sources=[req, stats], output=[cs.Field("doubled", cs.Float64)])
        def doubled(r, f):
            return {"doubled": r["amount"] * 2 + (f["amount2_sum_30m"] or 0)}

        svc = cs.FeatureService("svc", [stats, doubled])
    """,
        {"tx.parquet": ev},
    )
    store = cs.ContextStore(tmp_path)
    store.apply()
    report = store.backfill()
    assert report.rows == {"stats": n}
    times = [T0 + rng.randrange(0, 8000) * SEC for _ in range(100)]
    keys = [rng.choice([*KEYS, "zz"]) for _ in range(100)]
    sp = pa.table({"user_id": keys, "timestamp": ts_array(times), "amount": [1.0] * 100})
    out = store.get_training_data(sp, "svc")
    view = store.definitions.feature_view("stats")
    rows = [{**r, "amount2": r["amount"] * 2} for r in rows_of(ev, "ts")]
    for i in range(100):
        want = expected_view_row(view, rows, {"user_id": keys[i]}, times[i])
        assert values_match(out.column("stats__amount2_sum_30m")[i].as_py(), want["amount2_sum_30m"])
        assert values_match(
            out.column("stats__amount2_stddev_samp_1h")[i].as_py(), want["amount2_stddev_samp_1h"], scale=200.0
        )
        assert out.column("stats__merchant_last_distinct_2_1h")[i].as_py() == want["merchant_last_distinct_2_1h"]
        assert math.isclose(out.column("doubled__doubled")[i].as_py(), 2.0 + want["amount2_sum_30m"])
    store.close()


def test_failing_realtime_function_names_the_view(tmp_path: Path) -> None:
    _, view = _simple_repo(tmp_path)
    req = cs.RequestSource([cs.Field("amount", cs.Float64)])

    @cs.realtime_feature_view(sources=[req], output=[cs.Field("y", cs.Float64)])
    def broken(r: dict) -> dict:
        return {"y": 1 / 0}

    defs, config, offline = build(tmp_path, [view], [cs.FeatureService("svc", [broken])], realtime=[broken])
    sp = pa.table({"user_id": ["a"], "timestamp": ts_array([T0]), "amount": [1.0]})
    with pytest.raises(DefinitionError, match="broken.*ZeroDivisionError"):
        get_training_data(defs, config, offline, sp, "svc")


def test_multi_key_view_and_null_keys(tmp_path: Path) -> None:
    rng = random.Random(11)
    n = 400
    ev = pa.table(
        {
            "user_id": [rng.choice(["a", "b", None]) for _ in range(n)] + [None, None],
            "merchant": pa.array([rng.choice([1, 2, 3]) for _ in range(n)] + [1, None], pa.int64()),
            # null-key events far outside the keyed events' time range must not leak into any window
            "ts": ts_array(
                [T0 + rng.randrange(0, 3600) * SEC for _ in range(n)]
                + [T0 + 3 * 3600 * SEC + 1900 * SEC, T0 - 10**6 * SEC]
            ),
            "amount": [float(rng.randrange(0, 50)) for _ in range(n)] + [1e6, -1e6],
        }
    )
    write_parquet(tmp_path, "tx.parquet", ev)
    user = cs.Entity("user", ["user_id"])
    merchant = cs.Entity("merchant", [cs.Field("merchant", cs.Int64)])
    view = cs.FeatureView(
        "um",
        [user, merchant],
        cs.FileSource("data/tx.parquet", "ts"),
        aggregations=[
            cs.Aggregate("amount", "count", "10m"),
            cs.Aggregate("amount", "mean", "30m"),
            cs.Aggregate("amount", "min", cs.Lifetime()),
        ],
    )
    defs, config, offline = build(tmp_path, [view], [cs.FeatureService("svc", [view])])
    m = 300
    sp = pa.table(
        {
            "user_id": [rng.choice(["a", "b", "c", None]) for _ in range(m)],
            "merchant": pa.array([rng.choice([1, 2, 3, 4]) for _ in range(m)], pa.int64()),
            "timestamp": ts_array([T0 + rng.randrange(0, 4000) * SEC for _ in range(m - 1)] + [T0 + 2 * 10**6 * SEC]),
        }
    )
    out = get_training_data(defs, config, offline, sp, "svc")
    _check(view, out, ev, sp, value="amount")


def test_kernels_against_brute_force() -> None:
    import numpy as np

    from context_store.compute import _pit, _range_kernels

    rng = np.random.default_rng(5)
    n = 20_011
    for dtype in (np.int64, np.float64):
        v = (rng.integers(-1000, 1000, n) if dtype is np.int64 else rng.normal(0, 100, n)).astype(dtype)
        valid = rng.random(n) > 0.2
        lo = rng.integers(0, n, 3000)
        hi = np.minimum(lo + rng.choice([0, 1, 5, 63, 64, 65, 200, 5000], 3000), n)
        for op, f in (("min", min), ("max", max)):
            got = _range_kernels.RangeExtrema(v, valid, op).query(lo, hi)
            for a, b, g in zip(lo, hi, got):
                vals = [v[i] for i in range(a, b) if valid[i]]
                if vals:
                    assert g == f(vals)
    x = np.concatenate([rng.normal(0, 1e8, 5000), rng.normal(0, 1e-4, 100)])
    cp = _range_kernels.CompensatedPrefix(x)
    lo = np.array([5000, 0, 4990, 5050])
    hi = np.array([5100, 5100, 5010, 5051])
    for a, b, g in zip(lo, hi, cp.window(lo, hi)):
        assert math.isclose(float(g), math.fsum(x[a:b]), rel_tol=1e-12)
    key = np.array([1, 1, 1, 2, 3, 3])
    rank = np.array([3, 1, 2, 0, 9, 4])
    assert _pit.tie_order(key, rank).tolist() == [1, 2, 0, 3, 5, 4]


def test_sketches_stay_within_their_error_bounds(tmp_path: Path) -> None:
    """Large windows: the DataSketches estimates are within the documented bounds of the exact values."""
    rng = random.Random(13)
    n = 6000
    values = [rng.random() * 1000 for _ in range(n)]
    ev = pa.table(
        {
            "user_id": ["a"] * n,
            "ts": ts_array([T0 + i * SEC for i in range(n)]),
            "v": values,
            "k": pa.array([rng.randrange(0, 4000) for _ in range(n)], pa.int64()),
        }
    )
    write_parquet(tmp_path, "ev.parquet", ev)
    view = cs.FeatureView(
        "s",
        [cs.Entity("user", ["user_id"])],
        cs.FileSource("data/ev.parquet", "ts"),
        aggregations=[
            cs.Aggregate("k", "approx_count_distinct", cs.Lifetime(), name="distinct"),
            cs.Aggregate("v", "approx_percentile", cs.Lifetime(), percentile=0.9, name="p90"),
            cs.Aggregate("v", "approx_percentile", "30m", percentile=0.5, name="p50"),
        ],
    )
    defs, config, offline = build(tmp_path, [view], [cs.FeatureService("svc", [view])])
    times = [T0 + n * SEC, T0 + 3000 * SEC]
    out = get_training_data(
        defs, config, offline, pa.table({"user_id": ["a", "a"], "timestamp": ts_array(times)}), "svc"
    )
    for i, t in enumerate(times):
        upto = (t - T0) // SEC
        exact = len(set(ev.column("k").to_pylist()[:upto]))
        assert values_match(out.column("s__distinct")[i].as_py(), exact, approx="hll")
        for name, p, lo in (("s__p90", 0.9, 0), ("s__p50", 0.5, max(upto - 1800, 0))):
            window = sorted(values[lo:upto])
            got = out.column(name)[i].as_py()
            rank = sum(1 for x in window if x <= got) / len(window)
            assert abs(rank - p) <= 0.03, (name, rank, p)  # KLL k=200: 1.65% normalized rank error


def test_index_fast_path_matches_general_path() -> None:
    """The backfill layout (one run per entity) takes a shortcut; it must agree with a full sort."""
    import numpy as np

    from context_store.compute import _pit

    rng = np.random.default_rng(11)
    n = 5000
    users = np.sort(rng.integers(0, 40, n))
    ts = rng.integers(0, 10_000, n)
    for sorted_in_runs in (True, False):
        t = ts.copy()
        if sorted_in_runs:
            t = t[np.lexsort((t, users))]
        keys = pa.chunked_array([pa.array([f"k{u}" for u in users[:2000]]), pa.array([f"k{u}" for u in users[2000:]])])
        fast = _pit.build_index([keys], t.astype(np.int64))
        codes = pc.dictionary_encode(keys.combine_chunks()).indices  # first-seen order == run order
        ref_order = np.lexsort((np.arange(n), t, np.asarray(codes)))
        assert (fast.perm is None) == sorted_in_runs
        got_ts = fast.ts
        assert got_ts.tolist() == t[ref_order].tolist()
        assert fast.seg.tolist() == np.asarray(codes)[ref_order].tolist()
        assert np.all(np.diff(fast.key) >= 0)
        assert fast.has_ties == bool(np.any(np.diff(fast.key) == 0))
        assert fast.starts.tolist() == [*np.searchsorted(fast.seg, np.arange(40)).tolist(), n]
        spine_keys = pa.chunked_array([pa.array(["k3", "k39", "nope", None, "k0"])])
        seg = _pit.lookup_segments(fast, [spine_keys], ["user_id"])
        assert seg.tolist() == [3, 39, -1, -1, 0]
        bound = np.array([5000, 0, 5000, 5000, 10_001])
        pos = fast.positions(seg, bound)
        for s, b, p in zip(seg.tolist(), bound.tolist(), pos.tolist()):
            if s >= 0:
                lo, hi = fast.starts[s], fast.starts[s + 1]
                assert p == lo + int(np.count_nonzero(fast.ts[lo:hi] < b))


def test_index_with_null_keys_and_two_key_columns() -> None:
    import numpy as np

    from context_store.compute import _pit

    a = pa.chunked_array([pa.array(["x", None, "y", "x", "y", "x"])])
    b = pa.chunked_array([pa.array([1, 1, None, 2, 1, 1])])
    ts = np.array([5, 1, 3, 2, 4, 0], dtype=np.int64)
    idx = _pit.build_index([a, b], ts)
    assert idx.n_null == 2  # null in either key: never found
    assert idx.seg[:2].tolist() == [-1, -1]
    segs = idx.seg[2:].tolist()
    assert segs == sorted(segs)
    assert idx.starts[-1] == 6
    for s in range(len(idx.starts) - 1):
        assert np.all(idx.seg[idx.starts[s] : idx.starts[s + 1]] == s)


def test_kernels_edge_sizes() -> None:
    """Block and chunk boundaries: tails shorter than a block, exact multiples, many prefix chunks."""
    import numpy as np

    from context_store.compute import _range_kernels

    rng = np.random.default_rng(3)
    for n in (0, 1, 63, 64, 65, 128, 1000):
        v = rng.normal(0, 10, n)
        valid = rng.random(n) > 0.1
        lo = rng.integers(0, n + 1, 500)
        hi = np.minimum(lo + rng.integers(0, 130, 500), n)
        for op, f in (("min", min), ("max", max)):
            got = _range_kernels.RangeExtrema(v, valid, op).query(lo, hi)
            for a_, b_, g in zip(lo, hi, got):
                vals = [v[i] for i in range(a_, b_) if valid[i]]
                assert g == (f(vals) if vals else (np.inf if op == "min" else -np.inf))
    # the chunked compensated prefix equals the one-pass (unchunked) computation bit for bit
    n = 3 * _range_kernels._CHUNK + 17
    x = rng.lognormal(3, 2, n) * rng.choice([-1.0, 1.0], n)
    cp = _range_kernels.CompensatedPrefix(x)
    p = np.concatenate([[0.0], np.cumsum(x)])
    bb = p[1:] - p[:-1]
    err = (p[:-1] - (p[1:] - bb)) + (x - bb)
    c = np.concatenate([[0.0], np.cumsum(err)])
    assert np.array_equal(cp.p, p) and np.array_equal(cp.c, c)
    lo = rng.integers(0, n, 200)
    hi = np.minimum(lo + rng.integers(0, 3 * _range_kernels._CHUNK, 200), n)
    for a_, b_, g in zip(lo, hi, cp.window(lo, hi)):
        assert math.isclose(float(g), math.fsum(x[a_:b_]), rel_tol=1e-12, abs_tol=1e-12)


def test_large_log_threaded_and_time_filtered(tmp_path: Path) -> None:
    """A log long enough for the 2-thread path and several prefix chunks; a spine covering only the
    log's last hours (rows outside its range are dropped in memory) gives the same answers."""
    import numpy as np

    rng = np.random.default_rng(4)
    n = 120_000
    ev = pa.table(
        {
            "user_id": pa.array(rng.choice(["a", "b", "c", "d"], n)),
            "ts": ts_array((T0 + rng.integers(0, 48 * 3600, n) * SEC).tolist()),
            "amount": np.round(rng.lognormal(2, 1, n), 2),
        }
    )
    write_parquet(tmp_path, "tx.parquet", ev)
    user = cs.Entity("user", ["user_id"])
    view = cs.FeatureView(
        "big",
        [user],
        cs.FileSource("data/tx.parquet", "ts"),
        aggregations=[
            cs.Aggregate("amount", f, w) for w in ("10m", "1h") for f in ("count", "sum", "mean", "max", "min")
        ],
    )
    defs, config, offline = build(tmp_path, [view], [cs.FeatureService("svc", [view])])
    m = 150_000  # spine + log above the threading threshold
    for lo_s, hi_s in ((0, 48 * 3600), (46 * 3600, 48 * 3600)):
        keys = rng.choice(["a", "b", "c", "d", "zz"], m).tolist()
        times = (T0 + rng.integers(lo_s, hi_s, m) * SEC).tolist()
        sp = pa.table({"user_id": keys, "timestamp": ts_array(times)})
        out = get_training_data(defs, config, offline, sp, "svc")
        assert out.select(["user_id", "timestamp"]).equals(sp)
        users = np.array(ev.column("user_id").to_pylist(), dtype=object)
        tss = ev.column("ts").cast(pa.int64()).to_numpy()
        amt = ev.column("amount").to_numpy()
        for i in rng.choice(m, 10, replace=False).tolist():  # the brute-force reference is slow
            sel = users == keys[i]
            rows = [{"user_id": keys[i], "ts": int(t), "amount": float(a)} for t, a in zip(tss[sel], amt[sel])]
            want = expected_view_row(view, rows, {"user_id": keys[i]}, times[i])
            for name, w in want.items():
                assert values_match(out.column(f"big__{name}")[i].as_py(), w), (i, name)


def test_sorted_search_equals_searchsorted() -> None:
    import numpy as np

    from context_store.compute import _pit

    rng = np.random.default_rng(9)
    key = np.sort(rng.integers(0, 5000, 50_000))  # many duplicates
    for q in (np.sort(rng.integers(-10, 5010, 40_000)), rng.integers(-10, 5010, 40_000), np.full(20_000, 7)):
        assert np.array_equal(_pit._sorted_search(key, q), np.searchsorted(key, q, side="left"))


def test_vectorised_distinct_n_matches_python_loop() -> None:
    """Vectorised last/first_distinct_n == the per-row Python loop, including rows whose windows
    hold long runs of repeated values (finished by the Python fallback) and nulls."""
    import numpy as np

    from context_store.compute import _range_kernels

    rng = np.random.default_rng(21)
    n_ev = 3000
    seg = np.sort(rng.integers(0, 5, n_ev))
    arrays = [
        pa.array(
            rng.choice(["a", "b", "c", "d", "e", "f"], n_ev, p=[0.9, 0.02, 0.02, 0.02, 0.02, 0.02]).tolist(),
            mask=rng.random(n_ev) < 0.1,
        ),
        pa.array(rng.integers(0, 4, n_ev), mask=rng.random(n_ev) < 0.1),
        pa.array(rng.choice([0.0, -0.0, 1.5, 2.5], n_ev)),
        pa.array(rng.random(n_ev) < 0.5),
    ]
    starts = np.searchsorted(seg, np.arange(6))
    m = 400
    s = rng.integers(0, 5, m)
    lo = starts[s] + rng.integers(0, 200, m)
    hi = np.minimum(lo + rng.integers(0, 600, m), starts[s + 1])
    lo = np.minimum(lo, hi)
    for arr in arrays:
        codes = _range_kernels.value_codes(arr)
        assert codes is not None
        py = arr.to_pylist()
        for n in (1, 3, 5):
            for last in (True, False):
                flat, cnt = _range_kernels.distinct_n_indices(codes, seg, lo, hi, n, last, lambda py=py: py)
                offsets = np.r_[0, np.cumsum(cnt)]
                got = [[py[i] for i in flat[offsets[r] : offsets[r + 1]]] for r in range(m)]
                assert got == _range_kernels.distinct_n(py, lo, hi, n, last), (arr.type, n, last)
    assert _range_kernels.value_codes(pa.array([1.0, float("nan")])) is None  # Python never finds NaN equal
    assert _range_kernels.value_codes(pa.array([[1], [2]])) is None
