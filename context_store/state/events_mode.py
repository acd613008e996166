"""Events mode of numbers-only aggregation views (docs/online-state.md, "Events mode").

Most entities have few events inside a view's retention (a user with ten purchases a week). For
those, ~36 tile and 4^L block partials (56 bytes each, plus raw edges) are ~10x the bytes of the
events themselves. An entity whose events in the retention encode (``events_codec``, ~9 bytes an
event with cents) to at most ``EVENTS_MAX_BYTES`` keeps only them, split into
``ViewState.ev_fields`` of <= 64 bytes each (so its hash stays a Redis listpack); a read computes
every window exactly from them. Past that size the entity converts to tiles once (its events
become the first tiles) and stays there (until its state expires).

Invariant: an entity of a view has events fields or tile state (``{vid}:m``), not both; stale tile
fields an entity may keep from before (a re-materialize that found few events) are deleted when it
converts back to tiles.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .aggregations import AggPlan
from .codec import join_row, split_row
from .columns import Columns
from .events_codec import decode_events, encode_events
from .ops import Ops
from .tiles import EVENTS_MAX_BYTES, ViewState

__all__ = ["Conversion", "EventLists", "bulk_events", "concat_common", "convert", "event_lists", "merge_events"]


def _encode_cols(cols: Columns, plan: AggPlan, a: int, b: int) -> bytes:
    return encode_events(
        cols.ts[a:b].tolist(), [(cols.valid[c][a:b].tolist(), cols.num[c][a:b].tolist()) for c in plan.columns]
    )


def bulk_events(
    state: ViewState, plan: AggPlan, cols: Columns, keys: list[str], starts: np.ndarray, ends: np.ndarray, ops: Ops
) -> None:
    """Materialization: entities (rows ``[starts[i], ends[i])`` of ``cols``, sorted by time) whose
    events fit are written as events instead of the tiles already in ``ops``; the others drop any
    events fields a previous state left."""
    ev = state.ev_fields
    for key, a, b in zip(keys, starts.tolist(), ends.tolist()):
        buf = _encode_cols(cols, plan, a, b)
        if len(buf) <= EVENTS_MAX_BYTES:
            pieces = split_row(buf, len(ev))
            ops.sets[key] = dict(zip(ev, pieces))
            ops.dels[key] = [*ev[len(pieces) :], state.M]
        else:
            ops.dels.setdefault(key, []).extend(ev)


@dataclass
class Conversion:
    """An events-mode entity whose events no longer fit: all of them, to become tiles."""

    key: str
    events: Columns


def concat_common(parts: list[Columns]) -> Columns:
    """``Columns.concat`` over the columns every part has (stored and new events carry different
    extras: decoded raw events also hold Python values of integer columns)."""
    if len(parts) == 1:
        return parts[0]
    common = [{k for k in getattr(parts[0], a) if all(k in getattr(p, a) for p in parts)} for a in ("valid", "num")]
    obj = {k for k in parts[0].obj if all(k in p.obj for p in parts)}
    return Columns(
        ts=np.concatenate([p.ts for p in parts]),
        valid={k: np.concatenate([p.valid[k] for p in parts]) for k in common[0]},
        num={k: np.concatenate([p.num[k] for p in parts]) for k in common[1]},
        obj={k: [x for p in parts for x in p.obj[k]] for k in obj},
    )


EventLists = tuple[list[int], list[tuple[list[bool], list[float]]]]  # ts, per plan column (valid, values)


def event_lists(cols: Columns, plan: AggPlan) -> EventLists:
    """``cols`` as Python lists (sliced per entity by the stream path: no numpy call per entity)."""
    return cols.ts.tolist(), [(cols.valid[c].tolist(), cols.num[c].tolist()) for c in plan.columns]


def merge_events(
    state: ViewState,
    plan: AggPlan,
    key: str,
    stored: list[bytes | None],
    tiled: bool,
    new: EventLists,
    horizon_us: int,
    ops: Ops,
) -> Conversion | bool | None:
    """A stream apply for one entity of an events-mode view: ``stored`` = its events fields as read,
    ``tiled`` = it has tile state, ``new`` = the batch's events of it. None: a tile entity (the
    caller writes tiles); True: written to ``ops`` as events; a Conversion: its stored events and
    the new ones no longer fit (the caller turns them into tiles)."""
    old = join_row(stored)
    if old is None and tiled:
        return None  # a tile entity: the tile writes stand
    ts, cols = new
    if old is not None:
        ots, ocols = decode_events(old, len(plan.columns))
        ts = ots + ts
        cols = [([bool(x) for x in ov] + v, ox + x) for (ov, ox), (v, x) in zip(ocols, cols)]
    keep = [i for i in sorted(range(len(ts)), key=ts.__getitem__) if ts[i] >= horizon_us]  # stable
    if keep != list(range(len(ts))):
        ts = [ts[i] for i in keep]
        cols = [([v[i] for i in keep], [x[i] for i in keep]) for v, x in cols]
    ev = state.ev_fields
    buf = encode_events(ts, cols) if ts else b""
    if len(buf) <= EVENTS_MAX_BYTES:
        ops.appends.pop(key, None)
        if buf:
            pieces = split_row(buf, len(ev))
            ops.sets[key] = dict(zip(ev, pieces))
            ops.dels[key] = [*ev[len(pieces) :], state.M]
        else:
            ops.sets.pop(key, None)
            ops.dels[key] = [*ev, state.M]
        return True
    if old is None:
        return None  # a new entity with a big first batch: tiles
    events = Columns(ts=np.array(ts, dtype=np.int64))
    for c, (v, x) in zip(plan.columns, cols):
        events.valid[c] = np.array(v, dtype=bool)
        events.num[c] = np.array(x, dtype=np.float64)
    return Conversion(key, events)


def convert(
    state: ViewState, conversions: list[Conversion], now_us: int, tiles_of: Callable[[list[Conversion]], Ops], ops: Ops
) -> None:
    """Events entities that outgrew events mode: their tile state from all their events (computed by
    ``tiles_of`` as for entities with no stored state), replacing their writes in ``ops``; their
    events fields and any stale tile fields inside the retention are deleted."""
    fresh = tiles_of(conversions)
    now_tile = now_us // state.g
    h = state.horizon(now_us)
    stale = [state.tile(i) for i in range(h, now_tile + 2)] + [state.raw(i) for i in range(h, now_tile + 2)]
    for lv in range(1, state.levels + 1):
        stale += [state.block(lv, j) for j in range(h >> (2 * lv), (now_tile >> (2 * lv)) + 2)]
    for c in conversions:
        # Raw edge tiles are set, not appended: a stale raw field must not be prepended to them.
        sets = {**fresh.sets.get(c.key, {}), **fresh.appends.get(c.key, {})}
        ops.sets[c.key] = sets
        ops.appends.pop(c.key, None)
        written = set(sets)
        ops.dels[c.key] = [*state.ev_fields, *(f for f in stale if f not in written)]
        ex_new, ex_old = fresh.expire.get(c.key), ops.expire.get(c.key)
        if ex_new is not None and ex_old is not None:
            ops.expire[c.key] = max(ex_new, ex_old)
