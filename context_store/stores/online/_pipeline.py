"""Bulk writes pipelined on one Redis connection: batches sent, replies read later (materialize).

A caller sends a batch and goes on building the next one while Redis runs it; replies are read (and
checked) once more than ``keep`` batches are unread, or on ``drain()``. A batch that failed with
NOSCRIPT (Redis restarted and lost its scripts) is sent again through its ``redo`` callback.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._resp import import_redis

__all__ = ["PipelinedBatches"]


class PipelinedBatches:
    """Unread batches, oldest first, all on one connection taken from ``pool`` (not thread-safe: the
    store holds its write lock around every call)."""

    def __init__(self, pool: Any, on_noscript: Callable[[], None]) -> None:
        self._pool = pool
        self._on_noscript = on_noscript  # forget the loaded scripts' SHAs before the redos reload them
        self._conn: Any = None
        self._pending: list[tuple[int, Callable[[], None]]] = []  # (replies, how to send again)

    def send(self, cmds: list[bytes], redo: Callable[[], None], wait: bool, keep: int = 0) -> None:
        """Send ``cmds`` on the pending connection (or a new one), then read replies until at most
        ``keep`` earlier batches remain unread besides this one (all of them with ``wait``)."""
        if self._conn is None:
            self._conn = self._pool.get_connection()
        try:
            self._conn.send_packed_command(cmds)
        except BaseException:
            self.abort()
            raise
        self._pending.append((len(cmds), redo))
        if wait:
            self.drain()
        elif len(self._pending) > keep + 1:
            self.drain(keep + 1)

    def abort(self) -> None:
        """Drop the pending connection: unread replies would poison it in the pool."""
        conn, self._conn, self._pending = self._conn, None, []
        if conn is not None:
            conn.disconnect()
            self._pool.release(conn)

    def drain(self, keep: int = 0) -> None:
        """Read (and check) the replies of all pending batches but the newest ``keep``."""
        if not self._pending:
            return
        redis = import_redis()
        conn = self._conn
        redo: list[Callable[[], None]] = []
        errors = []
        try:
            while len(self._pending) > keep:
                n, again = self._pending.pop(0)
                failed = False
                for _ in range(n):
                    try:
                        conn.read_response()
                    except redis.exceptions.ResponseError as e:
                        errors.append(e)
                        failed = True
                if failed:
                    redo.append(again)
                if errors and keep:  # on an error every batch is read first: later ones may need a redo too
                    keep = 0
        except BaseException:
            self.abort()
            raise
        if not self._pending:
            self._conn = None
            self._pool.release(conn)
        if errors:
            if type(errors[0]).__name__ == "NoScriptError" or "NOSCRIPT" in str(errors[0]):
                self._on_noscript()  # Redis restarted: load the scripts and redo (sets only: idempotent)
                for again in redo:
                    again()
                return
            raise errors[0]
