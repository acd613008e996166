"""Index snapshots: restart from a snapshot instead of a rebuild, replay later changes, fall back
to a rebuild when the snapshot is corrupt or foreign; warm-up / readiness of VectorService.
The fixtures build the indexes with an explicit backfill (``tests.support.vectors.build``).

Real FAISS + LanceDB with the deterministic hash embedder. Start-up *time* is measured in
``evals/bench_vectors.py``; these tests check correctness.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from context_store.errors import InvalidInputError, NotFoundError
from context_store.serving.similar import VectorService
from context_store.stores.vector import FaissIndex
from context_store.stores.vector.snapshot import SnapshotError, read_snapshot, write_snapshot
from tests.support.vectors import build, clustered, indexer, items_table

N = 3000
TITLE_1 = items_table(n=N).column("title")[1].as_py()
QUERIES = ["red running shoes", "chocolate cake", "gaming laptop model 7", "garden hose model 12", "vanilla"]


def _svc(root: Path, **kw: Any) -> VectorService:
    kw.setdefault("index", "hnsw")
    return build(root, items_table(n=N), **kw)


def _answers(vs: VectorService) -> list[list[tuple[str, float, dict]]]:
    out = []
    for q in QUERIES:
        for kw in ({}, {"filter": {"category": "food"}}, {"filter": {"price": {"$lt": 10}}}):
            r = vs.find_similar("items", text=q, k=10, **kw)
            out.append([(i.entity_id, round(i.score, 5), i.attributes) for i in r.items])
    for eid in ("i0", "i17", "i2999"):
        r = vs.find_similar("items", entity_id=eid, k=10)
        out.append([(i.entity_id, round(i.score, 5), i.attributes) for i in r.items])
    return out


@pytest.fixture()
def snapped(tmp_path: Path) -> tuple[Path, list]:
    """A repo whose items view was built once (a snapshot written), with that service's answers."""
    vs = _svc(tmp_path)
    vs.warm()
    assert vs.stats()["views"]["items"]["loaded_from"] == "backfill"
    assert vs.stats()["views"]["items"]["mode"] == "hnsw"
    assert read_snapshot(_snapshot_path(tmp_path)) is not None  # written right after the backfill
    answers = _answers(vs)
    vs.close()
    return tmp_path, answers


def _snapshot_path(root: Path) -> Path:
    found = list(root.rglob("emb__items.faiss-snapshot"))
    assert len(found) == 1, found
    return found[0]


def test_snapshot_round_trip_gives_identical_results(snapped: tuple[Path, list]) -> None:
    root, before = snapped
    path = _snapshot_path(root)
    snap = read_snapshot(path)
    assert snap is not None and snap.meta["mode"] == "hnsw" and len(snap.ids) == N
    assert snap.meta["embedder"] == "hash-64" and snap.meta["version"] is not None
    vs = _svc(root)
    vs.warm()
    st = vs.stats()["views"]["items"]
    assert st["loaded_from"] == "snapshot" and st["replayed"] == 0 and st["live"] == N
    assert _answers(vs) == before
    mtime = path.stat().st_mtime_ns
    vs.close()  # nothing changed: the snapshot is not rewritten
    assert path.stat().st_mtime_ns == mtime


def test_changes_after_the_snapshot_are_replayed(snapped: tuple[Path, list]) -> None:
    root, _ = snapped
    path = _snapshot_path(root)
    mtime = path.stat().st_mtime_ns
    worker = _svc(root, snapshots=False)  # another process writing; it never writes snapshots
    indexer(worker).upsert_entities(
        "items", [{"item_id": "new1", "title": "purple umbrella", "category": "home", "price": 3}]
    )
    indexer(worker).upsert_entities(
        "items", [{"item_id": "i0", "title": "espresso machine", "category": "tech", "price": 99}]
    )
    indexer(worker).upsert_entities(
        "items", [{"item_id": "i1", "title": TITLE_1, "category": "food", "price": 42}]
    )  # attrs only
    assert indexer(worker).delete_entities("items", ["i5", "i6"]) == 2
    worker.close()
    assert path.stat().st_mtime_ns == mtime

    vs = _svc(root)
    vs.warm()
    st = vs.stats()["views"]["items"]
    assert st["loaded_from"] == "snapshot" and st["replayed"] == 5 and st["live"] == N - 1
    fresh = _svc(root, snapshots=False)  # the truth: a full rebuild from the table
    fresh.warm()
    assert fresh.stats()["views"]["items"]["loaded_from"] == "rebuild"
    # A graph patched by the replay and a freshly built graph are different HNSW graphs: the same
    # rows with the same scores and attributes must come back, up to ANN misses and tie order.
    overlap = total = 0
    for mine, truth in zip(_answers(vs), _answers(fresh)):
        by_id = {i: (sc, a) for i, sc, a in truth}
        for i, sc, a in mine:
            if i in by_id:
                assert by_id[i] == (sc, a)
                overlap += 1
        total += len(truth)
        assert len(mine) == len(truth)
    assert overlap >= 0.95 * total
    top = vs.find_similar("items", text="espresso machine", k=1).items[0]
    assert top.entity_id == "i0" and top.attributes["price"] == 99 and top.attributes["category"] == "tech"
    assert vs.find_similar("items", text="purple umbrella", k=1).items[0].entity_id == "new1"
    assert vs.get_vectors("items", ["i1"])  # still there
    hits = vs.find_similar("items", text=TITLE_1, k=3).items
    assert hits[0].entity_id == "i1" and hits[0].attributes == {"title": TITLE_1, "category": "food", "price": 42}
    ids = {i.entity_id for q in QUERIES for i in vs.find_similar("items", text=q, k=50).items}
    assert not ids & {"i5", "i6"}
    vs.close()  # rows were replayed: the snapshot is refreshed on close
    assert path.stat().st_mtime_ns != mtime
    again = _svc(root)
    again.warm()
    assert (
        again.stats()["views"]["items"]["replayed"] == 0
        and again.stats()["views"]["items"]["loaded_from"] == "snapshot"
    )


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage"])
def test_corrupt_snapshot_falls_back_to_rebuild(snapped: tuple[Path, list], damage: str) -> None:
    root, before = snapped
    path = _snapshot_path(root)
    raw = bytearray(path.read_bytes())
    if damage == "flip":
        for off in (len(raw) // 3, len(raw) // 2):
            raw[off] ^= 0xFF
    elif damage == "truncate":
        raw = raw[: len(raw) // 2]
    else:
        raw = bytearray(b"not a snapshot at all")
    path.write_bytes(bytes(raw))
    with pytest.raises(SnapshotError):
        read_snapshot(path)
    vs = _svc(root)
    vs.warm()
    assert vs.stats()["views"]["items"]["loaded_from"] == "rebuild"
    assert _answers(vs) == before
    vs.close()
    assert read_snapshot(path) is not None  # the rebuild wrote a good snapshot again


def test_snapshot_of_another_index_kind_is_not_used(snapped: tuple[Path, list]) -> None:
    root, _ = snapped
    vs = _svc(root, index="flat")  # same table, other index kind
    vs.warm()
    assert vs.stats()["views"]["items"]["loaded_from"] == "rebuild"
    assert vs.stats()["views"]["items"]["mode"] == "flat"
    vs.close()
    assert read_snapshot(_snapshot_path(root)).meta["kind"] == "flat"


def test_periodic_snapshot_after_incremental_changes(tmp_path: Path) -> None:
    vs = _svc(tmp_path, snapshot_every=1)
    vs.warm()
    path = _snapshot_path(tmp_path)
    mtime = path.stat().st_mtime_ns
    indexer(vs).upsert_entities("items", [{"item_id": "p1", "title": "copper kettle", "category": "home", "price": 5}])
    saver = vs.collections.views["items"]._saver
    assert saver is not None
    saver.join(30)
    assert path.stat().st_mtime_ns != mtime
    assert "p1" in read_snapshot(path).ids
    other = _svc(tmp_path)
    other.warm()
    assert other.stats()["views"]["items"]["replayed"] == 0
    assert other.find_similar("items", text="copper kettle", k=1).items[0].entity_id == "p1"
    vs.close()
    other.close()


def test_background_warm_and_readiness(snapped: tuple[Path, list]) -> None:
    root, before = snapped
    vs = _svc(root)
    assert vs.ready and vs.readiness()["state"] == "cold"
    vs.warm(background=True)
    assert vs.wait_ready(60)
    r = vs.readiness()
    assert r["ready"] and r["state"] == "ready" and r["error"] is None
    assert r["collections"] == {"view:items": "snapshot", "knowledge:help": "rebuild"}
    assert _answers(vs) == before
    with pytest.raises(NotFoundError) as e:
        vs.warm(["nope"])
    assert e.value.field == "view"
    vs.close()


def test_failed_background_warm_is_reported(tmp_path: Path) -> None:
    vs = _svc(tmp_path, embedder="no-such-embedder", backfill=False)
    vs.warm(background=True)
    assert not vs.wait_ready(60)
    r = vs.readiness()
    assert r["state"] == "failed" and "embedder" in r["error"].lower()
    with pytest.raises(InvalidInputError):  # in the foreground the error itself is raised
        vs.warm(["items"])
    assert not vs.ready
    vs.close()


def test_readers_never_see_a_partial_snapshot_while_writers_replace_it(tmp_path: Path) -> None:
    dim, n = 16, 2000
    idx = FaissIndex(dim, "hnsw")
    idx.upsert([f"e{i}" for i in range(n)], clustered(n, dim, seed=4))
    meta, ids, arrays = idx.export_state()
    path = tmp_path / "t.faiss-snapshot"
    write_snapshot(path, meta, ids, ids, arrays)
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer(tag: str) -> None:
        while not stop.is_set():
            try:
                write_snapshot(path, dict(meta, writer=tag), ids, ids, arrays)
            except OSError as e:  # reported below
                errors.append(e)

    threads = [threading.Thread(target=writer, args=(t,)) for t in "ab"]
    for t in threads:
        t.start()
    try:
        for _ in range(30):
            snap = read_snapshot(path)  # raises SnapshotError on a torn file
            assert snap is not None and snap.ids == ids
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors
    assert [p.name for p in tmp_path.iterdir()] == ["t.faiss-snapshot"]  # no temp files left


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_faiss_index_export_restore_with_tombstones(kind: str) -> None:
    dim, n = 32, 4000
    x = clustered(n, dim, seed=3)
    idx = FaissIndex(dim, kind, flat_threshold=1000)
    attrs = [{"cat": f"c{i % 7}", "price": float(i % 11)} for i in range(n)]
    idx.upsert([f"e{i}" for i in range(n)], x, attrs)
    idx.delete([f"e{i}" for i in range(0, 300, 3)])
    idx.upsert(["e1"], x[2:3], [{"cat": "moved", "price": 1.0}])
    meta, ids, arrays = idx.export_state()
    assert meta["mode"] == kind and len(ids) == len(arrays["alive"]) == n + 1
    rows = [idx.get_attributes(i) if arrays["alive"][p] else {} for p, i in enumerate(ids)]
    cols = {name: [r.get(name) for r in rows] for name in ("cat", "price")}
    copy = FaissIndex(dim, kind, flat_threshold=1000)
    copy.restore_state(meta, ids, arrays, cols)
    assert len(copy) == len(idx) and copy.stats() == idx.stats()
    rng = np.random.default_rng(0)
    for q in x[rng.choice(n, 30, replace=False)]:
        for flt in (None, {"cat": "c3"}, {"price": {"$gte": 5}}):
            assert copy.search(q, 10, filter=flt) == idx.search(q, 10, filter=flt)
    # both keep working incrementally
    for target in (idx, copy):
        target.upsert(["z"], x[5:6], [{"cat": "z"}])
        target.delete(["e2"])
    assert copy.search(x[5], 5) == idx.search(x[5], 5)
    with pytest.raises(ValueError):
        FaissIndex(dim + 1, kind).restore_state(meta, ids, arrays, cols)
