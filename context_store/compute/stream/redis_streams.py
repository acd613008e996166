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

Only one worker owns a partition at a time, so each partition is applied in stream order and the
per-(view, partition) applied offset kept by the online store is a correct exactly-once fence.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson
import pyarrow as pa

from ...config import RedisTimeouts
from ...vocab.redact import register_url

if TYPE_CHECKING:
    from .admission import PartitionAdmission

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
_SEQ_BITS = 12  # offset = ms << 12 | seq: exact in a Lua double until 2109 for seq < 4096


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
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        health_check_interval=30,
        retry=Retry(NoBackoff(), 0),
    )


def id_to_offset(entry_id: bytes | str) -> int:
    """A stream id ``ms-seq`` as one monotonic int (fits a Lua number exactly)."""
    s = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = s.partition("-")
    n = int(seq or 0)
    if n >= 1 << _SEQ_BITS:
        raise ValueError(f"stream id {s} has a sequence >= 4096; cannot encode")
    return (int(ms) << _SEQ_BITS) | n


def offset_to_id(offset: int) -> str:
    return f"{offset >> _SEQ_BITS}-{offset & ((1 << _SEQ_BITS) - 1)}"


def encode_table(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return sink.getvalue().to_pybytes()


def decode_entry(fields: dict[bytes, bytes]) -> pa.Table | list[Any]:
    """An Arrow table (pushed through the SDK) or the raw JSON records of an outside producer."""
    if b"arrow" in fields:
        return pa.ipc.open_stream(fields[b"arrow"]).read_all()
    if b"json" in fields:
        obj = orjson.loads(fields[b"json"])
        return obj if isinstance(obj, list) else [obj]
    return [{k.decode(): v.decode() for k, v in fields.items()}]  # flat XADD field/value pairs


# The push script: one EVALSHA per push, all or nothing. It is assembled from sections so that
# each concern stays a separate block.
#
# KEYS: [1..np] the stream of each partition written, in ascending partition order (np >= 0);
#       [np+1] the source's admission hash (event-time watermarks, admission.py);
#       then the DEDUP keys: [np+2] the Idempotency-Key record (only when ARGV[np+3] == '1'),
#       then one key per event id, grouped by partition in the same order as the streams.
# ARGV: [1] maxlen (0: unlimited), [2] np, [3..np+2] the Arrow payload of each partition;
#       then the DEDUP args from d = np+3: [d] '1' when an Idempotency-Key record is given,
#       [d+1] its value prefix (fingerprint and result, see dedup.py), [d+2] its ttl (ms),
#       [d+3] the event ids' ttl (ms), then per partition i = 1..np: [d+2+2i] its partition
#       number and [d+3+2i] how many event-id keys it has;
#       then the ADMISSION args from a0 = d+4+2np: [a0] m, then m groups of 6
#       (admission.py PartitionAdmission): partition, lo, hi, watermark, late, rejected
#       ('' = none for lo/hi/watermark).
# Returns: the stream ids written (one per partition); or the 1-based index of a partition whose
# backlog is full; or {'replay', <stored record>}; or {'seen', pos, stream id, ...} (0-based
# positions among the event-id keys, each with '<partition>:<stream id>' of the entry that
# carried it); or {'conflict', current wm of each of the m partitions ('' = none)} when an
# admission decision is stale -- in those cases nothing is written.
_ADD_HEAD = """
local maxlen = tonumber(ARGV[1])
local np = tonumber(ARGV[2])
local adm = KEYS[np + 1]
local d = np + 3
local a0 = d + 4 + 2 * np
"""
# -- DEDUP (check): before anything is written, so a retry of a committed push writes nothing.
_ADD_DEDUP_CHECK = """
local idem = ARGV[d] == '1'
local e0 = np + (idem and 3 or 2)
if idem then
  local prev = redis.call('GET', KEYS[np + 2])
  if prev then return {'replay', prev} end
end
local seen = {}
for i = e0, #KEYS do
  local v = redis.call('GET', KEYS[i])
  if v then seen[#seen + 1] = i - e0; seen[#seen + 1] = v end
end
if #seen > 0 then table.insert(seen, 1, 'seen'); return seen end
"""
# -- ADMISSION (check): the pusher's event-time decision holds for any current watermark W with
# lo < W <= hi (no watermark = below every time); else nothing is written.
_ADD_ADMISSION_CHECK = """
local m = tonumber(ARGV[a0])
local cur, stale = {}, false
for j = 0, m - 1 do
  local b = a0 + 1 + 6 * j
  local w = redis.call('HGET', adm, 'wm:' .. ARGV[b])
  cur[j + 1] = w or ''
  local wn = w and tonumber(w)
  if ARGV[b + 1] ~= '' and (not wn or wn <= tonumber(ARGV[b + 1])) then stale = true end
  if ARGV[b + 2] ~= '' and wn and wn > tonumber(ARGV[b + 2]) then stale = true end
end
if stale then
  table.insert(cur, 1, 'conflict')
  return cur
end
"""
_ADD_BACKLOG = """
if maxlen > 0 then
  for i = 1, np do
    if redis.call('XLEN', KEYS[i]) >= maxlen then return i end
  end
end
"""
_ADD_WRITE = """
local ids = {}
for i = 1, np do ids[i] = redis.call('XADD', KEYS[i], '*', 'arrow', ARGV[i + 2]) end
"""
# -- ADMISSION (commit): the watermark moves with the entries, in the same atomic script.
_ADD_ADMISSION_COMMIT = """
for j = 0, m - 1 do
  local b = a0 + 1 + 6 * j
  local p = ARGV[b]
  if ARGV[b + 3] ~= '' then
    local w = tonumber(cur[j + 1])
    if not w or tonumber(ARGV[b + 3]) > w then redis.call('HSET', adm, 'wm:' .. p, ARGV[b + 3]) end
  end
  if ARGV[b + 4] ~= '0' then redis.call('HINCRBY', adm, 'late:' .. p, ARGV[b + 4]) end
  if ARGV[b + 5] ~= '0' then redis.call('HINCRBY', adm, 'rejected:' .. p, ARGV[b + 5]) end
end
"""
# -- DEDUP (record): each event id -> '<partition>:<stream id>' of its entry; the
# Idempotency-Key -> fingerprint, result and stream ids.
_ADD_DEDUP_RECORD = """
local k = e0
for i = 1, np do
  local v = ARGV[d + 2 + 2 * i] .. ':' .. ids[i]
  for j = 1, tonumber(ARGV[d + 3 + 2 * i]) do
    redis.call('SET', KEYS[k], v, 'PX', ARGV[d + 3]); k = k + 1
  end
end
if idem then redis.call('SET', KEYS[np + 2], ARGV[d + 1] .. table.concat(ids, ','), 'PX', ARGV[d + 2]) end
"""
_ADD_LUA = (
    _ADD_HEAD
    + _ADD_DEDUP_CHECK
    + _ADD_ADMISSION_CHECK
    + _ADD_BACKLOG
    + _ADD_WRITE
    + _ADD_ADMISSION_COMMIT
    + _ADD_DEDUP_RECORD
    + "return ids\n"
)


class AddDedup(NamedTuple):
    """The dedup part of a push (see the script's layout above). ``event_ids`` per partition, in
    the order of that partition's rows; ``idem_key``/``idem_value`` the Idempotency-Key record."""

    event_ids: dict[int, list[str]]
    ttl_ms: int
    idem_key: str | None = None
    idem_value: bytes = b""


class AddOutcome(NamedTuple):
    """What the push script did: ``offsets`` written (partition -> offset), or nothing written
    because ``replay`` (the stored Idempotency-Key record) or ``seen`` (position among the event
    ids in partition order -> (partition, offset) of the entry that carried it) is set."""

    offsets: dict[int, int]
    replay: bytes | None = None
    seen: dict[int, tuple[int, int]] | None = None


def _parse_seen(value: bytes | str) -> tuple[int, int]:
    s = value.decode() if isinstance(value, bytes) else value
    p, _, sid = s.partition(":")
    return int(p), id_to_offset(sid)


class WatermarkConflict(Exception):
    """The push script found a watermark its admission decision did not hold under; nothing was
    written. ``current``: partition -> the admitted watermark now (None: none yet)."""

    def __init__(self, current: dict[int, int | None]) -> None:
        super().__init__(f"admission watermarks moved: {current}")
        self.current = current


def _opt(v: int | None) -> str | int:
    return "" if v is None else int(v)


def _int_or_none(v: Any) -> int | None:
    return None if v in (None, b"", "") else int(v)


class BacklogFullError(Exception):
    def __init__(self, source: str, partition: int, max_len: int) -> None:
        super().__init__(f"stream {source!r} partition {partition} holds {max_len} unprocessed entries")
        self.source, self.partition, self.max_len = source, partition, max_len


class RedisStreamLog:
    """The stream transport of one workspace (shared by pushers and workers)."""

    def __init__(self, url: str, workspace: str, client: Any = None, timeouts: RedisTimeouts | None = None) -> None:
        register_url(url)
        self.url = url
        self.workspace = workspace
        self.timeouts = timeouts or RedisTimeouts()
        self.r = client or connect(url, self.timeouts.write_s)
        self._blocking: tuple[float, Any] | None = None  # (socket timeout, client) of long XREADGROUPs
        self._groups: set[bytes] = set()
        self._renew = self.r.register_script(
            "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) "
            "else return 0 end"
        )
        self._add = self.r.register_script(_ADD_LUA)
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
        order = sorted(parts)
        keys = [self.stream_key(source, p) for p in order]
        for k in keys:
            self.ensure_group(k)
        dkeys: list[bytes] = []
        dargs: list[Any] = ["0", b"", 1, 1]
        counts: list[int] = []
        if dedup is not None:
            if dedup.idem_key is not None:
                dkeys.append(self.dedup_key(source, "idem", dedup.idem_key))
                dargs = ["1", dedup.idem_value, dedup.ttl_ms, dedup.ttl_ms]
            else:
                dargs = ["0", b"", dedup.ttl_ms, dedup.ttl_ms]
            for p in order:
                ids = dedup.event_ids.get(p, [])
                dkeys += [self.dedup_key(source, "eid", e) for e in ids]
                counts += [p, len(ids)]
        else:
            for p in order:
                counts += [p, 0]
        args: list[Any] = [int(max_len), len(order), *(encode_table(parts[p]) for p in order), *dargs, *counts]
        args.append(len(admission))
        for a in admission:
            args += [a.partition, _opt(a.lo), _opt(a.hi), _opt(a.watermark), a.late, a.rejected]
        res = self._add(keys=[*keys, self.admission_key(source), *dkeys], args=args)
        if isinstance(res, int):
            raise BacklogFullError(source, order[res - 1], max_len)
        if res and res[0] in (b"conflict", "conflict"):
            raise WatermarkConflict({a.partition: _int_or_none(v) for a, v in zip(admission, res[1:])})
        if res and res[0] in (b"replay", "replay"):
            return AddOutcome({}, replay=res[1] if isinstance(res[1], bytes) else str(res[1]).encode())
        if res and res[0] in (b"seen", "seen"):
            return AddOutcome({}, seen={int(res[i]): _parse_seen(res[i + 1]) for i in range(1, len(res), 2)})
        return AddOutcome({p: id_to_offset(i) for p, i in zip(order, res)})

    def admitted_watermarks(self, source: str, partitions: Sequence[int]) -> dict[int, int | None]:
        """partition -> the admitted watermark (µs) of the source's partitions (None: none yet)."""
        if not partitions:
            return {}
        vals = self.r.hmget(self.admission_key(source), [f"wm:{p}" for p in partitions])
        return {p: _int_or_none(v) for p, v in zip(partitions, vals)}

    # -- consuming ---------------------------------------------------------------------
    def read(self, consumer: str, keys: Sequence[bytes], count: int, block_ms: int) -> list[tuple[bytes, list[Any]]]:
        if not keys:
            time.sleep(max(block_ms, 1) / 1000)
            return []
        for k in keys:
            self.ensure_group(k)
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

    @staticmethod
    def applied_message(applied: dict[tuple[str, int], int]) -> str:
        """One announcement for a worker round: ``source|partition|offset`` lines."""
        return "\n".join(f"{source}|{p}|{off}" for (source, p), off in applied.items())

    @staticmethod
    def parse_applied(data: bytes) -> list[tuple[tuple[str, int], int]]:
        """An announcement's ((source, partition), offset) pairs; malformed lines are skipped."""
        out = []
        for line in data.decode().split("\n"):
            try:
                source, p, off = line.rsplit("|", 2)
                out.append(((source, int(p)), int(off)))
            except ValueError:
                continue
        return out

    def announce(self, applied: dict[tuple[str, int], int]) -> None:
        if applied:
            self.r.publish(self.applied_channel, self.applied_message(applied))

    def close(self) -> None:
        self.r.close()
        if self._blocking is not None:
            self._blocking[1].close()


class AppliedWaiter:
    """Wakes pushers when a worker announces an applied offset (pub/sub) instead of polling.

    Announcements are hints: a waiter also re-reads the authoritative applied offsets now and then,
    so a message missed (e.g. before the subscription was active) only delays, never blocks.
    Each waiter has its own event, set only when its partition reaches its offset: with many
    concurrent pushes (a server's threads) an announcement wakes just the pushes it completes."""

    def __init__(self, log: RedisStreamLog) -> None:
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, int], int] = {}
        self._waiting: dict[tuple[str, int], list[tuple[int, threading.Event]]] = {}
        self._closed = False
        self._pubsub = log.r.pubsub(ignore_subscribe_messages=True)
        self._pubsub.subscribe(log.applied_channel)
        self._thread = threading.Thread(target=self._run, name="cs-stream-applied", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._closed:
            try:
                msg = self._pubsub.get_message(timeout=1.0)
            except Exception:  # noqa: BLE001 - connection lost: pushers fall back to reading offsets
                time.sleep(0.5)
                continue
            if not msg or msg.get("type") != "message":
                continue
            for key, off in RedisStreamLog.parse_applied(msg["data"]):
                self._seen_offset(key, off)

    def _seen_offset(self, key: tuple[str, int], value: int) -> None:
        with self._lock:
            if value <= self._seen.get(key, -1):
                return
            self._seen[key] = value
            waiting = self._waiting.get(key)
            if not waiting:
                return
            keep = []
            for off_ev in waiting:
                if off_ev[0] <= value:
                    off_ev[1].set()
                else:
                    keep.append(off_ev)
            self._waiting[key] = keep

    def wait(self, source: str, offsets: dict[int, int], timeout: float) -> bool:
        """True once every partition's announced offset reaches ``offsets`` (False on timeout)."""
        deadline = time.monotonic() + timeout
        for p, off in offsets.items():
            key = (source, p)
            with self._lock:
                if self._seen.get(key, -1) >= off:
                    continue
                entry = (off, threading.Event())
                self._waiting.setdefault(key, []).append(entry)
            if not entry[1].wait(max(0.0, deadline - time.monotonic())):
                with self._lock:
                    lst = self._waiting.get(key, [])
                    if entry in lst:
                        lst.remove(entry)
                return entry[1].is_set()
        return True

    def close(self) -> None:
        self._closed = True
        try:
            self._pubsub.close()
        except Exception:  # noqa: BLE001
            pass
