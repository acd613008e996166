"""Tombstones of forgotten entities: every compute path drops their rows up to the forget.

A forget (``serving/forget.py``) records ``(join_key, value, forgotten_at)`` in the offline table
``sys__forgotten`` before it deletes anything, so every process and host sharing the offline store
sees it: backfill, materialize, the stream (push and workers), vector builds and history replays
drop rows whose ``join_key`` column equals ``value`` and whose event time is ``<= forgotten_at``
(later activity is new data; docs/erasure.md).

``load(offline)`` is cheap enough for the stream's hot path: the table's change token (a listing
of its manifests) is compared with the cached one and the table is re-read only when it changed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import NotFoundError
from ..vocab.tables import TOMBSTONE_TABLE

if TYPE_CHECKING:
    from ..stores.offline.base import OfflineStore

__all__ = ["Tombstones", "load", "record", "NONE"]

_TS = pa.timestamp("us", tz="UTC")
SCHEMA = pa.schema([("join_key", pa.string()), ("value", pa.string()), ("forgotten_at", _TS)])
_UNKNOWN_TTL_S = 5.0  # a backend without change tokens: re-read at most this often


@dataclass(frozen=True)
class Tombstones:
    """Per join key: forgotten value -> forgotten_at (µs, the latest forget of that value)."""

    by_key: Mapping[str, Mapping[str, int]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.by_key)

    def forgotten_at(self, join_key: str, value: object) -> int | None:
        return self.by_key.get(join_key, {}).get(str(value))

    def mask(self, table: pa.Table, ts_column: str | None) -> np.ndarray | None:
        """True for rows of a forgotten entity at or before its forget (None: no such row).
        Without ``ts_column`` (or when the table lacks it) every row of the entity counts."""
        drop: np.ndarray | None = None
        for jk, forgotten in self.by_key.items():
            if jk not in table.column_names or not forgotten or table.num_rows == 0:
                continue
            col = table.column(jk)
            if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
                col = pc.cast(col, pa.string())  # ints compare in decimal, as entity keys do
            values = list(forgotten)
            idx = pc.index_in(col, value_set=pa.array(values, pa.string()))
            hit = np.asarray(pc.is_valid(idx).to_numpy(zero_copy_only=False), dtype=bool)
            if not hit.any():
                continue
            if ts_column is not None and ts_column in table.column_names:
                limits = np.array([forgotten[v] for v in values], dtype=np.int64)
                at = limits[np.asarray(pc.fill_null(idx, 0).to_numpy(zero_copy_only=False), dtype=np.int64)]
                hit &= _ts_us(table.column(ts_column)) <= at
            drop = hit if drop is None else (drop | hit)
        return drop if drop is not None and drop.any() else None

    def filter(self, table: pa.Table, ts_column: str | None) -> pa.Table:
        """``table`` without the rows ``mask`` names."""
        if not self.by_key:
            return table
        m = self.mask(table, ts_column)
        return table if m is None else table.filter(pa.array(~m))


NONE = Tombstones()


def _ts_us(col: pa.ChunkedArray) -> np.ndarray:
    """Event times as µs; a null time counts as the oldest (dropped with its entity)."""
    t = col.type
    if pa.types.is_timestamp(t) or pa.types.is_date(t):
        col = pc.cast(pc.cast(col, _TS) if not pa.types.is_timestamp(t) or t.unit != "us" else col, pa.int64())
    else:
        col = pc.cast(col, pa.int64())
    filled = pc.fill_null(col, np.iinfo(np.int64).min)
    return np.asarray(filled.to_numpy(zero_copy_only=False), dtype=np.int64)


def _build(table: pa.Table) -> Tombstones:
    by_key: dict[str, dict[str, int]] = {}
    ts = _ts_us(table.column("forgotten_at")) if table.num_rows else np.zeros(0, np.int64)
    for jk, v, at in zip(table.column("join_key").to_pylist(), table.column("value").to_pylist(), ts.tolist()):
        d = by_key.setdefault(str(jk), {})
        d[str(v)] = max(int(at), d.get(str(v), int(at)))
    return Tombstones(by_key)


_lock = threading.Lock()
_cache: dict[str, tuple[str | None, float, Tombstones]] = {}


def load(offline: OfflineStore) -> Tombstones:
    """The tombstones recorded in ``offline`` (cached per store until the table changes)."""
    key = repr(offline)
    token = offline.change_token(TOMBSTONE_TABLE)
    hit = _cache.get(key)
    now = time.monotonic()
    if hit is not None and hit[0] == token and (token is not None or now - hit[1] < _UNKNOWN_TTL_S):
        return hit[2]
    if token is None and not offline.exists(TOMBSTONE_TABLE):
        tombs = NONE
    else:
        try:
            tombs = _build(offline.read(TOMBSTONE_TABLE))
        except NotFoundError:  # dropped meanwhile
            tombs = NONE
    with _lock:
        _cache[key] = (token, now, tombs)
    return tombs


def record(offline: OfflineStore, join_key: str, value: str, at_us: int) -> None:
    """Record a forget (before deleting anything: a concurrent backfill or push already drops it)."""
    row = pa.table(
        {"join_key": [join_key], "value": [value], "forgotten_at": pa.array([at_us], _TS)},
        schema=SCHEMA,
    )
    offline.append(TOMBSTONE_TABLE, row)
    with _lock:
        _cache.pop(repr(offline), None)
