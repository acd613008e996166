"""Writes shared by every online store backend: stream applies (tiles and rows, idempotent per
offset, optionally guarded), a worker round's single commit, recent-events appends, deletes.
What a write changes is built by ``state.writes.merged_writes``; this module keeps the store
side: reading current partials, offset fences and CAS, the commit.

A mixin of ``BaseOnlineStore``; it relies on the backend primitives ``_hmget``, ``_commit`` and
``_get_offset`` and on ``_codec`` (row views). Layout and API: docs/online-state.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np
import pyarrow as pa

from ...errors import ConflictError
from ...state.codec import RowCodec
from ...state.ops import ApplyItem, Ops, RecentItem, compare_offsets, encode_recent, recent_key
from ...state.tiles import ViewState
from ...state.writes import RowChunk, merged_writes


class WritePath:
    """The write half of ``BaseOnlineStore`` (see the module docstring)."""

    def _hmget(self, reqs: list[tuple[str, list[str]]]) -> list[list[bytes | None]]:
        raise NotImplementedError

    def _commit(
        self, ops: Ops, cas: Sequence[tuple[str, str | None, str]] = (), notify: tuple[str, str] | None = None
    ) -> bool:
        raise NotImplementedError

    def _get_offset(self, field: str) -> str | None:
        raise NotImplementedError

    def _codec(self, st: ViewState) -> RowCodec:
        raise NotImplementedError

    # -- writes -------------------------------------------------------------------------
    def write_ops(self, ops: Ops, wait: bool = True) -> None:
        if ops.keys():
            self._commit(ops)

    def write_rows(self, chunk: RowChunk, wait: bool = True) -> None:
        """Bulk rows of a row view (materialize): as ``write_ops`` of ``chunk.ops()`` unless a
        backend has a faster form of the same writes."""
        self.write_ops(chunk.ops(), wait)

    def flush(self) -> None:
        pass

    def applied_offset(self, view: str | ViewState, partition: str) -> str | None:
        return self._get_offset(self._offset_field(view, partition))

    def inflight_offset(self, view: str | ViewState, partition: str) -> str | None:
        return None  # one atomic commit: nothing is ever half applied

    @staticmethod
    def _offset_field(view: str | ViewState, partition: str) -> str:
        name = view.name if isinstance(view, ViewState) else view
        return f"{name}|{partition}"

    def apply_events(
        self,
        state: ViewState,
        rows: pa.Table,
        token: tuple[str, str] | None = None,
        row_offsets: Sequence[str] | None = None,
        now_us: int | None = None,
        guard: bool = False,
    ) -> int:
        def build(cur: str | None) -> tuple[Ops, int]:
            table = rows
            if row_offsets is not None and cur is not None:
                keep = np.array([compare_offsets(o, cur) > 0 for o in row_offsets], dtype=bool)
                table = rows.filter(pa.array(keep))
            return self._ops(state, table, now_us, guard), table.num_rows

        field = self._offset_field(state, token[0]) if token else None
        return self._fenced(
            field,
            token[1] if token else None,
            build,
            64,
            f"apply_events for view {state.name!r}: too many concurrent writers of partition {token}",
        )

    def _fenced(
        self,
        field: str | None,
        offset: str | None,
        build: Callable[[str | None], tuple[Ops, int]],
        tries: int,
        conflict: str,
    ) -> int:
        """Commit ``build(current offset)`` and advance ``field`` to ``offset`` in one step, unless
        it already reached it (0: an idempotent replay); re-read and rebuild when another writer
        committed first (the offset moved or a guard failed). No ``field``: a plain commit."""
        for attempt in range(tries):
            cur = self._get_offset(field) if field else None
            if offset is not None and cur is not None and compare_offsets(cur, offset) >= 0:
                return 0
            ops, n = build(cur)
            if self._commit(ops, [(field, cur, offset)] if field and offset is not None else ()):
                return n
            if attempt >= 4:  # another writer of the same entities (guarded views): back off a little
                time.sleep(0.0005 * attempt)
        raise ConflictError(conflict)

    def apply_many(
        self,
        items: Sequence[ApplyItem],
        notify: tuple[str, str] | None = None,
        now_us: int | None = None,
        recent: Sequence[RecentItem] = (),
    ) -> bool:
        """Several views' rows, each with the applied offsets of the partitions they came from,
        in ONE atomic commit (a stream worker's whole step: one round trip instead of three per
        view and partition). The offsets are CAS'd against the caller's ``expected`` fences: if
        any moved (or a guard failed) nothing is written and False returned; the caller then
        applies per partition with ``apply_events``, which re-reads the offsets. ``recent``:
        recent-events appends, fenced the same way (their own offset per source and partition),
        so a replay never appends an event twice."""
        ops, cas = Ops(), []
        for it in items:
            ops.update(self._ops(it.state, it.rows, now_us, it.guard))
            cas += [(self._offset_field(it.state, p), exp, new) for p, new, exp in it.tokens]
        for r in recent:
            ops.update(self._recent_ops(r))
            cas.append((self._offset_field(self.recent_fence(r.source), r.partition), r.expected, r.offset))
        return self._commit(ops, cas, notify)

    @staticmethod
    def recent_fence(source: str) -> str:
        """The name under which a source's recent-events appends record applied offsets."""
        return f"~recent:{source}"

    def append_recent_once(self, item: RecentItem) -> bool:
        """``item``'s appends unless its partition already recorded ``item.offset`` (False then)."""
        field = self._offset_field(self.recent_fence(item.source), item.partition)
        return (
            self._fenced(
                field,
                item.offset,
                lambda cur: (self._recent_ops(item), 1),
                16,
                f"recent events of {item.source!r}: too many concurrent writers of partition {item.partition}",
            )
            > 0
        )

    @staticmethod
    def _recent_ops(item: RecentItem) -> Ops:
        ops = Ops()
        for key, (rows, n) in item.lists.items():
            data = encode_recent(rows)
            if data:
                ops.lists[recent_key(item.source, key)] = (data, n)
        return ops

    def _ops(self, state: ViewState, table: pa.Table, now_us: int | None, guard: bool) -> Ops:
        now = now_us if now_us is not None else time.time_ns() // 1000
        return merged_writes(state, table, now, self._hmget, self._codec(state), guard)

    def delete(self, state: ViewState, keys: Sequence[str]) -> None:
        """Remove a view's state for these entity keys (other views' fields stay)."""
        ops = Ops()
        names = [*state.row_fields, state.V] if not state.is_aggregate else None
        if names is None:
            got = self._fields(list(keys))
            for k, fields in zip(keys, got):
                mine = [f for f in fields if f.startswith(state.vid + ":")]
                if mine:
                    ops.dels[k] = mine
        else:
            for k in keys:
                ops.dels[k] = names
        if ops.keys():
            self._commit(ops)

    def _fields(self, keys: list[str]) -> list[list[str]]:
        raise NotImplementedError
