"""Redis Cluster online store (``online_store: redis+cluster://host:port[,host:port...]``).

The single-node store's layout and commit script, with every key hash-tagged so that each Lua
call touches one slot. Entity keys are spread over ``S`` virtual shards (``crc32(entity key) % S``,
``S`` recorded in the workspace's meta hash so it never silently changes); with ``P = cs:{ws|s}:``:
``P e:{entity key}`` (hash, as on one Redis), ``P r:{source}:{entity key}`` (recent events),
``P offsets`` (the shard's fences). Per workspace (tag ``{ws}``): ``cs:{ws}:offsets`` (the global
fences a partition's owner resumes from), ``cs:{ws}:meta``, ``cs:{ws}:map:{name}``, ``cs:{ws}:claim:...``.

A commit is split per shard: each shard's part is one atomic script with its own per-(view,
partition) fence, then the global fences advance (compare-and-set) and the applied offsets are
announced. A crash between shard commits leaves some shards ahead of the global fence; the replay
skips exactly those (their fence already holds the offset) and applies the others, so every event
counts once per shard. Why this layout: docs/online-state.md ("Redis Cluster").
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Sequence
from typing import Any

from ...config import RedisTimeouts, RedisWait
from ...errors import UnavailableError
from ...state.ops import Ops, entity_key_has, recent_key_has
from ...state.tiles import ViewState
from ...vocab.redact import redact_text, redact_url, register_url
from ._aio import AsyncRawConnection, LoopConnections, open_async_raw
from ._cluster import (
    DEFAULT_SHARDS,
    GLOBAL_BEGIN,
    GLOBAL_COMMIT,
    INFLIGHT,
    SHARD_COMMIT,
    NodeBatches,
    cluster_client,
    parse_cluster_url,
    shard_of,
)
from ._resp import RawConnection, pack
from .base import BaseOnlineStore, EntityErased

__all__ = ["RedisClusterOnlineStore"]

_CLAIM = """
local out = {}
for i = 1, #KEYS do
  local v = redis.call('GET', KEYS[i])
  if v then out[i] = v else redis.call('SET', KEYS[i], ARGV[1], 'PX', ARGV[2]); out[i] = false end
end
return out
"""
# The shared maps' writes: one script so that they go through ``NodeBatches`` (WAIT, failover retries).
_SHARED = """
if ARGV[1] == 'del' then return redis.call('HDEL', KEYS[1], ARGV[2]) end
if ARGV[1] == 'nx' then return redis.call('HSETNX', KEYS[1], ARGV[2], ARGV[3]) end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
return 1
"""
_RECENT = "redis.call('RPUSH', KEYS[1], unpack(ARGV, 2)); redis.call('LTRIM', KEYS[1], -tonumber(ARGV[1]), -1)"


def _glob_escape(s: str) -> str:
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in s)


class RedisClusterOnlineStore(BaseOnlineStore):
    backend = "redis-cluster"

    def __init__(
        self,
        url: str,
        workspace: str = "default",
        timeouts: RedisTimeouts | None = None,
        wait: RedisWait | None = None,
        shards: int = DEFAULT_SHARDS,
    ) -> None:
        import redis

        register_url(url)
        self.url = url
        self.workspace = workspace
        self.timeouts = t = timeouts or RedisTimeouts()
        self.wait = wait or RedisWait()
        self._errors = (redis.exceptions.RedisError, redis.exceptions.RedisClusterException, OSError)
        try:
            self._r = cluster_client(url, t.write_s, 6)
            self._rr = cluster_client(url, t.read_s, 2)  # reads: within the serving budget, a short retry
        except self._errors as e:
            raise self._unavailable(e) from None
        self._g = f"cs:{{{workspace}}}:"  # per-workspace keys (one slot)
        self._meta = self._g + "meta"
        self._offsets = self._g + "offsets"
        self._nodes = NodeBatches(self._r, (self.wait.replicas, self.wait.timeout_ms), max(t.write_s, 5.0))
        self._claim = self._r.register_script(_CLAIM)
        self._recent = self._r.register_script(_RECENT)
        self.shards = self._stored_shards(shards)
        self._slots = [self._r.keyslot(self._tag_of(i)) for i in range(self.shards)]
        self._tl = threading.local()
        self._lock = threading.Lock()
        self._held: list[Any] = []
        self.aconns = LoopConnections(self._aopen)  # the async path's connections: per event loop and master
        self._anodes: dict[str, tuple[str, int]] = {}  # master name -> (host, port), for ``_aopen``

    def _stored_shards(self, wanted: int) -> int:
        """The workspace's shard count: the first opener records it; later ones use it whatever they ask."""
        try:
            self._r.hsetnx(self._meta, "cluster_shards", str(wanted))
            got = self._r.hget(self._meta, "cluster_shards")
        except self._errors as e:
            raise self._unavailable(e) from None
        return int(got)

    def _unavailable(self, e: BaseException) -> UnavailableError:
        return UnavailableError(
            f"online store: Redis Cluster at {redact_url(self.url)} is unreachable "
            f"({type(e).__name__}: {redact_text(str(e))}); retry when it is back"
        )

    def _tag_of(self, shard: int) -> str:
        return f"cs:{{{self.workspace}|{shard}}}:"

    def _tag(self, key: str) -> str:
        return self._tag_of(shard_of(key, self.shards))

    def _k(self, key: str) -> str:
        return self._tag(key) + "e:" + key

    def _lk(self, suffix: str) -> str:
        """A recent-events list (``r:{source}:{entity key}``), in its entity's shard."""
        return self._tag(suffix.split(":", 2)[-1]) + suffix

    # -- reads --------------------------------------------------------------------------
    def _hmget(self, reqs: list[tuple[str, list[str]]]) -> list[list[bytes | None]]:
        n_fields = sum(len(f) for _, f in reqs)
        try:  # the fast path, whatever the size (its budget grows with the fields, as on one Redis)
            return self._hmget_raw(reqs, n_fields)
        except self._errors:
            # A moved slot, a lost node, a timeout: redis-py's client follows MOVED, re-reads the
            # topology and retries (within the read budget); its slot map then serves the fast path again.
            self._drop_raw()
        return self._hmget_client(reqs, n_fields)

    def _hmget_client(self, reqs: list[tuple[str, list[str]]], n_fields: int) -> list[list[bytes | None]]:
        """The reads through redis-py's cluster client (MOVED/ASK, topology refresh, retries)."""
        # The read budget (``redis_read_timeout_ms``) for lookups; a big read (an idle Lifetime
        # entity's old tiles, a large batch) gets the write budget rather than a spurious 503.
        r = self._rr if n_fields <= 2000 else self._r
        try:
            if len(reqs) == 1:
                key, fields = reqs[0]
                return [r.execute_command("HMGET", self._k(key), *fields)] if fields else [[]]
            pipe = r.pipeline()  # grouped per node by redis-py: one round trip per node
            for key, fields in reqs:
                if fields:
                    pipe.execute_command("HMGET", self._k(key), *fields)
            res = iter(pipe.execute())
            return [next(res) if fields else [] for _, fields in reqs]
        except self._errors as e:
            raise self._unavailable(e) from None

    def _hmget_raw(self, reqs: list[tuple[str, list[str]]], n_fields: int) -> list[list[bytes | None]]:
        """The hot path: HMGETs grouped per master, packed once, sent on this thread's own hiredis
        connection to each master (as the single-node store does; redis-py's cluster layers cost
        more than the command)."""
        by_node = self._by_node(reqs)
        out: list[list[bytes | None]] = [[] for _ in reqs]
        budget = self.timeouts.read_s + n_fields * 1e-5
        for name, (node, idx) in by_node.items():
            c = self._raw(name, node)
            c.sock.settimeout(budget)
            packed = b"".join([pack(("HMGET", self._k(reqs[i][0]), *reqs[i][1])) for i in idx])
            for i, v in zip(idx, c.call_many(packed, len(idx))):
                out[i] = v
        return out

    def _raw(self, name: str, node: Any) -> RawConnection:
        conns: dict[str, RawConnection] | None = getattr(self._tl, "raw", None)
        if conns is None or getattr(self._tl, "pid", None) != os.getpid():  # never share a forked parent's socket
            conns = self._tl.raw = {}
            self._tl.pid = os.getpid()
        c = conns.get(name)
        if c is None:
            conn = self._rr.get_redis_connection(node).connection_pool.make_connection()
            c = conns[name] = RawConnection(conn, os.getpid())
            with self._lock:
                self._held.append(conn)
        return c

    def _drop_raw(self) -> None:
        conns: dict[str, RawConnection] | None = getattr(self._tl, "raw", None)
        self._tl.raw = None
        for c in (conns or {}).values():
            c.conn.disconnect()

    def _by_node(self, reqs: list[tuple[str, list[str]]]) -> dict[str, tuple[Any, list[int]]]:
        """The requests with fields, grouped by the master of their shard's slot (redis-py's slot map)."""
        nm = self._rr.nodes_manager
        by_node: dict[str, tuple[Any, list[int]]] = {}
        for i, (key, fields) in enumerate(reqs):
            if fields:
                node = nm.get_node_from_slot(self._slots[shard_of(key, self.shards)])
                by_node.setdefault(node.name, (node, []))[1].append(i)
        return by_node

    async def _ahmget(self, reqs: list[tuple[str, list[str]]]) -> list[list[bytes | None]]:
        # The async serving path: one raw connection per master and event loop (``_aio``), HMGETs grouped per
        # master, no thread hop. Anything unusual (MOVED/ASK after a resharding, a lost node, a failover, a
        # timeout) goes to redis-py's cluster client in a worker thread, which follows redirects and re-reads
        # the topology (its slot map then serves this path again) without stalling the event loop.
        n_fields = sum(len(f) for _, f in reqs)
        try:
            return await self._ahmget_raw(reqs, n_fields)
        except self._errors:
            pass
        return await asyncio.to_thread(self._hmget_client, reqs, n_fields)

    async def _ahmget_raw(self, reqs: list[tuple[str, list[str]]], n_fields: int) -> list[list[bytes | None]]:
        loop = asyncio.get_running_loop()
        budget = self.timeouts.read_s + n_fields * 1e-5
        sent: list[tuple[list[int], asyncio.Future[Any]]] = []
        failed: BaseException | None = None
        for name, (node, idx) in self._by_node(reqs).items():
            try:
                c = self.aconns.get(loop, name)
                if c is None:
                    self._anodes[name] = (node.host, node.port)
                    c = await self.aconns.open(loop, name, budget)
                packed = b"".join([pack(("HMGET", self._k(reqs[i][0]), *reqs[i][1])) for i in idx])
                sent.append((idx, c.call(packed, len(idx), budget)))
            except self._errors as e:  # a master unreachable: the others' replies are still awaited below
                failed = failed or e
        out: list[list[bytes | None]] = [[] for _ in reqs]
        for idx, fut in sent:  # every reply awaited (none left unretrieved), the first failure raised after
            try:
                got = await fut
            except self._errors as e:
                failed = failed or e
                continue
            for i, v in zip(idx, [got] if len(idx) == 1 else got):
                if isinstance(v, Exception):  # MOVED / ASK / CLUSTERDOWN: a ResponseError in its slot
                    failed = failed or v
                out[i] = v
        if failed is not None:
            raise failed
        return out

    async def _aopen(self, name: str) -> AsyncRawConnection:
        """A raw connection to master ``name`` (AUTH/TLS as the URL asks, done by redis.asyncio)."""
        import redis.asyncio as aredis

        host, port = self._anodes[name]
        spec = parse_cluster_url(self.url)
        t = self.timeouts
        client = aredis.Redis(
            host=host,
            port=port,
            username=spec.username,
            password=spec.password,
            ssl=spec.ssl,
            socket_connect_timeout=t.write_s,
            socket_timeout=t.write_s,
        )
        return await open_async_raw(client, t.write_s, abandon_s=t.write_s)

    def _fields(self, keys: list[str]) -> list[list[str]]:
        try:
            pipe = self._r.pipeline()
            for k in keys:
                pipe.hkeys(self._k(k))
            return [[f.decode() for f in fs] for fs in pipe.execute()]
        except self._errors as e:
            raise self._unavailable(e) from None

    def inflight_offset(self, view: str | ViewState, partition: str) -> str | None:
        return self._get_offset(INFLIGHT + self._offset_field(view, partition))

    def _get_offset(self, field: str) -> str | None:
        try:
            v = self._r.hget(self._offsets, field)
        except self._errors as e:
            raise self._unavailable(e) from None
        return v.decode() if v is not None else None

    # -- writes -------------------------------------------------------------------------
    def _commit(
        self, ops: Ops, cas: Sequence[tuple[str, str | None, str]] = (), notify: tuple[str, str] | None = None
    ) -> bool:
        try:
            return self._commit_sharded(ops, cas, notify)
        except self._errors as e:
            raise self._unavailable(e) from None

    def _commit_sharded(
        self, ops: Ops, cas: Sequence[tuple[str, str | None, str]], notify: tuple[str, str] | None
    ) -> bool:
        cas_args: list[bytes | str] = [str(len(cas))]
        for field, expected, new in cas:
            cas_args += [field, expected or "", new]
        # Nothing is written when another writer moved a global fence; else the in-flight offsets.
        if cas and not int(self._nodes.run(GLOBAL_BEGIN, [(self._offsets, ["1", self._offsets, *cas_args])])[0]):
            return False
        by_tag: dict[str, tuple[list[str], list[str]]] = {}
        for k in ops.keys():
            by_tag.setdefault(self._tag(k), ([], []))[0].append(k)
        for k in ops.lists:
            by_tag.setdefault(self._tag(k.split(":", 2)[-1]), ([], []))[1].append(k)
        calls: list[tuple[str, list[bytes | str]]] = []
        for tag, (keys, lists) in by_tag.items():
            args: list[bytes | str] = [str(1 + len(keys) + len(lists)), tag + "offsets"]
            args += [tag + "e:" + k for k in keys] + [tag + k for k in lists] + cas_args
            guards = [(str(i + 2), f, v or "") for i, k in enumerate(keys) for f, v in ops.guards.get(k, {}).items()]
            args.append(str(len(guards)))
            for g in guards:
                args += g
            args += ["", "", str(len(keys))]
            for k in keys:
                args += key_args(ops, k)
            for k in lists:
                items, cap = ops.lists[k]
                args += [str(cap), str(len(items)), *items]
            calls.append((tag, args))
        if calls and not all(int(x) for x in self._nodes.run(SHARD_COMMIT, calls)):
            return False  # a guard failed or fences disagree: shards that applied skip on the retry
        if not cas and not notify:
            return True
        g_args: list[bytes | str] = ["1", self._offsets, *cas_args]
        g_args += [notify[0], notify[1]] if notify else ["", ""]
        # The global fences advance only after the shards' writes reached their replicas (WAIT):
        # a fence never gets ahead of state a failover could lose.
        return bool(int(self._nodes.run(GLOBAL_COMMIT, [(self._offsets, g_args)])[0]))

    def get_meta(self, name: str) -> bytes | None:
        try:
            v = self._rr.hget(self._meta, name)
        except self._errors as e:
            raise self._unavailable(e) from None
        return None if v is None else bytes(v)

    def set_meta(self, name: str, value: bytes) -> None:
        try:
            self._r.hset(self._meta, name, value)
        except self._errors as e:
            raise self._unavailable(e) from None

    def claim_meta(self, name: str, value: bytes) -> bytes:
        try:
            self._r.hsetnx(self._meta, name, value)  # atomic on its own; the read returns the winner
            return bytes(self._r.hget(self._meta, name))
        except self._errors as e:
            raise self._unavailable(e) from None

    def get_shared_map(self, name: str) -> dict[str, bytes]:
        try:  # the write client: the slot's master, with retries (a replica could miss a fresh write)
            got = self._r.hgetall(self._g + "map:" + name)
        except self._errors as e:
            raise self._unavailable(e) from None
        return {k.decode(): bytes(v) for k, v in got.items()}

    def set_shared_field(self, name: str, field: str, value: bytes | None, if_absent: bool = False) -> bool:
        key = self._g + "map:" + name
        mode = "del" if value is None else "nx" if if_absent else "set"
        try:  # idempotent, so the re-send after a failover is safe; WAIT as a commit's
            return bool(int(self._nodes.run(_SHARED, [(key, ["1", key, mode, field, value or b""])])[0]))
        except self._errors as e:
            raise self._unavailable(e) from None

    @property
    def location(self) -> str:
        return redact_url(self.url)

    def _recent_append(self, key: str, items: list[bytes], max_len: int) -> None:
        try:
            self._recent(keys=[self._lk(key)], args=[int(max_len), *items])
        except self._errors as e:
            raise self._unavailable(e) from None

    def _recent_remove(self, key: str, items: list[bytes]) -> int:
        try:
            return sum(int(self._r.lrem(self._lk(key), 0, b)) for b in items)
        except self._errors as e:
            raise self._unavailable(e) from None

    def _recent_read(self, key: str, n: int) -> list[bytes]:
        try:
            return list(self._rr.lrange(self._lk(key), -n, -1))
        except self._errors as e:
            raise self._unavailable(e) from None

    def _scan(self, pattern: str) -> list[bytes]:
        """Every key matching ``pattern`` on every master (SCAN per node, not KEYS)."""
        out: list[bytes] = []
        for node in self._r.get_primaries():
            out += list(self._r.get_redis_connection(node).scan_iter(match=pattern, count=1000))
        return out

    def _delete(self, keys: list[bytes]) -> None:
        pipe = self._r.pipeline()
        for k in keys:
            pipe.delete(k)
        pipe.execute()

    def forget_entity(self, join_key: str, value: str) -> EntityErased:
        part = _glob_escape(f"{join_key}={value}")
        found: dict[str, list[bytes]] = {"e": [], "r": []}
        base = _glob_escape(f"cs:{{{self.workspace}|") + "*}:"
        try:
            for kind, test in (("e", entity_key_has), ("r", recent_key_has)):
                for k in self._scan(base + kind + ":*" + part + "*"):
                    rest = k.decode().split("}:", 1)[1]
                    if test(rest[2:] if kind == "e" else rest, join_key, value):
                        found[kind].append(k)
            for keys in found.values():
                if keys:
                    self._delete(keys)
        except self._errors as e:
            raise self._unavailable(e) from None
        return EntityErased(len(found["e"]), len(found["r"]))

    def claim_ids(self, scope: str, ids: Sequence[str], value: bytes, ttl_ms: int) -> list[bytes | None]:
        keys = [f"{self._g}claim:{scope}:{i}" for i in ids]
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
        """Delete every key of this workspace (its shards, its global keys, its stream keys)."""
        ws = _glob_escape(self.workspace)
        try:
            keys = [k for p in (f"cs:\\{{{ws}|*", f"cs:\\{{{ws}\\}}:*", f"cs:{ws}:*") for k in self._scan(p)]
            for i in range(0, len(keys), 500):
                self._delete(keys[i : i + 500])
        except self._errors as e:
            raise self._unavailable(e) from None

    def close(self) -> None:
        self.aconns.close_all()
        for c in self._held:
            c.disconnect()
        self._held.clear()
        self._tl = threading.local()
        self._r.close()
        self._rr.close()


def key_args(ops: Ops, k: str) -> list[bytes | str]:
    """COMMIT's per-key arguments (see ``_resp.COMMIT``): nsets, (f, v)*, nappends, (f, v)*, ndels,
    f*, expire_ms. The single-node store RESP-encodes the same list itself (``_resp.key_args_resp``;
    a test keeps the two equal)."""
    out: list[bytes | str] = []
    for group in (ops.sets.get(k), ops.appends.get(k)):
        out.append(str(len(group)) if group else "0")
        for f, v in (group or {}).items():
            out += [f, v]
    d = ops.dels.get(k, ())
    out.append(str(len(d)))
    out += d
    ex = ops.expire.get(k, 0) if k in ops.expire else 0
    out.append("-1" if ex is None else str(int(ex)))
    return out
