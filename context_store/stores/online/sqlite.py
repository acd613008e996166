"""Embedded online store: one SQLite file (WAL) per workspace, no server needed.

The same hash model as Redis: table ``kv(k, f, v)`` keyed by (entity key, field). WAL mode
and a busy timeout let a server process read while a CLI ``materialize`` writes.
Key expiry is not enforced here (reads ignore stale state; tile folding bounds growth).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from ...errors import UnavailableError
from ...state.ops import Ops
from .base import BaseOnlineStore

__all__ = ["SqliteOnlineStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (k TEXT NOT NULL, f TEXT NOT NULL, v BLOB NOT NULL, PRIMARY KEY (k, f)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS offsets (f TEXT PRIMARY KEY, v TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS recent (k TEXT NOT NULL, seq INTEGER PRIMARY KEY AUTOINCREMENT, v BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS recent_k ON recent (k, seq);
CREATE TABLE IF NOT EXISTS claims (scope TEXT NOT NULL, id TEXT NOT NULL, v BLOB NOT NULL, exp INTEGER NOT NULL,
  PRIMARY KEY (scope, id)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS claims_exp ON claims (scope, exp);
"""
_CHUNK = 900  # stay under SQLite's bound-parameter limit


class SqliteOnlineStore(BaseOnlineStore):
    backend = "sqlite"

    def __init__(self, path: str | Path, workspace: str = "default") -> None:
        self.path = Path(path)
        self.workspace = workspace
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._conn().executescript(_SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        c = getattr(self._local, "conn", None)
        if c is None:
            try:
                c = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
                c.execute("PRAGMA journal_mode=WAL")
                c.execute("PRAGMA synchronous=NORMAL")
                c.execute("PRAGMA busy_timeout=30000")
            except sqlite3.Error as e:
                raise UnavailableError(f"cannot open the online store {self.path}: {e}") from None
            self._local.conn = c
            with self._lock:
                self._all.append(c)
        return c

    def _hmget(self, reqs: list[tuple[str, list[str]]]) -> list[list[bytes | None]]:
        c = self._conn()
        out: list[list[bytes | None]] = []
        for key, fields in reqs:
            found: dict[str, bytes] = {}
            for i in range(0, len(fields), _CHUNK):
                part = fields[i : i + _CHUNK]
                q = f"SELECT f, v FROM kv WHERE k = ? AND f IN ({','.join('?' * len(part))})"
                found.update(c.execute(q, (key, *part)).fetchall())
            out.append([found.get(f) for f in fields])
        return out

    def _fields(self, keys: list[str]) -> list[list[str]]:
        c = self._conn()
        return [[r[0] for r in c.execute("SELECT f FROM kv WHERE k = ?", (k,))] for k in keys]

    # -- transactions: an outer ``transaction()`` turns the inner ones into savepoints ----------
    def _begin(self, c: sqlite3.Connection) -> None:
        c.execute("SAVEPOINT cs_inner" if getattr(self._local, "depth", 0) else "BEGIN IMMEDIATE")

    def _end(self, c: sqlite3.Connection, ok: bool) -> None:
        if getattr(self._local, "depth", 0):
            c.execute("RELEASE cs_inner" if ok else "ROLLBACK TO cs_inner")
            if not ok:
                c.execute("RELEASE cs_inner")
        elif not ok:
            c.execute("ROLLBACK")
        else:
            try:
                c.execute("COMMIT")
            except sqlite3.Error:
                if c.in_transaction:
                    c.execute("ROLLBACK")
                raise

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One write transaction (held for the block; WAL readers are not blocked)."""
        c = self._conn()
        depth = getattr(self._local, "depth", 0)
        c.execute("SAVEPOINT cs_outer" if depth else "BEGIN IMMEDIATE")
        self._local.depth = depth + 1
        try:
            yield
        except BaseException:
            self._local.depth = depth
            c.execute("ROLLBACK TO cs_outer" if depth else "ROLLBACK")
            if depth:
                c.execute("RELEASE cs_outer")
            raise
        self._local.depth = depth
        if depth:
            c.execute("RELEASE cs_outer")
        else:
            self._end(c, True)

    def claim_ids(self, scope: str, ids: Sequence[str], value: bytes, ttl_ms: int) -> list[bytes | None]:
        now = time.time_ns() // 1_000_000
        c = self._conn()
        self._begin(c)
        try:
            c.execute("DELETE FROM claims WHERE scope = ? AND exp <= ?", (scope, now))
            found: dict[str, bytes] = {}
            uniq = list(dict.fromkeys(ids))
            for i in range(0, len(uniq), _CHUNK):
                part = uniq[i : i + _CHUNK]
                q = f"SELECT id, v FROM claims WHERE scope = ? AND id IN ({','.join('?' * len(part))})"
                found.update((k, bytes(v)) for k, v in c.execute(q, (scope, *part)))
            out: list[bytes | None] = []
            new = []
            for k in ids:
                prev = found.get(k)
                out.append(prev)
                if prev is None:
                    found[k] = value  # a repeated id in ``ids``: the first one claims it
                    new.append((scope, k, value, now + ttl_ms))
            c.executemany("INSERT INTO claims (scope, id, v, exp) VALUES (?, ?, ?, ?)", new)
        except BaseException:
            self._end(c, False)
            raise
        self._end(c, True)
        return out

    def _commit(
        self, ops: Ops, cas: Sequence[tuple[str, str | None, str]] = (), notify: tuple[str, str] | None = None
    ) -> bool:
        # notify: nothing to publish to; in-process pushers see the commit when this returns.
        c = self._conn()
        self._begin(c)
        try:
            for field, expected, _ in cas:
                row = c.execute("SELECT v FROM offsets WHERE f = ?", (field,)).fetchone()
                if (row[0] if row else None) != expected:
                    self._end(c, False)
                    return False
            bumps = []
            for k, fv in ops.guards.items():
                for f, expected in fv.items():
                    row = c.execute("SELECT v FROM kv WHERE k = ? AND f = ?", (k, f)).fetchone()
                    cur = bytes(row[0]).decode() if row else None
                    if cur != expected:
                        self._end(c, False)
                        return False
                    bumps.append((k, f, str(int(cur or 0) + 1).encode()))
            if bumps:
                c.executemany(
                    "INSERT INTO kv (k, f, v) VALUES (?, ?, ?) ON CONFLICT (k, f) DO UPDATE SET v = excluded.v", bumps
                )
            if ops.sets:
                c.executemany(
                    "INSERT INTO kv (k, f, v) VALUES (?, ?, ?) ON CONFLICT (k, f) DO UPDATE SET v = excluded.v",
                    [(k, f, v) for k, fv in ops.sets.items() for f, v in fv.items()],
                )
            if ops.appends:
                # Read-and-concatenate inside the write transaction (SQLite's || would make TEXT).
                rows = []
                for k, afv in ops.appends.items():
                    for f, chunk in afv.items():
                        old = c.execute("SELECT v FROM kv WHERE k = ? AND f = ?", (k, f)).fetchone()
                        rows.append((k, f, bytes(old[0]) + chunk if old else chunk))
                c.executemany(
                    "INSERT INTO kv (k, f, v) VALUES (?, ?, ?) ON CONFLICT (k, f) DO UPDATE SET v = excluded.v", rows
                )
            if ops.dels:
                c.executemany(
                    "DELETE FROM kv WHERE k = ? AND f = ?", [(k, f) for k, fs in ops.dels.items() for f in fs]
                )
            for key, (items, cap) in ops.lists.items():
                self._recent_write(c, key, items, cap)
            if cas:
                c.executemany(
                    "INSERT INTO offsets (f, v) VALUES (?, ?) ON CONFLICT (f) DO UPDATE SET v = excluded.v",
                    [(field, new) for field, _, new in cas],
                )
        except BaseException:
            self._end(c, False)
            raise
        self._end(c, True)
        return True

    def _get_offset(self, field: str) -> str | None:
        row = self._conn().execute("SELECT v FROM offsets WHERE f = ?", (field,)).fetchone()
        return row[0] if row else None

    def get_meta(self, name: str) -> bytes | None:
        row = self._conn().execute("SELECT v FROM meta WHERE k = ?", (name,)).fetchone()
        return bytes(row[0]) if row else None

    def set_meta(self, name: str, value: bytes) -> None:
        self._conn().execute(
            "INSERT INTO meta (k, v) VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v", (name, value)
        )

    def _recent_append(self, key: str, items: list[bytes], max_len: int) -> None:
        c = self._conn()
        self._begin(c)
        try:
            self._recent_write(c, key, items, max_len)
        except BaseException:
            self._end(c, False)
            raise
        self._end(c, True)

    @staticmethod
    def _recent_write(c: sqlite3.Connection, key: str, items: list[bytes], max_len: int) -> None:
        c.executemany("INSERT INTO recent (k, v) VALUES (?, ?)", [(key, b) for b in items])
        c.execute(
            "DELETE FROM recent WHERE k = ? AND seq <= "
            "(SELECT seq FROM recent WHERE k = ? ORDER BY seq DESC LIMIT 1 OFFSET ?)",
            (key, key, max_len),
        )

    def _recent_read(self, key: str, n: int) -> list[bytes]:
        rows = self._conn().execute("SELECT v FROM recent WHERE k = ? ORDER BY seq DESC LIMIT ?", (key, n)).fetchall()
        return [bytes(r[0]) for r in reversed(rows)]

    def ping(self) -> bool:
        self._conn().execute("SELECT 1").fetchone()
        return True

    def clear(self) -> None:
        c = self._conn()
        for t in ("kv", "offsets", "meta", "recent", "claims"):
            c.execute(f"DELETE FROM {t}")

    def close(self) -> None:
        with self._lock:
            for c in self._all:
                try:
                    c.close()
                except sqlite3.Error:
                    pass
            self._all.clear()
        self._local = threading.local()
