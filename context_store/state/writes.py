"""The one builder of the online hash layout: event rows of a view -> hash writes (``Ops``).

Two entry points, one layout (docs/online-state.md):

- ``bulk_writes``: materialization. Rebuilds an entity's state from all its rows, no reads:
  every tile and 4^L block is computed from rows with ``partials_grouped`` (vectorised over the
  whole table, chunked by entities).
- ``merged_writes``: a stream apply. Merges a batch into the stored partials, read through a
  ``Reader`` the store provides (the store keeps fences, CAS and the commit); also folds tiles
  leaving the retention into the lifetime base and deletes expired ones.

Numbers-only views keep entities with few events as events instead of tiles (``events_mode``): both
entry points compute tiles, then rewrite such entities' writes.

Both share the grouping of rows into (entity, tile) runs, the field naming (``ViewState``), the
row selection and encoding, the lifetime/mark encodings and the expiry. The per-level block
computation stays different on purpose: the bulk path recomputes blocks from rows (no stored
state to merge with), the stream path merges the touched tiles' partials into the stored ones;
forcing either onto the other's method would add reads to materialization or row passes to
every stream step.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from .aggregations import AggPlan, Partial
from .codec import LISTPACK_VALUE_MAX, RowCodec, entity_keys, split_row
from .columns import Columns, columns_from_arrow, ts_to_us
from .events_mode import Conversion, bulk_events, concat_common, convert, event_lists, merge_events
from .ops import Ops
from .raw_events import encode_raw_groups
from .row_encode import encode_rows
from .tiles import RETENTION_SLACK_US, ViewState

__all__ = [
    "BULK_CHUNK_KEYS",
    "ROW_CHUNK_KEYS",
    "Reader",
    "RowChunk",
    "bulk_row_chunks",
    "bulk_writes",
    "lifetime_fold",
    "lifetime_value",
    "merged_writes",
]

log = logging.getLogger("context_store.online")
BULK_CHUNK_KEYS = 2000  # entities per bulk Ops: bounded memory and per-call payloads
ROW_CHUNK_KEYS = 8000  # entities per RowChunk (a row is ~60 bytes; fewer, larger vectorised encodes)
_I64 = np.dtype("<i8")
_VECTOR_ROWS = 64  # rows from which the vectorised row encoding beats the per-row one

# Reads of stored fields: per (entity key, field names) the values (None = unset), aligned.
Reader = Callable[[list[tuple[str, list[str]]]], list[list[bytes | None]]]


# -- shared layout pieces -----------------------------------------------------------------
def lifetime_value(fold_to: int, partial: bytes) -> bytes:
    """The ``{vid}:L`` field: i64 fold tile F, then the partial of every event before tile F."""
    return np.array([fold_to], dtype=_I64).tobytes() + partial


def lifetime_fold(buf: bytes) -> int:
    return int(np.frombuffer(buf, dtype=_I64, count=1)[0])


def _mark_value(tile: int) -> bytes:
    """The ``{vid}:m`` field: lowest tile index that may still exist."""
    return str(tile).encode()


def _version(buf: bytes | None) -> str | None:
    return buf.decode() if buf is not None else None


@dataclass
class _Groups:
    """A view's rows sorted by (entity, tile, ts), with the (entity, tile) runs."""

    cols: Columns
    kidx: np.ndarray  # per row: index into kvals
    kvals: list[str]  # entity keys
    tiles: np.ndarray  # per row: tile index (clamped to h - 1 when asked)
    starts: np.ndarray  # first row of each (entity, tile) run
    ends: np.ndarray


def _group(state: ViewState, plan: AggPlan, table: pa.Table, clamp_below: int | None) -> _Groups:
    """``clamp_below``: tiles below it become ``clamp_below - 1`` ("older than the horizon")."""
    cols = columns_from_arrow(table, plan, state.view.timestamp_field)
    keys = entity_keys(table, state.view.join_keys).dictionary_encode()
    kidx = np.asarray(keys.indices.to_numpy(zero_copy_only=False), dtype=np.int64)
    return _group_cols(state, cols, kidx, keys.dictionary.to_pylist(), clamp_below)


def _group_cols(
    state: ViewState, cols: Columns, kidx: np.ndarray, kvals: list[str], clamp_below: int | None
) -> _Groups:
    tiles = cols.ts // state.g
    if clamp_below is not None:
        tiles = np.maximum(tiles, clamp_below - 1)
    order = np.lexsort((cols.ts, tiles, kidx))
    if not np.array_equal(order, np.arange(len(order))):
        cols = cols.take(order)
        kidx, tiles = kidx[order], tiles[order]
    n = len(kidx)
    starts = np.flatnonzero(np.r_[True, (np.diff(kidx) != 0) | (np.diff(tiles) != 0)]) if n else kidx
    ends = np.append(starts[1:], n)
    return _Groups(cols, kidx, kvals, tiles, starts, ends)


def _latest(state: ViewState, table: pa.Table) -> tuple[list[str], np.ndarray, pa.Table]:
    """Per entity its latest row (ties: the last one): (keys, ts µs, the rows)."""
    keys = entity_keys(table, state.view.join_keys).dictionary_encode()
    kidx = np.asarray(keys.indices.to_numpy(zero_copy_only=False), dtype=np.int64)
    kvals = keys.dictionary.to_pylist()
    ts = ts_to_us(table[state.view.timestamp_field])
    order = np.lexsort((np.arange(len(ts)), ts, kidx))
    last = order[np.append(np.flatnonzero(np.diff(kidx[order]) != 0), len(order) - 1)]
    return [kvals[k] for k in kidx[last].tolist()], ts[last], table.take(pa.array(last))


def _encode(state: ViewState, codec: RowCodec, ts: np.ndarray, rows: pa.Table) -> list[bytes]:
    feats = state.view.features_in
    if len(ts) >= _VECTOR_ROWS:
        return encode_rows([f.dtype for f in feats], ts, [rows[f.name].combine_chunks() for f in feats])
    cols = [rows[f.name].to_pylist() for f in feats]
    return [codec.encode(t, [c[j] for c in cols]) for j, t in enumerate(ts.tolist())]


def _latest_rows(state: ViewState, table: pa.Table, codec: RowCodec) -> tuple[list[str], list[int], list[bytes]]:
    """Per entity its latest row (ties: the last one), encoded: (keys, ts µs, values)."""
    keys, ts, rows = _latest(state, table)
    return keys, ts.tolist(), _encode(state, codec, ts, rows)


def _set_row(ops: Ops, key: str, names: list[str], pieces: list[bytes]) -> None:
    """A row's pieces into its fields; the fields it does not use are deleted (a longer row before)."""
    ops.sets.setdefault(key, {}).update(zip(names, pieces))
    if len(pieces) < len(names):
        ops.dels.setdefault(key, []).extend(names[len(pieces) :])


# -- bulk (materialization) -----------------------------------------------------------------
def bulk_writes(
    state: ViewState, table: pa.Table, now_us: int, chunk_keys: int = BULK_CHUNK_KEYS
) -> Iterator[tuple[Ops, int]]:
    """The full online state of ``table`` (rows of one view), as (writes, rows covered) chunks of
    at most ``chunk_keys`` entities. Overwrites: nothing stored is read."""
    if table.num_rows == 0:
        return
    if not state.is_aggregate:
        yield from _bulk_rows(state, table, now_us, chunk_keys)
    else:
        yield from _bulk_tiles(state, table, now_us, chunk_keys)


@dataclass
class RowChunk:
    """The latest rows of a chunk of entities of one row view (materialize), whole: a store may
    write them with its own fast path (Redis: one short script) or as ``ops()``, the same layout."""

    names: list[str]  # the view's row fields ``{vid}``, ``{vid}.1``, ...
    keys: list[str]
    values: list[bytes]  # encoded rows, split into ``names`` by ``split_row``
    expire: list[int | None]  # ms to live (``ViewState.expire_ms``); None = persist

    def fields(self) -> int:
        """Hash fields written (a row's pieces)."""
        k, w = len(self.names), LISTPACK_VALUE_MAX
        return sum(1 if k == 1 or len(v) <= w else min(k, -(-len(v) // w)) for v in self.values)

    def ops(self) -> Ops:
        ops = Ops()
        names = self.names
        k = len(names)
        for key, v, ex in zip(self.keys, self.values, self.expire):
            if k == 1 or len(v) <= LISTPACK_VALUE_MAX:  # the usual row: one field (the others deleted)
                ops.sets[key] = {names[0]: v}
                if k > 1:
                    ops.dels[key] = names[1:]
            else:
                _set_row(ops, key, names, split_row(v, k))
            ops.expire[key] = ex
        return ops


def bulk_row_chunks(
    state: ViewState, table: pa.Table, now_us: int, chunk_keys: int = BULK_CHUNK_KEYS
) -> Iterator[tuple[RowChunk, int]]:
    """``bulk_writes`` of a row view as ``RowChunk``s: (chunk, rows covered)."""
    if table.num_rows == 0:
        return
    codec = RowCodec([f.dtype for f in state.view.features_in])
    keys, ts, rows = _latest(state, table)
    if state.ttl_us is None:
        exp: list[int | None] = [None] * len(keys)
    else:  # ViewState.expire_ms, vectorised
        exp = np.maximum((ts + (state.ttl_us + RETENTION_SLACK_US) - now_us) // 1000, 60_000).tolist()
    for c0 in range(0, len(keys), chunk_keys):
        c1 = c0 + chunk_keys
        # Encoded per chunk: the store writes the previous chunk meanwhile (``wait=False``).
        vals = _encode(state, codec, ts[c0:c1], rows.slice(c0, chunk_keys))
        yield RowChunk(state.row_fields, keys[c0:c1], vals, exp[c0:c1]), table.num_rows if c1 >= len(keys) else 0


def _bulk_rows(state: ViewState, table: pa.Table, now_us: int, chunk_keys: int) -> Iterator[tuple[Ops, int]]:
    for chunk, rows in bulk_row_chunks(state, table, now_us, chunk_keys):
        yield chunk.ops(), rows


def _bulk_tiles(state: ViewState, table: pa.Table, now_us: int, chunk_keys: int) -> Iterator[tuple[Ops, int]]:
    plan = state.plan
    assert plan is not None
    h = state.horizon(now_us)
    # With a lifetime window, tile h - 1 stands for the lifetime base L (F = h).
    gr = _group(state, plan, table, h if state.has_lifetime else None)
    cols, kidx, kvals, tiles, starts, ends = gr.cols, gr.kidx, gr.kvals, gr.tiles, gr.starts, gr.ends
    gk = kidx[starts]
    gt = tiles[starts]
    key_starts = np.flatnonzero(np.r_[True, np.diff(gk) != 0]).astype(np.int64)
    key_ends = np.append(key_starts[1:], len(gk))
    m_val = _mark_value(h)
    for c0 in range(0, len(key_starts), chunk_keys):
        c1 = min(c0 + chunk_keys, len(key_starts))
        g0, g1 = int(key_starts[c0]), int(key_ends[c1 - 1])
        r0, r1 = int(starts[g0]), int(ends[g1 - 1])
        sub = _slice(cols, r0, r1)
        num, objs = plan.partials_grouped(sub, starts[g0:g1] - r0)
        enc = (
            [plan.encode_parts(num[i], objs[i]) for i in range(g1 - g0)]
            if plan.slots
            else list(map(bytes, num.astype("<f8", copy=False)))
        )
        raws = encode_raw_groups(sub, plan, starts[g0:g1] - r0, ends[g0:g1] - r0) if not state.interval else None
        ops = Ops()
        gt_l = gt[g0:g1].tolist()
        gk_l = gk[g0:g1].tolist()
        if state.has_lifetime:
            for i, (k, ti) in enumerate(zip(gk_l, gt_l)):
                key = kvals[k]
                d = ops.sets.get(key)
                if d is None:
                    d = ops.sets[key] = {}
                    d[state.M] = m_val
                if ti == h - 1:
                    d[state.L] = lifetime_value(h, enc[i])
                    continue
                d[state.tile(ti)] = enc[i]
                if raws is not None:
                    d[state.raw(ti)] = raws[i]
        else:  # per entity one dict built from slices (C loops, not one Python step per tile)
            pre = state.block_prefix(0)
            names = [pre + x for x in map(str, gt_l)]
            rnames = [x + "r" for x in names] if raws is not None else None  # == state.raw(ti)
            ks = (key_starts[c0:c1] - g0).tolist()
            ke = (key_ends[c0:c1] - g0).tolist()
            for a, e in zip(ks, ke):
                d = {state.M: m_val}
                d.update(zip(names[a:e], enc[a:e]))
                if rnames is not None and raws is not None:
                    d.update(zip(rnames[a:e], raws[a:e]))
                ops.sets[kvals[gk_l[a]]] = d
        # Enclosing 4^L-tile blocks (rows are sorted by (entity, tile), hence by (entity, block)).
        sk, stl = kidx[r0:r1], tiles[r0:r1]
        for lv in range(1, state.levels + 1):
            blk = stl >> (2 * lv)
            bs = np.flatnonzero(np.r_[True, (np.diff(sk) != 0) | (np.diff(blk) != 0)])
            bj = blk[bs]
            keep = np.flatnonzero(((bj + 1) << (2 * lv)) > h)  # blocks entirely older than the horizon: unreachable
            if keep.size == 0:
                # Every block of this level is older than the horizon (old events, e.g. only a
                # Lifetime() window): nothing to write at this level (and nothing to group by entity).
                continue
            bnum, bobjs = plan.partials_grouped(sub, bs)
            benc_all = (
                [plan.encode_parts(bnum[i], bobjs[i]) for i in keep.tolist()]
                if plan.slots
                else list(map(bytes, bnum[keep].astype("<f8", copy=False)))
            )
            pre = state.block_prefix(lv)
            bnames = [pre + x for x in map(str, bj[keep].tolist())]
            bk = sk[bs][keep]
            kb = np.flatnonzero(np.r_[True, np.diff(bk) != 0])
            kbe = np.append(kb[1:], len(bk)).tolist()
            for a, e, k in zip(kb.tolist(), kbe, bk[kb].tolist()):
                ops.sets[kvals[k]].update(zip(bnames[a:e], benc_all[a:e]))
        if state.events_mode:  # entities with few events keep them instead of tiles
            ent_rows = starts[key_starts[c0:c1]] - r0, ends[key_ends[c0:c1] - 1] - r0
            bulk_events(state, plan, sub, [kvals[k] for k in gk[key_starts[c0:c1]].tolist()], *ent_rows, ops)
        if state.has_lifetime:
            empty = None
            for d in ops.sets.values():
                if state.L not in d:
                    empty = empty or lifetime_value(h, plan.encode(plan.empty()))
                    d[state.L] = empty
        # Expiry from each entity's latest event.
        last_rows = ends[key_ends[c0:c1] - 1] - 1
        for k, mt in zip(gk[key_starts[c0:c1]].tolist(), cols.ts[last_rows].tolist()):
            ops.expire[kvals[k]] = state.expire_ms(mt, now_us)
        yield ops, r1 - r0


def _slice(cols: Columns, a: int, b: int) -> Columns:
    return Columns(
        ts=cols.ts[a:b],
        valid={k: v[a:b] for k, v in cols.valid.items()},
        num={k: v[a:b] for k, v in cols.num.items()},
        obj={k: v[a:b] for k, v in cols.obj.items()},
        emb={k: v[a:b] for k, v in cols.emb.items()},
    )


# -- merged (stream apply) ------------------------------------------------------------------
def merged_writes(
    state: ViewState, table: pa.Table, now_us: int, read: Reader, codec: RowCodec, guard: bool = False
) -> Ops:
    """Writes merging ``table`` into the stored state read through ``read``. ``guard``: other
    writers may touch the same entities (a view not keyed by the stream's partition key): each
    entity's version is read too, and the commit must find it unchanged (``Ops.guards``)."""
    ops = Ops()
    if table.num_rows:
        if state.is_aggregate:
            _merged_tiles(state, table, now_us, read, ops, guard)
        else:
            _merged_rows(state, table, now_us, read, codec, ops, guard)
    return ops


def _merged_rows(
    state: ViewState, table: pa.Table, now: int, read: Reader, codec: RowCodec, ops: Ops, guard: bool
) -> None:
    keys, ts, vals = _latest_rows(state, table, codec)
    existing = read([(k, [state.vid, state.V] if guard else [state.vid]) for k in keys])
    for k, t, v, old in zip(keys, ts, vals, existing):
        if guard:
            ops.guards[k] = {state.V: _version(old[1])}
        if old[0] is not None and RowCodec.ts_of(old[0]) > t:
            continue  # the stored row is newer
        _set_row(ops, k, state.row_fields, split_row(v, len(state.row_fields)))
        ops.expire[k] = state.expire_ms(t, now)


def _merged_tiles(state: ViewState, table: pa.Table, now: int, read: Reader, ops: Ops, guard: bool) -> None:
    """Merge a batch into per-(entity, tile) partials, then per touched field (tile + 4^L blocks)
    one partial, vectorised; one read of the touched fields (and of the events fields: events mode)."""
    plan = state.plan
    assert plan is not None
    h = state.horizon(now)
    gr = _group(state, plan, table, h)  # tile h - 1 stands for "older than the horizon"
    _merged_groups(state, plan, gr, h, now, read, ops, guard, state.events_mode)


def _tiles_of(state: ViewState, plan: AggPlan, conv: list[Conversion], h: int, now: int) -> Ops:
    """Tile writes of entities with no stored tile state, from all their events (events -> tiles)."""
    cols = concat_common([c.events for c in conv])
    kidx = np.repeat(np.arange(len(conv), dtype=np.int64), [len(c.events) for c in conv])
    ops = Ops()
    none: Reader = lambda reqs: [[None] * len(f) for _, f in reqs]  # noqa: E731
    gr = _group_cols(state, cols, kidx, [c.key for c in conv], h)
    _merged_groups(state, plan, gr, h, now, none, ops, False, False)
    return ops


def _merged_groups(
    state: ViewState, plan: AggPlan, gr: _Groups, h: int, now: int, read: Reader, ops: Ops, guard: bool, events: bool
) -> None:
    cols, kidx, kvals, starts, ends = gr.cols, gr.kidx, gr.kvals, gr.starts, gr.ends
    nrows = len(kidx)
    num, objs = plan.partials_grouped(cols, starts)
    gk, gt = kidx[starts], gr.tiles[starts]
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
        pre = state.block_prefix(lv)
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
    ev = state.ev_fields if events else []
    tail += ev  # events mode: never with L
    if guard:
        tail.append(state.V)
    got = read([(kvals[k], names[a:e] + tail) for k, a, e in zip(klist_l, lo_i, hi_i)])
    # Events mode first: entities written as events (or converting to tiles) skip the tile merge.
    conv: list[Conversion] = []
    skip: set[int] = set()
    if ev:
        row_ends = np.append(kb, nrows).tolist()
        row_starts = [0, *kb.tolist()]
        all_ts, all_cols = event_lists(cols, plan)
        for k, a, e, vals, r0, r1 in zip(klist_l, lo_i, hi_i, got, row_starts, row_ends):
            nw = e - a
            stored = vals[nw + 1 : nw + 1 + len(ev)]
            if stored[0] is None and vals[nw] is not None:
                continue  # a tile entity
            new = all_ts[r0:r1], [(v[r0:r1], x[r0:r1]) for v, x in all_cols]
            c = merge_events(state, plan, kvals[k], stored, vals[nw] is not None, new, h * state.g, ops)
            if c is not None:
                skip.add(k)
                if isinstance(c, Conversion):
                    conv.append(c)
    if skip:
        keep = np.flatnonzero(~np.isin(fk, np.fromiter(skip, dtype=np.int64, count=len(skip))))
        olds = [v for vals, a, e in zip(got, lo_i, hi_i) for v in vals[: e - a]]
        enc_l: list[bytes | None] = [None] * len(names)
        kl = keep.tolist()
        if kl:
            for i, b in zip(kl, plan.merge_encoded_many([olds[i] for i in kl], new_arr[keep], None)):
                enc_l[i] = b
        enc: list[Any] = enc_l
    else:
        olds = [v for vals, a, e in zip(got, lo_i, hi_i) for v in vals[: e - a]]
        enc = plan.merge_encoded_many(olds, new_arr, nobjs)
    raws = None if state.interval else encode_raw_groups(cols, plan, starts[li], ends[li])
    if raws is not None:
        for k, ti, rb in zip(k_l.tolist(), t_l.tolist(), raws):
            if k not in skip:
                ops.appends.setdefault(kvals[k], {})[state.raw(ti)] = rb
    for k, a, e, vals, mt in zip(klist_l, lo_i, hi_i, got, maxts):
        key = kvals[k]
        nw = e - a
        if guard:
            ops.guards[key] = {state.V: _version(vals[-1])}
        if k in skip:  # written as events by merge_events (or converting: ``convert`` below)
            ops.expire[key] = state.expire_ms(mt, now)
            continue
        sets = ops.sets[key] = dict(zip(names[a:e], enc[a:e]))
        m_old = int(vals[nw]) if vals[nw] is not None else None
        fold_to = h
        if state.has_lifetime:
            lv_b = vals[nw + 1]
            if lv_b is None:
                fold_from, base = h, plan.empty()
            else:
                fold_from = lifetime_fold(lv_b)
                base = plan.decode(lv_b[8:])
            fold_to = max(h, fold_from)
            parts = [base] + late_by_key.get(k, [])
            if fold_from < h:  # fold tiles that left the retention into the lifetime base
                rng = list(range(max(fold_from, h - 4 * state.retention), h))
                olds_l = read([(key, [state.tile(i) for i in rng])])[0]
                parts += [plan.decode(b) for b in olds_l if b is not None]
            if len(parts) > 1 or lv_b is None or fold_from < h:
                sets[state.L] = lifetime_value(fold_to, plan.encode(plan.merge(parts)))
            m_old = fold_from if m_old is None else min(m_old, fold_from)
        if m_old is not None and m_old < h:
            lo = max(m_old, h - 4 * state.retention)
            dels = ops.dels.setdefault(key, [])
            dels += [state.raw(i) for i in range(lo, h)]
            for lv in range(state.levels + 1):
                dels += [state.block(lv, j) for j in range(lo >> (2 * lv), h >> (2 * lv))]
        if m_old is None or m_old < fold_to:
            sets[state.M] = _mark_value(fold_to)
        ops.expire[key] = state.expire_ms(mt, now)
    if conv:
        convert(state, conv, now, lambda cs: _tiles_of(state, plan, cs, h, now), ops)
