"""The online store protocol and the state logic shared by every backend.

Backends (sqlite.py, redis.py) implement a handful of hash primitives (``_hmget``,
``_commit``, ...); everything about rows, tiles and folding lives here once: the read path
in this module, the write path (stream applies, a worker round's commit) in ``_writes.py``;
the layout itself, the write vocabulary (``Ops``, ``ApplyItem``, ...) and the write builder
are in ``context_store.state``. Layout and API:
docs/online-state.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np
import orjson
import pyarrow as pa

from ...state.codec import RowCodec, join_row
from ...state.idle_batch import evaluate_idle_many, idle_batchable, is_idle
from ...state.ops import ApplyItem, Ops, RecentItem, encode_recent, recent_key
from ...state.tiles import ViewState
from ...state.writes import RowChunk
from ._writes import WritePath

__all__ = ["BaseOnlineStore", "EntityErased", "OnlineStore", "ViewValues"]

_I64 = np.dtype("<i8")


class ViewValues(NamedTuple):
    """One view's values for one entity: ``values`` in the view's feature order (None when the
    entity has no row / the row is older than ttl), and the effective time (µs)."""

    values: list[Any] | None
    effective_us: int | None


_UNSET = ViewValues(None, None)  # placeholder of a batched cell (``_entities_eval``)


class EntityErased(NamedTuple):
    """What ``forget_entity`` removed: entity hashes (every view's state of those keys) and
    recent-events lists."""

    entities: int
    recent_lists: int


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

    async def read_entities_async(
        self, states: Sequence[ViewState], keys: Sequence[str], t_us: int
    ) -> list[list[ViewValues]]: ...

    def write_ops(self, ops: Ops, wait: bool = True) -> None:
        """Bulk writes (materialization): pipelined, not atomic across keys. ``wait=False`` may
        return before the writes are done (call ``flush()``)."""
        ...

    def write_rows(self, chunk: RowChunk, wait: bool = True) -> None:
        """Bulk rows of a row view (materialize): the writes of ``chunk.ops()``, as ``write_ops``."""
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

    def apply_many(
        self,
        items: Sequence[ApplyItem],
        notify: tuple[str, str] | None = None,
        now_us: int | None = None,
        recent: Sequence[RecentItem] = (),
    ) -> bool:
        """Several views and partitions in one atomic commit if every expected offset holds."""
        ...

    def append_recent_once(self, item: RecentItem) -> bool:
        """Recent-events appends of one partition batch, fenced by its offset (replays skip)."""
        ...

    def applied_offset(self, view: str | ViewState, partition: str) -> str | None: ...

    def inflight_offset(self, view: str | ViewState, partition: str) -> str | None:
        """The offset a commit of (view, partition) was applying when it was cut short, if it may
        have reached part of the state (a Redis Cluster commits shard by shard); None otherwise.
        A replay must re-apply exactly the entries up to it as one batch (see worker.acquire)."""
        ...

    def recent_fence(self, source: str) -> str:
        """The name under which ``source``'s recent-events appends record applied offsets."""
        ...

    def delete(self, state: ViewState, keys: Sequence[str]) -> None: ...

    def forget_entity(self, join_key: str, value: str) -> EntityErased:
        """Remove every entity hash whose key names ``join_key=value`` (all views, also
        composite keys holding it) and every recent-events list of such a key (right to erasure)."""
        ...

    def append_recent(self, source: str, key: str, rows: Sequence[Mapping[str, Any]], max_len: int) -> None: ...

    def read_recent(self, source: str, key: str, n: int) -> list[dict[str, Any]]: ...

    def remove_recent(self, source: str, key: str, field: str, value: str) -> int: ...

    def get_meta(self, name: str) -> bytes | None: ...

    def set_meta(self, name: str, value: bytes) -> None: ...

    def claim_meta(self, name: str, value: bytes) -> bytes:
        """Set ``name`` to ``value`` only if unset (atomically); the value it holds now (ours or the earlier one)."""
        ...

    def get_shared_map(self, name: str) -> dict[str, bytes]:
        """Every field of the small shared map ``name`` (one round trip, from the primary: never stale).
        Shared by every host of the namespace (the streaming backfill's cut-overs, ``compute.stream.cutover``)."""
        ...

    def set_shared_field(self, name: str, field: str, value: bytes | None, if_absent: bool = False) -> bool:
        """Set (``None``: remove) ``field`` of the shared map ``name``; with ``if_absent`` only when unset.
        True when written. Durable like a commit (on a cluster: after ``WAIT`` when configured)."""
        ...

    @property
    def location(self) -> str:
        """Where the namespace lives, for messages: the Redis URL (password masked) or the SQLite file."""
        ...

    def claim_ids(self, scope: str, ids: Sequence[str], value: bytes, ttl_ms: int) -> list[bytes | None]:
        """Record each of ``ids`` under ``scope`` with ``value`` for ``ttl_ms``, unless already
        recorded (and not expired): per id None when this call recorded it, else the value recorded
        first. Atomic (idempotent ingest: event ids and Idempotency-Keys of embedded pushes)."""
        ...

    def ping(self) -> bool: ...

    def clear(self) -> None: ...

    def close(self) -> None: ...


class BaseOnlineStore(WritePath):
    """Shared logic. Subclasses implement the ``_``-prefixed primitives."""

    workspace: str
    backend: str = "?"

    # -- primitives (backend) -----------------------------------------------------------
    def _hmget(self, reqs: list[tuple[str, list[str]]]) -> list[list[bytes | None]]:
        raise NotImplementedError

    async def _ahmget(self, reqs: list[tuple[str, list[str]]]) -> list[list[bytes | None]]:
        return self._hmget(reqs)

    def _commit(
        self, ops: Ops, cas: Sequence[tuple[str, str | None, str]] = (), notify: tuple[str, str] | None = None
    ) -> bool:
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
                fl.extend(st.row_fields)
                slots.append((ri, start, len(st.row_fields), None))
        if single:
            if len(self._layout_cache) > 512:
                self._layout_cache.clear()
            self._layout_cache[sig] = (reqs[0][1], slots)
        return reqs, slots

    def _lifetime_extra(
        self, reads: Sequence[tuple[ViewState, str]], slots: list[Any], got: list[list[Any]]
    ) -> list[tuple[int, str, list[int]]]:
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

    def _evaluate(
        self,
        reads: Sequence[tuple[ViewState, str]],
        slots: list[Any],
        got: list[list[Any]],
        t: int,
        extra: dict[int, dict[int, bytes]],
    ) -> list[ViewValues]:
        res: list[ViewValues] = []
        for i, ((st, _), (ri, start, n, ctx)) in enumerate(zip(reads, slots)):
            vals = got[ri]
            if ctx is None:
                buf = vals[start] if n == 1 else join_row(vals[start : start + n])
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

    def _extra(
        self, reads: Sequence[tuple[ViewState, str]], more: list[tuple[int, str, list[int]]], rows: list[list[Any]]
    ) -> dict[int, dict[int, bytes]]:
        return {i: {x: v for x, v in zip(tiles, vals) if v is not None} for (i, _, tiles), vals in zip(more, rows)}

    def read_features(self, reads: Sequence[tuple[ViewState, str]], t_us: int) -> list[ViewValues]:
        if not reads:
            return []
        reqs, slots = self._layout(reads, t_us)
        got = self._hmget(reqs)
        more = self._lifetime_extra(reads, slots, got)
        extra: dict[int, dict[int, bytes]] = {}
        if more:  # rare second round trip
            extra = self._extra(
                reads, more, self._hmget([(key, [reads[i][0].tile(x) for x in tiles]) for i, key, tiles in more])
            )
        return self._evaluate(reads, slots, got, t_us, extra)

    def _entities_plan(self, states: Sequence[ViewState], keys: Sequence[str], t: int) -> tuple[list[str], list[Any]]:
        reqs0, slots = self._layout([(st, keys[0]) for st in states], t)
        return reqs0[0][1], slots

    def _entities_eval(
        self, states: Sequence[ViewState], keys: Sequence[str], slots: list[Any], got: list[list[Any]], t: int
    ) -> tuple[list[list[ViewValues]], list[tuple[int, list[tuple[ViewState, str]], list[Any]]]]:
        out: list[list[ViewValues]] = []
        pending: list[tuple[int, list[tuple[ViewState, str]], list[Any]]] = []
        lifetime = any(st.is_aggregate and st.has_lifetime for st in states)
        if not lifetime:  # hoisted per batch: codecs, window ends, slot offsets
            plan = [
                (st, start, start + n, ctx, None if ctx is not None else self._codec(st), st.window_end(t))
                for st, (_, start, n, ctx) in zip(states, slots)
            ]
            many = {
                j: st.evaluate_many(t, ctx, [vals[a:e] for vals in got])
                for j, (st, a, e, ctx, _, _) in enumerate(plan)
                if ctx is not None and st.numbers_only and len(got) > 4
            }
            for x, vals in enumerate(got):
                row: list[ViewValues] = []
                for j, (st, a, e, ctx, codec, we) in enumerate(plan):
                    if codec is None:  # an aggregate view (codec is None exactly when ctx is set)
                        m = many.get(j)
                        row.append(ViewValues(m[x] if m is not None else st.evaluate(t, ctx, vals[a:e]), we))
                        continue
                    buf = vals[a] if e - a == 1 else join_row(vals[a:e])
                    if buf is None:
                        row.append(ViewValues(None, None))
                        continue
                    ts, r = codec.decode(buf)
                    row.append(
                        ViewValues(None, ts)
                        if ts > t or (st.ttl_us is not None and t - ts > st.ttl_us)
                        else ViewValues(r, ts)
                    )
                out.append(row)
            return out, pending
        # Lifetime views: an entity whose folded base lags the read range needs a second round trip
        # (``pending``); of the others, the idle ones (only the base stored: most of a catalogue read
        # by a re-rank) are evaluated per view in one batch, the rest one by one as in ``read_features``.
        lag = [False] * len(got)
        for st, (_, start, n, ctx) in zip(states, slots):
            if ctx is not None and st.has_lifetime:
                li, lo = start + n - 1, ctx.lo
                for e, vals in enumerate(got):
                    lv = vals[li]
                    if lv is not None and int.from_bytes(lv[:8], "little", signed=True) < lo:
                        lag[e] = True
        # per state: (its read slot, first field, index of its Lifetime base or -1 when not batched)
        lay = [
            (slot, slot[1], slot[1] + slot[2] - 1 if slot[3] is not None and idle_batchable(st) else -1)
            for st, slot in zip(states, slots)
        ]
        idle: list[list[int]] = [[] for _ in states]  # per state: the entities for evaluate_idle_many
        for e, (k, vals) in enumerate(zip(keys, got)):
            if lag[e]:
                reads = [(st, k) for st in states]
                pending.append((e, reads, self._lifetime_extra(reads, slots, [vals])))
                out.append([])
                continue
            cells: list[ViewValues] = []
            for j, (slot, a, li) in enumerate(lay):
                if li >= 0 and is_idle(vals[a : li + 1]):
                    idle[j].append(e)
                    cells.append(_UNSET)  # filled below
                else:
                    cells.append(self._evaluate([(states[j], k)], [slot], [vals], t, {})[0])
            out.append(cells)
        for j, st in enumerate(states):
            if idle[j]:
                li, we = lay[j][2], st.window_end(t)
                for e, v in zip(idle[j], evaluate_idle_many(st, [got[e][li] for e in idle[j]])):
                    out[e][j] = ViewValues(v, we)
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
            extra = self._extra(
                reads, more, self._hmget([(key, [reads[i][0].tile(x) for x in tiles]) for i, key, tiles in more])
            )
            out[e] = self._evaluate(reads, slots, [got[e]], t_us, extra)
        return out

    async def read_entities_async(
        self, states: Sequence[ViewState], keys: Sequence[str], t_us: int
    ) -> list[list[ViewValues]]:
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
            extra = self._extra(
                reads, more, await self._ahmget([(key, [reads[i][0].tile(x) for x in tiles]) for i, key, tiles in more])
            )
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

    # -- recent events (context service) -------------------------------------------------
    def append_recent(self, source: str, key: str, rows: Sequence[Mapping[str, Any]], max_len: int) -> None:
        items = encode_recent(rows)
        if items:
            self._recent_append(recent_key(source, key), items, max_len)

    def read_recent(self, source: str, key: str, n: int) -> list[dict[str, Any]]:
        """The last ``n`` events, oldest -> newest."""
        return [orjson.loads(b) for b in self._recent_read(recent_key(source, key), n)]

    def remove_recent(self, source: str, key: str, field: str, value: str) -> int:
        """Remove the items of an entity's recent list whose ``field`` equals ``value`` (forget one memory)."""
        full = recent_key(source, key)
        items = [b for b in self._recent_read(full, 1 << 30) if str(orjson.loads(b).get(field)) == value]
        return self._recent_remove(full, items) if items else 0

    def _recent_remove(self, key: str, items: list[bytes]) -> int:
        raise NotImplementedError

    def _recent_append(self, key: str, items: list[bytes], max_len: int) -> None:
        raise NotImplementedError

    def _recent_read(self, key: str, n: int) -> list[bytes]:
        raise NotImplementedError
