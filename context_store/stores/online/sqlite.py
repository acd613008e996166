"""Embedded online store: one SQLite file (WAL) per workspace, no server needed.

The same hash model as Redis: table ``kv(k, f, v)`` keyed by (entity key, field). WAL mode
and a busy timeout let a server process read while a CLI ``materialize`` writes.
Key expiry is not enforced here (reads ignore stale state; tile folding bounds growth).

Embedded pushes (``compute/stream/embedded.py``) use ``transaction()`` (their online writes and
the offline appends commit together or not at all) and the push journal (``begin_push`` /
``pending_pushes`` / ``end_push``): see docs/online-state.md, "Embedded push".
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

from ...errors import UnavailableError
from ...state.ops import Ops, entity_key_has, recent_key_has
from .base import BaseOnlineStore, EntityErased

__all__ = ["SqliteOnlineStore", "PendingPush"]

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
# Embedded pushes in flight: an entry is committed before the push's offline appends and
# deleted in the commit of its online writes, so one left behind marks a pusher that died in
# between (its offline rows, offsets seq..last, are undone by the next push).
_JOURNAL = """
CREATE TABLE IF NOT EXISTS push_journal (seq INTEGER PRIMARY KEY, last INTEGER NOT NULL, tables TEXT NOT NULL);
"""
_PUSH_SEQ = "push_seq"  # meta: the last offset handed to an embedded push (all processes)
_BUSY_MS = 30000
_CHUNK = 900  # stay under SQLite's bound-parameter limit


class PendingPush(NamedTuple):
    """A journal entry: an embedded push of offsets ``seq..last`` into ``tables`` (opaque text)."""

    seq: int
    last: int
    tables: str


class SqliteOnlineStore(BaseOnlineStore):
    backend = "sqlite"

    def __init__(self, path: str | Path, workspace: str = "default") -> None:
        self.path = Path(path)
        self.workspace = workspace
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._conn().executescript(_SCHEMA + _JOURNAL)

    def _conn(self) -> sqlite3.Connection:
        c = getattr(self._local, "conn", None)
        if c is None:
            try:
                c = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
                c.execute("PRAGMA journal_mode=WAL")
                c.execute("PRAGMA synchronous=NORMAL")
                c.execute(f"PRAGMA busy_timeout={_BUSY_MS}")
            except sqlite3.Error as e:
                raise UnavailableError(f"cannot open the online store {self.path}: {e}") from None
            self._local.conn = c
            with self._lock:
                self._all.append(c)
        return c

    def _hmget(self, reqs: list[tuple[str, list[str]]]) -> list[list[bytes | None]]:
        c = self._conn()
        first = reqs[0][1] if reqs else []
        same = len(reqs) > 1 and 0 < len(first) <= _CHUNK // 4 and len(set(first)) == len(first)
        if same and all(f is first or f == first for _, f in reqs):
            return self._hmget_same(c, [k for k, _ in reqs], first)
        out: list[list[bytes | None]] = []
        for key, fields in reqs:
            found: dict[str, bytes] = {}
            for i in range(0, len(fields), _CHUNK):
                part = fields[i : i + _CHUNK]
                q = f"SELECT f, v FROM kv WHERE k = ? AND f IN ({','.join('?' * len(part))})"
                found.update(c.execute(q, (key, *part)).fetchall())
            out.append([found.get(f) for f in fields])
        return out

    @staticmethod
    def _hmget_same(c: sqlite3.Connection, keys: list[str], fields: list[str]) -> list[list[bytes | None]]:
        """Many keys, one field list (a batch lookup of one service's views, e.g. a re-rank's
        candidates): one query per chunk of keys instead of one per key (the per-statement cost
        dominated: ~120 keys took ~6 ms)."""
        col = {f: j for j, f in enumerate(fields)}
        rows: dict[str, list[bytes | None]] = {k: [None] * len(fields) for k in keys}
        uniq = list(rows)
        step = max(1, _CHUNK - len(fields) - 2)
        fq = f"f >= ? AND f <= ? AND +f IN ({','.join('?' * len(fields))})"
        # ``+f``: SQLite would otherwise probe the primary key once per (key, field) pair (~2,000
        # probes for a re-rank's ~120 candidates x 18 fields: ~0.7 ms); with it, each key's rows in
        # [min field, max field] are one range scan filtered by the field list (~0.17 ms). The
        # range keeps the scan to the read's own fields when a key holds other views' state.
        lo, hi = min(fields), max(fields)
        for i in range(0, len(uniq), step):
            part = uniq[i : i + step]
            q = f"SELECT k, f, v FROM kv WHERE k IN ({','.join('?' * len(part))}) AND {fq}"
            for k, f, v in c.execute(q, (*part, lo, hi, *fields)):
                rows[k][col[f]] = v
        out: list[list[bytes | None]] = []
        given: set[str] = set()
        for k in keys:  # a repeated key gets its own list, as from one query per key
            out.append(list(rows[k]) if k in given else rows[k])
            given.add(k)
        return out

    def _fields(self, keys: list[str]) -> list[list[str]]:
        c = self._conn()
        return [[r[0] for r in c.execute("SELECT f FROM kv WHERE k = ?", (k,))] for k in keys]

    def claim_ids(self, scope: str, ids: Sequence[str], value: bytes, ttl_ms: int) -> list[bytes | None]:
        now = time.time_ns() // 1_000_000
        c = self._conn()
        own = not self._in_txn()  # inside ``transaction()`` (an embedded push): committed with it
        if own:
            c.execute("BEGIN IMMEDIATE")
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
            if own:
                c.execute("COMMIT")
        except BaseException:
            if own and c.in_transaction:
                c.execute("ROLLBACK")
            raise
        return out

    def _commit(
        self, ops: Ops, cas: Sequence[tuple[str, str | None, str]] = (), notify: tuple[str, str] | None = None
    ) -> bool:
        # notify: nothing to publish to; in-process pushers see the commit when this returns.
        c = self._conn()
        outer = self._in_txn()  # inside transaction(): its COMMIT/ROLLBACK decide
        if not outer:
            c.execute("BEGIN IMMEDIATE")
        try:
            for field, expected, _ in cas:
                row = c.execute("SELECT v FROM offsets WHERE f = ?", (field,)).fetchone()
                if (row[0] if row else None) != expected:
                    if not outer:
                        c.execute("ROLLBACK")
                    return False  # nothing written yet: every check comes before the writes
            bumps = []
            for k, fv in ops.guards.items():
                for f, expected in fv.items():
                    row = c.execute("SELECT v FROM kv WHERE k = ? AND f = ?", (k, f)).fetchone()
                    cur = bytes(row[0]).decode() if row else None
                    if cur != expected:
                        if not outer:
                            c.execute("ROLLBACK")
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
            if not outer:
                c.execute("COMMIT")
            return True
        except BaseException:
            if not outer:
                c.execute("ROLLBACK")
            raise

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

    def claim_meta(self, name: str, value: bytes) -> bytes:
        c = self._conn()
        own = not self._in_txn()  # inside ``transaction()``: part of it
        if own:
            c.execute("BEGIN IMMEDIATE")
        try:
            c.execute("INSERT INTO meta (k, v) VALUES (?, ?) ON CONFLICT (k) DO NOTHING", (name, value))
            row = c.execute("SELECT v FROM meta WHERE k = ?", (name,)).fetchone()
            if own:
                c.execute("COMMIT")
        except BaseException:
            if own and c.in_transaction:
                c.execute("ROLLBACK")
            raise
        return bytes(row[0])

    # Shared maps: rows ``map:{name}:{field}`` of the meta table (one host: the stream's cut-overs stay in
    # their file there, see ``compute.stream.cutover``; these keep the protocol whole).
    def get_shared_map(self, name: str) -> dict[str, bytes]:
        head = f"map:{name}:"
        rows = self._conn().execute("SELECT k, v FROM meta WHERE substr(k, 1, ?) = ?", (len(head), head))
        return {str(k)[len(head) :]: bytes(v) for k, v in rows.fetchall()}

    def set_shared_field(self, name: str, field: str, value: bytes | None, if_absent: bool = False) -> bool:
        k = f"map:{name}:{field}"
        c = self._conn()
        if value is None:
            return c.execute("DELETE FROM meta WHERE k = ?", (k,)).rowcount > 0
        if if_absent:
            return (
                c.execute("INSERT INTO meta (k, v) VALUES (?, ?) ON CONFLICT (k) DO NOTHING", (k, value)).rowcount > 0
            )
        self.set_meta(k, value)
        return True

    @property
    def location(self) -> str:
        return str(self.path)

    def _recent_append(self, key: str, items: list[bytes], max_len: int) -> None:
        c = self._conn()
        if self._in_txn():
            self._recent_write(c, key, items, max_len)
            return
        c.execute("BEGIN IMMEDIATE")
        try:
            self._recent_write(c, key, items, max_len)
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise

    def forget_entity(self, join_key: str, value: str) -> EntityErased:
        part = f"{join_key}={value}"
        c = self._conn()
        c.execute("BEGIN IMMEDIATE")
        try:
            # instr() narrows to candidate keys; the exact test is on the key's parts (no LIKE escaping).
            keys = [r[0] for r in c.execute("SELECT DISTINCT k FROM kv WHERE instr(k, ?) > 0", (part,))]
            keys = [k for k in keys if entity_key_has(k, join_key, value)]
            lists = [r[0] for r in c.execute("SELECT DISTINCT k FROM recent WHERE instr(k, ?) > 0", (part,))]
            lists = [k for k in lists if recent_key_has(k, join_key, value)]
            c.executemany("DELETE FROM kv WHERE k = ?", [(k,) for k in keys])
            c.executemany("DELETE FROM recent WHERE k = ?", [(k,) for k in lists])
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise
        return EntityErased(len(keys), len(lists))

    @staticmethod
    def _recent_write(c: sqlite3.Connection, key: str, items: list[bytes], max_len: int) -> None:
        c.executemany("INSERT INTO recent (k, v) VALUES (?, ?)", [(key, b) for b in items])
        c.execute(
            "DELETE FROM recent WHERE k = ? AND seq <= "
            "(SELECT seq FROM recent WHERE k = ? ORDER BY seq DESC LIMIT 1 OFFSET ?)",
            (key, key, max_len),
        )

    def _recent_remove(self, key: str, items: list[bytes]) -> int:
        c = self._conn()
        rows = [(key, b) for b in items]
        if self._in_txn():
            return int(c.executemany("DELETE FROM recent WHERE k = ? AND v = ?", rows).rowcount)
        c.execute("BEGIN IMMEDIATE")
        try:
            n = int(c.executemany("DELETE FROM recent WHERE k = ? AND v = ?", rows).rowcount)
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise
        return n

    def _recent_read(self, key: str, n: int) -> list[bytes]:
        rows = self._conn().execute("SELECT v FROM recent WHERE k = ? ORDER BY seq DESC LIMIT ?", (key, n)).fetchall()
        return [bytes(r[0]) for r in reversed(rows)]

    # -- transactions and the embedded push journal ---------------------------------------
    def _in_txn(self) -> bool:
        return bool(getattr(self._local, "txn", False))

    @contextmanager
    def _busy(self, timeout_s: float | None) -> Iterator[sqlite3.Connection]:
        """This thread's connection with a busy timeout of ``timeout_s`` (None: the default)."""
        c = self._conn()
        if timeout_s is None:
            yield c
            return
        c.execute(f"PRAGMA busy_timeout={max(1, int(timeout_s * 1000))}")
        try:
            yield c
        finally:
            c.execute(f"PRAGMA busy_timeout={_BUSY_MS}")

    @contextmanager
    def transaction(self, timeout_s: float | None = None) -> Iterator[None]:
        """One write transaction on this thread: ``apply_events``, ``apply_many``, ``append_recent``
        and ``end_push`` inside it join it, and are committed when the block ends (rolled back if it
        raises). Waits up to ``timeout_s`` for another writer's lock (sqlite3.OperationalError)."""
        if self._in_txn():
            raise RuntimeError("SqliteOnlineStore.transaction() does not nest")
        with self._busy(timeout_s) as c:
            c.execute("BEGIN IMMEDIATE")
            self._local.txn = True
            try:
                yield
                c.execute("COMMIT")
            except BaseException:
                if c.in_transaction:
                    c.execute("ROLLBACK")
                raise
            finally:
                self._local.txn = False

    def begin_push(self, n: int, tables: str, timeout_s: float | None = None) -> int:
        """Journal an embedded push of ``n`` events into ``tables``; returns its first offset.

        Offsets are unique across every process pushing into this file (the counter lives here)
        and increase with the wall clock (µs) like stream ids do."""
        with self._busy(timeout_s) as c:
            c.execute("BEGIN IMMEDIATE")
            try:
                row = c.execute("SELECT v FROM meta WHERE k = ?", (_PUSH_SEQ,)).fetchone()
                last = int(bytes(row[0]).decode()) if row else -1
                seq = max(last + 1, time.time_ns() // 1000)
                c.execute(
                    "INSERT INTO meta (k, v) VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v",
                    (_PUSH_SEQ, str(seq + n - 1).encode()),
                )
                c.execute("INSERT INTO push_journal (seq, last, tables) VALUES (?, ?, ?)", (seq, seq + n - 1, tables))
                c.execute("COMMIT")
            except BaseException:
                if c.in_transaction:
                    c.execute("ROLLBACK")
                raise
        return seq

    def pending_pushes(self) -> list[PendingPush]:
        """Journal entries not ended: pushes whose pusher died between offline and online commits
        (or that are running now, when the caller does not hold the push lock)."""
        rows = self._conn().execute("SELECT seq, last, tables FROM push_journal ORDER BY seq").fetchall()
        return [PendingPush(int(a), int(b), str(t)) for a, b, t in rows]

    def end_push(self, seq: int, timeout_s: float | None = None) -> None:
        """Remove the journal entry of ``seq`` (inside ``transaction()``: with its commit)."""
        if self._in_txn():
            self._conn().execute("DELETE FROM push_journal WHERE seq = ?", (seq,))
            return
        with self._busy(timeout_s) as c:
            c.execute("DELETE FROM push_journal WHERE seq = ?", (seq,))

    def ping(self) -> bool:
        self._conn().execute("SELECT 1").fetchone()
        return True

    def clear(self) -> None:
        c = self._conn()
        for t in ("kv", "offsets", "meta", "recent", "claims"):  # not push_journal: it is about the offline log
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
