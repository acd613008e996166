"""Expectations: definition-time checks and each check on crafted Arrow tables (nulls, NaN, edge ratios)."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

import context_store as cs
from context_store.compute.quality import check, feature_stats
from context_store.errors import DefinitionError

E = cs.Expect
USER = cs.Entity("user", ["user_id"])
SRC = cs.FileSource("data/t.parquet", "ts")


def _one(e: cs.definitions.Expectation, table: pa.Table, keys: tuple[str, ...] = ("user_id",)) -> tuple[bool, dict]:
    (r,) = check([e], table, list(keys), "ts")
    return r.passed, r.observed


def test_not_null_counts_nan_as_missing_and_respects_the_ratio() -> None:
    t = pa.table({"x": [1.0, float("nan"), None, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0]})
    ok, obs = _one(E.not_null("x"), t)
    assert not ok and obs == {"ratio": 0.8, "nulls": 2, "rows": 10}
    assert _one(E.not_null("x", ratio=0.8), t)[0]  # exactly at the ratio: passes
    assert not _one(E.not_null("x", ratio=0.81), t)[0]
    assert _one(E.not_null("x"), pa.table({"x": pa.array([], pa.float64())}))[0]  # no rows: nothing fails
    ok, obs = _one(E.not_null("s"), pa.table({"s": ["a", None]}))
    assert not ok and obs["nulls"] == 1


def test_range_ignores_missing_values_and_reports_the_outliers() -> None:
    t = pa.table({"x": [0, 5, 10, 11, -1, None]})
    ok, obs = _one(E.range("x", 0, 10), t)
    assert not ok and obs == {"ratio": 0.6, "below": 1, "above": 1, "rows": 5, "min": -1, "max": 11}
    assert _one(E.range("x", 0, 10, ratio=0.6), t)[0]
    assert _one(E.range("x", min=-1), t)[0] and not _one(E.range("x", max=10), t)[0]
    assert _one(E.range("f", 0, 1), pa.table({"f": [0.0, 1.0, float("nan")]}))[0]
    ok, obs = _one(E.range("s", 0, 1), pa.table({"s": ["a"]}))
    assert not ok and "range needs a number" in obs["error"]


def test_allowed_values_and_examples_of_the_others() -> None:
    t = pa.table({"c": ["US", "DE", "XX", "XX", None, "YY"]})
    ok, obs = _one(E.allowed("c", ["US", "DE"]), t)
    assert not ok and obs["not_allowed"] == 3 and obs["examples"] == ["XX", "YY"] and obs["ratio"] == 0.4
    assert _one(E.allowed("c", ["US", "DE", "XX", "YY"]), t)[0]  # nulls are not_null's business
    assert _one(E.allowed("n", [1, 2]), pa.table({"n": [1, 2, 2]}))[0]
    ok, obs = _one(E.allowed("n", ["a"]), pa.table({"n": [1]}))
    assert not ok and "error" in obs


def test_unique_on_a_feature_and_per_event_time_on_a_join_key() -> None:
    ts = pa.array([1, 2, 2, 3], pa.int64()).cast(pa.timestamp("us", tz="UTC"))
    t = pa.table({"user_id": ["a", "a", "a", "b"], "ts": ts, "code": ["p", "q", "r", "p"]})
    ok, obs = _one(E.unique("user_id"), t)  # a at ts=2 twice
    assert not ok and obs["duplicates"] == 1 and obs["example"] == "a" and obs["per"] == ["ts"]
    ok, obs = _one(E.unique("code"), t)
    assert not ok and obs == {"duplicates": 1, "rows": 4, "example": "p"}
    t2 = t.set_column(1, "ts", pa.array([1, 2, 3, 3], pa.int64()).cast(pa.timestamp("us", tz="UTC")))
    assert _one(E.unique("user_id"), t2)[0]
    assert _one(E.unique("code"), pa.table({"code": ["x", None, None]}))[0]  # nulls are not values


def test_a_missing_column_fails_and_says_so() -> None:
    ok, obs = _one(E.not_null("gone"), pa.table({"x": [1]}))
    assert not ok and obs["error"] == "no column 'gone'"


def test_definition_time_errors_name_the_feature() -> None:
    with pytest.raises(DefinitionError, match="ratio must be a number in \\(0, 1\\]"):
        E.not_null("x", ratio=1.5)
    with pytest.raises(DefinitionError, match="give min, max or both"):
        E.range("x")
    with pytest.raises(DefinitionError, match="min 5 is greater than max 1"):
        E.range("x", 5, 1)
    with pytest.raises(DefinitionError, match="non-empty list"):
        E.allowed("x", "US")
    feats = [cs.Field("amount", cs.Float64), cs.Field("country", cs.String)]
    with pytest.raises(DefinitionError, match="no feature 'amout'"):
        cs.FeatureView("v", [USER], SRC, features=feats, expectations=[E.not_null("amout")])
    with pytest.raises(DefinitionError, match="feature 'country' is cs.String, range needs a number"):
        cs.FeatureView("v", [USER], SRC, features=feats, expectations=[E.range("country", 0, 1)])
    with pytest.raises(DefinitionError, match="expect on its input column 'amount'"):
        cs.FeatureView(
            "v",
            [USER],
            SRC,
            aggregations=[cs.Aggregate("amount", "sum", "1d")],
            expectations=[E.range("amount_sum_1d", 0, 1)],
        )
    with pytest.raises(DefinitionError, match="two not_null expectations on feature 'amount'"):
        cs.FeatureView("v", [USER], SRC, features=feats, expectations=[E.not_null("amount"), E.not_null("amount")])
    v = cs.FeatureView(
        "v",
        [USER],
        SRC,
        aggregations=[cs.Aggregate("amount", "sum", "1d")],
        expectations=[E.range("amount", min=0), E.unique("user_id")],
    )
    assert v.spec()["expectations"][0] == {"kind": "range", "feature": "amount", "ratio": 1.0, "min": 0.0, "max": None}
    plain = cs.FeatureView("p", [USER], SRC, features=feats)
    assert "expectations" not in plain.spec()  # specs applied before expectations existed are unchanged


def test_feature_stats_numbers_and_strings() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(10, 2, 5000)
    t = pa.table({"x": pa.array(np.append(x, np.nan)), "s": ["a"] * 3000 + ["b"] * 2000 + [None]})
    num, cat = feature_stats(t, ["x", "s"])
    assert num.count == 5001 and num.nulls == 1 and math.isclose(num.mean or 0, x.mean(), rel_tol=1e-9)
    assert math.isclose(num.quantiles["0.5"], float(np.median(x)), abs_tol=0.15) and num.kll
    assert cat.nulls == 1 and cat.top == [("a", 3000), ("b", 2000)]
