"""``index_key``: a BTREE index on a view table's entity key changes no read -- the same rows in the
same order for one or a few entities, also with fragments appended after the index was built and
rows deleted -- and a replay's point-in-time features are the same with and without it."""

from __future__ import annotations

import shutil
import uuid
from datetime import timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa

import context_store as cs
from context_store.stores.offline.lance import LanceOfflineStore
from context_store.vocab.tables import view_table
from tests.support.batch import T0, ts_array
from tests.support.recs import T0 as RECS_T0
from tests.support.recs import build_recs_repo

SEC = 1_000_000


def _rows(rng: np.random.Generator, n: int, users: int) -> pa.Table:
    # few distinct timestamps: many ties, so a different row order would show
    return pa.table(
        {
            "user_id": pa.array([f"u{x}" for x in rng.integers(0, users, n).tolist()]),
            "ts": ts_array([T0 + int(s) * SEC for s in rng.integers(0, 50, n)]),
            "amount": pa.array(rng.random(n)),
        }
    )


def _reads(store: LanceOfflineStore, users: list[str]) -> list[pa.Table]:
    out = [store.read("t", filter=f"user_id = '{u}'") for u in users]
    few = " OR ".join(f"(user_id = '{u}')" for u in users[:3])
    out.append(store.read("t", columns=["user_id", "amount"], ts_column="ts", end_us=T0 + 30 * SEC, filter=few))
    return out


def test_indexed_reads_equal_scans(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    plain = LanceOfflineStore(tmp_path / "plain")
    for _ in range(3):  # several fragments
        plain.append("t", _rows(rng, 3000, 40))
    shutil.copytree(tmp_path / "plain", tmp_path / "idx")
    indexed = LanceOfflineStore(tmp_path / "idx")
    assert not indexed.index_key("t", "user_id", min_rows=10_000)  # 9000 rows: under the threshold
    assert not indexed.index_key("t", "no_such_column", min_rows=1)
    assert not indexed.index_key("missing", "user_id", min_rows=1)
    assert indexed.index_key("t", "user_id", min_rows=1)
    assert indexed._open("t").to_lance().list_indices()  # built
    users = [f"u{x}" for x in range(0, 40, 3)] + ["nobody"]
    for a, b in zip(_reads(plain, users), _reads(indexed, users), strict=True):
        assert a.equals(b)
    # rows appended after the index (not covered by it) and a delete: still the same reads
    more = _rows(rng, 500, 40)
    plain.append("t", more)
    indexed.append("t", more)
    plain.delete_where("t", "user_id = 'u3' AND amount < 0.5")
    indexed.delete_where("t", "user_id = 'u3' AND amount < 0.5")
    got_plain, got_idx = _reads(plain, users), _reads(indexed, users)
    assert sum(t.num_rows for t in got_plain) > 0
    for a, b in zip(got_plain, got_idx, strict=True):
        assert a.equals(b)


def test_replay_features_same_with_and_without_the_index(tmp_path: Path) -> None:
    root = build_recs_repo(tmp_path / "repo", users=30, events_per_user=40)
    store = cs.ContextStore(root, workspace="w" + uuid.uuid4().hex[:10], online_store="sqlite")
    store.apply()
    store.backfill(warm=False)
    table = view_table("user_interest")
    spine = pa.table(
        {
            "user_id": pa.array([f"u{x}" for x in range(0, 30, 4)]),
            "timestamp": pa.array(
                [RECS_T0 + timedelta(days=20 + x) for x in range(0, 30, 4)], pa.timestamp("us", "UTC")
            ),
        }
    )
    before = [store.get_training_data(spine.slice(i, 1), "user_features", "timestamp") for i in range(spine.num_rows)]
    assert not store.offline._open(table).to_lance().list_indices()  # type: ignore[attr-defined]
    assert store.offline.index_key(table, "user_id", min_rows=1)
    after = [store.get_training_data(spine.slice(i, 1), "user_features", "timestamp") for i in range(spine.num_rows)]
    assert any(t.column(t.column_names[-1]).null_count == 0 for t in before)
    for a, b in zip(before, after, strict=True):
        assert a.equals(b)
    store.close()
