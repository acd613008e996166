"""Backfill: sources -> transform -> fv__{view}, idempotent ranges; reading sources; input schemas."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest

import context_store as cs
from context_store.compute.batch import backfill, sort_for_pit, to_us
from context_store.compute.transform import apply_transform, input_schema, normalize_timestamp, read_source
from context_store.errors import DefinitionError, InvalidInputError, NotFoundError
from tests.support.batch import T0, build, ts_array, write_parquet
from tests.support.repo import make_repo

SEC = 1_000_000
USER = cs.Entity("user", ["user_id"])


def _events(n: int = 100, shift: float = 0.0) -> pa.Table:
    return pa.table(
        {
            "user_id": [f"u{i % 7}" for i in range(n)],
            "ts": ts_array([T0 + ((i * 37) % n) * 60 * SEC for i in range(n)]),  # out of order
            "amount": [float(i) + shift for i in range(n)],
        }
    )


def _pairs(t: pa.Table) -> list[tuple]:
    return sorted(
        zip(
            t.column("user_id").to_pylist(), t.column("ts").cast(pa.int64()).to_pylist(), t.column("amount").to_pylist()
        )
    )


def test_backfill_writes_sorted_rows_and_is_idempotent(tmp_path: Path) -> None:
    ev = _events()
    write_parquet(tmp_path, "tx.parquet", ev)
    src = cs.FileSource("data/tx.parquet", "ts")
    view = cs.FeatureView("stats", [USER], src, aggregations=[cs.Aggregate("amount", "sum", "1h")])
    defs, config, offline = build(tmp_path, [view], [cs.FeatureService("svc", [view])])
    first = offline.read("fv__stats")
    assert _pairs(first) == _pairs(ev)
    keys = list(zip(first.column("user_id").to_pylist(), first.column("ts").cast(pa.int64()).to_pylist()))
    runs = [k for i, k in enumerate(first.column("user_id").to_pylist()) if i == 0 or keys[i - 1][0] != k]
    assert len(runs) == len(set(runs))  # each entity contiguous
    assert all(a[1] <= b[1] for a, b in zip(keys, keys[1:]) if a[0] == b[0])  # ts ascending per entity
    report = backfill(defs, config, offline)
    assert report.rows == {"stats": 100} and report.events == 100 and report.events_per_s > 0
    assert "100 rows" in str(report)
    assert offline.read("fv__stats").equals(first)


def test_range_backfill_replaces_only_the_range(tmp_path: Path) -> None:
    write_parquet(tmp_path, "tx.parquet", _events())
    src = cs.FileSource("data/tx.parquet", "ts")
    view = cs.FeatureView("stats", [USER], src, aggregations=[cs.Aggregate("amount", "sum", "1h")])
    defs, config, offline = build(tmp_path, [view], [cs.FeatureService("svc", [view])])
    write_parquet(tmp_path, "tx.parquet", _events(shift=1000.0))  # the history changed
    start = datetime.fromtimestamp((T0 + 20 * 60 * SEC) / SEC, tz=UTC)
    end = "2023-11-14T23:13:20Z"  # T0 + 60 minutes
    for _ in range(2):
        report = backfill(defs, config, offline, start=start, end=end)
        assert report.rows == {"stats": 40}
        got = offline.read("fv__stats")
        assert got.num_rows == 100
        for _, ts, amount in _pairs(got):
            inside = T0 + 20 * 60 * SEC <= ts < T0 + 60 * 60 * SEC
            assert (amount >= 1000.0) == inside


def test_transforms_csv_glob_and_pandas(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    for part in range(2):
        df = pd.DataFrame(
            {
                "user_id": [f"u{i}" for i in range(3)],
                "ts": [f"2024-01-0{part + 1}T0{i}:00:00Z" for i in range(3)],
                "amount": [1.5 * (i + 1) for i in range(3)],
            }
        )
        df.to_csv(tmp_path / "data" / f"tx_{part}.csv", index=False)
    src = cs.FileSource("data/tx_*.csv", "ts")
    sql_view = cs.FeatureView(
        "sql_v",
        [USER],
        src,
        transform="SELECT user_id, ts, amount * 10 AS amount10 FROM source WHERE amount > 2",
        aggregations=[cs.Aggregate("amount10", "sum", "1d")],
    )

    def add_flag(df: pd.DataFrame) -> pd.DataFrame:
        df["big"] = df["amount"] > 3
        return df

    def arrow_fn(t: pa.Table) -> pa.Table:
        return t.append_column("half", pc.divide(t.column("amount"), 2))

    py_view = cs.FeatureView("py_v", [USER], src, transform=add_flag, features=[cs.Field("big", cs.Bool)])
    arrow_view = cs.FeatureView("arrow_v", [USER], src, transform=arrow_fn, features=[cs.Field("half", cs.Float64)])
    table = read_source(src, tmp_path)
    assert table.num_rows == 6 and table.schema.field("ts").type == pa.timestamp("us", tz="UTC")
    assert read_source(src, tmp_path, start_us=to_us("2024-01-02", "start")).num_rows == 3
    assert input_schema(sql_view, tmp_path) == {"user_id": cs.String, "ts": cs.Timestamp, "amount10": cs.Float64}
    assert input_schema(py_view, tmp_path)["big"] == cs.Bool
    assert input_schema(arrow_view, tmp_path)["half"] == cs.Float64
    defs, config, offline = build(tmp_path, [sql_view, py_view, arrow_view], [])
    assert sorted(offline.read("fv__sql_v").column("amount10").to_pylist()) == [30.0, 30.0, 45.0, 45.0]
    assert offline.read("fv__py_v").column("big").to_pylist().count(True) == 2
    assert offline.read("fv__arrow_v").column("half").to_pylist().count(0.75) == 2


def test_stream_view_records_the_cutover(tmp_path: Path) -> None:
    from context_store.compute.stream.cutover import get_cutover

    ev = _events()
    write_parquet(tmp_path, "tx.parquet", ev)
    stream = cs.StreamSource(
        "transactions",
        schema=[cs.Field("user_id", cs.String), cs.Field("ts", cs.Timestamp), cs.Field("amount", cs.Float64)],
        timestamp_field="ts",
        batch_source=cs.FileSource("data/tx.parquet", "ts"),
    )
    view = cs.FeatureView("stats", [USER], stream, aggregations=[cs.Aggregate("amount", "count", "1h")])
    live = cs.StreamSource(
        "live", schema=[cs.Field("user_id", cs.String), cs.Field("ts", cs.Timestamp)], timestamp_field="ts"
    )
    live_view = cs.FeatureView("live_stats", [USER], live, aggregations=[cs.Aggregate("ts", "count", "1h")])
    defs, config, offline = build(tmp_path, [view, live_view], [])
    newest = pc.max(ev.column("ts").cast(pa.int64())).as_py()
    assert get_cutover(config, "stats") == newest + 1
    assert offline.count("fv__stats") == 100
    report = backfill(defs, config, offline, end=datetime.fromtimestamp((T0 + 30 * 60 * SEC) / SEC, tz=UTC))
    assert get_cutover(config, "stats") == T0 + 30 * 60 * SEC
    assert report.skipped == {} and report.rows["live_stats"] == 0  # no history: backfilled from its (empty) log
    # stream rows past the cut-over (as a worker appends them) survive a backfill with no newer history
    offline.append("fv__stats", pa.table({"user_id": ["u1"], "ts": ts_array([newest + 10 * SEC]), "amount": [9.0]}))
    report = backfill(defs, config, offline, start=datetime.fromtimestamp((newest + SEC) / SEC, tz=UTC))
    assert report.rows["stats"] == 0
    assert 9.0 in offline.read("fv__stats").column("amount").to_pylist()


def test_view_selection_offline_flag_and_progress(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_parquet(tmp_path, "tx.parquet", _events())
    src = cs.FileSource("data/tx.parquet", "ts")
    a = cs.FeatureView("a", [USER], src, aggregations=[cs.Aggregate("amount", "sum", "1h")])
    b = cs.FeatureView("b", [USER], src, aggregations=[cs.Aggregate("amount", "max", "1h")])
    c = cs.FeatureView("c", [USER], src, aggregations=[cs.Aggregate("amount", "max", "1h")], offline=False)
    defs, config, offline = build(tmp_path, [a, b, c], [], run_backfill=False)
    report = backfill(defs, config, offline, views=["b"], progress=True)
    assert report.rows == {"b": 100} and offline.tables() == ["fv__b"]
    assert "backfill" in capsys.readouterr().err  # the tqdm bar
    report = backfill(defs, config, offline)
    assert set(report.rows) == {"a", "b"} and report.skipped == {"c": "offline=False"}
    assert report.events == 100  # one read of the shared source
    with pytest.raises(NotFoundError, match="'nope'"):
        backfill(defs, config, offline, views=["nope"])


def test_bad_input(tmp_path: Path) -> None:
    write_parquet(tmp_path, "tx.parquet", _events())
    src = cs.FileSource("data/tx.parquet", "ts")
    view = cs.FeatureView("stats", [USER], src, aggregations=[cs.Aggregate("amount", "sum", "1h")])
    defs, config, offline = build(tmp_path, [view], [], run_backfill=False)
    with pytest.raises(InvalidInputError, match="yesterday") as e:
        backfill(defs, config, offline, start="yesterday")
    assert e.value.field == "start"
    with pytest.raises(InvalidInputError, match="before"):
        backfill(defs, config, offline, start="2024-02-01", end="2024-01-01")
    missing = cs.FileSource("data/none_*.parquet", "ts")
    with pytest.raises(DefinitionError, match=r"no parquet file matches path 'data/none_\*.parquet'"):
        read_source(missing, tmp_path)
    with pytest.raises(DefinitionError, match="timestamp_field 'when'"):
        read_source(cs.FileSource("data/tx.parquet", "when"), tmp_path)
    drops_ts = cs.FeatureView(
        "d",
        [USER],
        src,
        transform="SELECT user_id, amount FROM source",
        aggregations=[cs.Aggregate("amount", "sum", "1h")],
    )
    with pytest.raises(DefinitionError, match="lack column 'ts'"):
        input_schema(drops_ts, tmp_path)
    bad_sql = cs.FeatureView(
        "e", [USER], src, transform="SELEC nonsense", aggregations=[cs.Aggregate("amount", "sum", "1h")]
    )
    with pytest.raises(DefinitionError, match="feature_view 'e'.*transform SQL failed"):
        apply_transform(bad_sql, read_source(src, tmp_path))

    def boom(t: pa.Table) -> pa.Table:
        raise ValueError("bad row")

    py_fail = cs.FeatureView("f", [USER], src, transform=boom, aggregations=[cs.Aggregate("amount", "sum", "1h")])
    with pytest.raises(DefinitionError, match="boom raised ValueError: bad row"):
        apply_transform(py_fail, read_source(src, tmp_path))


def test_timestamp_normalisation() -> None:
    utc = pa.timestamp("us", tz="UTC")
    naive = pa.array([datetime(2024, 1, 1, 12)], pa.timestamp("ns"))
    assert normalize_timestamp(naive).cast(pa.int64()).to_pylist() == [1_704_110_400 * SEC]
    assert normalize_timestamp(pa.array(["2024-01-01T13:00:00+01:00"])).cast(pa.int64()).to_pylist() == [
        1_704_110_400 * SEC
    ]
    for scale in (1, 1000, SEC):  # epoch seconds, ms, us
        assert normalize_timestamp(pa.array([1_704_110_400 * scale])).cast(pa.int64()).to_pylist() == [
            1_704_110_400 * SEC
        ]
    assert normalize_timestamp(pa.array([0], utc)).type == utc
    with pytest.raises(InvalidInputError, match="'when'") as e:
        normalize_timestamp(pa.array(["not a time"]), "when")
    assert e.value.field == "when"


def test_sort_for_pit_is_stable_for_ties() -> None:
    t = pa.table({"k": ["b", "a", "b", "a"], "ts": ts_array([5, 5, 5, 1]), "v": [1, 2, 3, 4]})
    out = sort_for_pit(t, ["k"], "ts")
    assert out.column("v").to_pylist() == [1, 3, 4, 2]  # b's (first seen) then a's; equal ts keep file order


def test_through_the_sdk(tmp_path: Path) -> None:
    make_repo(
        tmp_path,
        """
        import context_store as cs
        user = cs.Entity("user", join_keys=["user_id"])
        tx = cs.FileSource("data/tx.parquet", timestamp_field="ts")
        stats = cs.FeatureView("stats", [user], tx, aggregations=[cs.Aggregate("amount", "sum", "1h")])
    """,
        {"tx.parquet": _events()},
    )
    with cs.ContextStore(tmp_path) as store:
        store.apply()
        report = store.backfill(start="2023-11-14T22:13:20Z")
        assert report.rows == {"stats": 100}
        assert store.offline.count("fv__stats") == 100
