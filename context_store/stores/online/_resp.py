"""The Redis store's wire layer: its Lua scripts, and a raw RESP connection for the hot path.

``RawConnection`` sends pre-packed commands with one ``sendall`` and parses replies with hiredis, skipping
redis-py's per-command layers (see ``RedisOnlineStore._raw``); ``COMMIT`` is the one write script
(checks, then writes, then offsets and the notification); ``ROWS`` is materialize's short form of
it for row views (``pack_rows``).
"""

from __future__ import annotations

from typing import Any

from ...errors import UnavailableError
from ...state.codec import LISTPACK_VALUE_MAX
from ...state.ops import Ops
from ...state.writes import RowChunk

# KEYS[1] offsets hash, KEYS[2..1+nent] entity hashes, then capped lists (recent events).
# ARGV: ncas, (field, expected ('' = unset), new)*, nguards, (key index, field, expected)*,
#   notify channel ('' = none), message, nent, then per entity key:
#   nsets, (f, v)*, nappends, (f, v)*, ndels, f*, expire_ms (-1 persist, 0 leave as is)
#   then per list: max_len, nitems, item*
# Checks first (nothing is written unless every offset and guard holds), then writes, then
# the offsets and the notification (pushers waiting for read-after-write).
COMMIT = """
local a = 1
local ncas = tonumber(ARGV[a]); a = a + 1
for i = 1, ncas do
  if (redis.call('HGET', KEYS[1], ARGV[a]) or '') ~= ARGV[a + 1] then return 0 end
  a = a + 3
end
local ng = tonumber(ARGV[a]); local g0 = a + 1; a = a + 1
for i = 1, ng do
  if (redis.call('HGET', KEYS[tonumber(ARGV[a])], ARGV[a + 1]) or '') ~= ARGV[a + 2] then return 0 end
  a = a + 3
end
local chan, msg = ARGV[a], ARGV[a + 1]; a = a + 2
local nent = tonumber(ARGV[a]); a = a + 1
for i = 0, ng - 1 do  -- before the writes: a new key then still gets its expiry below
  redis.call('HINCRBY', KEYS[tonumber(ARGV[g0 + 3 * i])], ARGV[g0 + 3 * i + 1], 1)
end
local function batched(cmd, key, args)
  for i = 1, #args, 4000 do
    redis.call(cmd, key, unpack(args, i, math.min(i + 3999, #args)))
  end
end
for k = 2, 1 + nent do
  local key = KEYS[k]
  local n = tonumber(ARGV[a]); a = a + 1
  local args = {}
  for i = 1, n do args[#args + 1] = ARGV[a]; args[#args + 1] = ARGV[a + 1]; a = a + 2 end
  n = tonumber(ARGV[a]); a = a + 1
  for i = 1, n do  -- appends join the same HSET (Redis hashes have no in-place append)
    local old = redis.call('HGET', key, ARGV[a])
    args[#args + 1] = ARGV[a]
    if old then args[#args + 1] = old .. ARGV[a + 1] else args[#args + 1] = ARGV[a + 1] end
    a = a + 2
  end
  local nd = tonumber(ARGV[a]); local d0 = a + 1; a = a + 1 + nd
  local ex = tonumber(ARGV[a]); a = a + 1
  -- A key that does not exist yet has no field to delete and no TTL or '_p' to respect: its
  -- write is one HSET (+ PEXPIRE) instead of HSET, HDEL, PEXPIRE GT, PTTL, HEXISTS, PEXPIRE.
  local new = (nd > 0 or ex ~= 0) and redis.call('EXISTS', key) == 0
  if new and ex == -1 then args[#args + 1] = '_p'; args[#args + 1] = '1' end
  if #args > 0 then batched('HSET', key, args) end
  if nd > 0 and not new then
    local dargs = {}
    for i = 0, nd - 1 do dargs[#dargs + 1] = ARGV[d0 + i] end
    batched('HDEL', key, dargs)
  end
  if new then
    if ex > 0 then redis.call('PEXPIRE', key, ex) end
  elseif ex == -1 then
    redis.call('HSET', key, '_p', '1'); redis.call('PERSIST', key)
  elseif ex > 0 then
    -- GT: only ever extend; a key without TTL is new (set it) or persisted ('_p': leave it)
    if redis.call('PEXPIRE', key, ex, 'GT') == 0 and redis.call('PTTL', key) == -1
       and redis.call('HEXISTS', key, '_p') == 0 then
      redis.call('PEXPIRE', key, ex)
    end
  end
end
for k = 2 + nent, #KEYS do
  local cap, n = tonumber(ARGV[a]), tonumber(ARGV[a + 1]); a = a + 2
  batched('RPUSH', KEYS[k], {unpack(ARGV, a, a + n - 1)}); a = a + n
  redis.call('LTRIM', KEYS[k], -cap, -1)
end
for i = 0, ncas - 1 do redis.call('HSET', KEYS[1], ARGV[2 + 3 * i], ARGV[4 + 3 * i]) end
if chan ~= '' then redis.call('PUBLISH', chan, msg) end
return 1
"""
CHUNK_KEYS = 500

# Materialize of a row view (``RowChunk``): what COMMIT writes for it, with 2 arguments per entity
# instead of 6+ (the field names once). KEYS: entity hashes; ARGV: k, the k row field names, then
# per key the encoded row and expire_ms (-1 persist). The row is split as ``split_row`` splits it.
ROWS = """
local call = redis.call
local k = tonumber(ARGV[1])
local a = k + 2
local W = LISTPACK
local f1 = ARGV[2]
for i = 1, #KEYS do
  -- ex as sent ('-1' or a positive count of ms): PEXPIRE parses it, no Lua number in between
  local key, v, ex = KEYS[i], ARGV[a], ARGV[a + 1]; a = a + 2
  local persist = ex == '-1'
  -- as in COMMIT: a new key has no stale piece to delete and no TTL or '_p' to respect
  local new = call('EXISTS', key) == 0
  local m = 1
  if k > 1 and #v > W then m = math.min(k, math.ceil(#v / W)) end
  if m == 1 then  -- the usual row: one field, no table
    if new and persist then call('HSET', key, f1, v, '_p', '1') else call('HSET', key, f1, v) end
  else
    local args = {}
    for j = 1, m - 1 do args[#args + 1] = ARGV[1 + j]; args[#args + 1] = string.sub(v, (j - 1) * W + 1, j * W) end
    args[#args + 1] = ARGV[1 + m]; args[#args + 1] = string.sub(v, (m - 1) * W + 1)
    if new and persist then args[#args + 1] = '_p'; args[#args + 1] = '1' end
    call('HSET', key, unpack(args))
  end
  if m < k and not new then call('HDEL', key, unpack(ARGV, 2 + m, 1 + k)) end
  if new then
    if not persist then call('PEXPIRE', key, ex) end
  elseif persist then
    call('HSET', key, '_p', '1'); call('PERSIST', key)
  elseif call('PEXPIRE', key, ex, 'GT') == 0 and call('PTTL', key) == -1 and call('HEXISTS', key, '_p') == 0 then
    call('PEXPIRE', key, ex)
  end
end
return 1
""".replace("LISTPACK", str(LISTPACK_VALUE_MAX))


def pack_rows(sha: bytes, prefix: str, chunk: RowChunk) -> list[bytes]:
    """``EVALSHA`` of ``ROWS`` (``sha``) for ``chunk``, RESP-encoded, one command per ``CHUNK_KEYS`` keys."""
    names = [b"%d" % len(chunk.names), *(n.encode() for n in chunk.names)]
    exs = [b"-1" if ex is None else b"%d" % ex for ex in chunk.expire]
    cmds = []
    for i in range(0, len(chunk.keys), CHUNK_KEYS):
        keys = [prefix + k for k in chunk.keys[i : i + CHUNK_KEYS]]
        argv = [b""] * (2 * len(keys))  # row, expire_ms per key, interleaved
        argv[0::2] = chunk.values[i : i + CHUNK_KEYS]
        argv[1::2] = exs[i : i + CHUNK_KEYS]
        cmds.append(pack((b"EVALSHA", sha, b"%d" % len(keys), *keys, *names, *argv)))
    return cmds


def resp(args: list[bytes], total: int | None = None) -> bytes:
    """RESP array header (of ``total`` elements) and ``args``."""
    return b"*%d\r\n" % (len(args) if total is None else total) + resp_args(args)


def resp_args(args: list[bytes]) -> bytes:
    """RESP bulk strings, no array header (appended to a command built by ``resp``)."""
    return b"".join([b"$%d\r\n%b\r\n" % (len(a), a) for a in args])


class RawConnection:
    """A connection redis-py opened (auth, db selected), then driven directly with hiredis:
    one ``sendall`` and ``recv_into`` per call, replies parsed by hiredis (no per-command layers)."""

    __slots__ = ("_err", "_noscript", "buf", "conn", "pid", "reader", "sock")

    def __init__(self, conn: Any, pid: int) -> None:
        import hiredis

        redis = import_redis()
        conn.connect()
        self.conn = conn
        self.sock = conn._sock
        self.pid = pid
        self._err = redis.exceptions.ResponseError
        self._noscript = redis.exceptions.NoScriptError
        self.reader = hiredis.Reader(replyError=self._err)
        self.buf = bytearray(1 << 16)

    def call(self, packed: bytes) -> Any:
        self.sock.sendall(packed)
        reader = self.reader
        r = reader.gets()
        while r is False:
            n = self.sock.recv_into(self.buf)
            if not n:
                raise ConnectionError("Redis closed the connection")
            reader.feed(self.buf, 0, n)  # type: ignore[arg-type]  # hiredis stubs: feed takes any buffer, not only str/bytes
            r = reader.gets()
        if isinstance(r, self._err):
            raise self._noscript(str(r)) if str(r).startswith("NOSCRIPT") else r
        return r

    def call_many(self, packed: bytes, n: int) -> list[Any]:
        """``n`` pipelined replies; every reply is read before an error is raised (stays in sync)."""
        self.sock.sendall(packed)
        out: list[Any]
        reader, out = self.reader, []
        err = None
        while len(out) < n:
            r = reader.gets()
            if r is False:
                k = self.sock.recv_into(self.buf)
                if not k:
                    raise ConnectionError("Redis closed the connection")
                reader.feed(self.buf, 0, k)  # type: ignore[arg-type]  # hiredis stubs: feed takes any buffer
                continue
            if isinstance(r, self._err) and err is None:
                err = r
            out.append(r)
        if err is not None:
            raise err
        return out


def pack(args: Any) -> bytes:
    import hiredis

    return hiredis.pack_command(args)


def import_redis() -> Any:
    try:
        import redis
    except ImportError:  # pragma: no cover
        raise UnavailableError("the Redis online store needs redis-py: pip install 'context-store[redis]'") from None
    return redis


def key_args_resp(ops: Ops, k: str) -> tuple[int, bytes]:
    """The script's per-key arguments (see COMMIT), already RESP-encoded: (count, bytes)."""
    out: list[bytes] = []
    n = 4
    for group in (ops.sets.get(k), ops.appends.get(k)):
        if not group:
            out.append(b"$1\r\n0\r\n")
            continue
        c = b"%d" % len(group)
        out.append(b"$%d\r\n%b\r\n" % (len(c), c))
        out += [
            b"$%d\r\n%b\r\n$%d\r\n%b\r\n" % (len(fb), fb, len(v), v)
            for fb, v in zip(map(str.encode, group), group.values())
        ]
        n += 2 * len(group)
    d = [f.encode() for f in ops.dels.get(k, ())]
    c = b"%d" % len(d)
    out.append(b"$%d\r\n%b\r\n" % (len(c), c))
    out += [b"$%d\r\n%b\r\n" % (len(f), f) for f in d]
    n += len(d)
    ex = ops.expire.get(k, 0) if k in ops.expire else 0
    e = b"-1" if ex is None else b"%d" % int(ex)
    out.append(b"$%d\r\n%b\r\n" % (len(e), e))
    return n, b"".join(out)
