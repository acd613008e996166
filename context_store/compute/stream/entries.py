"""Stream entries: stream ids as monotonic offsets, and the payload of an entry (Arrow or JSON)."""

from __future__ import annotations

from typing import Any

import orjson
import pyarrow as pa

__all__ = ["id_to_offset", "offset_to_id", "encode_table", "decode_entry", "replay_chunks"]

_SEQ_BITS = 12  # offset = ms << 12 | seq: exact in a Lua double until 2109 for seq < 4096


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


def replay_chunks(pending: list[Any], cut: int, count: int) -> list[list[Any]]:
    """Pending entries in batches of ``count``, except that the entries up to ``cut`` (the offset of
    a commit cut short, -1: none) form the first batch: its shards that applied it skip it whole."""
    head = [e for e in pending if id_to_offset(e[0]) <= cut] if cut >= 0 else []
    rest = pending[len(head) :]
    return ([head] if head else []) + [rest[i : i + count] for i in range(0, len(rest), count)]
