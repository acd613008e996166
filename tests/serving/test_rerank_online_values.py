"""The online values a re-rank scores its candidates by (``retrieval._feature_values`` ->
``feature_columns.view_feature_columns``: one batch read straight to columns) are exactly the values of
one ``get_view_features`` lookup per item -- a Lifetime aggregate of idle items and a row view, unknown
items, repeated ids -- before ``materialize`` (views not in the online state: the general path) and
after it, on SQLite and Redis. Equal values give the re-rank the same scores, so the same order."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

import context_store as cs
from context_store.errors import InvalidInputError
from context_store.serving.feature_columns import as_float, view_feature_columns
from context_store.serving.retrieval import _feature_values
from tests.support.recs import build_recs_repo

ITEM_COUNTS = """
item_counts = cs.FeatureView("item_counts", [item], ratings,
    aggregations=[cs.Aggregate("rating", "count", cs.Lifetime(), name="n"),
                  cs.Aggregate("rating", "mean", cs.Lifetime(), name="mean"),
                  cs.Aggregate("rating", "count", "7d", name="n7")])
"""
NAMES = ["item_counts.n", "item_counts.mean", "item_counts.n7", "item_stats.popularity", "item_stats.trend"]


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[cs.ContextStore]:
    root = build_recs_repo(tmp_path / "repo", similar="cs.Similar(items, k=10, seen_from=ratings)")
    with (root / "features.py").open("a") as f:
        f.write(ITEM_COUNTS)
    url = "sqlite" if request.param == "sqlite" else request.getfixturevalue("redis_url")
    s = cs.ContextStore(root, workspace="w" + uuid.uuid4().hex[:10], online_store=url)
    s.apply()
    s.backfill()
    yield s
    if request.param == "redis":
        s.online.clear()  # type: ignore[attr-defined]
    s.close()


def _one_by_one(store: cs.ContextStore, ids: list[str], at: datetime) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for name in NAMES:
        view = store.definitions.feature_view(name.split(".")[0])
        out[name] = np.array(
            [as_float(store.features.get_view_features(view, {"item_id": i}, at).feature_values[name]) for i in ids],
            dtype=np.float64,
        )
    return out


def _same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert list(got) == list(want)
    for name in want:
        assert got[name].dtype == np.float64 and np.array_equal(got[name], want[name], equal_nan=True), name


def test_batch_columns_equal_one_lookup_per_item(store: cs.ContextStore) -> None:
    ids = [f"i{k}" for k in range(60)] + ["i3", "nope", "i59"]
    at = datetime.now(UTC)
    before = _feature_values(store, NAMES, ids, None, at)  # nothing materialized yet: the general path
    _same(before, _one_by_one(store, ids, at))
    assert np.isnan(before["item_counts.n"]).all()
    store.materialize()
    for v in ("item_counts", "item_stats"):  # every view in the online state now: the batch path applies
        assert store.features._cover(store.features._view_plan(store.definitions.feature_view(v))) is None
    after = _feature_values(store, NAMES, ids, None, at)
    _same(after, _one_by_one(store, ids, at))
    n = after["item_counts.n"]
    assert (n[:60] > 0).sum() > 40 and np.isnan(n[-2]) is np.False_ and n[-2] == 0.0  # unknown item: count 0
    assert np.isnan(after["item_counts.mean"][-2]) and np.isnan(after["item_stats.popularity"][-2])
    assert after["item_stats.popularity"][7] == float((7 * 37) % 60)


def test_keys_of_the_wrong_type_are_refused_as_before(store: cs.ContextStore) -> None:
    store.materialize()
    view = store.definitions.feature_view("item_counts")
    with pytest.raises(InvalidInputError, match="join key 'item_id' must be a string"):
        view_feature_columns(store.features, view, ["n"], ["i1", 7], datetime.now(UTC))  # type: ignore[arg-type]
