"""Redis online store (production): one hash per entity key, one round trip per lookup.

Keys (``P`` = ``cs:{workspace}:``): ``P e:{entity key}`` hash of every view's fields for that
entity (see docs/online-state.md), ``P offsets`` hash of applied stream offsets,
``P meta`` hash of materialization watermarks, ``P r:{source}:{entity key}`` recent events list,
``P map:{name}`` small shared maps (the stream cut-overs: ``map:cutover``).
Writes go through one Lua script, so a batch of tiles plus its applied offset is atomic.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Awaitable, Sequence
from typing import Any

from ...config import RedisTimeouts
from ...errors import UnavailableError
from ...state.ops import Ops, entity_key_has, recent_key_has
from ...state.writes import RowChunk
from ...vocab.redact import redact_url, register_url
from ._aio import AsyncRawConnection, LoopConnections, open_async_raw
from ._pipeline import PipelinedBatches
from ._resp import (
    CHUNK_KEYS,
    COMMIT,
    ROWS,
    RawConnection,
    import_redis,
    key_args_resp,
    pack,
    pack_rows,
    resp,
    resp_args,
)
from .base import BaseOnlineStore, EntityErased

__all__ = ["RedisOnlineStore"]

# claim_ids: per key, its value if set, else SET it (value ARGV[1], ttl ARGV[2] ms) and answer nil.
_CLAIM = """
local out = {}
for i = 1, #KEYS do
  local v = redis.call('GET', KEYS[i])
  if v then out[i] = v else redis.call('SET', KEYS[i], ARGV[1], 'PX', ARGV[2]); out[i] = false end
end
return out
"""


def _glob_escape(s: str) -> str:
    """``s`` matched literally in a SCAN ``MATCH`` pattern."""
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in s)


def _timed_out(e: BaseException) -> bool:
    return isinstance(e, TimeoutError) or type(e).__name__ == "TimeoutError"


class RedisOnlineStore(BaseOnlineStore):
    backend = "redis"

    def __init__(self, url: str, workspace: str = "default", timeouts: RedisTimeouts | None = None) -> None:
        redis = import_redis()
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        register_url(url)  # its password is masked in every message and log line from now on
        self.url = url
        self.workspace = workspace
        self.prefix = f"cs:{workspace}:"
        self._errors = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)
        # Bounded calls (config ``redis_read_timeout_ms``/``redis_write_timeout_ms``): a hung Redis is a
        # fast 503. A broken connection (Redis restarted) is retried once, a timeout never: retrying it
        # would double the wait (and could run a write twice).
        self.timeouts = t = timeouts or RedisTimeouts()
        once = Retry(NoBackoff(), 1, supported_errors=(redis.exceptions.ConnectionError,))
        self._r = redis.Redis.from_url(
            url, socket_connect_timeout=t.write_s, socket_timeout=t.write_s, health_check_interval=30, retry=once
        )
        # The hot read path's own connections (``_raw``) come from this pool: reads time out within the
        # serving budget, also while (re)connecting.
        self._rr = redis.Redis.from_url(url, socket_connect_timeout=t.read_s, socket_timeout=t.read_s, retry=once)
        self._claim = self._r.register_script(_CLAIM)
        self._script = self._r.register_script(COMMIT)
        self.aconns = LoopConnections(self._aopen)  # the async read path's raw connections, one per event loop
        self._lock = threading.Lock()  # ``_held``: threads' connections, closed by ``close`` from another thread
        self._tl = threading.local()
        self._held: list[Any] = []
        self._offsets = self.prefix + "offsets"
        self._sha: Any = None
        self._shas: dict[str, bytes] = {}
        self._rows_sha: bytes | None = None
        self._batches = PipelinedBatches(self._r.connection_pool, self._noscript)  # bulk writes sent, unread
        self._wlock = threading.RLock()

    def _unavailable(self, e: Exception) -> UnavailableError:
        return UnavailableError(
            f"online store: Redis at {redact_url(self.url)} is unreachable ({type(e).__name__}: {e}); "
            "retry when it is back"
        )

    def _k(self, key: str) -> str:
        return self.prefix + "e:" + key

    # -- reads --------------------------------------------------------------------------
    def _raw(self) -> RawConnection:
        """This thread's own connection: the hot path skips the pool and redis-py's command layer."""
        c = getattr(self._tl, "raw", None)
        if c is None or c.pid != os.getpid():  # never share a socket with a forked parent
            conn = self._rr.connection_pool.make_connection()
            with self._lock:
                self._held.append(conn)
            c = self._tl.raw = RawConnection(conn, os.getpid())
        return c

    def _drop_raw(self) -> None:
        c = getattr(self._tl, "raw", None)
        self._tl.raw = None
        if c is not None:
            c.conn.disconnect()

    def _read_timeout(self, n_fields: int) -> float:
        """The read budget (``redis_read_timeout_ms``), plus 10 ms per 1,000 fields: a large batch
        lookup is not cut off on a busy host, a hung Redis still fails fast."""
        return self.timeouts.read_s + n_fields * 1e-5

    def _direct(self, *args: Any) -> Any:
        """One command on this thread's connection; a broken connection is retried once, a timeout
        is not (the read budget is spent)."""
        packed = pack(args)
        for attempt in (0, 1):
            c = self._raw()
            try:
                c.sock.settimeout(self._read_timeout(len(args)))
                return c.call(packed)
            except self._errors as e:
                self._drop_raw()
                if attempt or _timed_out(e):
                    raise
        raise AssertionError("unreachable")

    def _many(self, packed: bytes, n: int, n_fields: int) -> list[Any]:
        """``n`` pipelined commands (already packed) on this thread's connection (as ``_direct``)."""
        for attempt in (0, 1):
            c = self._raw()
            try:
                c.sock.settimeout(self._read_timeout(n_fields))
                return c.call_many(packed, n)
            except self._errors as e:
                self._drop_raw()
                if attempt or _timed_out(e):
                    raise
        raise AssertionError("unreachable")

    def _pack_hmget(self, reqs: list[tuple[str, list[str]]]) -> tuple[bytes, int, int]:
        """HMGETs of ``reqs`` (each with fields), RESP-packed: (bytes, commands, arguments)."""
        pre = self.prefix + "e:"
        if len(reqs) == 1:
            key, fields = reqs[0]
            return pack(("HMGET", pre + key, *fields)), 1, len(fields) + 1
        f0 = reqs[0][1]
        if all(f is f0 or f == f0 for _, f in reqs):  # one field list: its RESP is built once
            tail = b"".join([b"$%d\r\n%b\r\n" % (len(x), x) for x in (f.encode() for f in f0)])
            head = b"*%d\r\n$5\r\nHMGET\r\n" % (len(f0) + 2)
            packed = b"".join(
                [head + b"$%d\r\n%b\r\n" % (len(kb), kb) + tail for kb in (f"{pre}{k}".encode() for k, _ in reqs)]
            )
            return packed, len(reqs), len(reqs) * (len(f0) + 1)
        n = sum(len(f) + 1 for _, f in reqs)
        return b"".join([pack(("HMGET", pre + k, *f)) for k, f in reqs]), len(reqs), n

    def _hmget(self, reqs: list[tuple[str, list[str]]]) -> list[list[bytes | None]]:
        try:
            if len(reqs) == 1:
                key, fields = reqs[0]
                return [self._direct("HMGET", self.prefix + "e:" + key, *fields)] if fields else [[]]
            # Many keys: plain HMGETs pipelined on this thread's connection. Redis runs them ~3x cheaper
            # than the same HMGETs inside a Lua script (which converts every reply to Lua strings and back).
            live = [(k, f) for k, f in reqs if f]
            if not live:
                return [[] for _ in reqs]
            res = iter(self._many(*self._pack_hmget(live)))
            return [next(res) if f else [] for _, f in reqs]
        except self._errors as e:
            raise self._unavailable(e) from None

    def _eval_packed(self, script: str, head: list[bytes], body: list[bytes], n_body: int) -> Any:
        """EVALSHA of ``script`` on this thread's connection: ``head`` (numkeys, keys, ...) plain,
        ``body`` already RESP-encoded (``n_body`` arguments). Skips redis-py's argument packing."""
        redis = import_redis()
        for attempt in (0, 1):
            sha = self._shas.get(script)
            if sha is None:
                loaded = self._r.script_load(script)
                sha = self._shas[script] = loaded.encode() if isinstance(loaded, str) else loaded
            cmd = resp([b"EVALSHA", sha] + head, 2 + len(head) + n_body) + b"".join(body)
            raw = self._raw()
            try:
                raw.sock.settimeout(self.timeouts.write_s)  # a write on the read connection: the write budget
                try:
                    return raw.call(cmd)
                finally:
                    with contextlib.suppress(OSError):
                        raw.sock.settimeout(self.timeouts.read_s)
            except redis.exceptions.NoScriptError:
                if attempt:
                    raise
                self._shas.pop(script, None)  # Redis restarted: load the script again
            except self._errors:
                self._drop_raw()
                raise
        raise AssertionError("unreachable")

    def _aopen(self, key: str) -> Awaitable[AsyncRawConnection]:
        """An event loop's raw connection (``aconns``'s opener; one key, this Redis), opened by a redis.asyncio
        client (AUTH, SELECT, TLS) within the write budget: it happens once per loop, and a busy host may need
        more than the read budget for the handshake (the waiting request gives up after its read budget)."""
        import redis.asyncio as aredis

        t = self.timeouts
        client = aredis.Redis.from_url(self.url, socket_connect_timeout=t.write_s, socket_timeout=t.write_s)
        return open_async_raw(client, t.write_s, abandon_s=t.write_s)

    async def _ahmget(self, reqs: list[tuple[str, list[str]]]) -> list[list[bytes | None]]:
        live = [(k, f) for k, f in reqs if f]
        if not live:
            return [[] for _ in reqs]
        packed, n, n_fields = self._pack_hmget(live)
        timeout = self._read_timeout(n_fields)
        try:
            loop = asyncio.get_running_loop()
            for attempt in (0, 1):
                c = self.aconns.get(loop, "")
                if c is None:  # (re)opened: missing or closed
                    c = await self.aconns.open(loop, "", timeout)
                try:
                    got = await c.call(packed, n, timeout)
                    break
                except ConnectionError:  # broken (Redis restarted): retried once; a timeout is not
                    if attempt:
                        raise
            else:  # pragma: no cover
                raise AssertionError("unreachable")
        except self._errors as e:
            raise self._unavailable(e) from None
        rows = [got] if n == 1 else got
        for r in rows:
            if isinstance(r, Exception):
                raise r
        if len(live) == len(reqs):
            return rows
        res = iter(rows)
        return [next(res) if f else [] for _, f in reqs]

    def _fields(self, keys: list[str]) -> list[list[str]]:
        try:
            pipe = self._r.pipeline(transaction=False)
            for k in keys:
                pipe.hkeys(self._k(k))
            return [[f.decode() for f in fs] for fs in pipe.execute()]
        except self._errors as e:
            raise self._unavailable(e) from None

    # -- writes -------------------------------------------------------------------------
    def _commit(
        self, ops: Ops, cas: Sequence[tuple[str, str | None, str]] = (), notify: tuple[str, str] | None = None
    ) -> bool:
        keys = ops.keys()
        try:
            if cas or ops.guards or notify or ops.lists:  # one atomic script for the whole batch
                lists = list(ops.lists)
                head = [str(len(keys) + 1 + len(lists)).encode(), self._offsets.encode()] + [
                    self._k(k).encode() for k in keys
                ]
                head += [(self.prefix + k).encode() for k in lists]
                head.append(str(len(cas)).encode())
                for field, expected, new in cas:
                    head += [field.encode(), (expected or "").encode(), new.encode()]
                guards = [
                    (str(i + 2).encode(), f.encode(), (v or "").encode())
                    for i, k in enumerate(keys)
                    for f, v in ops.guards.get(k, {}).items()
                ]
                head.append(str(len(guards)).encode())
                for g in guards:
                    head += g
                head += [notify[0].encode(), notify[1].encode()] if notify else [b"", b""]
                head.append(str(len(keys)).encode())
                body = [key_args_resp(ops, k) for k in keys]
                for k in lists:
                    items, cap = ops.lists[k]
                    body.append((2 + len(items), resp_args([str(cap).encode(), str(len(items)).encode(), *items])))
                return bool(self._eval_packed(COMMIT, head, [b for _, b in body], sum(c for c, _ in body)))
            with self._wlock:
                self._bulk(ops, keys)
            return True
        except self._errors as e:
            raise self._unavailable(e) from None

    def write_ops(self, ops: Ops, wait: bool = True) -> None:
        """Bulk writes. ``wait=False`` returns once the commands are sent: Redis executes them while
        the caller builds the next chunk; replies are checked at the next write or ``flush()``."""
        keys = ops.keys()
        if not keys:
            return
        try:
            with self._wlock:
                self._bulk(ops, keys, wait)
        except self._errors as e:
            raise self._unavailable(e) from None

    def flush(self) -> None:
        """Wait for (and check) bulk writes sent with ``wait=False``."""
        try:
            with self._wlock:
                self._batches.drain()
        except self._errors as e:
            raise self._unavailable(e) from None

    def _bulk(self, ops: Ops, keys: list[str], wait: bool = True) -> None:
        """Bulk writes (materialize): the same script, chunks of keys, RESP built here and
        pipelined on one connection (redis-py's per-argument packing dominated otherwise)."""
        self._batches.drain()
        if self._sha is None:
            self._sha = self._r.script_load(COMMIT)
        cmds: list[bytes] = []
        sha = self._sha.encode() if isinstance(self._sha, str) else self._sha
        for i in range(0, len(keys), CHUNK_KEYS):
            part = keys[i : i + CHUNK_KEYS]
            head = [b"EVALSHA", sha, str(len(part) + 1).encode(), self._offsets.encode()] + [
                self._k(k).encode() for k in part
            ]
            head += [b"0", b"0", b"", b"", str(len(part)).encode()]  # no offsets, guards, notification
            body = [key_args_resp(ops, k) for k in part]
            n_args = len(head) + sum(c for c, _ in body)
            cmds.append(resp(head, n_args) + b"".join(b for _, b in body))
        self._batches.send(cmds, lambda: self._bulk(ops, keys), wait)

    def write_rows(self, chunk: RowChunk, wait: bool = True) -> None:
        """Bulk rows of a row view (materialize): the ``ROWS`` script, pipelined (as ``write_ops``)."""
        if not chunk.keys:
            return
        try:
            with self._wlock:
                self._bulk_rows(chunk, wait)
        except self._errors as e:
            raise self._unavailable(e) from None

    def _bulk_rows(self, chunk: RowChunk, wait: bool = True) -> None:
        if self._rows_sha is None:
            sha = self._r.script_load(ROWS)
            self._rows_sha = sha.encode() if isinstance(sha, str) else sha
        # Packed while Redis still runs the previous chunk, and sent before its replies are read:
        # Redis goes from one chunk to the next without waiting for the client (a window of 2).
        cmds = pack_rows(self._rows_sha, self.prefix + "e:", chunk)
        self._batches.send(cmds, lambda: self._bulk_rows(chunk), wait, keep=1)

    def _noscript(self) -> None:
        self._sha = self._rows_sha = None

    def _get_offset(self, field: str) -> str | None:
        try:
            v = self._r.hget(self._offsets, field)
        except self._errors as e:
            raise self._unavailable(e) from None
        return v.decode() if v is not None else None

    def get_meta(self, name: str) -> bytes | None:
        # On the read path (serving's marker refresh): the read budget, not the write one.
        try:
            v = self._direct("HGET", self.prefix + "meta", name)
            return None if v is None else bytes(v)
        except self._errors as e:
            raise self._unavailable(e) from None

    def set_meta(self, name: str, value: bytes) -> None:
        self.flush()  # a watermark is only recorded after the data it covers
        try:
            self._r.hset(self.prefix + "meta", name, value)
        except self._errors as e:
            raise self._unavailable(e) from None

    def claim_meta(self, name: str, value: bytes) -> bytes:
        try:
            pipe = self._r.pipeline(transaction=True)
            pipe.hsetnx(self.prefix + "meta", name, value)
            pipe.hget(self.prefix + "meta", name)
            return bytes(pipe.execute()[1])
        except self._errors as e:
            raise self._unavailable(e) from None

    def get_shared_map(self, name: str) -> dict[str, bytes]:
        try:
            got = self._r.hgetall(self.prefix + "map:" + name)
        except self._errors as e:
            raise self._unavailable(e) from None
        return {k.decode(): bytes(v) for k, v in got.items()}

    def set_shared_field(self, name: str, field: str, value: bytes | None, if_absent: bool = False) -> bool:
        key = self.prefix + "map:" + name
        try:
            if value is None:
                return bool(self._r.hdel(key, field))
            if if_absent:
                return bool(self._r.hsetnx(key, field, value))
            self._r.hset(key, field, value)
            return True
        except self._errors as e:
            raise self._unavailable(e) from None

    @property
    def location(self) -> str:
        return redact_url(self.url)

    def _recent_append(self, key: str, items: list[bytes], max_len: int) -> None:
        try:
            pipe = self._r.pipeline(transaction=True)
            pipe.rpush(self.prefix + key, *items)
            pipe.ltrim(self.prefix + key, -max_len, -1)
            pipe.execute()
        except self._errors as e:
            raise self._unavailable(e) from None

    def _recent_remove(self, key: str, items: list[bytes]) -> int:
        try:
            pipe = self._r.pipeline(transaction=True)
            for b in items:
                pipe.lrem(self.prefix + key, 0, b)
            return sum(int(n) for n in pipe.execute())
        except self._errors as e:
            raise self._unavailable(e) from None

    def _recent_read(self, key: str, n: int) -> list[bytes]:
        # On this thread's raw connection, like the HMGETs (every context call reads it): redis-py's
        # pool and command layer cost ~0.3 ms per call here.
        try:
            return list(self._direct("LRANGE", self.prefix + key, -n, -1))
        except self._errors as e:
            raise self._unavailable(e) from None

    def forget_entity(self, join_key: str, value: str) -> EntityErased:
        # SCAN (not KEYS): a rare admin call must not block Redis; the glob only narrows, the
        # exact test is on the key's parts.
        part = _glob_escape(f"{join_key}={value}")
        found: dict[str, list[bytes]] = {"e": [], "r": []}
        try:
            for kind, test in (("e", entity_key_has), ("r", recent_key_has)):
                pattern = _glob_escape(self.prefix) + kind + ":*" + part + "*"
                for k in self._r.scan_iter(match=pattern, count=1000):
                    rest = k.decode()[len(self.prefix) :]
                    if test(rest[2:] if kind == "e" else rest, join_key, value):
                        found[kind].append(k)
            for keys in found.values():
                for i in range(0, len(keys), 500):
                    self._r.delete(*keys[i : i + 500])
        except self._errors as e:
            raise self._unavailable(e) from None
        return EntityErased(len(found["e"]), len(found["r"]))

    def claim_ids(self, scope: str, ids: Sequence[str], value: bytes, ttl_ms: int) -> list[bytes | None]:
        keys = [f"{self.prefix}claim:{scope}:{i}" for i in ids]
        try:
            got = self._claim(keys=keys, args=[value, int(ttl_ms)]) if keys else []
        except self._errors as e:
            raise self._unavailable(e) from None
        return [v if v else None for v in got]

    def ping(self) -> bool:
        try:
            return bool(self._r.ping())
        except self._errors as e:
            raise self._unavailable(e) from None

    def clear(self) -> None:
        """Delete every key of this workspace."""
        try:
            batch = []
            for k in self._r.scan_iter(match=self.prefix + "*", count=1000):
                batch.append(k)
                if len(batch) >= 500:
                    self._r.delete(*batch)
                    batch = []
            if batch:
                self._r.delete(*batch)
        except self._errors as e:
            raise self._unavailable(e) from None

    def close(self) -> None:
        self.flush()
        for c in self._held:
            c.disconnect()
        self._held.clear()
        self._tl = threading.local()
        self._r.close()
        self._rr.close()
        self.aconns.close_all()
