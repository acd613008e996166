"""The Lance offline store reuses a table's dataset between commits (keyed on its change token): a
read after an append, a range rewrite, a whole-table overwrite with a new column, or another
process's commit sees the new data and schema at once."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa

from context_store.stores.offline.lance import LanceOfflineStore
from tests.support.batch import T0, ts_array

SEC = 1_000_000


def _rows(keys: list[str], secs: list[int], extra: bool = False) -> pa.Table:
    cols: dict[str, pa.Array] = {
        "user_id": pa.array(keys),
        "ts": ts_array([T0 + s * SEC for s in secs]),
        "amount": pa.array([float(s) for s in secs], pa.float64()),
    }
    if extra:
        cols["note"] = pa.array([f"n{s}" for s in secs])
    return pa.table(cols)


def test_reads_see_every_commit(tmp_path: Path) -> None:
    store = LanceOfflineStore(tmp_path / "off")
    store.append("t", _rows(["a", "b"], [1, 2]))
    assert store.read("t", filter="user_id = 'a'").num_rows == 1
    assert store.read("t").num_rows == 2  # the cached dataset (no commit since)
    store.append("t", _rows(["a"], [3]))
    assert store.read("t", filter="user_id = 'a'").num_rows == 2
    store.overwrite_range("t", _rows(["c"], [2]), "ts", T0 + 2 * SEC, T0 + 3 * SEC)
    assert sorted(store.read("t")["user_id"].to_pylist()) == ["a", "a", "c"]
    store.overwrite_range("t", _rows(["z"], [9], extra=True), "ts", None, None)
    assert "note" in store.schema("t").names
    assert store.read("t", columns=["user_id", "note"]).to_pylist() == [{"user_id": "z", "note": "n9"}]
    # Another process commits: the next read here sees it.
    code = textwrap.dedent(
        f"""
        import pyarrow as pa
        from context_store.stores.offline.lance import LanceOfflineStore
        from tests.support.batch import T0, ts_array
        s = LanceOfflineStore({str(tmp_path / "off")!r})
        s.append("t", pa.table({{"user_id": ["y"], "ts": ts_array([T0]), "amount": pa.array([1.0]),
                                "note": pa.array(["other"])}}))
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[3])
    assert sorted(store.read("t")["user_id"].to_pylist()) == ["y", "z"]
    store.drop("t")
    store.append("t", _rows(["q"], [1]))
    assert store.read("t")["user_id"].to_pylist() == ["q"] and "note" not in store.schema("t").names
    store.close()
