"""Right to erasure: ``store.forget`` removes an entity from every store and nothing brings it back
(backfill, materialize, a late event, an as-of replay, training data); other entities are untouched."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

import context_store as cs
from context_store.errors import InvalidInputError
from context_store.stores.vector import VectorCollection
from tests.support.context import DEFINITIONS, build_context_repo, txn_rows

# A user-keyed embedding view (vectors whose id is the user) besides the item-keyed one.
EXTRA = """
user_bios = cs.EmbeddingView("user_bios", [user], profiles, text="segment", embedder="hash-64")
"""
MEMORY = "mem__notes"  # stands for a collection keyed otherwise, with a user_id attribute (memories)


def _memories(store: cs.ContextStore) -> VectorCollection:
    coll = VectorCollection(
        store.vector_collections.lance,
        MEMORY,
        dim=4,
        key="memory_id",
        attributes=["user_id", "text"],
        embedder="test",
        snapshots=False,
    ).open()
    return coll


def _add_memories(store: cs.ContextStore) -> None:
    coll = _memories(store)
    users = ["u1", "u2", "u1", "u1' OR '1'='1"]
    vecs = np.eye(4, dtype=np.float32)
    attrs = {"user_id": pa.array(users), "text": pa.array([f"note {i}" for i in range(4)])}
    coll.upsert(coll.rows([f"m{i}" for i in range(4)], vecs, [f"h{i}" for i in range(4)], attrs))


@pytest.fixture(params=["sqlite", "redis"])
def store(
    request: pytest.FixtureRequest, tmp_path: Path, workspace_name: str, redis_cleanup: list[str]
) -> Iterator[cs.ContextStore]:
    online = "sqlite"
    if request.param == "redis":
        online = request.getfixturevalue("redis_url")
        redis_cleanup.append(f"*{workspace_name}*")
    root = build_context_repo(tmp_path / "repo")
    (root / "features.py").write_text(DEFINITIONS + EXTRA)
    s = cs.ContextStore(root, workspace=workspace_name, online_store=online)
    s.apply()
    s.backfill()
    s.materialize()
    now = datetime.now(UTC)
    for u in ("u1", "u2"):  # stream history beside the batch history
        s.push("transactions", txn_rows(u, now - timedelta(seconds=90), 3, timedelta(seconds=10), amount0=50.0))
    _add_memories(s)
    yield s
    s.close()


def _rows_of(store: cs.ContextStore, value: str) -> dict[str, int]:
    """Rows naming ``user_id=value`` in every offline and vector table (brute force, no index)."""
    import lance

    out: dict[str, int] = {}
    for t in store.offline.tables():
        tbl = store.offline.read(t)
        if "user_id" in tbl.column_names:
            n = int(pc.sum(pc.equal(tbl["user_id"], value)).as_py() or 0)
            if n:
                out[t] = n
    vdir = Path(store.config.offline_path) / "vectors"
    for d in vdir.glob("*.lance"):
        tbl = lance.dataset(str(d)).to_table()
        for col in ("entity_id", "a__user_id"):
            if col in tbl.column_names and d.name.startswith(("emb__user_bios", MEMORY)):
                n = int(pc.sum(pc.equal(tbl[col], value)).as_py() or 0)
                if n:
                    out[d.name[: -len(".lance")]] = out.get(d.name[: -len(".lance")], 0) + n
    return out


def _old_versions(store: cs.ContextStore, table: str) -> int:
    import lance

    return len(lance.dataset(str(Path(store.config.offline_path) / f"{table}.lance")).versions()) - 1


def _features(store: cs.ContextStore, user: str) -> dict[str, Any]:
    return dict(store.get_features("user_features", {"user_id": user}).to_dict())


def _empty(values: dict[str, Any]) -> bool:
    return all(v in (None, 0, 0.0, []) for v in values.values())


def test_forget_erases_everything_and_nothing_brings_it_back(store: cs.ContextStore) -> None:
    before_u2 = _features(store, "u2")
    ctx_u2 = store.get_user_context("u2", context_service="user_context")
    spine = pa.table(
        {"user_id": ["u1", "u2"], "timestamp": pa.array([datetime.now(UTC)] * 2, pa.timestamp("us", tz="UTC"))}
    )
    train_before = store.get_training_data(spine, "user_features").to_pylist()
    assert not _empty(_features(store, "u1")) and _rows_of(store, "u1")
    assert store.get_user_context("u1", context_service="user_context").recent_events

    res = store.forget({"user_id": "u1"}, actor="test:admin")

    assert res.join_key == "user_id" and res.value == "u1" and res.actor == "test:admin"
    assert res.offline["src__transactions"] == 3  # the pushed events
    assert res.offline["fv__txn_stats"] == 23 and res.offline["fv__user_profile"] == 1
    assert res.online == {"entities": 1, "recent_lists": 1}
    assert res.vectors == {"emb__user_bios": 1, MEMORY: 2}  # the hostile user id's memory stays
    assert res.total == sum(res.offline.values()) + 2 + 3
    assert _rows_of(store, "u1") == {}
    assert _rows_of(store, "u1' OR '1'='1") == {MEMORY: 1}
    assert _old_versions(store, "fv__txn_stats") == 0  # no old version keeps the rows on disk
    assert _old_versions(store, "vectors/emb__user_bios") == 0
    assert not (Path(store.config.offline_path) / "vectors" / "emb__user_bios.faiss-snapshot").exists()

    # Nothing brings it back: backfill (the batch files still hold u1), materialize, a late event.
    store.backfill()
    store.materialize(full=True)
    late = res.forgotten_at - timedelta(seconds=30)
    with pytest.raises(InvalidInputError, match="forgotten"):
        store.push("transactions", txn_rows("u1", late, 1, timedelta(seconds=1), amount0=7.0))
    mixed = store.push(
        "transactions",
        txn_rows("u1", late, 1, timedelta(seconds=1), amount0=7.0) + txn_rows("u2", late, 1, timedelta(0), 8.0),
    )
    assert mixed.accepted == 1 and [(r.index, r.reason) for r in mixed.rejected] == [(0, "forgotten")]
    assert _rows_of(store, "u1") == {}
    assert store.online.forget_entity("user_id", "u1") == (0, 0)  # no online state came back
    assert _empty(_features(store, "u1"))
    uc = store.get_user_context("u1", context_service="user_context")
    assert uc.recent_events == [] and _empty(uc.feature_values)
    replay = store.get_user_context("u1", context_service="user_context", as_of=res.forgotten_at)
    assert replay.recent_events == [] and _empty(replay.feature_values)
    assert store.find_similar("user_bios", entity_id="u2", k=5) is not None
    train = store.get_training_data(spine, "user_features").to_pylist()
    assert _empty({k: v for k, v in train[0].items() if k not in ("user_id", "timestamp")})

    # Other entities untouched (u2 got the one mixed event: its count is one more).
    after_u2 = _features(store, "u2")
    assert after_u2["txn_stats.amount_count_1d"] == before_u2["txn_stats.amount_count_1d"] + 1
    assert {k: v for k, v in after_u2.items() if "txn_stats" not in k} == {
        k: v for k, v in before_u2.items() if "txn_stats" not in k
    }
    assert (
        train[1]["user_profile__segment" if "user_profile__segment" in train[1] else "segment"]
        == (train_before[1]["user_profile__segment" if "user_profile__segment" in train[1] else "segment"])
    )
    assert [e.values for e in store.get_user_context("u2", context_service="user_context").recent_events][1:] == [
        e.values for e in ctx_u2.recent_events
    ][:4]

    # New activity after the forget is new data.
    new = store.push("transactions", txn_rows("u1", datetime.now(UTC), 1, timedelta(0), amount0=9.0))
    assert new.accepted == 1
    assert _features(store, "u1")["txn_stats.amount_count_1d"] == 1
    assert _rows_of(store, "u1") == {"src__transactions": 1, "fv__txn_stats": 1}

    audit = store.forget_audit()
    assert len(audit) == 1 and audit[0]["actor"] == "test:admin" and audit[0]["total"] == res.total
    assert audit[0]["join_key"] == "user_id" and "u1" not in str(audit[0]["value_hash"])
    assert audit[0]["counts"]["online"] == res.online
    assert store.forget_audit({"user_id": "u1"}) == audit and store.forget_audit({"user_id": "u2"}) == []

    # A hostile id is one literal: it erases its own memory only, never widens the delete.
    u2_rows = _rows_of(store, "u2")
    hostile = store.forget({"user_id": "u1' OR '1'='1"})
    assert hostile.total == 1 and hostile.vectors == {MEMORY: 1}
    assert _rows_of(store, "u2") == u2_rows and _rows_of(store, "u1")


def test_forget_checks_its_input(store: cs.ContextStore) -> None:
    with pytest.raises(InvalidInputError, match="exactly one"):
        store.forget({"user_id": "u1", "item_id": "i1"})
    with pytest.raises(InvalidInputError, match="not a join key"):
        store.forget({"account": "u1"})
    with pytest.raises(InvalidInputError, match="characters"):
        store.forget({"user_id": "u\x1f1"})
    assert store.forget_audit() == []
    res = store.forget({"user_id": "nobody"})  # an unknown entity: nothing to erase, still audited
    assert res.total == 0 and len(store.forget_audit()) == 1


@pytest.mark.redis
def test_a_worker_drops_events_of_a_forgotten_entity_still_in_the_stream(
    tmp_path: Path, redis_url: str, workspace_name: str, redis_cleanup: list[str]
) -> None:
    """Events durable in the Redis stream before the forget, applied by a worker process after it:
    the worker (another process) sees the tombstone and drops them; other entities' events apply."""
    import signal
    import time

    from tests.support.stream import start_worker

    redis_cleanup.append(f"*{workspace_name}*")
    s = cs.ContextStore(build_context_repo(tmp_path / "repo"), workspace=workspace_name, online_store=redis_url)
    try:
        s.apply()
        s.backfill()
        s.materialize()
        now = datetime.now(UTC)
        for u in ("u3", "u2"):
            pushed = s.push(
                "transactions", txn_rows(u, now - timedelta(seconds=30), 2, timedelta(seconds=5)), wait=False
            )
            assert pushed.accepted == 2 and not pushed.visible
        assert sum(s.stream_lag().values()) > 0  # in the stream, not applied
        count_u2 = _features(s, "u2")["txn_stats.amount_count_1d"]
        res = s.forget({"user_id": "u3"})
        assert res.online["entities"] == 1  # its batch history's state
        proc = start_worker(s, redis_url)
        try:
            deadline = time.monotonic() + 60
            while sum(s.stream_lag().values()) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert sum(s.stream_lag().values()) == 0
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
            if proc.stderr:
                proc.stderr.close()
        assert _features(s, "u2")["txn_stats.amount_count_1d"] == count_u2 + 2
        assert s.online.forget_entity("user_id", "u3") == (0, 0)  # the worker wrote nothing of u3
        assert _empty(_features(s, "u3"))
        assert "src__transactions" in _rows_of(s, "u2") and _rows_of(s, "u3") == {}
    finally:
        s.close()
