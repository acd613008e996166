"""A PostgreSQL for tests: the one at 127.0.0.1:5432 (trust auth, database ``test``) when it answers, else a
private server of this session (initdb in a temp dir, a free port, trust auth, run as ``nobody`` when we are
root since postgres refuses root), stopped at the end. Skips, saying why, only when neither is possible.
``CONTEXT_STORE_TEST_POSTGRES_PRIVATE=1`` forces the private server."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support.server import free_port

__all__ = ["postgres_dsn", "SHARED_DSN"]

SHARED_DSN = os.environ.get("CONTEXT_STORE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
_BIN_DIRS = ("/usr/local/bin", "/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin", "/usr/bin")


def _answers(dsn: str) -> bool:
    import psycopg

    try:
        with psycopg.connect(dsn, connect_timeout=2) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


def _binary(name: str) -> str | None:
    for d in _BIN_DIRS:
        if os.access(os.path.join(d, name), os.X_OK):
            return os.path.join(d, name)
    return shutil.which(name)


def _as_user(cmd: list[str]) -> list[str]:
    """postgres refuses to run as root: drop to ``nobody`` with runuser (we are root then)."""
    if os.geteuid() != 0:
        return cmd
    runuser = shutil.which("runuser")
    if runuser is None:
        pytest.skip("postgres refuses root and runuser is missing: no private PostgreSQL possible")
    return [runuser, "-u", "nobody", "--", *cmd]


@contextmanager
def _private() -> Iterator[str]:
    initdb, postgres = _binary("initdb"), _binary("postgres")
    if initdb is None or postgres is None:
        pytest.skip("no PostgreSQL at 127.0.0.1:5432 and no initdb/postgres binaries to start one")
    tmp = Path(tempfile.mkdtemp(prefix="cs-pg-"))
    data = tmp / "data"
    if os.geteuid() == 0:
        shutil.chown(tmp, "nobody")
        os.chmod(tmp, 0o700)
    init = subprocess.run(
        _as_user([initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"]),
        capture_output=True,
        text=True,
    )
    if init.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        pytest.skip(f"initdb failed: {init.stderr.strip()[-300:]}")
    port = free_port()
    opts = ["-D", str(data), "-p", str(port), "-k", str(tmp), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"]
    proc = subprocess.Popen(_as_user([postgres, *opts]), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    admin = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    try:
        deadline = time.monotonic() + 30
        while not _answers(admin):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.skip("a private PostgreSQL did not start")
            time.sleep(0.1)
        import psycopg

        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute("CREATE DATABASE test")
        yield f"postgresql://postgres@127.0.0.1:{port}/test"
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def postgres_dsn() -> Iterator[str]:
    """A DSN of a database the caller may create tables in; give every test its own workspace."""
    pytest.importorskip("psycopg", reason="the postgres extra is not installed: pip install 'context-store[postgres]'")
    if os.environ.get("CONTEXT_STORE_TEST_POSTGRES_PRIVATE") != "1" and _answers(SHARED_DSN):
        yield SHARED_DSN
        return
    with _private() as dsn:
        yield dsn
