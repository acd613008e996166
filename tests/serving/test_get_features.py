"""In-process ``get_features``: a real repo -> apply -> backfill -> materialize -> lookups, and bad input."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest

import context_store as cs
from context_store.errors import InvalidInputError, NotFoundError
from tests.support.repo import make_repo

NOW = datetime.now(UTC).replace(microsecond=0)

DEFS = """
import context_store as cs
user = cs.Entity("user", join_keys=["user_id"])
merchant = cs.Entity("merchant", join_keys=[cs.Field("merchant_id", cs.Int64)])
txns = cs.FileSource("data/txns.parquet", timestamp_field="ts")
profiles = cs.FileSource("data/profiles.parquet", timestamp_field="ts")
txn_stats = cs.FeatureView("txn_stats", [user], txns, aggregations=[
    cs.Aggregate("amount", "sum", "1h"), cs.Aggregate("amount", "count", "1d"),
    cs.Aggregate("amount", "mean", "7d"), cs.Aggregate("merchant_id", "last_distinct_n", "1d", n=2)])
merchant_stats = cs.FeatureView("merchant_stats", [merchant], txns, aggregations=[
    cs.Aggregate("amount", "max", "1d")], aggregation_interval="1h")
user_profile = cs.FeatureView("user_profile", [user], profiles,
    features=[cs.Field("age", cs.Int64), cs.Field("city", cs.String)], ttl="3d")
req = cs.RequestSource([cs.Field("amount", cs.Float64)])

@cs.realtime_feature_view(sources=[req, txn_stats[["amount_mean_7d"]]], output=[cs.Field("ratio", cs.Float64)])
def amount_ratio(r, s):
    m = s["amount_mean_7d"]
    return {"ratio": r["amount"] / m if m else None}

fraud = cs.FeatureService("fraud", [user_profile[["city", "age"]], txn_stats, amount_ratio])
pair = cs.FeatureService("pair", [txn_stats[["amount_count_1d"]], merchant_stats])
"""


def _data() -> dict[str, pa.Table]:
    # The oldest event (6.5 days) lies inside txn_stats' 7d window and retention but always before
    # the top-level 4^L-tile block (128 h) that an incremental materialize reloads from, whatever
    # the time of day (at 5 days it fell inside that block during part of each 128-h period).
    ts = [NOW - timedelta(minutes=m) for m in (5, 20, 90, 60 * 30, 60 * 156)]
    txns = pa.table(
        {
            "user_id": ["u1", "u1", "u1", "u1", "u2"],
            "merchant_id": [10, 11, 10, 12, 10],
            "ts": pa.array(ts, pa.timestamp("us", tz="UTC")),
            "amount": [10.0, 20.0, 30.0, 40.0, 5.0],
        }
    )
    profiles = pa.table(
        {
            "user_id": ["u1", "u2", "u3"],
            "ts": pa.array(
                [NOW - timedelta(days=1), NOW - timedelta(hours=2), NOW - timedelta(days=10)],
                pa.timestamp("us", tz="UTC"),
            ),
            "age": [31, 42, 50],
            "city": ["Paris", None, "Rome"],
        }
    )
    return {"txns.parquet": txns, "profiles.parquet": profiles}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[cs.ContextStore]:
    root = make_repo(tmp_path_factory.mktemp("gf") / "repo", DEFS, _data())
    s = cs.ContextStore(root)
    s.apply()
    s.backfill()
    report = s.materialize()
    assert report.rows == 5 + 4 + 3  # merchant_stats skips the 5-day-old event: no window reaches it
    yield s
    s.close()


def test_values_order_and_metadata(store: cs.ContextStore) -> None:
    fv = store.get_features("fraud", {"user_id": "u1"}, {"amount": 50.0})
    assert list(fv.feature_values) == [
        "user_profile.city",
        "user_profile.age",
        "txn_stats.amount_sum_1h",
        "txn_stats.amount_count_1d",
        "txn_stats.amount_mean_7d",
        "txn_stats.merchant_id_last_distinct_2_1d",
        "amount_ratio.ratio",
    ]
    v = fv.feature_values
    assert v["user_profile.city"] == "Paris" and v["user_profile.age"] == 31
    assert v["txn_stats.amount_sum_1h"] == 30.0
    assert v["txn_stats.amount_count_1d"] == 3
    assert v["txn_stats.amount_mean_7d"] == pytest.approx(25.0)
    assert v["txn_stats.merchant_id_last_distinct_2_1d"] == [11, 10]  # oldest -> newest latest occurrence
    assert v["amount_ratio.ratio"] == pytest.approx(2.0)
    meta = {m.name: m for m in fv.metadata}
    assert meta["user_profile.age"].data_type == {"type": "int64"}
    assert meta["txn_stats.merchant_id_last_distinct_2_1d"].data_type == {
        "type": "array",
        "elementType": {"type": "int64"},
    }
    assert meta["user_profile.age"].effective_time == NOW - timedelta(days=1)
    assert all(m.status == "PRESENT" for m in fv.metadata)
    assert meta["txn_stats.amount_count_1d"].view == "txn_stats"


def test_missing_entity_and_ttl(store: cs.ContextStore) -> None:
    fv = store.get_features("fraud", {"user_id": "nobody"}, {"amount": 1.0})
    assert fv.feature_values["user_profile.age"] is None
    assert fv.feature_values["txn_stats.amount_count_1d"] == 0
    assert fv.feature_values["txn_stats.merchant_id_last_distinct_2_1d"] == []
    status = {m.name: m.status for m in fv.metadata}
    assert status["user_profile.age"] == "MISSING_DATA" and status["txn_stats.amount_mean_7d"] == "MISSING_DATA"
    # u2's city is null in the row; u3's profile is older than its 3-day ttl
    assert store.get_features("fraud", {"user_id": "u2"}, {"amount": 1.0}).feature_values["user_profile.city"] is None
    assert store.get_features("fraud", {"user_id": "u3"}, {"amount": 1.0}).feature_values["user_profile.city"] is None
    past = store.get_features("fraud", {"user_id": "u3"}, {"amount": 1.0}, request_time=NOW - timedelta(days=8))
    assert past.feature_values["user_profile.city"] == "Rome"


def test_request_time_windows(store: cs.ContextStore) -> None:
    # 10 minutes ago: the 5-minute-old event is in the future, excluded (ts < t)
    fv = store.get_features("fraud", {"user_id": "u1"}, {"amount": 1.0}, request_time=NOW - timedelta(minutes=10))
    assert fv.feature_values["txn_stats.amount_sum_1h"] == 20.0
    assert fv.feature_values["txn_stats.amount_count_1d"] == 2
    # exactly at an event's time: it does not see itself
    fv = store.get_features("fraud", {"user_id": "u1"}, {"amount": 1.0}, request_time=NOW - timedelta(minutes=5))
    assert fv.feature_values["txn_stats.amount_sum_1h"] == 20.0
    iso = (NOW - timedelta(minutes=10)).isoformat()
    assert (
        store.get_features("fraud", {"user_id": "u1"}, {"amount": 1.0}, request_time=iso).feature_values[
            "txn_stats.amount_count_1d"
        ]
        == 2
    )


def test_multi_entity_and_int_keys(store: cs.ContextStore) -> None:
    fv = store.get_features("pair", {"user_id": "u1", "merchant_id": 10})
    hour = NOW.replace(minute=0, second=0)
    want = max(a for m, a, t in [(10, 10.0, 5), (10, 30.0, 90)] if NOW - timedelta(minutes=t) < hour)
    assert fv.feature_values == {"txn_stats.amount_count_1d": 3, "merchant_stats.amount_max_1d": want}
    # an int64 key given as a decimal string (as JSON clients send int64) is accepted
    assert store.get_features("pair", {"user_id": "u1", "merchant_id": "10"}).feature_values == fv.feature_values


def test_batch_and_async_equal_single(store: cs.ContextStore) -> None:
    keys = [{"user_id": u} for u in ("u1", "u2", "nobody", "u1")]
    batch = store.get_features_batch("fraud", keys, {"amount": 3.0})
    singles = [store.get_features("fraud", k, {"amount": 3.0}).feature_values for k in keys]
    assert [b.feature_values for b in batch] == singles
    per_entity = store.get_features_batch("fraud", keys[:2], [{"amount": 1.0}, {"amount": 2.0}])
    assert per_entity[1].feature_values["amount_ratio.ratio"] == pytest.approx(2.0 / 5.0)
    ab = asyncio.run(store.features.get_features_batch_async("fraud", keys, {"amount": 3.0}))
    assert [b.feature_values for b in ab] == singles
    pair = store.get_features_batch(
        "pair", [{"user_id": "u1", "merchant_id": 10}, {"user_id": "u2", "merchant_id": 11}]
    )
    assert [p.feature_values for p in pair] == [
        store.get_features("pair", {"user_id": u, "merchant_id": m}).feature_values for u, m in (("u1", 10), ("u2", 11))
    ]
    a = asyncio.run(store.get_features_async("fraud", {"user_id": "u1"}, {"amount": 3.0}))
    assert a.feature_values == singles[0]
    assert store.get_features_batch("fraud", [], None) == []


# -- bad input: each names the problem ---------------------------------------------------------


@pytest.mark.parametrize(
    ("service", "keys", "ctx", "error", "field", "words"),
    [
        ("nope", {"user_id": "u1"}, None, NotFoundError, "feature_service", "unknown feature service 'nope'"),
        ("fraud", {}, {"amount": 1.0}, InvalidInputError, "join_keys.user_id", "missing join key 'user_id'"),
        (
            "fraud",
            {"user_id": "u1", "color": "red"},
            {"amount": 1.0},
            InvalidInputError,
            "join_keys.color",
            "unexpected join key 'color'",
        ),
        ("fraud", {"user_id": 7}, {"amount": 1.0}, InvalidInputError, "join_keys.user_id", "must be a string"),
        (
            "pair",
            {"user_id": "u1", "merchant_id": "ten"},
            None,
            InvalidInputError,
            "join_keys.merchant_id",
            "must be an int64",
        ),
        (
            "pair",
            {"user_id": "u1", "merchant_id": True},
            None,
            InvalidInputError,
            "join_keys.merchant_id",
            "must be an int64",
        ),
        (
            "pair",
            {"user_id": "u1", "merchant_id": 1.5},
            None,
            InvalidInputError,
            "join_keys.merchant_id",
            "must be an int64",
        ),
        ("fraud", ["u1"], {"amount": 1.0}, InvalidInputError, "join_keys", "must be an object"),
        (
            "fraud",
            {"user_id": "u1"},
            None,
            InvalidInputError,
            "request_context.amount",
            "missing request context field 'amount'",
        ),
        (
            "fraud",
            {"user_id": "u1"},
            {"amt": 1.0},
            InvalidInputError,
            "request_context.amount",
            "missing request context field 'amount'",
        ),
        ("fraud", {"user_id": "u1"}, {"amount": "12"}, InvalidInputError, "request_context.amount", "must be float64"),
        ("fraud", {"user_id": "u1"}, [1.0], InvalidInputError, "request_context", "must be an object"),
    ],
)
def test_bad_input(
    store: cs.ContextStore, service: str, keys: object, ctx: object, error: type, field: str, words: str
) -> None:
    with pytest.raises(error, match=words) as ei:
        store.get_features(service, keys, ctx)  # type: ignore[arg-type]
    assert ei.value.field == field
    with pytest.raises(error) as ei2:
        asyncio.run(store.get_features_async(service, keys, ctx))  # type: ignore[arg-type]
    assert ei2.value.field == field


def test_bad_batch_input_names_the_entity(store: cs.ContextStore) -> None:
    with pytest.raises(InvalidInputError, match="entity 1: missing join key 'user_id'") as ei:
        store.get_features_batch("fraud", [{"user_id": "u1"}, {"uid": "u2"}], {"amount": 1.0})
    assert ei.value.field == "[1].join_keys.user_id"
    with pytest.raises(InvalidInputError, match="one object per entity"):
        store.get_features_batch("fraud", [{"user_id": "u1"}], [{"amount": 1.0}, {"amount": 2.0}])
    with pytest.raises(InvalidInputError, match="list of join key objects"):
        store.get_features_batch("fraud", {"user_id": "u1"}, {"amount": 1.0})  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="ISO-8601") as ei:
        store.get_features("fraud", {"user_id": "u1"}, {"amount": 1.0}, request_time="yesterday")  # type: ignore[arg-type]
    assert ei.value.field == "request_time"


def test_failing_realtime_view_is_a_clear_error(tmp_path: Path) -> None:
    defs = (
        DEFS
        + """
@cs.realtime_feature_view(sources=[req], output=[cs.Field("boom", cs.Float64)])
def boom(r):
    return {"boom": 1 / 0}
bad = cs.FeatureService("bad", [boom])
"""
    )
    s = cs.ContextStore(make_repo(tmp_path / "r", defs, _data()))
    s.apply()
    with pytest.raises(InvalidInputError, match="realtime feature view 'boom' failed: ZeroDivisionError") as ei:
        s.get_features("bad", {}, {"amount": 1.0})
    assert ei.value.field == "boom"
    s.close()


def test_materialize_is_incremental_and_idempotent(tmp_path: Path) -> None:
    data = _data()
    root = make_repo(tmp_path / "inc", DEFS, data)
    s = cs.ContextStore(root)
    s.apply()
    s.backfill()
    first = s.materialize()
    assert {v.view: v.mode for v in first.views} == {
        "txn_stats": "full",
        "merchant_stats": "full",
        "user_profile": "full",
    }
    before = s.get_features("fraud", {"user_id": "u1"}, {"amount": 1.0}).feature_values
    # a rerun with nothing new changes nothing
    again = s.materialize()
    assert all(v.mode == "incremental" for v in again.views)
    assert s.get_features("fraud", {"user_id": "u1"}, {"amount": 1.0}).feature_values == before
    # new events arrive in the offline log: the rerun loads them (and not the whole history)
    txns = data["txns.parquet"]
    new = pa.table(
        {
            "user_id": ["u1", "u9"],
            "merchant_id": [13, 10],
            "ts": pa.array([NOW - timedelta(minutes=1), NOW - timedelta(minutes=2)], pa.timestamp("us", tz="UTC")),
            "amount": [100.0, 7.0],
        }
    )
    import pyarrow.parquet as pq

    pq.write_table(pa.concat_tables([txns, new]), root / "data" / "txns.parquet")
    s.backfill()
    inc = s.materialize(views=["txn_stats"])
    assert inc.views[0].mode == "incremental" and inc.views[0].rows < txns.num_rows + 2
    after = s.get_features("fraud", {"user_id": "u1"}, {"amount": 1.0}).feature_values
    assert after["txn_stats.amount_sum_1h"] == before["txn_stats.amount_sum_1h"] + 100.0
    assert after["txn_stats.amount_count_1d"] == before["txn_stats.amount_count_1d"] + 1
    assert after["txn_stats.merchant_id_last_distinct_2_1d"] == [10, 13]
    assert s.get_features("fraud", {"user_id": "u9"}, {"amount": 1.0}).feature_values["txn_stats.amount_count_1d"] == 1
    assert s.materialize(views=["txn_stats"]).views[0].mode == "incremental"
    assert s.get_features("fraud", {"user_id": "u1"}, {"amount": 1.0}).feature_values == after
    with pytest.raises(NotFoundError, match="unknown feature view 'nope'"):
        s.materialize(views=["nope"])
    s.close()


def test_two_services_do_not_share_metadata(store: cs.ContextStore) -> None:
    """Metadata objects are memoised across requests; each service keeps its own names."""
    a = store.get_features("pair", {"user_id": "u1", "merchant_id": 10})
    b = store.get_features("fraud", {"user_id": "u1"}, {"amount": 1.0})
    a2 = store.get_features("pair", {"user_id": "u1", "merchant_id": 10})
    assert [m.name for m in a.metadata] == [m.name for m in a2.metadata] == list(a.feature_values)
    assert [m.name for m in b.metadata] == list(b.feature_values)
