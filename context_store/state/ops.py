"""The write vocabulary of the online stores: what a commit changes and what it checks.

``Ops`` is one atomic batch of writes to entity hashes (plus capped lists); ``ApplyItem`` and
``RecentItem`` are a stream worker's round for ``apply_many``; stream offsets compare as Redis
stream ids or integers (``compare_offsets``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, TypeVar

import pyarrow as pa

from ..vocab.json import dumps_record
from .tiles import ViewState

__all__ = [
    "ApplyItem",
    "Ops",
    "RecentItem",
    "compare_offsets",
    "encode_recent",
    "entity_key_has",
    "recent_key",
    "recent_key_has",
]

_V = TypeVar("_V")


def _merge_fields(mine: dict[str, dict[str, _V]], theirs: dict[str, dict[str, _V]]) -> None:
    for k, fv in theirs.items():
        mine.setdefault(k, {}).update(fv)


class ApplyItem(NamedTuple):
    """One view's transformed rows for ``apply_many`` and the stream offsets they advance:
    ``tokens`` = [(partition, new offset, expected current offset or None when unset)]."""

    state: ViewState
    rows: pa.Table
    tokens: Sequence[tuple[str, str, str | None]]
    guard: bool = False


class RecentItem(NamedTuple):
    """Recent-events appends of one (source, partition) batch for ``apply_many``: per entity key
    the rows (oldest first) and the list's cap; ``offset`` advances the partition's fence from
    ``expected`` (None = unset)."""

    source: str
    partition: str
    offset: str
    expected: str | None
    lists: Mapping[str, tuple[Sequence[Mapping[str, Any]], int]]


class Ops:
    """Writes to one batch of entity hashes (applied atomically by ``_commit``)."""

    __slots__ = ("appends", "dels", "expire", "guards", "lists", "sets")

    def __init__(self) -> None:
        self.sets: dict[str, dict[str, bytes]] = {}
        self.appends: dict[str, dict[str, bytes]] = {}
        self.dels: dict[str, list[str]] = {}
        self.expire: dict[str, int | None] = {}  # ms to live; None = persist
        # Optimistic concurrency: per key, version fields that must still hold the value read
        # (None = unset) when the commit runs; the commit then increments them.
        self.guards: dict[str, dict[str, str | None]] = {}
        # Capped lists (recent events), by list key: items to append, then keep the last max_len.
        self.lists: dict[str, tuple[list[bytes], int]] = {}

    def set(self, key: str, field: str, value: bytes) -> None:
        self.sets.setdefault(key, {})[field] = value

    def update(self, other: Ops) -> None:
        """Add ``other``'s writes (another view's: the fields differ; the longer expiry wins)."""
        _merge_fields(self.sets, other.sets)
        _merge_fields(self.appends, other.appends)
        _merge_fields(self.guards, other.guards)
        for k, fs in other.dels.items():
            self.dels.setdefault(k, []).extend(fs)
        for k, (items, n) in other.lists.items():
            mine_l = self.lists.setdefault(k, ([], n))
            mine_l[0].extend(items)
            self.lists[k] = (mine_l[0], max(mine_l[1], n))
        for k, ex in other.expire.items():
            old = self.expire.get(k, 0)
            self.expire[k] = None if ex is None or (k in self.expire and old is None) else max(old or 0, ex)

    def keys(self) -> list[str]:
        ks = dict.fromkeys(self.sets)
        ks.update(dict.fromkeys(self.appends))
        ks.update(dict.fromkeys(self.dels))
        ks.update(dict.fromkeys(self.expire))
        ks.update(dict.fromkeys(self.guards))
        return list(ks)

    def __len__(self) -> int:
        return sum(len(v) for v in self.sets.values()) + sum(len(v) for v in self.appends.values())


def _offset_key(off: str) -> tuple[int, ...]:
    return tuple(int(p) for p in str(off).split("-"))


def compare_offsets(a: str, b: str) -> int:
    """Order of stream offsets: Redis stream ids ``ms-seq`` or plain integers."""
    ka, kb = _offset_key(a), _offset_key(b)
    return (ka > kb) - (ka < kb)


def recent_key(source: str, entity_key: str) -> str:
    """The list (Redis key / SQLite ``recent.k``) of an entity's recent events of ``source``."""
    return f"r:{source}:{entity_key}"


def entity_key_has(key: str, join_key: str, value: str) -> bool:
    """Whether entity key ``key`` names ``join_key=value`` (one of its ``\\x1f``-joined parts)."""
    return f"{join_key}={value}" in key.split("\x1f")


def recent_key_has(key: str, join_key: str, value: str) -> bool:
    """Whether recent-events list ``key`` (``r:{source}:{entity key}``) belongs to ``join_key=value``."""
    parts = key.split(":", 2)
    return len(parts) == 3 and parts[0] == "r" and entity_key_has(parts[2], join_key, value)


def encode_recent(rows: Sequence[Mapping[str, Any]]) -> list[bytes]:
    """Recent events as stored: one JSON document per event."""
    return [dumps_record(dict(r)) for r in rows]
