"""The online store protocol and the state logic shared by every backend.

Backends (sqlite.py, redis.py) implement a handful of hash primitives (``_hmget``,
``_commit``, ...); everything about rows, tiles, folding and idempotent stream applies
lives here once. Layout and API: docs/online-state.md.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np
import orjson
import pyarrow as pa

from ...compute.aggregations import Partial
from ...compute.tiles import ViewState, columns_from_arrow, encode_raw_groups, ts_to_us
from ...errors import ConflictError
from .codec import RowCodec, entity_keys

__all__ = ["ApplyItem", "BaseOnlineStore", "OnlineStore", "Ops", "RecentItem", "ViewValues", "compare_offsets"]

log = logging.getLogger("context_store.online")
_I64 = np.dtype("<i8")


class ViewValues(NamedTuple):
    """One view's values for one entity: ``values`` in the view's feature order (None when the
    entity has no row / the row is older than ttl), and the effective time (µs)."""

    values: list[Any] | None
    effective_us: int | None


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
        for mine, theirs in ((self.sets, other.sets), (self.appends, other.appends), (self.guards, other.guards)):
            for k, fv in theirs.items():
                mine.setdefault(k, {}).update(fv)  # type: ignore[attr-defined]
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


@runtime_checkable
class OnlineStore(Protocol):
    """What compute and serving use. No backend type crosses this line."""

    workspace: str

    def read_features(self, reads: Sequence[tuple[ViewState, str]], t_us: int) -> list[ViewValues]:
        """Values of many (view, entity key) pairs at time ``t_us``: ONE round trip."""
        ...

    async def read_features_async(self, reads: Sequence[tuple[ViewState, str]], t_us: int) -> list[ViewValues]: ...

    def read_entities(self, states: Sequence[ViewState], keys: Sequence[str], t_us: int) -> list[list[ViewValues]]:
        """The same views for many entity keys (batch lookups): one round trip."""
        ...

    async def read_entities_async(self, states: Sequence[ViewState], keys: Sequence[str], t_us: int) -> list[list[ViewValues]]: ...

    def write_ops(self, ops: Ops, wait: bool = True) -> None:
        """Bulk writes (materialization): pipelined, not atomic across keys. ``wait=False`` may
        return before the writes are done (call ``flush()``)."""
        ...

    def flush(self) -> None:
        """Wait for bulk writes sent with ``wait=False``; raises their error, if any."""
        ...

    def apply_events(
        self,
        state: ViewState,
        rows: pa.Table,
        token: tuple[str, str] | None = None,
        row_offsets: Sequence[str] | None = None,
        now_us: int | None = None,
        guard: bool = False,
    ) -> int:
        """Apply transformed events to online state; atomic and idempotent per ``token``.
        ``guard``: other writers may update the same entities concurrently (optimistic retry)."""
        ...

    def apply_many(self, items: Sequence[ApplyItem], notify: tuple[str, str] | None = None,
                   now_us: int | None = None, recent: Sequence[RecentItem] = ()) -> bool:
        """Several views and partitions in one atomic commit if every expected offset holds."""
        ...

    def append_recent_once(self, item: RecentItem) -> bool:
        """Recent-events appends of one partition batch, fenced by its offset (replays skip)."""
        ...

    def applied_offset(self, view: str | ViewState, partition: str) -> str | None: ...

    def delete(self, state: ViewState, keys: Sequence[str]) -> None: ...

    def append_recent(self, source: str, key: str, rows: Sequence[Mapping[str, Any]], max_len: int) -> None: ...

    def read_recent(self, source: str, key: str, n: int) -> list[dict[str, Any]]: ...

    def get_meta(self, name: str) -> bytes | None: ...

    def set_meta(self, name: str, value: bytes) -> None: ...

    def ping(self) -> bool: ...

    def clear(self) -> None: ...

    def close(self) -> None: ...


class BaseOnlineStore:
    """Shared logic. Subclasses implement the ``_``-prefixed primitives."""

    workspace: str
    backend: str = "?"

    # -- primitives (backend) -----------------------------------------------------------
    def _hmget(self, reqs: list[tuple[str, list[str]]]) -> list[list[bytes | None]]:
        raise NotImplementedError

    async def _ahmget(self, reqs: list[tuple[str, list[str]]]) -> list[list[bytes | None]]:
        return self._hmget(reqs)

    def _commit(self, ops: Ops, cas: Sequence[tuple[str, str | None, str]] = (),
                notify: tuple[str, str] | None = None) -> bool:
        """Apply ``ops`` atomically, only if every applied offset of ``cas=[(field, expected,
        new)]`` currently equals ``expected`` (None = unset) and every guard of ``ops`` holds;
        then set those offsets to ``new``, bump the guards and publish ``notify=(channel,
        message)`` where the backend has pub/sub. False (nothing written) otherwise. With no
        cas, guards or notify a backend may write non-atomically (bulk writes)."""
        raise NotImplementedError

    def _get_offset(self, field: str) -> str | None:
        raise NotImplementedError

    # -- reads --------------------------------------------------------------------------
    _layout_cache: dict[Any, tuple[list[str], list[Any]]]

    def _layout(self, reads: Sequence[tuple[ViewState, str]], t: int) -> tuple[list[tuple[str, list[str]]], list[Any]]:
        """Per entity key the fields to HMGET, and per read (request index, start, count, ctx)."""
        k0 = reads[0][1]
        single = all(k == k0 for _, k in reads)
        if single:  # the usual case: cache the field list per combination of read contexts
            sig = tuple(st.read_ctx(t) if st.is_aggregate else st for st, _ in reads)
            try:
                cached = self._layout_cache.get(sig)
            except AttributeError:
                self._layout_cache = {}
                cached = None
            if cached is not None:
                return [(k0, cached[0])], cached[1]
        by_key: dict[str, int] = {}
        reqs: list[tuple[str, list[str]]] = []
        slots: list[Any] = []
        for st, key in reads:
            ri = by_key.get(key)
            if ri is None:
                ri = by_key[key] = len(reqs)
                reqs.append((key, []))
            fl = reqs[ri][1]
            start = len(fl)
            if st.is_aggregate:
                ctx = st.read_ctx(t)
                fl.extend(ctx.fields)
                slots.append((ri, start, len(ctx.fields), ctx))
            else:
                fl.append(st.vid)
                slots.append((ri, start, 1, None))
        if single:
            if len(self._layout_cache) > 512:
                self._layout_cache.clear()
            self._layout_cache[sig] = (reqs[0][1], slots)
        return reqs, slots

    def _lifetime_extra(self, reads: Sequence[tuple[ViewState, str]], slots: list[Any], got: list[list[Any]]) -> list[tuple[int, str, list[int]]]:
        """Tiles between a lifetime base's fold point and the read range (entities idle for long)."""
        out = []
        for i, ((st, key), (ri, start, n, ctx)) in enumerate(zip(reads, slots)):
            if ctx is None or not st.has_lifetime:
                continue
            lv = got[ri][start + n - 1]
            if lv is None:
                continue
            fold = int(np.frombuffer(lv, dtype=_I64, count=1)[0])
            if fold < ctx.lo:
                out.append((i, key, list(range(fold, ctx.lo))))
        return out

    def _evaluate(self, reads: Sequence[tuple[ViewState, str]], slots: list[Any], got: list[list[Any]], t: int,
                  extra: dict[int, dict[int, bytes]]) -> list[ViewValues]:
        res: list[ViewValues] = []
        for i, ((st, _), (ri, start, n, ctx)) in enumerate(zip(reads, slots)):
            vals = got[ri]
            if ctx is None:
                buf = vals[start]
                if buf is None:
                    res.append(ViewValues(None, None))
                    continue
                ts, row = self._codec(st).decode(buf)
                if ts > t or (st.ttl_us is not None and t - ts > st.ttl_us):
                    res.append(ViewValues(None, ts))
                else:
                    res.append(ViewValues(row, ts))
            else:
                res.append(ViewValues(st.evaluate(t, ctx, vals[start : start + n], extra.get(i)), st.window_end(t)))
        return res

    def _extra(self, reads: Sequence[tuple[ViewState, str]], more: list[tuple[int, str, list[int]]],
               rows: list[list[Any]]) -> dict[int, dict[int, bytes]]:
        return {i: {x: v for x, v in zip(tiles, vals) if v is not None} for (i, _, tiles), vals in zip(more, rows)}

    def read_features(self, reads: Sequence[tuple[ViewState, str]], t_us: int) -> list[ViewValues]:
        if not reads:
            return []
        reqs, slots = self._layout(reads, t_us)
        got = self._hmget(reqs)
        more = self._lifetime_extra(reads, slots, got)
        extra: dict[int, dict[int, bytes]] = {}
        if more:  # rare second round trip
            extra = self._extra(reads, more, self._hmget([(key, [reads[i][0].tile(x) for x in tiles]) for i, key, tiles in more]))
        return self._evaluate(reads, slots, got, t_us, extra)

    def _entities_plan(self, states: Sequence[ViewState], keys: Sequence[str], t: int) -> tuple[list[str], list[Any]]:
        reqs0, slots = self._layout([(st, keys[0]) for st in states], t)
        return reqs0[0][1], slots

    def _entities_eval(self, states: Sequence[ViewState], keys: Sequence[str], slots: list[Any], got: list[list[Any]],
                       t: int) -> tuple[list[list[ViewValues]], list[tuple[int, list[tuple[ViewState, str]], list[Any]]]]:
        out: list[list[ViewValues]] = []
        pending = []
        lifetime = any(st.is_aggregate and st.has_lifetime for st in states)
        if not lifetime:  # hoisted per batch: codecs, window ends, slot offsets
            plan = [(st, start, start + n, ctx, None if ctx is not None else self._codec(st), st.window_end(t))
                    for st, (_, start, n, ctx) in zip(states, slots)]
            many = {j: st.evaluate_many(t, ctx, [vals[a:e] for vals in got])
                    for j, (st, a, e, ctx, _, _) in enumerate(plan) if ctx is not None and st.numbers_only and len(got) > 4}
            for x, vals in enumerate(got):
                row: list[ViewValues] = []
                for j, (st, a, e, ctx, codec, we) in enumerate(plan):
                    if ctx is not None:
                        m = many.get(j)
                        row.append(ViewValues(m[x] if m is not None else st.evaluate(t, ctx, vals[a:e]), we))
                        continue
                    buf = vals[a]
                    if buf is None:
                        row.append(ViewValues(None, None))
                        continue
                    ts, r = codec.decode(buf)
                    row.append(ViewValues(None, ts) if ts > t or (st.ttl_us is not None and t - ts > st.ttl_us) else ViewValues(r, ts))
                out.append(row)
            return out, pending
        for e, (k, vals) in enumerate(zip(keys, got)):
            reads = [(st, k) for st in states]
            more = self._lifetime_extra(reads, slots, [vals])
            if more:
                pending.append((e, reads, more))
                out.append([])
            else:
                out.append(self._evaluate(reads, slots, [vals], t, {}))
        return out, pending

    def read_entities(self, states: Sequence[ViewState], keys: Sequence[str], t_us: int) -> list[list[ViewValues]]:
        """The same views for many entity keys (a batch lookup of one service): one round trip,
        field lists computed once. Returns per key the values of ``states`` in order."""
        if not keys or not states:
            return [[] for _ in keys]
        fields, slots = self._entities_plan(states, keys, t_us)
        got = self._hmget([(k, fields) for k in keys])
        out, pending = self._entities_eval(states, keys, slots, got, t_us)
        for e, reads, more in pending:
            extra = self._extra(reads, more, self._hmget([(key, [reads[i][0].tile(x) for x in tiles]) for i, key, tiles in more]))
            out[e] = self._evaluate(reads, slots, [got[e]], t_us, extra)
        return out

    async def read_entities_async(self, states: Sequence[ViewState], keys: Sequence[str], t_us: int) -> list[list[ViewValues]]:
        if not keys or not states:
            return [[] for _ in keys]
        fields, slots = self._entities_plan(states, keys, t_us)
        got = await self._ahmget([(k, fields) for k in keys])
        out, pending = self._entities_eval(states, keys, slots, got, t_us)
        for e, reads, more in pending:
            rows = await self._ahmget([(key, [reads[i][0].tile(x) for x in tiles]) for i, key, tiles in more])
            out[e] = self._evaluate(reads, slots, [got[e]], t_us, self._extra(reads, more, rows))
        return out

    async def read_features_async(self, reads: Sequence[tuple[ViewState, str]], t_us: int) -> list[ViewValues]:
        if not reads:
            return []
        reqs, slots = self._layout(reads, t_us)
        got = await self._ahmget(reqs)
        more = self._lifetime_extra(reads, slots, got)
        extra: dict[int, dict[int, bytes]] = {}
        if more:
            extra = self._extra(reads, more, await self._ahmget([(key, [reads[i][0].tile(x) for x in tiles]) for i, key, tiles in more]))
        return self._evaluate(reads, slots, got, t_us, extra)

    _codecs: dict[str, RowCodec]

    def _codec(self, st: ViewState) -> RowCodec:
        try:
            return self._codecs[st.vid]
        except AttributeError:
            self._codecs = {}
        except KeyError:
            pass
        c = self._codecs[st.vid] = RowCodec([f.dtype for f in st.view.features_in])
        return c

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
        off_field = self._offset_field(state, token[0]) if token else None
        for attempt in range(64):
            cur = self._get_offset(off_field) if off_field else None
            if token and cur is not None and compare_offsets(cur, token[1]) >= 0:
                return 0  # already applied: idempotent replay
            table = rows
            if row_offsets is not None and cur is not None:
                keep = np.array([compare_offsets(o, cur) > 0 for o in row_offsets], dtype=bool)
                table = rows.filter(pa.array(keep))
            ops = self._ops(state, table, now_us, guard)
            if self._commit(ops, [(off_field, cur, token[1])] if token and off_field else ()):
                return table.num_rows
            if attempt >= 4:  # another writer of the same entities (guarded views): back off a little
                time.sleep(0.0005 * attempt)
        raise ConflictError(f"apply_events for view {state.name!r}: too many concurrent writers of partition {token}")

    def apply_many(self, items: Sequence[ApplyItem], notify: tuple[str, str] | None = None,
                   now_us: int | None = None, recent: Sequence[RecentItem] = ()) -> bool:
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
        for _ in range(16):
            cur = self._get_offset(field)
            if cur is not None and compare_offsets(cur, item.offset) >= 0:
                return False
            if self._commit(self._recent_ops(item), [(field, cur, item.offset)]):
                return True
        raise ConflictError(f"recent events of {item.source!r}: too many concurrent writers of partition {item.partition}")

    @staticmethod
    def _recent_ops(item: RecentItem) -> Ops:
        ops = Ops()
        for key, (rows, n) in item.lists.items():
            data = [orjson.dumps(dict(r), default=str, option=orjson.OPT_NAIVE_UTC | orjson.OPT_SERIALIZE_NUMPY) for r in rows]
            if data:
                ops.lists[f"r:{item.source}:{key}"] = (data, n)
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
                log.warning("view %s: %d events older than the retention horizon were not applied online", state.name, dropped)
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

    # -- recent events (context service) -------------------------------------------------
    def append_recent(self, source: str, key: str, rows: Sequence[Mapping[str, Any]], max_len: int) -> None:
        items = [orjson.dumps(dict(r), default=str, option=orjson.OPT_NAIVE_UTC | orjson.OPT_SERIALIZE_NUMPY) for r in rows]
        if items:
            self._recent_append(f"r:{source}:{key}", items, max_len)

    def read_recent(self, source: str, key: str, n: int) -> list[dict[str, Any]]:
        """The last ``n`` events, oldest -> newest."""
        return [orjson.loads(b) for b in self._recent_read(f"r:{source}:{key}", n)]

    def _recent_append(self, key: str, items: list[bytes], max_len: int) -> None:
        raise NotImplementedError

    def _recent_read(self, key: str, n: int) -> list[bytes]:
        raise NotImplementedError
