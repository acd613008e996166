"""Regressions found while integrating the areas."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
import pyarrow as pa

import context_store as cs
from tests.helpers import make_repo


def test_count_only_string_column_materializes_and_matches_training(tmp_path: Path) -> None:
    # A string column read only by `count` once crashed materialize (no raw bytes for it);
    # count counts rows, so the event with a null user_id counts too.
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    ts = pa.array([now - dt.timedelta(minutes=m) for m in (5, 10, 20, 30)], pa.timestamp("us", tz="UTC"))
    table = pa.table({"user_id": ["u1", "u2", None, "u3"], "item_id": ["a", "b", "a", "a"], "ts": ts})
    repo = make_repo(
        tmp_path / "r",
        """
        import context_store as cs
        item = cs.Entity("item", join_keys=["item_id"])
        src = cs.FileSource("data/v.parquet", timestamp_field="ts")
        pop = cs.FeatureView("pop", [item], src, aggregations=[
            cs.Aggregate("user_id", "count", "1d"), cs.Aggregate("user_id", "count", "25m")])
        svc = cs.FeatureService("s", [pop])
        """,
        {"v.parquet": table},
    )
    store = cs.ContextStore(repo)
    store.apply()
    store.backfill()
    store.materialize()
    online = store.get_features("s", {"item_id": "a"}, request_time=now).feature_values
    assert online == {"pop.user_id_count_1d": 3, "pop.user_id_count_25m": 2}
    offline = store.get_training_data(pd.DataFrame({"item_id": ["a"], "timestamp": [now]}), "s")
    assert offline["pop__user_id_count_1d"].tolist() == [3]
    assert offline["pop__user_id_count_25m"].tolist() == [2]
    store.close()
