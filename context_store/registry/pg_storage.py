"""A registry shared by several hosts, in PostgreSQL (``registry: postgresql://user@host:5432/db``).

Two tables, created on first use::

    context_store_registry           (workspace PK, version, deployment_id)     one row per workspace
    context_store_registry_versions  (workspace, version) PK, meta, files       every applied version

An apply runs in one transaction that first takes the workspace row ``FOR UPDATE``: applies from any host
serialize there, each plans against the version it sees under the lock, and the new version (row inserted,
counter moved) commits atomically or not at all. ``write_version`` also compares the expected version
(compare-and-set), so a writer that planned outside the lock is refused with a ``ConflictError``, never
lost. Serving imports the applied definitions files, so a version's files are materialized once into
``<data_dir>/registry-cache/<deployment id>/<workspace>/<version>`` (immutable; the deployment id changes
when the database is recreated). psycopg (the ``postgres`` extra) is imported only when configured; the DSN's
password never appears in an error.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import ConflictError, MissingDependencyError, UnavailableError
from ..vocab.redact import redact_text, redact_url

__all__ = ["PostgresStorage"]

_HEAD = "context_store_registry"
_VERSIONS = "context_store_registry_versions"
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {_HEAD} (
    workspace text PRIMARY KEY,
    version integer NOT NULL DEFAULT 0,
    deployment_id text,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS {_VERSIONS} (
    workspace text NOT NULL,
    version integer NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    meta text NOT NULL,
    files text NOT NULL,
    PRIMARY KEY (workspace, version)
);
"""
_CONNECT_TIMEOUT_S = 5


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError:
        raise MissingDependencyError(
            "registry: postgresql:// needs psycopg: pip install 'context-store[postgres]'", field="registry"
        ) from None
    return psycopg


class PostgresStorage:
    def __init__(self, dsn: str, workspace: str, data_dir: Path) -> None:
        self.dsn = dsn
        self.workspace = workspace
        self.data_dir = Path(data_dir)
        self._psycopg = _psycopg()
        self._conn: Any = None  # autocommit connection for reads, shared under ``_lock``
        self._lock = threading.Lock()
        self._tx = threading.local()  # the apply transaction of this thread (inside ``locked()``)
        self._schema_ready = False

    def __repr__(self) -> str:
        return f"PostgresStorage({redact_url(self.dsn)!r}, workspace={self.workspace!r})"

    # -- connections -------------------------------------------------------------------
    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except self._psycopg.Error as e:
            msg = redact_text(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)
            raise UnavailableError(f"registry {redact_url(self.dsn)}: {msg}", field="registry") from None

    def _connect(self, autocommit: bool) -> Any:
        conn = self._psycopg.connect(self.dsn, autocommit=autocommit, connect_timeout=_CONNECT_TIMEOUT_S)
        if not self._schema_ready:
            self._ensure_schema(conn)
        return conn

    def _ensure_schema(self, conn: Any) -> None:
        with conn.transaction():
            ready = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (_VERSIONS,)).fetchone()[0]
            if not ready:  # creating only when missing: a role without CREATE can still use existing tables
                # concurrent CREATE TABLE IF NOT EXISTS can still collide on the catalog; serialize them
                conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (_HEAD,))
                conn.execute(_SCHEMA)
        self._schema_ready = True

    @contextmanager
    def _cursor(self) -> Iterator[Any]:
        """The apply transaction's connection in this thread, else the shared autocommit one."""
        tx = getattr(self._tx, "conn", None)
        if tx is not None:
            with self._errors():
                yield tx
            return
        with self._lock, self._errors():
            if self._conn is None or self._conn.closed or self._conn.broken:
                self._conn = self._connect(autocommit=True)
            yield self._conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # -- reads -------------------------------------------------------------------------
    def current_version(self) -> int:
        with self._cursor() as c:
            row = c.execute(f"SELECT version FROM {_HEAD} WHERE workspace = %s", (self.workspace,)).fetchone()
        return int(row[0]) if row else 0

    def _row(self, version: int, column: str) -> str:
        with self._cursor() as c:
            row = c.execute(
                f"SELECT {column} FROM {_VERSIONS} WHERE workspace = %s AND version = %s", (self.workspace, version)
            ).fetchone()
        if row is None:
            raise LookupError(f"version {version} is not stored")
        return str(row[0])

    def read_meta(self, version: int) -> dict[str, Any]:
        meta: dict[str, Any] = json.loads(self._row(version, "meta"))
        return meta

    def versions(self) -> list[int]:
        with self._cursor() as c:
            rows = c.execute(
                f"SELECT version FROM {_VERSIONS} WHERE workspace = %s ORDER BY version", (self.workspace,)
            ).fetchall()
        return [int(r[0]) for r in rows]

    def snapshot_dir(self, version: int) -> Path:
        dep = self.deployment_id(create=False) or "none"
        final = self.data_dir / "registry-cache" / dep / self.workspace / f"{version:06d}"
        if not final.is_dir():
            files: dict[str, str] = json.loads(self._row(version, "files"))
            tmp = final.with_name(f".tmp-{uuid.uuid4().hex[:10]}")
            for rel, text in files.items():
                dst = tmp / "repo" / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                dst.write_text(text)
            tmp.mkdir(parents=True, exist_ok=True)  # a version without files still gets its directory
            try:
                os.rename(tmp, final)
            except OSError:  # another process materialized it first: same immutable content
                shutil.rmtree(tmp, ignore_errors=True)
        return final / "repo"

    def deployment_id(self, create: bool = True) -> str | None:
        with self._cursor() as c:
            if not create:
                row = c.execute(f"SELECT deployment_id FROM {_HEAD} WHERE workspace = %s", (self.workspace,)).fetchone()
                return str(row[0]) if row and row[0] else None
            row = c.execute(
                f"INSERT INTO {_HEAD} (workspace, deployment_id) VALUES (%s, %s) ON CONFLICT (workspace) DO UPDATE "
                f"SET deployment_id = COALESCE({_HEAD}.deployment_id, EXCLUDED.deployment_id) RETURNING deployment_id",
                (self.workspace, uuid.uuid4().hex[:16]),
            ).fetchone()
        return str(row[0])

    # -- apply -------------------------------------------------------------------------
    @contextmanager
    def locked(self) -> Iterator[None]:
        if getattr(self._tx, "conn", None) is not None:
            raise RuntimeError("nested registry apply in one thread")
        with self._errors():
            conn = self._connect(autocommit=False)
        try:
            with self._errors():
                conn.execute(
                    f"INSERT INTO {_HEAD} (workspace) VALUES (%s) ON CONFLICT (workspace) DO NOTHING", (self.workspace,)
                )
                conn.execute(f"SELECT version FROM {_HEAD} WHERE workspace = %s FOR UPDATE", (self.workspace,))
            self._tx.conn = conn
            try:
                yield
            finally:
                self._tx.conn = None
            with self._errors():
                conn.commit()
        finally:
            conn.close()  # without a commit: rolled back

    def write_version(self, expected: int, meta: dict[str, Any], files: dict[str, Path]) -> int:
        if getattr(self._tx, "conn", None) is None:
            with self.locked():
                return self.write_version(expected, meta, files)
        texts = {rel: Path(src).read_text() for rel, src in files.items()}
        v = expected + 1
        with self._cursor() as c:
            sql = f"SELECT version FROM {_HEAD} WHERE workspace = %s FOR UPDATE"
            row = c.execute(sql, (self.workspace,)).fetchone()
            current = int(row[0]) if row else 0
            if current != expected:
                raise ConflictError(
                    f"registry moved from version {expected} to {current} while applying; re-run apply",
                    field="registry",
                )
            c.execute(
                f"INSERT INTO {_VERSIONS} (workspace, version, meta, files) VALUES (%s, %s, %s, %s)",
                (self.workspace, v, json.dumps(meta, sort_keys=True, default=str), json.dumps(texts)),
            )
            c.execute(f"UPDATE {_HEAD} SET version = %s, updated_at = now() WHERE workspace = %s", (v, self.workspace))
        return v
