"""The push script: one EVALSHA per push (``RedisStreamLog.add_once``), all or nothing.

It writes one stream entry per partition and, in the same atomic script, checks and records the
push's dedup keys (``dedup.py``) and its event-time admission (``admission.py``). This module holds
the script, assembled from one section per concern, and the packing of its keys and arguments.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import pyarrow as pa

from .entries import encode_table, id_to_offset

if TYPE_CHECKING:
    from .admission import PartitionAdmission
    from .redis_streams import RedisStreamLog

__all__ = ["ADD_LUA", "AddDedup", "AddOutcome", "BacklogFullError", "WatermarkConflict", "int_or_none", "run_add"]

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
ADD_LUA = (
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


def int_or_none(v: Any) -> int | None:
    return None if v in (None, b"", "") else int(v)


class BacklogFullError(Exception):
    def __init__(self, source: str, partition: int, max_len: int) -> None:
        super().__init__(f"stream {source!r} partition {partition} holds {max_len} unprocessed entries")
        self.source, self.partition, self.max_len = source, partition, max_len


def run_add(
    script: Any,
    log: RedisStreamLog,
    source: str,
    parts: dict[int, pa.Table],
    max_len: int = 0,
    dedup: AddDedup | None = None,
    admission: Sequence[PartitionAdmission] = (),
) -> AddOutcome:
    """Pack the keys and arguments of one push (layout above), run ``script`` (the registered
    ``ADD_LUA``) and read its answer; BacklogFullError / WatermarkConflict when nothing was written."""
    order = sorted(parts)
    keys = [log.stream_key(source, p) for p in order]
    dkeys: list[bytes] = []
    dargs: list[Any] = ["0", b"", 1, 1]
    counts: list[int] = []
    if dedup is not None:
        if dedup.idem_key is not None:
            dkeys.append(log.dedup_key(source, "idem", dedup.idem_key))
            dargs = ["1", dedup.idem_value, dedup.ttl_ms, dedup.ttl_ms]
        else:
            dargs = ["0", b"", dedup.ttl_ms, dedup.ttl_ms]
        for p in order:
            ids = dedup.event_ids.get(p, [])
            dkeys += [log.dedup_key(source, "eid", e) for e in ids]
            counts += [p, len(ids)]
    else:
        for p in order:
            counts += [p, 0]
    args: list[Any] = [int(max_len), len(order), *(encode_table(parts[p]) for p in order), *dargs, *counts]
    args.append(len(admission))
    for a in admission:
        args += [a.partition, _opt(a.lo), _opt(a.hi), _opt(a.watermark), a.late, a.rejected]
    res = log.run_script(script, [*keys, log.admission_key(source), *dkeys], args)
    if isinstance(res, int):
        raise BacklogFullError(source, order[res - 1], max_len)
    if res and res[0] in (b"conflict", "conflict"):
        raise WatermarkConflict({a.partition: int_or_none(v) for a, v in zip(admission, res[1:])})
    if res and res[0] in (b"replay", "replay"):
        return AddOutcome({}, replay=res[1] if isinstance(res[1], bytes) else str(res[1]).encode())
    if res and res[0] in (b"seen", "seen"):
        return AddOutcome({}, seen={int(res[i]): _parse_seen(res[i + 1]) for i in range(1, len(res), 2)})
    return AddOutcome({p: id_to_offset(i) for p, i in zip(order, res)})
