"""API keys: ``cs_<id>_<secret>``, stored hashed (sha256) in one SQLite file shared by all workspaces.

The key decides the workspace and the scope of a request. Only the hash is stored, so a lost key
cannot be recovered -- create a new one and revoke the old. Lookups are cached briefly in memory so
that the request path does no disk I/O; revocations reach a running server within ``cache_ttl``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from ..config import check_workspace
from ..errors import InvalidInputError, NotFoundError

__all__ = ["SCOPES", "ApiKey", "KeyStore", "hash_key", "key_store_path"]

# Ordered: a scope grants everything the scopes before it grant (admin can read and ingest).
SCOPES: tuple[str, ...] = ("read", "ingest", "admin")
_PREFIX = "cs"


@dataclass(frozen=True, slots=True)
class ApiKey:
    key_id: str
    workspace: str
    scope: str
    created_at: datetime
    revoked_at: datetime | None = None
    description: str = ""
    rate_limit: float | None = None  # requests per second; None: the server default

    @property
    def active(self) -> bool:
        return self.revoked_at is None


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def key_store_path(data_dir: Path) -> Path:
    return Path(data_dir) / "keys.sqlite"


def _ts(v: float | None) -> datetime | None:
    return None if v is None else datetime.fromtimestamp(v, tz=UTC)


class KeyStore:
    """``KeyStore(path)``: create / list / revoke keys and ``lookup(key) -> ApiKey | None``."""

    def __init__(self, path: str | Path, cache_ttl: float = 1.0) -> None:
        self.path = Path(path)
        self.cache_ttl = cache_ttl
        self._local = threading.local()
        self._cache: dict[str, tuple[float, ApiKey | None]] = {}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._conn() as c:
            c.execute(
                "CREATE TABLE IF NOT EXISTS api_keys (key_id TEXT PRIMARY KEY, key_hash TEXT UNIQUE NOT NULL, "
                "workspace TEXT NOT NULL, scope TEXT NOT NULL, created_at REAL NOT NULL, revoked_at REAL, "
                "description TEXT NOT NULL DEFAULT '', rate_limit REAL)"
            )

    def _conn(self) -> sqlite3.Connection:
        # One connection per thread: sqlite3 connections must not be shared across threads.
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=10, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            self._local.conn = conn
        return conn

    def create(
        self, workspace: str, scope: str = "read", description: str = "", rate_limit: float | None = None
    ) -> tuple[str, ApiKey]:
        """Return ``(secret key, record)``; the secret is shown once and never stored."""
        check_workspace(workspace)
        if scope not in SCOPES:
            raise InvalidInputError(f"scope {scope!r} must be one of {', '.join(SCOPES)}", field="scope")
        if rate_limit is not None and not rate_limit > 0:
            raise InvalidInputError("rate_limit must be a positive number of requests per second", field="rate_limit")
        key_id = secrets.token_hex(4)
        key = f"{_PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"
        now = time.time()
        self._conn().execute(
            "INSERT INTO api_keys VALUES (?, ?, ?, ?, ?, NULL, ?, ?)",
            (key_id, hash_key(key), workspace, scope, now, description, rate_limit),
        )
        return key, ApiKey(key_id, workspace, scope, _ts(now), None, description, rate_limit)  # type: ignore[arg-type]

    def list(self, workspace: str | None = None, include_revoked: bool = True) -> list[ApiKey]:
        sql = "SELECT key_id, workspace, scope, created_at, revoked_at, description, rate_limit FROM api_keys"
        args: tuple[str, ...] = ()
        where = []
        if workspace is not None:
            where.append("workspace = ?")
            args = (workspace,)
        if not include_revoked:
            where.append("revoked_at IS NULL")
        if where:
            sql += " WHERE " + " AND ".join(where)
        rows = self._conn().execute(sql + " ORDER BY created_at", args).fetchall()
        return [ApiKey(r[0], r[1], r[2], _ts(r[3]), _ts(r[4]), r[5], r[6]) for r in rows]  # type: ignore[arg-type]

    def revoke(self, key_or_id: str) -> ApiKey:
        """Revoke by key id (as ``keys list`` shows it) or by the full key."""
        key_id = key_or_id.split("_")[1] if key_or_id.startswith(_PREFIX + "_") else key_or_id
        cur = self._conn().execute(
            "UPDATE api_keys SET revoked_at = ? WHERE key_id = ? AND revoked_at IS NULL", (time.time(), key_id)
        )
        found = [k for k in self.list() if k.key_id == key_id]
        if not found:
            raise NotFoundError(f"no API key with id {key_id!r}", field="key_id")
        if cur.rowcount == 0 and found[0].revoked_at is None:  # pragma: no cover - concurrent re-create
            raise NotFoundError(f"no API key with id {key_id!r}", field="key_id")
        self._cache.clear()
        return found[0]

    def lookup(self, key: str) -> ApiKey | None:
        """The active key record for a secret, or None (unknown or revoked)."""
        if not key.startswith(_PREFIX + "_") or len(key) > 200:
            return None
        digest = hash_key(key)
        now = time.monotonic()
        hit = self._cache.get(digest)
        if hit is not None and hit[0] > now:
            return hit[1]
        row = (
            self._conn()
            .execute(
                "SELECT key_id, workspace, scope, created_at, revoked_at, description, rate_limit, key_hash "
                "FROM api_keys WHERE key_hash = ?",
                (digest,),
            )
            .fetchone()
        )
        rec: ApiKey | None = None
        if row is not None and row[4] is None and hmac.compare_digest(row[7], digest):
            rec = ApiKey(row[0], row[1], row[2], _ts(row[3]), None, row[5], row[6])  # type: ignore[arg-type]
        if len(self._cache) > 10_000:  # bound memory under a flood of random keys
            self._cache.clear()
        self._cache[digest] = (now + self.cache_ttl, rec)
        return rec

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
