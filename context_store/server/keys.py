"""API keys: ``cs_<id>_<secret>``, stored hashed (sha256) in one SQLite file shared by all workspaces.

The key decides the workspace and the scope of a request. Only the hash is stored, so a lost key
cannot be recovered -- create a new one (or ``rotate`` the old). Lookups are cached briefly in memory
so that the request path does no disk I/O; revocations reach a running server within ``cache_ttl``,
expiry is checked on every request against the cached expiry time. Last use is noted in memory and
written by a background thread, at most once per ``last_used_interval`` per key and process.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from ..access import Subject
from ..config import check_workspace
from ..errors import ConflictError, ForbiddenError, InvalidInputError, NotFoundError, UnauthorizedError

__all__ = ["SCOPES", "GRANTS", "ApiKey", "KeyStore", "hash_key", "key_store_path"]

log = logging.getLogger("context_store.server")

SCOPES: tuple[str, ...] = ("read", "ingest", "admin", "metrics")
# What a key of each scope may do. read < ingest < admin nest; ``metrics`` only scrapes /metrics (an
# operator's Prometheus key: it sees every workspace's metric labels, and no data).
GRANTS: dict[str, frozenset[str]] = {
    "read": frozenset({"read"}),
    "ingest": frozenset({"read", "ingest"}),
    "admin": frozenset(SCOPES),
    "metrics": frozenset({"metrics"}),
}
_PREFIX = "cs"
_NEVER = float("inf")
_COLS = "key_id, workspace, scope, created_at, revoked_at, description, rate_limit, expires_at, last_used_at, subject"
_SELECT = f"SELECT {_COLS} FROM api_keys"
# Columns added after the first release: files created before them are migrated in place.
_ADDED_COLUMNS = {"expires_at": "REAL", "last_used_at": "REAL", "subject": "TEXT"}


@dataclass(frozen=True, slots=True)
class ApiKey:
    key_id: str
    workspace: str
    scope: str
    created_at: datetime
    revoked_at: datetime | None = None
    description: str = ""
    rate_limit: float | None = None  # requests per second; None: the server default
    expires_at: datetime | None = None
    last_used_at: datetime | None = None  # as last written (up to ``last_used_interval`` behind)
    subject: Subject | None = None  # the one entity this key may touch (``context_store.access``)

    def expired(self, now: datetime | None = None) -> bool:
        return self.expires_at is not None and self.expires_at <= (now or datetime.now(UTC))

    @property
    def active(self) -> bool:
        return self.revoked_at is None and not self.expired()

    @property
    def status(self) -> str:
        return "revoked" if self.revoked_at is not None else "expired" if self.expired() else "active"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def key_store_path(data_dir: Path) -> Path:
    return Path(data_dir) / "keys.sqlite"


def _ts(v: float | None) -> datetime | None:
    return None if v is None else datetime.fromtimestamp(v, tz=UTC)


def _row(r: Sequence[Any]) -> ApiKey:
    """An ``_SELECT`` row (SQLite values) -> ``ApiKey``."""
    created = datetime.fromtimestamp(r[3], tz=UTC)
    subject = None if r[9] is None else Subject.parse(r[9])
    return ApiKey(r[0], r[1], r[2], created, _ts(r[4]), r[5], r[6], _ts(r[7]), _ts(r[8]), subject)


def _text(subject: Subject | None) -> str | None:
    return None if subject is None else str(subject)


def _key_id(key_or_id: str) -> str:
    return key_or_id.split("_")[1] if key_or_id.startswith(_PREFIX + "_") else key_or_id


def _iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


_Slot = list[Any]  # one mutable slot (a module-level alias: ``KeyStore.list`` shadows the builtin in the class)


class KeyStore:
    """``KeyStore(path)``: create / list / revoke / rotate keys and ``verify(key) -> ApiKey``."""

    def __init__(self, path: str | Path, cache_ttl: float = 1.0, last_used_interval: float = 60.0) -> None:
        self.path = Path(path)
        self.cache_ttl = cache_ttl
        self.last_used_interval = last_used_interval
        self._local = threading.local()
        # hash -> (cached until (monotonic), record or None, expires_at as epoch seconds or inf, derived): ``derived``
        # is a one-slot list the auth layer fills with what it builds from the record (its Principal), so that is
        # built once per cache period and dropped with the entry (revocations, the TTL)
        self._cache: dict[str, tuple[float, ApiKey | None, float, _Slot]] = {}
        self._usage = _UsageRecorder(self)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._conn() as c:
            c.execute(
                "CREATE TABLE IF NOT EXISTS api_keys (key_id TEXT PRIMARY KEY, key_hash TEXT UNIQUE NOT NULL, "
                "workspace TEXT NOT NULL, scope TEXT NOT NULL, created_at REAL NOT NULL, revoked_at REAL, "
                "description TEXT NOT NULL DEFAULT '', rate_limit REAL, expires_at REAL, last_used_at REAL, "
                "subject TEXT)"
            )
            have = {r[1] for r in c.execute("PRAGMA table_info(api_keys)")}
            for name, kind in _ADDED_COLUMNS.items():
                if name not in have:
                    try:
                        c.execute(f"ALTER TABLE api_keys ADD COLUMN {name} {kind}")
                    except sqlite3.OperationalError as e:  # another process migrated it just now
                        if "duplicate column" not in str(e):
                            raise

    def _conn(self) -> sqlite3.Connection:
        # One connection per thread: sqlite3 connections must not be shared across threads.
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=10, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            self._local.conn = conn
        return conn

    # -- administration (the ``keys`` CLI) -----------------------------------------------------------
    def create(
        self,
        workspace: str,
        scope: str = "read",
        description: str = "",
        rate_limit: float | None = None,
        expires_in: timedelta | None = None,
        subject: Subject | str | None = None,
    ) -> tuple[str, ApiKey]:
        """Return ``(secret key, record)``; the secret is shown once and never stored. A ``subject``
        (``"user_id=u0001"``) binds the key to that one entity."""
        check_workspace(workspace)
        if scope not in SCOPES:
            raise InvalidInputError(f"scope {scope!r} must be one of {', '.join(SCOPES)}", field="scope")
        if rate_limit is not None and not rate_limit > 0:
            raise InvalidInputError("rate_limit must be a positive number of requests per second", field="rate_limit")
        if expires_in is not None and expires_in <= timedelta(0):
            raise InvalidInputError("expiry must be a positive duration such as 30d", field="expires")
        if isinstance(subject, str):
            subject = Subject.parse(subject)
        return self._insert(self._conn(), workspace, scope, description, rate_limit, expires_in, subject)

    def _insert(
        self,
        conn: sqlite3.Connection,
        workspace: str,
        scope: str,
        description: str,
        rate_limit: float | None,
        expires_in: timedelta | None,
        subject: Subject | None = None,
    ) -> tuple[str, ApiKey]:
        key_id = secrets.token_hex(4)
        key = f"{_PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"
        now = time.time()
        expires = None if expires_in is None else now + expires_in.total_seconds()
        conn.execute(
            "INSERT INTO api_keys (key_id, key_hash, workspace, scope, created_at, revoked_at, description, "
            "rate_limit, expires_at, last_used_at, subject) VALUES (?, ?, ?, ?, ?, NULL, ?, ?, ?, NULL, ?)",
            (key_id, hash_key(key), workspace, scope, now, description, rate_limit, expires, _text(subject)),
        )
        created = datetime.fromtimestamp(now, tz=UTC)
        rec = ApiKey(key_id, workspace, scope, created, None, description, rate_limit, _ts(expires), None, subject)
        return key, rec

    def list(self, workspace: str | None = None, include_revoked: bool = True) -> list[ApiKey]:
        """Keys of ``workspace`` (None: every workspace); ``include_revoked=False`` also hides expired keys."""
        self._usage.flush()  # this process's own notes first, so a caller sees its latest use
        where: list[str] = []
        args: list[object] = []
        if workspace is not None:
            where.append("workspace = ?")
            args.append(workspace)
        if not include_revoked:
            where.append("revoked_at IS NULL AND (expires_at IS NULL OR expires_at > ?)")
            args.append(time.time())
        sql = _SELECT + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY created_at"
        return [_row(r) for r in self._conn().execute(sql, args).fetchall()]

    def get(self, key_or_id: str, workspace: str | None = None) -> ApiKey:
        """The key with this id (or full key). With ``workspace``, a key of another workspace is refused."""
        key_id = _key_id(key_or_id)
        r = self._conn().execute(_SELECT + " WHERE key_id = ?", (key_id,)).fetchone()
        where = "" if workspace is None else f" in workspace {workspace!r}"
        if r is None:
            raise NotFoundError(f"no such key {key_id!r}{where}", field="key_id")
        rec = _row(r)
        if workspace is not None and rec.workspace != workspace:
            raise ForbiddenError(
                f"key {key_id!r} is in another workspace, not {workspace!r} "
                "(pass --all-workspaces to act across workspaces)",
                field="key_id",
            )
        return rec

    def revoke(self, key_or_id: str, workspace: str | None = None) -> ApiKey:
        """Revoke by key id (as ``keys list`` shows it) or by the full key; ``workspace`` as in ``get``."""
        rec = self.get(key_or_id, workspace)
        self._conn().execute(
            "UPDATE api_keys SET revoked_at = ? WHERE key_id = ? AND revoked_at IS NULL", (time.time(), rec.key_id)
        )
        self._cache.clear()
        return self.get(rec.key_id)

    def rotate(self, key_or_id: str, grace: timedelta, workspace: str | None = None) -> tuple[str, ApiKey, ApiKey]:
        """A new key with the old one's workspace, scope, subject, description, rate limit and lifetime; the old
        key expires after ``grace`` (or earlier if it already would). Returns ``(new secret, new, old)``."""
        if grace < timedelta(0):
            raise InvalidInputError("grace must not be negative", field="grace")
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")  # the new key and the old key's expiry land together
        try:
            old = self.get(key_or_id, workspace)
            if not old.active:
                raise ConflictError(f"key {old.key_id!r} is {old.status}: create a new key instead", field="key_id")
            lifetime = None if old.expires_at is None else old.expires_at - old.created_at
            key, new = self._insert(
                conn, old.workspace, old.scope, old.description, old.rate_limit, lifetime, old.subject
            )
            until = time.time() + grace.total_seconds()
            conn.execute(
                "UPDATE api_keys SET expires_at = MIN(COALESCE(expires_at, ?), ?) WHERE key_id = ?",
                (until, until, old.key_id),
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self._cache.clear()
        return key, new, self.get(old.key_id)

    # -- the request path ----------------------------------------------------------------------------
    def verify(self, key: str) -> ApiKey:
        """The record of a usable key; 401 for an unknown, revoked or expired one."""
        return self.verify_cached(key)[0]

    def verify_cached(self, key: str) -> tuple[ApiKey, _Slot]:
        """``verify``, plus the cache entry's one-slot list for what a caller derives from the record."""
        now = time.monotonic()
        digest = hash_key(key) if key.startswith(_PREFIX + "_") and len(key) <= 200 else ""
        hit = self._cache.get(digest) if digest else None
        if hit is None or hit[0] <= now:
            hit = self._load(digest, now) if digest else (0.0, None, _NEVER, [None])
        rec, expires = hit[1], hit[2]
        if rec is None:
            raise UnauthorizedError("invalid or revoked API key", field="Authorization")
        if expires != _NEVER and expires <= time.time():
            raise UnauthorizedError(
                f"API key {rec.key_id!r} expired at {_iso(rec.expires_at or datetime.now(UTC))}: "
                "use its replacement (keys rotate) or create a new key",
                field="Authorization",
            )
        self._usage.note(rec.key_id, now)
        return rec, hit[3]

    def lookup(self, key: str) -> ApiKey | None:
        """The usable key record for a secret, or None (unknown, revoked or expired)."""
        try:
            return self.verify(key)
        except UnauthorizedError:
            return None

    def _load(self, digest: str, now: float) -> tuple[float, ApiKey | None, float, _Slot]:
        r = self._conn().execute(f"SELECT {_COLS}, key_hash FROM api_keys WHERE key_hash = ?", (digest,)).fetchone()
        rec: ApiKey | None = None
        if r is not None and r[4] is None and hmac.compare_digest(r[10], digest):
            rec = _row(r[:10])
        expires = _NEVER if rec is None or r[7] is None else float(r[7])
        if len(self._cache) > 10_000:  # bound memory under a flood of random keys
            self._cache.clear()
        entry = (now + self.cache_ttl, rec, expires, [None])
        self._cache[digest] = entry
        return entry

    def close(self) -> None:
        self._usage.stop()
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


class _UsageRecorder:
    """Last-used times: noted in memory on the request path (a dict lookup; at most once per interval per key),
    written to the key file by a daemon thread so no request waits on SQLite."""

    def __init__(self, keys: KeyStore) -> None:
        self.keys = keys
        self._next: dict[str, float] = {}  # key id -> monotonic time of the next note worth writing
        self._pending: dict[str, float] = {}  # key id -> wall time of use, not yet written
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._stopping = False

    def note(self, key_id: str, now: float) -> None:
        if self._next.get(key_id, 0.0) > now:
            return
        self._next[key_id] = now + self.keys.last_used_interval
        with self._lock:
            self._pending[key_id] = time.time()
            if self._thread is None and not self._stopping:
                self._thread = threading.Thread(target=self._run, name="cs-key-usage", daemon=True)
                self._thread.start()
        self._wake.set()

    def _run(self) -> None:
        while not self._stopping:
            self._wake.wait()
            self._wake.clear()
            self.flush()
        conn = getattr(self.keys._local, "conn", None)
        if conn is not None:
            conn.close()

    def flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, {}
        if not pending:
            return
        try:
            self.keys._conn().executemany(
                "UPDATE api_keys SET last_used_at = MAX(COALESCE(last_used_at, 0), ?) WHERE key_id = ?",
                [(t, key_id) for key_id, t in pending.items()],
            )
        except sqlite3.Error as e:  # best effort: a busy key file must not break authentication
            log.warning("could not record API key use: %s", e)

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            thread = self._thread
        self._wake.set()
        if thread is not None:
            thread.join(timeout=5)
        self.flush()
