"""Idempotent ingest: event ids and ``Idempotency-Key`` records, shared by the Redis and embedded pushes.

- ``StreamSource(event_id_field=...)``: each record's id is remembered for ``event_id_retention``
  (default 24h) with where it went (partition and offset); a record whose id was seen is dropped
  (online and offline) and reported in ``PushResult.duplicates``. The first of several records with
  one id in the same push wins.
- ``Idempotency-Key`` (one per push call): remembered with a fingerprint of the validated rows and
  the push's result. A retry with the same key and rows returns that result and writes nothing; the
  same key with other rows is a 409.

Where they are kept: Redis mode, keys under the source's hash tag checked and written by the push
script itself (``redis_streams._ADD_LUA``: atomic with the XADD, so a push that answered 503 but was
committed when Redis resumed is safe to retry); embedded mode, the SQLite online store's
``claim_ids``, in the same transaction as the online apply.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import orjson
import pyarrow as pa

from ...errors import ConflictError, InvalidInputError

if TYPE_CHECKING:
    from ...definitions import StreamSource
    from ...stores.online.base import OnlineStore

__all__ = [
    "PushDedup",
    "Replayed",
    "StoredResult",
    "claim_embedded",
    "check_idempotency_key",
    "decode_stored",
    "encode_stored",
    "event_ids",
    "first_occurrences",
    "push_dedup",
]

_MAX_ID = 256  # characters of an event id / Idempotency-Key


@dataclass(frozen=True)
class PushDedup:
    """What makes one push idempotent: its records' event ids (None: the source has none), its
    Idempotency-Key (None: not given) with the fingerprint of the rows, and the retention (ms)."""

    event_ids: list[str] | None
    key: str | None
    fingerprint: str
    ttl_ms: int


class StoredResult(NamedTuple):
    """The result of the first push with an Idempotency-Key, as replayed to its retries."""

    accepted: int
    validated: int
    duplicate_indices: tuple[int, ...]
    offsets: dict[int, int]  # partition -> last offset written


def check_idempotency_key(key: object) -> str:
    if not isinstance(key, str) or not 1 <= len(key) <= _MAX_ID or not all(0x21 <= ord(c) <= 0x7E for c in key):
        raise InvalidInputError(
            f"Idempotency-Key must be 1-{_MAX_ID} visible ASCII characters (a UUID is fine), got {key!r:.80}",
            field="Idempotency-Key",
        )
    return key


def event_ids(source: StreamSource, table: pa.Table) -> list[str] | None:
    """The records' event ids as strings (None when the source declares no ``event_id_field``);
    a missing, empty or over-long id is an error naming the record and field."""
    name = source.event_id_field
    if not name:
        return None
    ids = table.column(name).to_pylist()
    for i, v in enumerate(ids):
        if v is None or v == "" or (isinstance(v, str) and len(v) > _MAX_ID):
            what = "is required (the source's event_id_field)" if v in (None, "") else f"longer than {_MAX_ID}"
            raise InvalidInputError(f"record {i}: field '{name}': {what}", field=f"records[{i}].{name}")
    return [str(v) for v in ids]


def fingerprint(table: pa.Table) -> str:
    """Content hash of the validated rows (the same records give the same Arrow bytes)."""
    from .redis_streams import encode_table

    return hashlib.sha256(encode_table(table)).hexdigest()


def push_dedup(source: StreamSource, table: pa.Table, key: str | None) -> PushDedup | None:
    ids = event_ids(source, table)
    if ids is None and key is None:
        return None
    fp = fingerprint(table) if key is not None else ""
    return PushDedup(ids, key, fp, int(source.event_id_retention.total_seconds() * 1000))


def first_occurrences(ids: list[str]) -> np.ndarray:
    """Row indices of the first record of each id, in row order."""
    _, first = np.unique(np.asarray(ids, dtype=object), return_index=True)
    return np.sort(first)


def encode_stored(
    fp: str,
    accepted: int,
    validated: int,
    dups: list[int],
    offsets: dict[int, int] | None = None,
    partitions: list[int] | None = None,
) -> bytes:
    """``<fingerprint>\\n<result>\\n``: the push script appends the stream ids it wrote (comma
    separated, one per entry of ``partitions``); the embedded push stores ``offsets`` itself."""
    meta: dict[str, object] = {"a": accepted, "v": validated, "d": dups}
    if offsets is not None:
        meta["o"] = {str(p): o for p, o in offsets.items()}
    if partitions is not None:
        meta["p"] = partitions
    return fp.encode() + b"\n" + orjson.dumps(meta) + b"\n"


def decode_stored(stored: bytes, fp: str, key: str, source: str) -> StoredResult:
    """A stored record as the first push's result; ConflictError when ``fp`` (this retry's rows)
    differs from the first push's."""
    from .redis_streams import id_to_offset

    head, _, rest = stored.partition(b"\n")
    meta_b, _, ids = rest.partition(b"\n")
    if head.decode() != fp:
        raise ConflictError(
            f"Idempotency-Key {key!r} was already used for a different push to {source!r} (other records); "
            "use a new key for new records",
            field="Idempotency-Key",
        )
    meta = orjson.loads(meta_b)
    if "o" in meta:
        offsets = {int(p): int(o) for p, o in meta["o"].items()}
    else:
        parts = [int(p) for p in meta.get("p", [])]
        sids = [s for s in ids.decode().split(",") if s]
        offsets = {p: id_to_offset(s) for p, s in zip(parts, sids)}
    return StoredResult(int(meta["a"]), int(meta["v"]), tuple(int(i) for i in meta["d"]), offsets)


class Replayed(Exception):
    """An Idempotency-Key seen before (same rows): the first push's ``result``; nothing written."""

    def __init__(self, result: StoredResult) -> None:
        super().__init__("replayed")
        self.result = result


def claim_embedded(
    online: OnlineStore, source: str, events: pa.Table, dedup: PushDedup, last_offset: int
) -> tuple[pa.Table, list[int]]:
    """Embedded push, inside the online store's transaction: claim the records' event ids and the
    Idempotency-Key; returns the events not seen before and the indices of the dropped ones.
    Raises ``Replayed`` (or ConflictError for other rows) when the key was used before -- the
    caller's transaction then rolls the claims back."""
    n = events.num_rows
    keep = np.arange(n)
    dups: list[int] = []
    if dedup.event_ids is not None:
        first = first_occurrences(dedup.event_ids)
        prev = online.claim_ids(
            f"eid:{source}", [dedup.event_ids[i] for i in first], f"0:{last_offset}".encode(), dedup.ttl_ms
        )
        keep = first[np.array([p is None for p in prev], dtype=bool)]
        dups = sorted(set(range(n)) - set(keep.tolist()))
    if dedup.key is not None:
        value = encode_stored(dedup.fingerprint, len(keep), n, dups, offsets={0: last_offset})
        stored = online.claim_ids(f"idem:{source}", [dedup.key], value, dedup.ttl_ms)[0]
        if stored is not None:
            raise Replayed(decode_stored(stored, dedup.fingerprint, dedup.key, source))
    return (events if len(keep) == n else events.take(pa.array(keep))), dups
