"""Redis Streams transport: one stream per (source, partition), one consumer group, leases.

Keys (``{...}`` is a cluster hash tag, so all partitions of one source share a slot and a
multi-partition push is one MULTI/EXEC -- all or nothing):

- ``cs:{ws}:{s:<source>}:p<k>``         the stream of partition k; entries ``{"arrow": <IPC bytes>}``
  (one entry per push per partition) or ``{"json": <record or list of records>}`` from outside producers
- ``cs:{ws}:{s:<source>}:lease:<k>``    which worker owns partition k (SET NX PX, renewed)
- ``cs:{ws}:stream:workers``            heartbeat zset of live workers (score = last beat, ms)
- ``cs:{ws}:{s:<source>}:admission``    hash: admitted event-time watermark and late/rejected counts
  per partition (``admission.py``; kept by the push script with its XADDs)
- ``cs:{ws}:stream:offline``            hash ``<table>|<k>`` -> last offset appended offline
- ``cs:{ws}:stream:watermark``          hash ``<source>|<k>`` -> the workers' watermark as of their last flush

On a Redis Cluster (``redis+cluster://``) the same keys work unchanged (the push script touches one
slot); reads run one XREADGROUP per slot (``_read_slots``); docs/online-state.md, "Redis Cluster".

Only one worker owns a partition at a time, so each partition is applied in stream order and the
per-(view, partition) applied offset kept by the online store is a correct exactly-once fence.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from ...config import CLUSTER_SCHEMES, RedisTimeouts, RedisWait
from ...errors import UnavailableError
from ...vocab.redact import register_url
from .applied import AppliedWaiter, applied_message, parse_applied
from .entries import decode_entry, encode_table, id_to_offset, offset_to_id
from .push_script import ADD_LUA, AddDedup, AddOutcome, BacklogFullError, WatermarkConflict, int_or_none, run_add

if TYPE_CHECKING:
    from .admission import PartitionAdmission

# The push script's types, the entry codec and the applied-offset waiter live in their own modules
# (push_script.py, entries.py, applied.py); they stay importable from here.
__all__ = [
    "RedisStreamLog",
    "AddDedup",
    "AddOutcome",
    "AppliedWaiter",
    "BacklogFullError",
    "WatermarkConflict",
    "GROUP",
    "id_to_offset",
    "offset_to_id",
    "encode_table",
    "decode_entry",
    "connect",
]

GROUP = "cs-workers"


def connect(url: str, timeout_s: float = RedisTimeouts().write_s) -> Any:
    """A client whose every call fails within ``timeout_s`` (``redis_write_timeout_ms``).

    No automatic retries (redis-py retries timeouts 3x by default): a timed-out script may still
    run when Redis resumes, so re-sending it would write twice; the caller decides (event ids and
    ``Idempotency-Key`` make a client's retry safe)."""
    try:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry
    except ImportError as e:  # pragma: no cover
        raise ImportError("Redis streams need redis-py: pip install 'context-store[redis]'") from e
    if url.startswith(CLUSTER_SCHEMES):
        from ...stores.online._cluster import cluster_client

        # Cluster: redis-py's client routes by slot and re-reads the topology after a failover;
        # still no retry of a call that may have run (same rule as above).
        return cluster_client(url, timeout_s, retries=0)
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        health_check_interval=30,
        retry=Retry(NoBackoff(), 0),
    )


class RedisStreamLog:
    """The stream transport of one workspace (shared by pushers and workers)."""

    def __init__(
        self,
        url: str,
        workspace: str,
        client: Any = None,
        timeouts: RedisTimeouts | None = None,
        wait: RedisWait | None = None,
    ) -> None:
        register_url(url)
        self.url = url
        self.cluster = url.startswith(CLUSTER_SCHEMES)
        self.wait = wait or RedisWait()
        self.workspace = workspace
        self.timeouts = timeouts or RedisTimeouts()
        self.r = client or connect(url, self.timeouts.write_s)
        self._blocking: tuple[float, Any] | None = None  # (socket timeout, client) of long XREADGROUPs
        self._groups: set[bytes] = set()
        self._renew = self.r.register_script(
            "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) "
            "else return 0 end"
        )
        self._add = self.r.register_script(ADD_LUA)
        self._release = self.r.register_script(
            "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"
        )

    # -- names -------------------------------------------------------------------------
    def stream_key(self, source: str, partition: int) -> bytes:
        return f"cs:{self.workspace}:{{s:{source}}}:p{partition}".encode()

    def lease_key(self, source: str, partition: int) -> bytes:
        return f"cs:{self.workspace}:{{s:{source}}}:lease:{partition}".encode()

    @property
    def workers_key(self) -> str:
        return f"cs:{self.workspace}:stream:workers"

    @property
    def applied_channel(self) -> str:
        """Pub/sub channel where workers announce ``source|partition|offset`` after applying."""
        return f"cs:{self.workspace}:stream:applied"

    @property
    def offline_key(self) -> str:
        return f"cs:{self.workspace}:stream:offline"

    def admission_key(self, source: str) -> bytes:
        """Hash of the source's event-time admission (``admission.py``): ``wm:<k>`` the newest
        admitted event time (µs) of partition k, ``late:<k>``/``rejected:<k>`` counts. Same hash
        slot as the streams: the push script updates it with its XADDs."""
        return f"cs:{self.workspace}:{{s:{source}}}:admission".encode()

    @property
    def watermark_key(self) -> str:
        """Hash ``source|partition`` -> event-time watermark (µs) as of the last flush."""
        return f"cs:{self.workspace}:stream:watermark"

    # -- producing ---------------------------------------------------------------------
    def ensure_group(self, key: bytes) -> None:
        if key in self._groups:
            return
        import redis

        try:
            self.r.xgroup_create(key, GROUP, id="0", mkstream=True)
        except redis.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise
        self._groups.add(key)

    def _regrouped(self, keys: Sequence[bytes], call: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        """``call(*args, **kw)``; when Redis lost the consumer group (restarted empty, flushed: NOGROUP) the
        cached groups of ``keys`` are dropped, recreated (from id 0: every entry added since is
        consumed) and ``call`` retried once -- rather than failing every round forever."""
        import redis

        try:
            return call(*args, **kw)
        except redis.ResponseError as e:
            if "NOGROUP" not in str(e):
                raise
        import logging

        logging.getLogger("context_store.stream").warning(
            "stream consumer group missing (Redis restarted empty or flushed?): recreating it on %d stream(s); "
            "online state may be gone too: run `context-store materialize --full`",
            len(keys),
        )
        for k in keys:
            self._groups.discard(k)
            self.ensure_group(k)
        return call(*args, **kw)

    def dedup_key(self, source: str, kind: str, ident: str) -> bytes:
        """An event id (``kind="eid"``) or Idempotency-Key (``"idem"``) record of ``source``; under
        the source's hash tag, so the push script touches one slot."""
        return f"cs:{self.workspace}:{{s:{source}}}:{kind}:{ident}".encode()

    def add(
        self,
        source: str,
        parts: dict[int, pa.Table],
        max_len: int = 0,
        admission: Sequence[PartitionAdmission] = (),
    ) -> dict[int, int]:
        """Append one entry per partition atomically (one script: all or nothing); returns
        partition -> offset. With ``max_len`` > 0, refuses (BacklogFullError) when a partition
        already holds that many entries -- workers far behind -- instead of ever trimming unapplied ones.
        ``admission``: the event-time decisions the push made (``admission.py``), re-checked and
        committed by the script; WatermarkConflict when one no longer holds (nothing written)."""
        return self.add_once(source, parts, max_len, admission=admission).offsets

    def add_once(
        self,
        source: str,
        parts: dict[int, pa.Table],
        max_len: int = 0,
        dedup: AddDedup | None = None,
        admission: Sequence[PartitionAdmission] = (),
    ) -> AddOutcome:
        """``add`` that first checks ``dedup`` in the same script: when the Idempotency-Key or an
        event id was seen, nothing is written and the outcome says why (see ``AddOutcome``)."""
        for p in parts:
            self.ensure_group(self.stream_key(source, p))
        return run_add(self._add, self, source, parts, max_len, dedup, admission)

    def admitted_watermarks(self, source: str, partitions: Sequence[int]) -> dict[int, int | None]:
        """partition -> the admitted watermark (µs) of the source's partitions (None: none yet)."""
        if not partitions:
            return {}
        vals = self.r.hmget(self.admission_key(source), [f"wm:{p}" for p in partitions])
        return {p: int_or_none(v) for p, v in zip(partitions, vals)}

    # -- consuming ---------------------------------------------------------------------
    def read(self, consumer: str, keys: Sequence[bytes], count: int, block_ms: int) -> list[tuple[bytes, list[Any]]]:
        if not keys:
            time.sleep(max(block_ms, 1) / 1000)
            return []
        for k in keys:
            self.ensure_group(k)
        if self.cluster:
            return self._read_slots(consumer, keys, count, block_ms)
        # block=0 would wait forever in Redis; None means "return at once".
        res = self._regrouped(
            keys,
            self._reader(block_ms).xreadgroup,
            GROUP,
            consumer,
            {k: ">" for k in keys},
            count=count,
            block=block_ms or None,
        )
        if not res:
            return []
        if isinstance(res, dict):  # RESP3 shape
            return [(k, v[0] if v and isinstance(v[0], list) else v) for k, v in res.items()]
        return [(k, entries) for k, entries in res]

    def _read_slots(
        self, consumer: str, keys: Sequence[bytes], count: int, block_ms: int
    ) -> list[tuple[bytes, list[Any]]]:
        """A cluster runs one XREADGROUP per slot (a source's partitions share one): each slot is
        read without blocking, then, if all were empty, the wait is a short sleep (a poll)."""
        by_slot: dict[int, list[bytes]] = {}
        for k in keys:
            by_slot.setdefault(self.r.keyslot(k), []).append(k)
        deadline = time.monotonic() + block_ms / 1000
        while True:
            out: list[tuple[bytes, list[Any]]] = []
            for ks in by_slot.values():
                res = self._regrouped(ks, self.r.xreadgroup, GROUP, consumer, {k: ">" for k in ks}, count=count)
                items = res.items() if isinstance(res, dict) else (res or [])
                out += [(k, v[0] if v and isinstance(v[0], list) else v) for k, v in items]
            out = [(k, v) for k, v in out if v]
            if out or time.monotonic() >= deadline:
                return out
            time.sleep(min(0.02, max(0.0, deadline - time.monotonic())))

    def run_script(self, script: Any, keys: Sequence[bytes], args: Sequence[Any]) -> Any:
        """``script`` (registered) on ``keys`` (one slot); with ``redis_wait_replicas`` > 0, then
        ``WAIT`` on the same connection: the call answers only once replicas hold the writes
        (a failover then cannot lose what it acknowledged), else UnavailableError."""
        n, ms = self.wait
        if not n:
            return script(keys=keys, args=args)
        import redis

        client = self.r
        if self.cluster:
            client = self.r.get_redis_connection(self.r.nodes_manager.get_node_from_slot(self.r.keyslot(keys[0])))
        for attempt in (0, 1):
            pipe = client.pipeline(transaction=False)
            pipe.evalsha(script.sha, len(keys), *keys, *args)
            pipe.execute_command("WAIT", n, ms)
            try:
                res, acked = pipe.execute(raise_on_error=False)
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
                self._refresh_topology()
                raise
            if isinstance(res, redis.exceptions.ResponseError) and str(res).startswith(("MOVED", "ASK", "CLUSTERDOWN")):
                self._refresh_topology()  # a failover moved the slot: the client's retry goes to the new master
            if isinstance(res, redis.exceptions.NoScriptError) and not attempt:
                client.script_load(script.script)
                continue
            if isinstance(res, BaseException):
                raise res
            if isinstance(acked, BaseException):
                raise acked
            if int(acked) < n:
                raise UnavailableError(
                    f"stream: the write reached {int(acked)} of {n} replicas within {ms} ms "
                    "(redis_wait_replicas); retry (with event ids or an Idempotency-Key a retry counts once)"
                )
            return res
        raise AssertionError("unreachable")

    def _refresh_topology(self) -> None:
        """After a per-node call failed on a cluster: re-read the slot map (redis-py does it for its
        own calls, not for the node clients used to run a script and WAIT on one connection)."""
        if not self.cluster:
            return
        try:
            self.r.nodes_manager.initialize()
        except Exception:  # noqa: BLE001 - still electing; the next failure tries again
            pass

    def _reader(self, block_ms: int) -> Any:
        """The client for an XREADGROUP blocking ``block_ms``: its socket timeout must outlast the
        block (else every idle read would time out), so long blocks get their own connection."""
        need = block_ms / 1000 + self.timeouts.write_s
        if block_ms <= 0 or block_ms / 1000 < self.timeouts.write_s / 2:
            return self.r
        b = self._blocking
        if b is None or b[0] < need:
            if b is not None:
                b[1].close()
            b = self._blocking = (need, connect(self.url, need))
        return b[1]

    def claim_pending(self, key: bytes, consumer: str, count: int = 1000) -> list[Any]:
        """Every pending entry of the partition (a dead owner's), now ours, in id order."""
        self.ensure_group(key)
        out: list[Any] = []
        start = "0-0"
        while True:
            res = self._regrouped(
                [key], self.r.xautoclaim, key, GROUP, consumer, min_idle_time=0, start_id=start, count=count
            )
            start, entries = res[0], res[1]
            out.extend(e for e in entries if e[1] is not None)  # deleted entries come back as None
            if start in (b"0-0", "0-0") or not entries:
                break
        out.sort(key=lambda e: id_to_offset(e[0]))
        return out

    def trim_acked(self, key: bytes) -> None:
        """Drop entries every consumer has acked (never an unapplied one).

        Reads the group's last-delivered id L first, then the smallest pending id M: every entry
        below min(M, L+1) was delivered before the first read and is no longer pending, i.e. acked.
        (Entries delivered in between have ids > L, so the reads need not be atomic.)"""
        try:
            groups = self.r.xinfo_groups(key)
            g = next((g for g in groups if g.get("name") in (GROUP, GROUP.encode())), None)
            if g is None or not g.get("last-delivered-id") or g["last-delivered-id"] in (b"0-0", "0-0"):
                return
            limit = id_to_offset(g["last-delivered-id"]) + 1
            info = self.r.xpending(key, GROUP)
            if info and info.get("pending") and info.get("min"):
                limit = min(limit, id_to_offset(info["min"]))
            self.r.xtrim(key, minid=offset_to_id(limit), approximate=False)
        except Exception as e:  # noqa: BLE001 - best-effort housekeeping; retried after the next flush
            import logging

            logging.getLogger("context_store.stream").debug("trim of %r skipped: %s", key, e)

    def lag(self, keys: Sequence[bytes]) -> int:
        """Entries not yet acknowledged (pending + never delivered), for benchmarks and health."""
        total = 0
        for k in keys:
            try:
                groups = self.r.xinfo_groups(k)
            except Exception:  # noqa: BLE001 - missing stream
                continue
            for g in groups:
                if g.get("name") in (GROUP, GROUP.encode()):
                    total += int(g.get("pending") or 0) + int(g.get("lag") or 0)
        return total

    # -- leases and liveness -------------------------------------------------------------
    def try_lease(self, source: str, partition: int, owner: str, ttl_ms: int) -> bool:
        return bool(self.r.set(self.lease_key(source, partition), owner, nx=True, px=ttl_ms))

    def renew_lease(self, source: str, partition: int, owner: str, ttl_ms: int) -> bool:
        return bool(self._renew(keys=[self.lease_key(source, partition)], args=[owner, ttl_ms]))

    def release_lease(self, source: str, partition: int, owner: str) -> None:
        self._release(keys=[self.lease_key(source, partition)], args=[owner])

    def lease_owner(self, source: str, partition: int) -> str | None:
        v = self.r.get(self.lease_key(source, partition))
        return v.decode() if v else None

    def heartbeat(self, owner: str) -> None:
        self.r.zadd(self.workers_key, {owner: int(time.time() * 1000)})

    def live_workers(self, ttl_ms: int) -> list[str]:
        now = int(time.time() * 1000)
        self.r.zremrangebyscore(self.workers_key, 0, now - 4 * ttl_ms)
        return [m.decode() for m in self.r.zrangebyscore(self.workers_key, now - ttl_ms, "+inf")]

    def leave(self, owner: str) -> None:
        self.r.zrem(self.workers_key, owner)

    # -- offline high-water marks -------------------------------------------------------
    def offline_marks(self, table: str, partition: int) -> int:
        v = self.r.hget(self.offline_key, f"{table}|{partition}")
        return int(v) if v else 0

    # Announcements of applied offsets (format and waiter: applied.py).
    applied_message = staticmethod(applied_message)
    parse_applied = staticmethod(parse_applied)

    def announce(self, applied: dict[tuple[str, int], int], version: int = -1) -> None:
        """Publish a round's applied offsets, stamped with the registry version of the worker's definitions."""
        if applied:
            self.r.publish(self.applied_channel, applied_message(applied, version))

    def close(self) -> None:
        self.r.close()
        if self._blocking is not None:
            self._blocking[1].close()
