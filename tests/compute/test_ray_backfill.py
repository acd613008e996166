"""The Ray backfill engine writes exactly what the local engine writes (same definitions, same rows),
with a big file cut into many tasks and the output written by the tasks as Lance fragments."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import context_store as cs
from context_store.compute import ray_backfill as rb
from context_store.compute.batch import backfill
from context_store.config import load_config
from context_store.errors import DefinitionError, InvalidInputError
from tests.support.batch import T0, build, ts_array, write_parquet
from tests.support.repo import make_repo

pytest.importorskip("ray")

pytestmark = pytest.mark.slow

SEC = 1_000_000
HOUR = 3600 * SEC
NOW = (int(time.time()) // 60) * 60 * SEC + 7 * SEC  # fixed for the module, not aligned to tiles
USERS = [f"u{i}" for i in range(9)]
N_SMALL = 3
N_BIG = 1500
BIG_ROW_GROUP = 50


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    """One local Ray for the module (the engine joins it instead of starting one per backfill)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture
def small_units(monkeypatch: pytest.MonkeyPatch) -> None:
    """Units of a few row groups: the big file becomes many read tasks (windows cross their bounds)."""
    monkeypatch.setattr(rb, "MIN_UNIT_ROWS", 1)


DEFS = """
import context_store as cs
user = cs.Entity("user", join_keys=["user_id"])
tx = cs.FileSource("data/tx_*.parquet", timestamp_field="ts")
profiles = cs.FileSource("data/profiles.parquet", timestamp_field="ts")
stats = cs.FeatureView("stats", [user], tx,
    transform="SELECT user_id, ts, amount * 2 AS amount2, cat FROM source WHERE amount IS NOT NULL",
    aggregations=[cs.Aggregate("amount2", "sum", "1h"), cs.Aggregate("amount2", "count", "3h"),
                  cs.Aggregate("amount2", "max", "1d"), cs.Aggregate("cat", "last", "1d"),
                  cs.Aggregate("amount2", "sum", cs.Lifetime(), name="amount2_sum_life")])
tiled = cs.FeatureView("tiled", [user], tx, aggregation_interval="30m",
    aggregations=[cs.Aggregate("amount", "mean", "2h"), cs.Aggregate("cat", "last_distinct_n", "1d", n=2)])
latest = cs.FeatureView("latest", [user], tx,
    transform="SELECT user_id, ts, amount, upper(cat) AS cat_u FROM source",
    features=[cs.Field("amount", cs.Float64), cs.Field("cat_u", cs.String)], ttl="1d")
profile = cs.FeatureView("profile", [user], profiles, ttl="3d",
    features=[cs.Field("age", cs.Int64), cs.Field("city", cs.String)])

def flag_big(t):  # a Python transform: shipped to the Ray workers by value
    import pyarrow.compute as pc
    return t.append_column("big", pc.greater(t["amount"], 50.0))

flags = cs.FeatureView("flags", [user], tx, transform=flag_big, ttl="1d",
    features=[cs.Field("big", cs.Bool), cs.Field("amount", cs.Float64)])
svc = cs.FeatureService("svc", [stats, tiled, latest, profile, flags])
"""


def _tx(rng: random.Random, n: int, ordered: bool, tag: float) -> pa.Table:
    ts = [NOW - rng.randint(0, 2 * 86400) * SEC for _ in range(n)]
    if ordered:  # an event log appended in time order: row groups are time slices
        ts.sort()
    users = [rng.choice(USERS) for _ in range(n)]
    amount = [None if rng.random() < 0.1 else rng.randint(-40, 400) / 4 for _ in range(n)]
    # one (key, ts) repeated in every file with another value: "the last row (file order) wins"
    users.append("u0")
    ts.append(NOW - 5 * HOUR)
    amount.append(1000.0 + tag)
    return pa.table(
        {
            "user_id": users,
            "ts": pa.array(ts, pa.timestamp("us", tz="UTC")),
            "amount": pa.array(amount, pa.float64()),
            "cat": [rng.choice(["a", "b", "c", None]) for _ in range(n + 1)],
        }
    )


def _data(seed: int) -> dict[str, pa.Table]:
    rng = random.Random(seed)
    out = {f"tx_{p}.parquet": _tx(rng, 60, False, p) for p in range(N_SMALL)}
    out["profiles.parquet"] = pa.table(
        {
            "user_id": USERS * 2,
            "ts": pa.array([NOW - rng.randint(1, 40) * HOUR for _ in range(18)], pa.timestamp("us", tz="UTC")),
            "age": [rng.randint(18, 90) for _ in range(18)],
            "city": [rng.choice(["Oslo", "Lima", None]) for _ in range(18)],
        }
    )
    return out


def _write_big(root: Path, seed: int) -> None:
    t = _tx(random.Random(seed + 100), N_BIG, True, 99)
    pq.write_table(t, root / "data" / "tx_z_big.parquet", row_group_size=BIG_ROW_GROUP)


def _repo(root: Path, seed: int = 0) -> Path:
    make_repo(root, DEFS, _data(seed))
    _write_big(root, seed)
    return root


def _canon(t: pa.Table, ties: bool) -> pa.Table:
    """Rows by (join key, ts), equal (key, ts) in stored order (Arrow's sort is stable): the PIT
    readers' view; ``ties=False``: by every column (an aggregate view's ties have no order)."""
    keys = ["user_id", "ts"] if ties else ["user_id", "ts", *(c for c in t.column_names if c not in ("user_id", "ts"))]
    return t.take(pc.sort_indices(t, [(c, "ascending") for c in keys]))


def _contiguous_sorted(t: pa.Table) -> bool:
    """Each entity's rows are one run, in time order (what the readers' fast path expects)."""
    users, ts = t.column("user_id").to_pylist(), t.column("ts").cast(pa.int64()).to_pylist()
    seen: set[str] = set()
    for i, u in enumerate(users):
        if i == 0 or u != users[i - 1]:
            if u in seen:
                return False
            seen.add(u)
        elif ts[i] < ts[i - 1]:
            return False
    return True


def _dt(us: int) -> datetime:
    return datetime.fromtimestamp(us / SEC, tz=UTC)


def _stores(tmp_path: Path, ray_offline: str) -> tuple[cs.ContextStore, cs.ContextStore]:
    root = _repo(tmp_path / "repo")
    local = cs.ContextStore(root, workspace="loc")
    remote_offline = tmp_path / "ray_offline"
    uri = remote_offline.as_uri() if ray_offline == "file_uri" else str(remote_offline)
    remote = cs.ContextStore(config=load_config(root, workspace="ray", offline_store=uri))
    for s in (local, remote):
        s.apply()
    return local, remote


def _compare_offline(local: cs.ContextStore, remote: cs.ContextStore, whole: bool = True) -> None:
    for view in ("stats", "tiled", "latest", "profile", "flags"):
        a, b = local.offline.read(f"fv__{view}"), remote.offline.read(f"fv__{view}")
        assert b.schema == a.schema
        ties = view in ("latest", "profile", "flags")  # batch views: "the last row wins" among equal (key, ts)
        assert _canon(b, ties).equals(_canon(a, ties)), view
        # a whole rewrite keeps each entity in one run; a range rewrite appends its range (both engines)
        assert _contiguous_sorted(b) or not whole, view


@pytest.mark.parametrize("ray_offline", ["path", "file_uri"])
def test_ray_backfill_matches_local(tmp_path: Path, ray_cluster: None, small_units: None, ray_offline: str) -> None:
    local, remote = _stores(tmp_path, ray_offline)
    files = sorted(str(p) for p in (tmp_path / "repo" / "data").glob("tx_*.parquet"))
    tx = local.definitions.feature_view("stats").source
    units = rb.plan_units(tx, files, None, None, cpus=2)  # type: ignore[arg-type]
    big = [u for u in units if u.path.endswith("big.parquet")]
    assert len(big) >= 4 and sum(u.rows for u in big) == N_BIG + 1  # one big file -> many tasks

    rl = local.backfill()
    rr = remote.backfill(engine="ray")
    assert rl is not None and rr is not None
    assert rr.rows == rl.rows and rr.events == rl.events == N_SMALL * 61 + N_BIG + 1 + 18
    _compare_offline(local, remote)

    # "last row wins" for the repeated (u0, NOW - 5h): the last file's value, in both engines
    spine = pa.table({"user_id": ["u0"], "timestamp": pa.array([NOW - 5 * HOUR + SEC], pa.timestamp("us", "UTC"))})
    for s in (local, remote):
        assert s.get_training_data(spine, "svc").column("latest__amount").to_pylist() == [1099.0]

    rng = random.Random(7)
    n = 200
    spine = pa.table(
        {
            "user_id": [rng.choice([*USERS, "nobody"]) for _ in range(n)],
            "timestamp": pa.array([NOW - rng.randint(0, 50 * 3600) * SEC for _ in range(n)], pa.timestamp("us", "UTC")),
        }
    )
    tl, tr = local.get_training_data(spine, "svc"), remote.get_training_data(spine, "svc")
    assert tr.equals(tl)
    assert tl.column("stats__amount2_sum_1h").null_count < n  # non-trivial: real features were joined

    # online state loaded from either engine's tables serves the same values
    for s in (local, remote):
        s.materialize()
    now = _dt(NOW)
    for u in USERS:
        a = local.get_features("svc", {"user_id": u}, request_time=now).feature_values
        b = remote.get_features("svc", {"user_id": u}, request_time=now).feature_values
        assert b == a, u
    assert any(v is not None for v in a.values())

    # a range backfill replaces only [start, end) -- identically in both engines; row groups of the
    # time-ordered big file outside the range are not even read
    start_us, end_us = NOW - 30 * HOUR, NOW - 20 * HOUR
    _write_big(tmp_path / "repo", seed=1)
    pruned = rb.plan_units(tx, files, start_us, end_us, cpus=2)  # type: ignore[arg-type]
    assert 0 < sum(u.rows for u in pruned if u.path.endswith("big.parquet")) < N_BIG // 2
    rl = local.backfill(start=_dt(start_us), end=_dt(end_us))
    rr = remote.backfill(start=_dt(start_us), end=_dt(end_us), engine="ray")
    assert rl is not None and rr is not None
    assert rr.rows == rl.rows and 0 < rl.rows["latest"] < N_SMALL * 61 + N_BIG + 1
    assert rr.events == rl.events
    _compare_offline(local, remote, whole=False)
    assert remote.get_training_data(spine, "svc").equals(local.get_training_data(spine, "svc"))
    for s in (local, remote):
        s.close()


def test_ray_backfill_small_repo_matches_local(tmp_path: Path, ray_cluster: None) -> None:
    """Default unit sizes (every file one task), a range rewrite, and a transform moving rows out of range."""
    user = cs.Entity("user", ["user_id"])
    src = cs.FileSource("data/tx_*.parquet", "ts", name="tx")
    view = cs.FeatureView(
        "v", [user], src, features=[cs.Field("amount", cs.Float64)], transform="SELECT * FROM source", ttl="1d"
    )
    svc = cs.FeatureService("svc", [view])
    for root in ("local", "ray"):
        for p in range(2):
            write_parquet(
                tmp_path / root,
                f"tx_{p}.parquet",
                pa.table(
                    {"user_id": ["a", "b", "a"], "ts": ts_array([T0, T0 + SEC, T0 + 2 * SEC]), "amount": [1.0, 2.0, p]}
                ),
            )
    defs_l, config_l, off_l = build(tmp_path / "local", [view], [svc], run_backfill=False)
    defs_r, config_r, off_r = build(tmp_path / "ray", [view], [svc], run_backfill=False)
    with pytest.raises(InvalidInputError) as err:
        backfill(defs_r, config_r, off_r, engine="spark")
    assert err.value.field == "engine"
    assert backfill(defs_r, config_r, off_r, engine="ray").rows == backfill(defs_l, config_l, off_l).rows == {"v": 6}
    assert _canon(off_r.read("fv__v"), True).equals(_canon(off_l.read("fv__v"), True))
    # a range with no event: every row group pruned, nothing read, the same (empty) range rewrite
    src_files = sorted(str(p) for p in (tmp_path / "ray" / "data").glob("tx_*.parquet"))
    assert rb.plan_units(src, src_files, T0 + 10 * HOUR, T0 + 11 * HOUR, cpus=2) == [(src_files[0], (), 0)]
    rl = backfill(defs_l, config_l, off_l, start=_dt(T0 + 10 * HOUR), end=_dt(T0 + 11 * HOUR))
    rr = backfill(defs_r, config_r, off_r, start=_dt(T0 + 10 * HOUR), end=_dt(T0 + 11 * HOUR), engine="ray")
    assert rr.rows == rl.rows == {"v": 0} and rr.events == rl.events == 0
    assert off_r.count("fv__v") == off_l.count("fv__v") == 6
    # a transform failing inside a task is the same one-line definition error as locally
    view.transform = "SELECT user_id, ts, nope FROM source"
    for defs, config, off, engine in ((defs_l, config_l, off_l, "local"), (defs_r, config_r, off_r, "ray")):
        with pytest.raises(DefinitionError, match="transform SQL failed"):
            backfill(defs, config, off, engine=engine)
    # rows the transform moves outside [start, end) are refused by both engines, before any commit
    view.transform = "SELECT user_id, ts + INTERVAL 1 DAY AS ts, amount FROM source"
    for defs, config, off, engine in ((defs_l, config_l, off_l, "local"), (defs_r, config_r, off_r, "ray")):
        version = off.version("fv__v")
        with pytest.raises(InvalidInputError, match="outside"):
            backfill(defs, config, off, start=_dt(T0), end=_dt(T0 + HOUR), engine=engine)
        assert off.version("fv__v") == version


def test_cli_joins_an_existing_cluster(tmp_path: Path, ray_cluster: None) -> None:
    """``backfill --engine ray --address`` from another process joins the running cluster (no new Ray)."""
    import ray

    root = _repo(tmp_path / "repo")
    local = cs.ContextStore(root, workspace="loc")
    local.apply()
    local.backfill()
    exe = Path(sys.executable).parent / "context-store"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "context_store.cli"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}  # this checkout's code
    address = ray.get_runtime_context().gcs_address
    for args in (["apply"], ["backfill", "--engine", "ray", "--address", address]):
        res = subprocess.run(
            [*cmd, *args, "-r", str(root), "-w", "cli"], env=env, capture_output=True, text=True, timeout=300
        )
        assert res.returncode == 0, res.stderr
    assert "Backfill done." in res.stdout and "Started a local Ray instance" not in res.stderr
    assert "Connected to Ray cluster" in res.stderr or address in res.stderr
    remote = cs.ContextStore(root, workspace="cli")
    _compare_offline(local, remote)
    for s in (local, remote):
        s.close()


def test_missing_ray_names_the_install_hint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    user = cs.Entity("user", ["user_id"])
    src = cs.FileSource("data/tx_*.parquet", "ts", name="tx")
    view = cs.FeatureView("v", [user], src, features=[cs.Field("amount", cs.Float64)], ttl="1d")
    write_parquet(tmp_path, "tx_0.parquet", pa.table({"user_id": ["a"], "ts": ts_array([T0]), "amount": [1.0]}))
    defs, config, offline = build(tmp_path, [view], [cs.FeatureService("svc", [view])], run_backfill=False)
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as if it were not installed
    with pytest.raises(InvalidInputError, match=r"pip install 'context-store\[ray\]'") as err:
        backfill(defs, config, offline, engine="ray")
    assert err.value.field == "engine"
    assert not offline.exists("fv__v")  # nothing written
