"""The two calls the stream makes into the online store, in one place.

- ``apply(online, states, view, rows, partition, offset)``: atomically merge ``rows`` (a view's
  input rows after its transform) into the view's online state (``OnlineStore.apply_events``,
  which uses ``state.aggregations`` like batch materialization) and, when ``offset`` is given,
  advance the applied offset of ``(view, partition)`` in the same commit; a replay whose offset is
  not above the recorded one changes nothing.
- ``apply_many(online, states, batches, notify, recent)``: a stream worker's whole step (several
  views and partitions, and recent-events appends) in one commit, CAS'd against the worker's
  fences; ``recent_item``, ``recent_applied`` and ``append_recent_once`` for those appends.
- ``applied_offset(online, view, partition) -> int``: that recorded offset (-1 when none).
- ``ViewStates``: the compiled online state layout of each view (``view_state``), cached.

Offsets are the stream ids encoded as ints (``redis_streams.id_to_offset``), passed as strings.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from ...definitions import FeatureView

if TYPE_CHECKING:
    from ...registry.repo import RepoDefinitions
    from ...state.ops import RecentItem
    from ...state.tiles import ViewState
    from ...stores.online.base import OnlineStore

__all__ = [
    "ViewStates",
    "append_recent_once",
    "apply",
    "apply_many",
    "applied_offset",
    "inflight_offset",
    "recent_inflight",
    "recent_applied",
    "recent_item",
    "view_state",
]


class ViewStates:
    """Compiled online state layouts of the views of ``definitions``, built on first use.

    With ``online``, also the old layout of a view whose features a live ``apply`` extended
    (``state.markers.legacy_state``): the stream keeps writing it, so the features it covers stay
    served, right, until the new layout is materialized (then the marker names the new vid)."""

    LEGACY_TTL = 2.0  # seconds between re-reads of a view's marker

    def __init__(self, definitions: RepoDefinitions, online: OnlineStore | None = None) -> None:
        self.definitions = definitions
        self.online = online
        self._cache: dict[str, ViewState] = {}
        self._legacy: dict[str, tuple[float, ViewState | None]] = {}
        self._lock = threading.Lock()

    def legacy(self, view: FeatureView) -> ViewState | None:
        """The older layout serving still reads for ``view``'s old features, if any."""
        if self.online is None or not view.online:
            return None
        now = time.monotonic()
        hit = self._legacy.get(view.name)
        if hit is not None and hit[0] > now:
            return hit[1]
        from ...state.markers import legacy_state, read_marker

        try:
            m = read_marker(self.online, view.name)
        except Exception:  # noqa: BLE001 - the store is down: the apply itself fails and is retried
            m = None
        old = None
        if m is not None and m.vid != self.get(view).vid:
            old = legacy_state(view, m, self.definitions.input_schemas.get(view.name, {}))
        self._legacy[view.name] = (now + self.LEGACY_TTL, old)
        return old

    def get(self, view: FeatureView) -> ViewState:
        st = self._cache.get(view.name)
        if st is None or st.view is not view:
            from ...state.tiles import ViewState

            with self._lock:
                st = self._cache[view.name] = ViewState(view, self.definitions.input_schemas.get(view.name, {}))
        return st


def view_state(states: ViewStates, view: FeatureView) -> ViewState:
    """The compiled online state layout of ``view``."""
    return states.get(view)


def apply(
    online: OnlineStore,
    states: ViewStates,
    view: FeatureView,
    rows: pa.Table,
    partition: int,
    offset: int | None,
    guard: bool = False,
) -> int:
    token = (str(partition), str(offset)) if offset is not None else None
    n = int(online.apply_events(states.get(view), rows, token=token, guard=guard) or 0)
    old = states.legacy(view)
    if old is not None and (n or token is None):  # not a replay: the old layout gets the same rows
        online.apply_events(old, rows, guard=guard)
    return n


def apply_many(
    online: OnlineStore,
    states: ViewStates,
    batches: list[tuple[FeatureView, pa.Table, list[tuple[int, int, int]], bool]],
    notify: tuple[str, str] | None = None,
    recent: Sequence[RecentItem] = (),
) -> bool:
    """Several views' rows, each with [(partition, new offset, expected applied offset or -1)],
    and ``recent_item``s, in one atomic commit, then ``notify``; False (nothing written) when an
    offset moved."""
    from ...state.ops import ApplyItem

    items = [
        ApplyItem(states.get(view), rows, [(str(p), str(new), _expected(exp)) for p, new, exp in toks], guard)
        for view, rows, toks, guard in batches
    ]
    # Old layouts of live-extended views: in the same commit, fenced by the view's own offsets.
    items += [
        ApplyItem(old, rows, [], guard) for view, rows, _, guard in batches if (old := states.legacy(view)) is not None
    ]
    return bool(online.apply_many(items, notify=notify, recent=recent))


def recent_item(
    source: str, partition: int, offset: int, fence: int, lists: dict[str, tuple[list[dict[str, Any]], int]]
) -> RecentItem:
    """Recent-events appends of one partition batch, advancing its recent fence to ``offset``."""
    from ...state.ops import RecentItem

    return RecentItem(source, str(partition), str(offset), _expected(fence), lists)


def recent_applied(online: OnlineStore, source: str, partition: int) -> int:
    """The offset up to which ``source``'s recent-events lists hold partition's events (-1: none)."""
    v = online.applied_offset(online.recent_fence(source), str(partition))
    return int(v) if v is not None else -1


def append_recent_once(online: OnlineStore, item: RecentItem) -> bool:
    """``item``'s appends on their own (outside a round), unless already recorded."""
    return bool(online.append_recent_once(item))


def _expected(offset: int) -> str | None:
    return None if offset < 0 else str(offset)


def inflight_offset(online: OnlineStore, view: FeatureView, partition: int) -> int:
    """The offset a cut-short commit of (view, partition) was applying (-1: none; a Redis Cluster
    commits shard by shard, so a replay must end a batch exactly there)."""
    v = online.inflight_offset(view.name, str(partition))
    return int(v) if v is not None else -1


def recent_inflight(online: OnlineStore, source: str, partition: int) -> int:
    """``inflight_offset`` of ``source``'s recent-events appends."""
    v = online.inflight_offset(online.recent_fence(source), str(partition))
    return int(v) if v is not None else -1


def applied_offset(online: OnlineStore, view: FeatureView, partition: int) -> int:
    v = online.applied_offset(view.name, str(partition))
    return int(v) if v is not None else -1
