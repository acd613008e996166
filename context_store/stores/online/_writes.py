"""Writes shared by every online store backend: stream applies (tiles and rows, idempotent per
offset, optionally guarded), a worker round's single commit, recent-events appends, deletes.

A mixin of ``BaseOnlineStore``; it relies on the backend primitives ``_hmget``, ``_commit`` and
``_get_offset`` and on ``_codec`` (row views). Layout and API: docs/online-state.md.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import numpy as np
import pyarrow as pa

from ...compute.aggregations import Partial
from ...compute.tiles import ViewState, columns_from_arrow, encode_raw_groups, ts_to_us
from ...errors import ConflictError
from ._ops import ApplyItem, Ops, RecentItem, compare_offsets, encode_recent, recent_key
from .codec import RowCodec, entity_keys

log = logging.getLogger("context_store.online")
_I64 = np.dtype("<i8")


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

    def flush(self) -> None:
        pass

    def applied_offset(self, view: str | ViewState, partition: str) -> str | None:
        return self._get_offset(self._offset_field(view, partition))

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
        ops = Ops()
        if table.num_rows:
            if state.is_aggregate:
                self._tile_ops(state, table, now, ops, guard)
            else:
                self._row_ops(state, table, now, ops, guard)
        return ops

    def _row_ops(self, state: ViewState, table: pa.Table, now: int, ops: Ops, guard: bool = False) -> None:
        keys = entity_keys(table, state.view.join_keys).to_pylist()
        ts = ts_to_us(table[state.view.timestamp_field]).tolist()
        latest: dict[str, int] = {}
        for i, (k, t) in enumerate(zip(keys, ts)):
            j = latest.get(k)
            if j is None or ts[j] <= t:
                latest[k] = i
        names = [f.name for f in state.view.features_in]
        cols = {n: table[n].to_pylist() for n in names}
        klist = list(latest)
        existing = self._hmget([(k, [state.vid, state.V] if guard else [state.vid]) for k in klist])
        codec = self._codec(state)
        for k, old in zip(klist, existing):
            if guard:
                ops.guards[k] = {state.V: old[1].decode() if old[1] is not None else None}
            i = latest[k]
            if old[0] is not None and RowCodec.ts_of(old[0]) > ts[i]:
                continue
            ops.set(k, state.vid, codec.encode(ts[i], [cols[n][i] for n in names]))
            ops.expire[k] = state.expire_ms(ts[i], now)

    def _tile_ops(self, state: ViewState, table: pa.Table, now: int, ops: Ops, guard: bool = False) -> None:
        """Merge a batch into per-(entity, tile) partials, then per touched field (tile + 4^L blocks)
        one partial, vectorised; one read of the touched fields, one write (``_commit``).
        ``guard``: other writers may touch the same entities (a view not keyed by the stream's
        partition key): read each entity's version too, and commit only if it is unchanged."""
        plan = state.plan
        assert plan is not None
        h = state.horizon(now)
        cols = columns_from_arrow(table, plan, state.view.timestamp_field)
        keys_arr = entity_keys(table, state.view.join_keys).dictionary_encode()
        kidx = np.asarray(keys_arr.indices.to_numpy(zero_copy_only=False), dtype=np.int64)
        kvals = keys_arr.dictionary.to_pylist()
        eff = np.maximum(cols.ts // state.g, h - 1)  # h - 1 stands for "older than the horizon"
        order = np.lexsort((cols.ts, eff, kidx))
        cols = cols.take(order)
        kidx, eff = kidx[order], eff[order]
        nrows = len(kidx)
        starts = np.flatnonzero(np.r_[True, (np.diff(kidx) != 0) | (np.diff(eff) != 0)])
        ends = np.append(starts[1:], nrows)
        num, objs = plan.partials_grouped(cols, starts)
        gk, gt = kidx[starts], eff[starts]
        live = gt >= h
        late_by_key: dict[int, list[Partial]] = {}
        if not live.all():
            dropped = 0
            for gi in np.flatnonzero(~live).tolist():
                if state.has_lifetime:
                    late_by_key.setdefault(int(gk[gi]), []).append(Partial(num[gi], objs[gi]))
                else:
                    dropped += int(ends[gi] - starts[gi])
            if dropped:
                log.warning(
                    "view %s: %d events older than the retention horizon were not applied online", state.name, dropped
                )
        li = np.flatnonzero(live)
        k_l, t_l, num_l = gk[li], gt[li], num[li]
        li_l = li.tolist()
        # Touched fields per level: consecutive groups of one (key, block) merge into one partial.
        f_key, f_num, f_names, f_objs = [], [], [], []
        for lv in range(state.levels + 1):
            bl = t_l >> (2 * lv)
            fst = np.flatnonzero(np.r_[True, (np.diff(k_l) != 0) | (np.diff(bl) != 0)]) if len(li) else li
            pre = f"{state.vid}:" if lv == 0 else f"{state.vid}:{lv}:"
            f_key.append(k_l[fst])
            f_num.append(plan.merge_grouped(num_l, fst))
            f_names += [pre + str(j) for j in bl[fst].tolist()]
            if plan.slots:
                fe = np.append(fst[1:], len(li)).tolist()
                f_objs += [plan.merge_objs([objs[li_l[x]] for x in range(a, e)]) for a, e in zip(fst.tolist(), fe)]
        fk = np.concatenate(f_key)
        fo = np.argsort(fk, kind="stable")  # per key contiguous
        fk = fk[fo]
        new_arr = np.concatenate(f_num)[fo]
        fol = fo.tolist()
        names = [f_names[i] for i in fol]
        nobjs = [f_objs[i] for i in fol] if plan.slots else None
        kb = np.flatnonzero(np.diff(kidx)) + 1
        klist = kidx[np.r_[0, kb]] if nrows else kidx
        maxts = cols.ts[np.append(kb, nrows) - 1].tolist()  # rows sorted by (key, tile, ts)
        lo_i = np.searchsorted(fk, klist, "left").tolist()
        hi_i = np.searchsorted(fk, klist, "right").tolist()
        klist_l = klist.tolist()
        tail = [state.M, state.L] if state.has_lifetime else [state.M]
        if guard:
            tail.append(state.V)
        reqs = [(kvals[k], names[a:e] + tail) for k, a, e in zip(klist_l, lo_i, hi_i)]
        got = self._hmget(reqs)
        olds = [v for vals, a, e in zip(got, lo_i, hi_i) for v in vals[: e - a]]
        enc = plan.merge_encoded_many(olds, new_arr, nobjs)
        raws = None if state.interval else encode_raw_groups(cols, plan, starts[li], ends[li])
        raw_key = k_l.tolist()
        if raws is not None:
            for k, ti, rb in zip(raw_key, t_l.tolist(), raws):
                ops.appends.setdefault(kvals[k], {})[state.raw(ti)] = rb
        for k, a, e, vals, mt in zip(klist_l, lo_i, hi_i, got, maxts):
            key = kvals[k]
            nw = e - a
            sets = ops.sets[key] = dict(zip(names[a:e], enc[a:e]))
            if guard:
                ops.guards[key] = {state.V: vals[-1].decode() if vals[-1] is not None else None}
            m_old = int(vals[nw]) if vals[nw] is not None else None
            fold_to = h
            if state.has_lifetime:
                lv_b = vals[nw + 1]
                if lv_b is None:
                    fold_from, base = h, plan.empty()
                else:
                    fold_from = int(np.frombuffer(lv_b, dtype=_I64, count=1)[0])
                    base = plan.decode(lv_b[8:])
                fold_to = max(h, fold_from)
                parts = [base] + late_by_key.get(k, [])
                if fold_from < h:  # fold tiles that left the retention into the lifetime base
                    rng = list(range(max(fold_from, h - 4 * state.retention), h))
                    olds_l = self._hmget([(key, [state.tile(i) for i in rng])])[0]
                    parts += [plan.decode(b) for b in olds_l if b is not None]
                if len(parts) > 1 or lv_b is None or fold_from < h:
                    sets[state.L] = np.array([fold_to], dtype=_I64).tobytes() + plan.encode(plan.merge(parts))
                m_old = fold_from if m_old is None else min(m_old, fold_from)
            if m_old is not None and m_old < h:
                lo = max(m_old, h - 4 * state.retention)
                dels = ops.dels.setdefault(key, [])
                dels += [state.raw(i) for i in range(lo, h)]
                for lv in range(state.levels + 1):
                    dels += [state.block(lv, j) for j in range(lo >> (2 * lv), h >> (2 * lv))]
            if m_old is None or m_old < fold_to:
                sets[state.M] = str(fold_to).encode()
            ops.expire[key] = state.expire_ms(mt, now)

    def delete(self, state: ViewState, keys: Sequence[str]) -> None:
        """Remove a view's state for these entity keys (other views' fields stay)."""
        ops = Ops()
        names = [state.vid, state.V] if not state.is_aggregate else None
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
