"""SQLite online store: a read of many keys with one field list (a batch lookup, e.g. a re-rank's
candidates) in one query per chunk answers what one query per key answers: missing keys and fields
as None, repeated keys, more keys than one statement may bind."""

from __future__ import annotations

from pathlib import Path

from context_store.stores.online.sqlite import SqliteOnlineStore


def test_batch_read_matches_per_key_reads(tmp_path: Path) -> None:
    store = SqliteOnlineStore(tmp_path / "online.db", workspace="t")
    try:
        c = store._conn()
        rows = [(f"k{i}", f"f{j}", bytes([i % 251, j])) for i in range(2500) for j in range(5) if (i + j) % 3]
        c.executemany("INSERT INTO kv (k, f, v) VALUES (?, ?, ?)", rows)
        fields = ["f0", "f1", "f2", "f3", "f4", "absent"]
        keys = [f"k{i}" for i in range(0, 2600, 1)] + ["k7", "k7", "nokey"]  # > one statement's binds
        got = store._hmget([(k, fields) for k in keys])
        one_by_one = [store._hmget([(k, fields)])[0] for k in keys]
        assert got == one_by_one
        assert got[7] == [bytes([7, 0]), bytes([7, 1]), None, bytes([7, 3]), bytes([7, 4]), None]
        assert got[-1] == [None] * len(fields)
        twice = ["f1", "f0", "f1"]  # a field named twice: both slots filled, as per key
        assert store._hmget([("k7", twice), ("k8", twice)]) == [
            [bytes([7, 1]), bytes([7, 0]), bytes([7, 1])],
            [None, bytes([8, 0]), None],
        ]
        assert sum(v is not None for r in got for v in r) == len(rows) + 2 * sum(1 for k, _, _ in rows if k == "k7")
    finally:
        store.close()


def test_batch_read_skips_other_fields_of_the_keys(tmp_path: Path) -> None:
    """The batch query scans each key's rows between the lowest and highest field read and keeps only
    the fields asked for: fields outside that range (other views' state) and unasked fields inside it
    are never returned."""
    store = SqliteOnlineStore(tmp_path / "online.db", workspace="t")
    try:
        c = store._conn()
        names = ["a:0", "m:1", "m:10", "m:2", "m:2r", "m:L", "m:Lx", "z:9", "m:", "m;"]
        c.executemany(
            "INSERT INTO kv (k, f, v) VALUES (?, ?, ?)",
            [(f"k{i}", f, f"{i}/{f}".encode()) for i in range(300) for f in names if (i + len(f)) % 4],
        )
        fields = ["m:2", "m:L", "m:1", "m:absent"]
        keys = [f"k{i}" for i in range(0, 310, 3)] + ["k3"]
        got = store._hmget([(k, fields) for k in keys])
        assert got == [store._hmget([(k, fields)])[0] for k in keys]

        def stored(k: str, f: str) -> bytes | None:
            i = int(k[1:])
            return f"{i}/{f}".encode() if f in names and i < 300 and (i + len(f)) % 4 else None

        assert got == [[stored(k, f) for f in fields] for k in keys]
        assert sum(v is not None for r in got for v in r) > 150
    finally:
        store.close()
