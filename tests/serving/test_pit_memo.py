"""A replay's re-rank values are remembered per (view, features, as_of) (``serving/pit_memo.py``):
the same floats, bit for bit, as computing every call's candidates, whatever subsets the earlier
calls asked for; a commit to the view's log starts over."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

import context_store as cs
from context_store.definitions import FeatureView
from context_store.serving import pit_memo
from context_store.serving.retrieval import _offline_floats
from tests.support.recs import T0, build_recs_repo, open_built

ITEM_POP = """
item_pop = cs.FeatureView("item_pop", [item], ratings, aggregations=[
    cs.Aggregate("rating", "count", "7d", name="n7"), cs.Aggregate("rating", "mean", cs.Lifetime(), name="avg"),
    cs.Aggregate("rating", "sum", "30d", name="s30")])
"""
FEATS = ["n7", "avg", "s30"]
N_ITEMS = 100  # > ENTITY_PUSHDOWN_MAX (64): the remembered path


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[cs.ContextStore]:
    root = build_recs_repo(tmp_path_factory.mktemp("pitmemo") / "repo", n_items=N_ITEMS, users=30)
    with (root / "features.py").open("a") as f:
        f.write(ITEM_POP)
    s = open_built(root)
    yield s
    s.close()


def _bits(x: dict[str, np.ndarray]) -> dict[str, bytes]:
    return {f: v.tobytes() for f, v in x.items()}


def test_remembered_values_are_the_computed_ones_bit_for_bit(store: cs.ContextStore) -> None:
    view = store.definitions.feature_view("item_pop")
    assert isinstance(view, FeatureView)
    ids = [f"i{k}" for k in range(N_ITEMS)]
    calls: list[int] = []

    def counted(s: cs.ContextStore, v: FeatureView, f: list[str], keys: list[Any], at: datetime) -> Any:
        calls.append(len(keys))
        return _offline_floats(s, v, f, keys, at)

    rng = random.Random(3)
    for at in (T0 + timedelta(days=20, hours=5), T0 + timedelta(days=50)):
        pit_memo.clear()
        calls.clear()
        subsets = [rng.sample(ids, rng.choice([65, 80, 99])) for _ in range(5)]
        subsets.append(subsets[0][:10] + subsets[1][:60])  # a few missing: padded with known ones
        for sub in subsets:
            want = _offline_floats(store, view, FEATS, sub, at)  # the old path: every key computed
            assert _bits(pit_memo.pit_floats(store, view, FEATS, sub, at, counted)) == _bits(want)
        assert all(n > 64 for n in calls)  # every computation took the whole-log path
        before = len(calls)
        assert _bits(pit_memo.pit_floats(store, view, FEATS, subsets[2], at, counted)) == _bits(
            _offline_floats(store, view, FEATS, subsets[2], at)
        )
        assert len(calls) == before  # all known: nothing computed
    small = ids[:20]  # few candidates: not remembered, computed as before
    n = len(calls)
    pit_memo.pit_floats(store, view, FEATS, small, T0, counted)
    pit_memo.pit_floats(store, view, FEATS, small, T0, counted)
    assert len(calls) == n + 2


def test_a_commit_to_the_log_starts_over(store: cs.ContextStore) -> None:
    view = store.definitions.feature_view("item_pop")
    assert isinstance(view, FeatureView)
    ids = [f"i{k}" for k in range(N_ITEMS)]
    at = datetime.now(UTC) + timedelta(days=1)  # after the push below: its rating counts
    pit_memo.clear()
    first = pit_memo.pit_floats(store, view, FEATS, ids, at, _offline_floats)
    row = pq.read_table(store.config.repo / "data" / "ratings.parquet").to_pylist()[0]
    assert store.push("ratings", [{**row, "ts": datetime.now(UTC), "rating": 5.0}]).visible
    store.materialize()  # commits the view's offline log (the token the memo is keyed by)
    again = pit_memo.pit_floats(store, view, FEATS, ids, at, _offline_floats)
    assert _bits(again) == _bits(_offline_floats(store, view, FEATS, ids, at))
    i = ids.index(row["item_id"])
    assert again["n7"][i] == first["n7"][i] + 1


def test_float_columns_with_nulls_convert() -> None:
    """A float64 column converted zero-copy was read-only: its nulls could not be set to NaN (a replay
    whose candidate had no rating yet as of ``as_of``, for a mean, raised ValueError)."""
    import pyarrow as pa

    from context_store.serving.retrieval import _floats

    got = _floats(pa.array([1.5, None, 2.0], pa.float64()))
    assert got[0] == 1.5 and np.isnan(got[1]) and got[2] == 2.0


def test_a_repeated_time_computes_the_whole_catalogue_once(store: cs.ContextStore) -> None:
    view = store.definitions.feature_view("item_pop")
    assert isinstance(view, FeatureView)
    ids = [f"i{k}" for k in range(N_ITEMS)]
    at = T0 + timedelta(days=33, hours=7)
    calls: list[int] = []

    def counted(s: cs.ContextStore, v: FeatureView, f: list[str], keys: list[Any], t: datetime) -> Any:
        calls.append(len(keys))
        return _offline_floats(s, v, f, keys, t)

    pit_memo.clear()
    a, b, c = ids[:66], ids[10:80], ids[30:]
    for sub in (a, b, c):
        got = pit_memo.pit_floats(store, view, FEATS, sub, at, counted, lambda: list(ids))
        assert _bits(got) == _bits(_offline_floats(store, view, FEATS, sub, at))
    # 1st call: its 66 candidates; 2nd (missing some, same time): the rest of the catalogue (34, padded
    # with known ones to 65: the whole-log path); 3rd: nothing
    assert calls == [66, 65]
