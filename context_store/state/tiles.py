"""Tile math and per-view state plans (what fields a read at time ``t`` needs, and how to
combine them into exact window values). The layout is documented in docs/online-state.md.

A feature view with aggregations keeps, per entity, tiles of ``g`` microseconds
(``aggregation_interval`` if set, else chosen so the longest window spans <= ~48 tiles):

- ``{vid}:{i}``  partial state of all events with ``i*g <= ts < (i+1)*g`` (AggPlan.encode)
- ``{vid}:{i}r`` (continuous mode only) the raw events of that tile, so the two edge tiles of
  a window can be cut exactly at ``t - W`` and ``t``
- ``{vid}:L``    lifetime base: i64 fold tile F, then the partial of every event before tile F
- ``{vid}:m``    i64: lowest tile index that may still exist (for folding/expiry)
- ``{vid}:v``    version of this entity's state, for views that several stream partitions write
  (keyed by other columns than the partition key): a write commits only if it is unchanged

A batch (row) view keeps ``{vid}`` (+ ``{vid}.1``, ... ``row_fields``): the latest row, split into
fields of <= 64 bytes (state/codec.py). Writes: state/writes.py.
"""

from __future__ import annotations

import hashlib
import json
import math
import operator
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from itertools import compress
from typing import Any

import numpy as np

from ..definitions import DType, FeatureView, StreamSource
from .aggregations import NUM_FUNCS, AggPlan, Partial
from .codec import LISTPACK_VALUE_MAX, ROW_FORMAT, join_row, row_chunk_count
from .events_codec import parse_events
from .raw_events import decode_raw, parse_raw_num, raw_num_block
from .tile_geometry import TILES_PER_WINDOW, US, choose_tile_us, decompose

__all__ = [
    "is_idle",
    "EVENT_FIELDS",
    "EVENTS_MAX_BYTES",
    "RETENTION_SLACK_US",
    "TILES_PER_WINDOW",
    "ViewState",
    "choose_tile_us",
    "decompose",
]

# Events mode (numbers-only views without Lifetime over int/float columns): an entity whose events in
# the retention encode to <= EVENT_FIELDS x 64 bytes (state/events_codec.py; one column: ~25 events
# with cents, ~16 arbitrary floats) keeps them in that many fields of <= 64 bytes (listpack-sized)
# instead of tiles and blocks; reads compute every window from them.
EVENT_FIELDS = 4
EVENTS_FORMAT = 2
EVENTS_MAX_BYTES = EVENT_FIELDS * LISTPACK_VALUE_MAX
# Extra history kept beyond the longest window, so requests a little in the past stay exact.
RETENTION_SLACK_US = 86_400 * US
_EMPTY_COL = [0.0, 0.0, math.inf, -math.inf, 0.0, 0.0]  # raw_num_block's block of a column without values


# -- per-view state plan ----------------------------------------------------------------


@dataclass(eq=False)  # hashed by identity: a layout cache key
class _ReadCtx:
    fields: list[str]
    n_blocks: int  # fields[:n_blocks] are partial blocks
    per_window: list[list[int]]  # per entry of ViewState.windows: indices of its blocks
    lo: int  # first tile covered by the lifetime read (tiles [lo, b))
    b: int  # tile containing t (exclusive end of full tiles)
    raw_tiles: list[int]
    pickers: list[Any] = field(default_factory=list)  # per window: blocks list -> tuple of its blocks


def _events_capable(view: FeatureView) -> bool:
    return all(a.function in NUM_FUNCS or a.function == "count" for a in view.aggregations) and all(
        a.window_td is not None for a in view.aggregations
    )


def is_idle(values: Sequence[bytes | None]) -> bool:
    """Of a Lifetime view's fetched fields, only the folded base (the last one) may be stored: the entity
    was idle longer than the retention, every finite window is empty (``ViewState._evaluate_idle``)."""
    return values[:-1].count(None) == len(values) - 1


class ViewState:
    """Everything about one feature view's online state: ids, tile size, fields, evaluation."""

    def __init__(self, view: FeatureView, input_types: dict[str, DType] | None = None) -> None:
        self.view = view
        self.name = view.name
        self.is_aggregate = view.is_aggregate
        spec = {
            "n": view.name,
            "a": [a.spec() for a in view.aggregations],
            "f": [f.spec() for f in view.features_in],
            "i": view.aggregation_interval.total_seconds() if view.aggregation_interval else None,
            "k": view.join_keys,
        }
        if not view.is_aggregate:
            spec["fmt"] = ROW_FORMAT
        elif _events_capable(view):
            spec["fmt"] = EVENTS_FORMAT
        self.vid = hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:8]
        self.V = f"{self.vid}:v"  # version, bumped by guarded writes (views written by several partitions)
        self.ttl_us = view.ttl // timedelta(microseconds=1) if view.ttl else None
        self.plan: AggPlan | None = None
        self.row_fields: list[str] = []
        if not self.is_aggregate:
            k = row_chunk_count([f.dtype for f in view.features_in])
            # The row's fields, in order (``codec.split_row``); the first holds the event timestamp.
            self.row_fields = [self.vid] + [f"{self.vid}.{i}" for i in range(1, k)]
            return
        self.plan = AggPlan(view, input_types or {})
        # Events mode: an entity with few events keeps them compactly in ``ev_fields`` instead of tiles.
        self.events_mode = (
            _events_capable(view)
            and not self.plan.slots
            and all(self.plan.types[c].name in ("float64", "int64") for c in self.plan.columns)
        )
        self.ev_fields = [f"{self.vid}:e"] + [f"{self.vid}:e{i}" for i in range(1, EVENT_FIELDS)]
        if not self.events_mode:
            self.ev_fields = []
        self.g = choose_tile_us(view)
        self.interval = view.aggregation_interval is not None
        lateness = view.source.allowed_lateness if isinstance(view.source, StreamSource) else timedelta(0)
        finite = [o.window_us for o in self.plan.outputs if o.window_us is not None]
        self.has_lifetime = any(o.window_us is None for o in self.plan.outputs)
        max_w = max(finite) if finite else 0
        self.max_tiles = math.ceil(max_w / self.g) + 1
        # Tiles older than now_tile - retention can no longer be reached by a request at >= now - slack.
        self.retention = (
            self.max_tiles + math.ceil((lateness // timedelta(microseconds=1) + RETENTION_SLACK_US) / self.g) + 1
        )
        # Levels of 4^L-tile blocks kept beside the tiles, so a long window reads O(log) fields.
        span = self.retention if self.has_lifetime else self.max_tiles
        self.levels = max(0, min(5, int(math.log(max(span, 1), 4) + 1e-9)))
        # Outputs grouped by window, longest first.
        by_w: dict[int | None, list[int]] = {}
        for i, o in enumerate(self.plan.outputs):
            by_w.setdefault(o.window_us, []).append(i)
        self.windows = sorted(by_w.items(), key=lambda kv: -(kv[0] if kv[0] is not None else 1 << 62))
        # The finite windows; all of ``windows`` (same order) on the numbers-only read paths.
        self._finite_windows = [(w, which) for w, which in self.windows if w is not None]
        # Per window: does any output need min/max/M2 (else reads merge only rows, n and sum)?
        self._spread = [
            any(self.plan.outputs[i].function not in ("count", "sum", "mean") for i in which)
            for _, which in self.windows
        ]
        # Per finite window: its outputs' finalizers (numbers-only read paths: no per-output dispatch).
        self._fins = [
            [(i, self.plan.num_finalizer(self.plan.outputs[i])) for i in which] for _, which in self._finite_windows
        ]
        # Per finite window: does an output read M2 (variance, stddev)? (events mode computes it only then)
        self._needs_m2 = [
            any(self.plan.outputs[i].function not in ("count", "sum", "mean", "min", "max") for i in which)
            for _, which in self._finite_windows
        ]
        self.L = f"{self.vid}:L"
        self.M = f"{self.vid}:m"
        self._cache: tuple[Any, _ReadCtx] | None = None
        self._empty_num: np.ndarray | None = None

    # field names
    def tile(self, i: int) -> str:
        return f"{self.vid}:{i}"

    def block(self, level: int, j: int) -> str:
        return f"{self.vid}:{j}" if level == 0 else f"{self.vid}:{level}:{j}"

    def block_prefix(self, level: int) -> str:
        """``block(level, j) == block_prefix(level) + str(j)`` (bulk writers build names by joins)."""
        return f"{self.vid}:" if level == 0 else f"{self.vid}:{level}:"

    def raw(self, i: int) -> str:
        return f"{self.vid}:{i}r"

    def horizon(self, now_us: int) -> int:
        """Tiles with index < horizon are folded into the lifetime base (or dropped)."""
        return now_us // self.g - self.retention

    def expire_ms(self, latest_ts_us: int, now_us: int) -> int | None:
        """How long an entity hash must live after a write of events up to ``latest_ts_us``."""
        if self.is_aggregate:
            if self.has_lifetime:
                return None
            end = latest_ts_us + (self.retention + 1) * self.g
        else:
            if self.ttl_us is None:
                return None
            end = latest_ts_us + self.ttl_us + RETENTION_SLACK_US
        return max((end - now_us) // 1000, 60_000)

    # -- reads ---------------------------------------------------------------------------
    def read_ctx(self, t: int) -> _ReadCtx:
        """Fields needed at time ``t`` (µs); cached while t stays in the same tile/edge set."""
        g = self.g
        b = t // g
        if self.interval:
            key: Any = b
        else:
            key = (b, tuple((t - w) // g for w, _ in self.windows if w is not None))
        c = self._cache
        if c is not None and c[0] == key:
            return c[1]
        lo = b - self.retention
        ranges = []
        for w, _ in self.windows:
            if w is None:
                ranges.append((lo, b))
            elif self.interval:
                ranges.append((b - w // g, b))
            else:
                ranges.append(((t - w) // g + 1, b))
        index: dict[tuple[int, int], int] = {}
        per_window: list[list[int]] = []
        for a, e in ranges:
            ids = []
            for blk in decompose(a, e, self.levels):
                if blk not in index:
                    index[blk] = len(index)
                ids.append(index[blk])
            per_window.append(ids)
        fields = [self.block(lv, j) for lv, j in index]
        n_blocks = len(fields)
        raw_tiles: list[int] = []
        if not self.interval:
            raw_tiles = sorted({(t - w) // g for w, _ in self.windows if w is not None} | {b})
            fields += [f"{self.vid}:{i}r" for i in raw_tiles]
        if self.has_lifetime:
            fields.append(self.L)
        fields += self.ev_fields  # last: events mode (numbers-only views, never with L)
        ctx = _ReadCtx(fields, n_blocks, per_window, lo, b, raw_tiles)
        ctx.pickers = [
            (lambda xs, _i=ids[0]: (xs[_i],))
            if len(ids) == 1
            else (operator.itemgetter(*ids) if ids else (lambda xs: ()))
            for ids in per_window
        ]
        self._cache = (key, ctx)
        return ctx

    def _evaluate_num(self, t: int, ctx: _ReadCtx, values: list[bytes | None]) -> list[Any]:
        """``evaluate`` for numbers-only views without Lifetime (the common case): blocks unpacked
        with one struct call each and merged as Python tuples (no numpy for a dozen tiny blocks)."""
        plan = self.plan
        assert plan is not None
        if self.ev_fields and values[-len(self.ev_fields)] is not None:
            return self.evaluate_events(t, values[-len(self.ev_fields) :])
        nb = ctx.n_blocks
        unpack = plan._struct.unpack
        blocks = [None if v is None else unpack(v) for v in values[:nb]]
        raws: dict[int, Any] = {}
        if ctx.raw_tiles:
            for j, ti in enumerate(ctx.raw_tiles):
                v = values[nb + j]
                if v is not None:
                    raws[ti] = parse_raw_num(v, plan)
        out: list[Any] = [None] * len(plan.outputs)
        g = self.g
        b = ctx.b
        cuts: dict[int | None, list[float]] = {}
        for (w, _), pick, spread, m2, fins in zip(
            self._finite_windows, ctx.pickers, self._spread, self._needs_m2, self._fins
        ):
            parts: Any = pick(blocks)
            if None in parts:
                parts = [x for x in parts if x is not None]
            if raws:
                s = t - w
                sb = s // g
                if sb < b and sb in raws:
                    parts = [*parts, raw_num_block(raws[sb], plan, s, t)]
                if b in raws:
                    lo = s if sb >= b else None
                    cut = cuts.get(lo)  # windows starting before tile b share this edge
                    if cut is None:
                        cut = cuts[lo] = raw_num_block(raws[b], plan, lo, t)
                    parts = [*parts, cut]
            mnum = (parts[0] if len(parts) == 1 else plan.merge_rows(parts, spread, m2)) if parts else plan.empty_list
            for i, fin in fins:
                out[i] = fin(mnum)
        return out

    def evaluate_events(self, t: int, ev: list[bytes | None]) -> list[Any]:
        """Every output at ``t`` from an events-mode entity's events (``ev_fields`` as read).

        The events are sorted by time, so a window's events are one slice (two bisections) and each
        window's block is ``raw_num_block``'s, with the same sums in the same order (identical floats);
        M2 only when an output of the window reads it."""
        plan = self.plan
        assert plan is not None
        buf = join_row(ev)
        ts, valid, vals = parse_events(buf or b"\x00", plan)
        hi = self.window_end(t)
        i1 = bisect_left(ts, hi)
        out: list[Any] = [None] * len(plan.outputs)
        cols = [(valid[c], vals[c]) for c in plan.num_cols]
        for (w, _), m2, fins in zip(self._finite_windows, self._needs_m2, self._fins):
            i0 = bisect_left(ts, hi - w, 0, i1)
            mnum = [float(i1 - i0)]
            for v, x in cols:
                sv = v[i0:i1]
                xs = x[i0:i1] if 0 not in sv else list(compress(x[i0:i1], sv))
                if not xs:
                    mnum += _EMPTY_COL
                    continue
                cnt = float(len(xs))
                sm = float(sum(xs))
                mean = sm / cnt
                mnum += [cnt, sm, float(min(xs)), float(max(xs)), mean]
                mnum.append(sum([(y - mean) * (y - mean) for y in xs]) if m2 else 0.0)
            for i, fin in fins:
                out[i] = fin(mnum)
        return out

    @property
    def numbers_only(self) -> bool:
        """No object slots and no Lifetime window: the tuple/numpy read paths apply."""
        return self.plan is not None and not self.plan.slots and not self.has_lifetime

    def evaluate_many(self, t: int, ctx: _ReadCtx, rows: list[list[bytes | None]]) -> list[list[Any]]:
        """``evaluate`` for many entities at once (a batch lookup, numbers-only views): all blocks
        decoded with one ``frombuffer`` and merged per window with numpy across entities; only the
        exact raw edges (continuous mode) and ``finalize`` run per entity."""
        plan = self.plan
        assert plan is not None and self.numbers_only
        nb, K, E = ctx.n_blocks, plan.K, len(rows)
        empty = plan.encode(plan.empty())
        arr = np.frombuffer(
            b"".join([v if v is not None else empty for r in rows for v in r[:nb]]), dtype="<f8"
        ).reshape(E, nb, K)
        out: list[list[Any]] = [[None] * len(plan.outputs) for _ in range(E)]
        parsed: list[dict[int, Any]] = [{} for _ in range(E)]
        for e, r in enumerate(rows):
            for j, ti in enumerate(ctx.raw_tiles):
                v = r[nb + j]
                if v is not None:
                    parsed[e][ti] = parse_raw_num(v, plan)
        g, b = self.g, ctx.b
        for (w, _), ids, spread, fins in zip(self._finite_windows, ctx.per_window, self._spread, self._fins):
            merged = _merge_axis1(arr[:, ids, :], plan, spread).tolist() if ids else [plan.empty_list] * E
            s = t - w
            sb = s // g
            for e in range(E):
                mnum = merged[e]
                raws = parsed[e]
                if raws:
                    parts = [mnum]
                    if sb < b and sb in raws:
                        parts.append(raw_num_block(raws[sb], plan, s, t))
                    if b in raws:
                        parts.append(raw_num_block(raws[b], plan, s if sb >= b else None, t))
                    mnum = plan.merge_rows(parts, spread)
                oe = out[e]
                for i, fin in fins:
                    oe[i] = fin(mnum)
        k = len(self.ev_fields)
        if k:
            for e, r in enumerate(rows):
                if r[-k] is not None:
                    out[e] = self.evaluate_events(t, r[-k:])
        return out

    def evaluate(
        self, t: int, ctx: _ReadCtx, values: list[bytes | None], extra: dict[int, bytes] | None = None
    ) -> list[Any]:
        """All outputs (in plan order) at ``t`` from the fetched ``values`` (aligned with ctx.fields)."""
        plan = self.plan
        assert plan is not None
        if not plan.slots and not self.has_lifetime:
            return self._evaluate_num(t, ctx, values)
        idle = self.has_lifetime and not plan.slots and not extra and not self.ev_fields
        if idle and is_idle(values):
            return self._evaluate_idle(values[-1])
        nb = ctx.n_blocks
        present = [i for i in range(nb) if values[i] is not None]
        pos = {i: k for k, i in enumerate(present)}
        if present:
            num, objs = plan.decode_many([values[i] for i in present])  # type: ignore[misc]
        else:
            num, objs = np.empty((0, plan.K)), None
        raws: dict[int, Any] = {}
        for j, ti in enumerate(ctx.raw_tiles):
            v = values[nb + j]
            if v is not None:
                raws[ti] = decode_raw(v, plan)
        base: Partial | None = None
        if self.has_lifetime and values[-1] is not None:
            base = plan.decode(values[-1][8:])
        out: list[Any] = [None] * len(plan.outputs)
        g = self.g
        numl: list[list[float]] | None = None
        mnum: np.ndarray | list[float]
        for (w, which), ids in zip(self.windows, ctx.per_window):
            rows = [pos[i] for i in ids if i in pos]
            edges: list[Partial] = []
            if not self.interval:
                s = None if w is None else t - w
                if s is not None and s // g < ctx.b:
                    cs = raws.get(s // g)
                    if cs is not None:
                        edges.append(plan.partial(cs.take(cs.ts >= s)))
                cb = raws.get(ctx.b)
                if cb is not None:
                    m = cb.ts < t if s is None or s // g < ctx.b else (cb.ts < t) & (cb.ts >= s)
                    edges.append(plan.partial(cb.take(m)))
            if w is None:
                if base is not None:
                    edges.append(base)
                for bts in (extra or {}).values():  # tiles between the fold point and the read range
                    edges.append(plan.decode(bts))
            if not rows and not edges:
                e = plan.empty()
                mnum, mobjs = e.num, e.objs
            elif objs is None and not edges and len(rows) <= 64:
                # Few blocks, numbers only: merging Python lists beats a dozen tiny numpy calls.
                if numl is None:
                    numl = num.tolist()
                mnum, mobjs = plan.merge_rows([numl[r] for r in rows]), []
            else:
                parts_num = num[rows] if len(rows) != 1 else num[rows[0]][None, :]
                parts_objs = [objs[r] for r in rows] if objs is not None else None
                if edges:
                    parts_num = np.vstack([parts_num] + [e.num[None, :] for e in edges])
                    if parts_objs is not None or plan.slots:
                        parts_objs = (parts_objs or []) + [e.objs for e in edges]
                mnum = plan.merge_num(parts_num)
                mobjs = plan.merge_objs(parts_objs) if parts_objs else [None] * len(plan.slots)
            for i in which:
                out[i] = plan.finalize(plan.outputs[i], mnum, mobjs)
        return out

    def _evaluate_idle(self, lifetime: bytes | None) -> list[Any]:
        """``evaluate`` of a numbers-only Lifetime view for an entity with no tile in the read range
        (idle for longer than the retention: most of a catalogue's items): every finite window is
        empty and the Lifetime window is the folded base alone -- the values the general path
        computes (its merge of one block returns that block), without its per-window numpy work."""
        plan = self.plan
        assert plan is not None
        base = plan.decode(lifetime[8:]).num if lifetime is not None else None
        empty = self._empty_num
        if empty is None:
            empty = self._empty_num = plan.empty().num  # read only (finalize never writes it)
        out: list[Any] = [None] * len(plan.outputs)
        for w, which in self.windows:
            num = base if w is None and base is not None else empty
            for i in which:
                out[i] = plan.finalize(plan.outputs[i], num, [])
        return out

    def window_end(self, t: int) -> int:
        return (t // self.g) * self.g if self.is_aggregate and self.interval else t


def _merge_axis1(a: np.ndarray, plan: AggPlan, spread: bool) -> np.ndarray:
    """Merge numeric blocks along axis 1 of ``a`` (shape (E, W, K)): one merged block per entity,
    the same formulas as ``AggPlan.merge_num`` (``spread=False``: rows, n, sum and mean only)."""
    E = a.shape[0]
    res = np.zeros((E, plan.K))
    res[:, 0] = a[:, :, 0].sum(axis=1)
    for i in range(len(plan.num_cols)):
        c = 1 + 6 * i
        n_i = a[:, :, c]
        n = n_i.sum(axis=1)
        sm = a[:, :, c + 1].sum(axis=1)
        mean = np.divide(sm, n, out=np.zeros(E), where=n > 0)
        res[:, c], res[:, c + 1], res[:, c + 4] = n, sm, mean
        if spread:
            d = a[:, :, c + 4] - mean[:, None]
            res[:, c + 2] = a[:, :, c + 2].min(axis=1)
            res[:, c + 3] = a[:, :, c + 3].max(axis=1)
            res[:, c + 5] = np.where(n > 0, a[:, :, c + 5].sum(axis=1) + (n_i * d * d).sum(axis=1), 0.0)
    return res
