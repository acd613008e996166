"""The LanceDB offline store: appends, range rewrites, reads, concurrency across processes."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from context_store.config import load_config
from context_store.errors import InvalidInputError, NotFoundError
from context_store.stores.offline import OfflineStore, open_offline_store
from context_store.stores.offline.lance import LanceOfflineStore
from context_store.vocab.tables import source_table, view_table
from tests.support.batch import T0, ts_array

SEC = 1_000_000


def _rows(keys: list[str], secs: list[int], amounts: list[float | None]) -> pa.Table:
    return pa.table(
        {"user_id": keys, "ts": ts_array([T0 + s * SEC for s in secs]), "amount": pa.array(amounts, pa.float64())}
    )


def test_open_from_config_and_names(tmp_path: Path) -> None:
    config = load_config(tmp_path, workspace="w1")
    store = open_offline_store(config)
    assert isinstance(store, OfflineStore)
    assert Path(store.path) == config.offline_path  # type: ignore[attr-defined]
    assert view_table("stats") == "fv__stats" and source_table("tx") == "src__tx"
    assert store.tables() == []
    store.close()


def test_append_read_filters(tmp_path: Path) -> None:
    store = LanceOfflineStore(tmp_path / "off")
    assert not store.exists("fv__v")
    assert store.append("fv__v", _rows(["a", "b", "a"], [0, 10, 20], [1.0, None, 3.0])) == 3
    assert store.append("fv__v", _rows(["c"], [30], [4.0])) == 1
    assert store.append("fv__v", _rows([], [], [])) == 0
    assert store.exists("fv__v") and store.tables() == ["fv__v"] and store.count("fv__v") == 4
    all_rows = store.read("fv__v")
    assert all_rows.column("user_id").to_pylist() == ["a", "b", "a", "c"]
    assert all_rows.schema.field("ts").type == pa.timestamp("us", tz="UTC")
    part = store.read("fv__v", columns=["user_id"], ts_column="ts", start_us=T0 + 10 * SEC, end_us=T0 + 30 * SEC)
    assert part.column_names == ["user_id"] and part.column("user_id").to_pylist() == ["b", "a"]
    sql = store.read("fv__v", ts_column="ts", start_us=T0 + 5 * SEC, filter="user_id = 'a'")
    assert sql.column("amount").to_pylist() == [3.0]
    expr = store.read("fv__v", ts_column="ts", end_us=T0 + 25 * SEC, filter=pc.field("user_id") == "a")
    assert expr.column("amount").to_pylist() == [1.0, 3.0]
    with pytest.raises(InvalidInputError, match="nope"):
        store.read("fv__v", columns=["nope"])
    with pytest.raises(NotFoundError, match="fv__missing"):
        store.read("fv__missing")


def test_schema_conformance(tmp_path: Path) -> None:
    store = LanceOfflineStore(tmp_path / "off")
    store.append("src__tx", _rows(["a"], [0], [1.0]))
    # reordered columns, a missing nullable column and an int that widens to float are accepted
    store.append("src__tx", pa.table({"ts": ts_array([T0 + SEC]), "user_id": ["b"]}))
    store.append("src__tx", pa.table({"user_id": ["c"], "ts": ts_array([T0 + 2 * SEC]), "amount": [5]}))
    assert store.read("src__tx").column("amount").to_pylist() == [1.0, None, 5.0]
    with pytest.raises(InvalidInputError, match="'extra'") as e:
        store.append("src__tx", _rows(["d"], [3], [1.0]).append_column("extra", pa.array([1])))
    assert e.value.field == "extra"
    assert store.count("src__tx") == 3  # nothing half-written


def test_overwrite_range_is_idempotent(tmp_path: Path) -> None:
    store = LanceOfflineStore(tmp_path / "off")
    store.append("fv__v", _rows(["a", "a", "a", "a"], [0, 10, 20, 30], [1.0, 2.0, 3.0, 4.0]))
    new = _rows(["a", "b"], [10, 15], [20.0, 15.0])
    for _ in range(2):  # twice: same result
        store.overwrite_range("fv__v", new, "ts", T0 + 10 * SEC, T0 + 30 * SEC)
        got = store.read("fv__v")
        pairs = sorted(zip(got.column("ts").cast(pa.int64()).to_pylist(), got.column("amount").to_pylist()))
        assert pairs == [(T0, 1.0), (T0 + 10 * SEC, 20.0), (T0 + 15 * SEC, 15.0), (T0 + 30 * SEC, 4.0)]
    with pytest.raises(InvalidInputError, match="outside"):
        store.overwrite_range("fv__v", _rows(["a"], [40], [1.0]), "ts", T0, T0 + 30 * SEC)
    # the whole table: an atomic replace that may also change the schema
    store.overwrite_range("fv__v", pa.table({"k": [1], "ts": ts_array([T0])}), "ts", None, None)
    assert store.read("fv__v").column_names == ["k", "ts"] and store.count("fv__v") == 1
    # a range rewrite of a missing table creates it
    store.overwrite_range("fv__w", new, "ts", None, T0 + 20 * SEC)
    assert store.count("fv__w") == 2
    store.drop("fv__w")
    assert not store.exists("fv__w") and store.tables() == ["fv__v"]
    store.compact("fv__v")
    assert store.count("fv__v") == 1


def _vectors(rows: list[list[float] | None], dim: int = 16) -> pa.Table:
    flat = [x for r in rows for x in (r if r is not None else [0.0] * dim)]
    col = pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), dim, mask=pa.array([r is None for r in rows]))
    return pa.table({"k": list(range(len(rows))), "ts": ts_array([T0 + i * SEC for i in range(len(rows))]), "v": col})


@pytest.mark.parametrize("whole", [True, False])
def test_null_vectors_survive_every_write(tmp_path: Path, whole: bool) -> None:
    """A null in a fixed-size float list of >= 10 values (LanceDB's "vector column" heuristic) is a
    value, not a bad vector: whole-table rewrites (the full backfill) kept failing with "variable
    length vectors" while appends and range rewrites accepted it. NaN is refused by both."""
    store = LanceOfflineStore(tmp_path / "off")
    data = _vectors([[1.0] * 16, None, [2.0] * 16])
    start, end = (None, None) if whole else (T0, T0 + 10 * SEC)
    for _ in range(2):  # create, then replace
        store.overwrite_range("fv__v", data, "ts", start, end)
        got = store.read("fv__v").sort_by("k").column("v").to_pylist()
        assert got == [[1.0] * 16, None, [2.0] * 16]
    with pytest.raises((InvalidInputError, OSError, ValueError), match="NaN"):
        store.overwrite_range("fv__v", _vectors([[float("nan")] * 16]), "ts", start, end)
    assert store.read("fv__v").sort_by("k").column("v").to_pylist() == [[1.0] * 16, None, [2.0] * 16]


_WRITER = textwrap.dedent("""
    import sys
    import pyarrow as pa
    from context_store.stores.offline.lance import LanceOfflineStore
    store = LanceOfflineStore(sys.argv[1])
    wid, batches = int(sys.argv[2]), int(sys.argv[3])
    for b in range(batches):
        n = 50
        store.append("src__events", pa.table({
            "writer": pa.array([wid] * n, pa.int64()),
            "seq": pa.array([b * n + i for i in range(n)], pa.int64()),
            "ts": pa.array([b * n + i for i in range(n)], pa.int64()).cast(pa.timestamp("us", tz="UTC")),
        }))
""")


def test_concurrent_appends_from_processes_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "off"
    store = LanceOfflineStore(path)
    script = tmp_path / "writer.py"
    script.write_text(_WRITER)
    root = Path(__file__).resolve().parents[3]
    batches = 15
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(path), str(w), str(batches)],
            cwd=root,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for w in range(2)
    ]
    seen_counts = []
    deadline = time.monotonic() + 120
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
        if store.exists("src__events"):  # a reader in this process while the writers commit
            t = store.read("src__events", columns=["writer", "seq"])
            assert t.num_rows % 50 == 0  # readers only ever see whole appends
            seen_counts.append(t.num_rows)
        time.sleep(0.05)
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err.decode()[-2000:]
    t = store.read("src__events", columns=["writer", "seq"])
    assert t.num_rows == 2 * batches * 50
    for w in range(2):
        seqs = sorted(t.filter(pc.equal(t.column("writer"), w)).column("seq").to_pylist())
        assert seqs == list(range(batches * 50))
    assert seen_counts == sorted(seen_counts)  # never goes backwards
