"""The Ray backfill engine writes exactly what the local engine writes (same definitions, same rows)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

import context_store as cs
from context_store.compute.batch import backfill
from context_store.compute.training import get_training_data
from context_store.errors import InvalidInputError
from tests.support.batch import T0, build, ts_array, write_parquet

pytest.importorskip("ray")

pytestmark = pytest.mark.slow

SEC = 1_000_000
USER = cs.Entity("user", ["user_id"])
N_FILES = 4


def _part(p: int, n: int = 60) -> pa.Table:
    # out of order within a file, entities spread over every file, some nulls, and one (key, ts)
    # repeated in every file with a different value: for the batch view "the last row (file order) wins"
    users = [f"u{(i * 3 + p) % 7}" for i in range(n)] + ["u0"]
    ts = [T0 + ((i * 37 + p * 11) % (4 * n)) * 60 * SEC for i in range(n)] + [T0 + 5 * SEC]
    amount = [None if (i + p) % 9 == 0 else float(i * 10 + p) for i in range(n)] + [1000.0 + p]
    return pa.table(
        {"user_id": users, "ts": ts_array(ts), "amount": amount, "cat": [f"c{i % 3}" for i in range(n + 1)]}
    )


def _views() -> tuple[list[cs.FeatureView], cs.FeatureService]:
    src = cs.FileSource("data/tx_*.parquet", "ts", name="tx")
    stats = cs.FeatureView(
        "stats",
        [USER],
        src,
        transform="SELECT user_id, ts, amount * 2 AS amount2, cat FROM source WHERE amount IS NOT NULL",
        aggregations=[
            cs.Aggregate("amount2", "sum", "1h"),
            cs.Aggregate("amount2", "count", "3h"),
            cs.Aggregate("cat", "last", "1d"),
        ],
    )
    latest = cs.FeatureView(
        "latest",
        [USER],
        src,
        transform="SELECT user_id, ts, amount, upper(cat) AS cat_u FROM source",
        features=[cs.Field("amount", cs.Float64), cs.Field("cat_u", cs.String)],
        ttl="1d",
    )
    return [stats, latest], cs.FeatureService("svc", [stats, latest])


def _sorted(t: pa.Table) -> pa.Table:
    return t.sort_by([(c, "ascending") for c in t.column_names])


def _repo(root: Path) -> None:
    for p in range(N_FILES):
        write_parquet(root, f"tx_{p}.parquet", _part(p))


def _spine() -> pa.Table:
    n = 40
    return pa.table(
        {
            "user_id": [f"u{i % 8}" for i in range(n)],  # u7 is unknown
            "timestamp": ts_array([T0 + (i * 29 % 250) * 60 * SEC for i in range(n)]),
        }
    )


def test_ray_backfill_matches_local(tmp_path: Path) -> None:
    views, svc = _views()
    _repo(tmp_path / "local")
    _repo(tmp_path / "ray")
    defs_l, config_l, off_l = build(tmp_path / "local", views, [svc], run_backfill=False)
    defs_r, config_r, off_r = build(tmp_path / "ray", views, [svc], run_backfill=False)
    with pytest.raises(InvalidInputError) as err:
        backfill(defs_r, config_r, off_r, engine="spark")
    assert err.value.field == "engine"

    local = backfill(defs_l, config_l, off_l)
    remote = backfill(defs_r, config_r, off_r, engine="ray")
    assert (
        remote.rows
        == local.rows
        == {
            "stats": N_FILES * 61 - sum(1 for p in range(N_FILES) for i in range(60) if (i + p) % 9 == 0),
            "latest": N_FILES * 61,
        }
    )
    assert remote.events == local.events == N_FILES * 61
    for view in ("stats", "latest"):
        a, b = off_l.read(f"fv__{view}"), off_r.read(f"fv__{view}")
        assert b.schema == a.schema
        assert b.equals(a)  # same rows in the same (join key, ts) layout
        assert _sorted(b).equals(_sorted(a))
    # "last row wins" for the repeated (u0, T0+5s): the last file's value, in both engines
    spine = pa.table({"user_id": ["u0"], "timestamp": ts_array([T0 + 6 * SEC])})
    for defs, config, off in ((defs_l, config_l, off_l), (defs_r, config_r, off_r)):
        got = get_training_data(defs, config, off, spine, "svc")
        assert got.column("latest__amount").to_pylist() == [1000.0 + N_FILES - 1]

    tl = get_training_data(defs_l, config_l, off_l, _spine(), "svc")
    tr = get_training_data(defs_r, config_r, off_r, _spine(), "svc")
    assert tr.equals(tl)
    assert tl.column("stats__amount2_sum_1h").null_count == 0  # non-trivial: real features were joined
    assert any(v is not None for v in tl.column("latest__amount").to_pylist())

    # a range backfill replaces only [start, end) -- identically in both engines
    start, end = "2023-11-14T23:00:00Z", "2023-11-15T01:00:00Z"
    for root in ("local", "ray"):
        _repo_shifted(tmp_path / root)
    rl = backfill(defs_l, config_l, off_l, start=start, end=end)
    rr = backfill(defs_r, config_r, off_r, start=start, end=end, engine="ray")
    assert rr.rows == rl.rows and 0 < rl.rows["latest"] < N_FILES * 61
    for view in ("stats", "latest"):
        assert off_r.read(f"fv__{view}").equals(off_l.read(f"fv__{view}"))


def _repo_shifted(root: Path) -> None:
    for p in range(N_FILES):
        t = _part(p)
        amount = pa.array([None if a is None else a + 0.5 for a in t.column("amount").to_pylist()], pa.float64())
        write_parquet(root, f"tx_{p}.parquet", t.set_column(2, "amount", amount))


def test_missing_ray_names_the_install_hint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    views, svc = _views()
    _repo(tmp_path)
    defs, config, offline = build(tmp_path, views, [svc], run_backfill=False)
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as if it were not installed
    with pytest.raises(InvalidInputError, match=r"pip install 'context-store\[ray\]'") as err:
        backfill(defs, config, offline, engine="ray")
    assert err.value.field == "engine"
    assert not offline.exists("fv__stats")  # nothing written
