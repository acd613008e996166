"""The two calls the stream makes into the online store, in one place.

- ``apply(store, view, rows, partition, offset)``: atomically merge ``rows`` (a view's input rows
  after its transform) into the view's online state (``OnlineStore.apply_events``, which uses
  ``state.aggregations`` like batch materialization) and, when ``offset`` is given, advance
  the applied offset of ``(view, partition)`` in the same commit; a replay whose offset is not
  above the recorded one changes nothing.
- ``apply_many(store, batches, notify, recent)``: a stream worker's whole step (several views and
  partitions, and recent-events appends) in one commit, CAS'd against the worker's fences;
  ``recent_item``, ``recent_applied`` and ``append_recent_once`` for those appends.
- ``applied_offset(store, view, partition) -> int``: that recorded offset (-1 when none).

Offsets are the stream ids encoded as ints (``redis_streams.id_to_offset``), passed as strings.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from ...definitions import FeatureView

__all__ = ["append_recent_once", "apply", "apply_many", "applied_offset", "recent_applied", "recent_item", "view_state"]

_lock = threading.Lock()


def view_state(store: Any, view: FeatureView) -> Any:
    """The compiled online state layout of ``view`` (cached on the store object)."""
    cache: dict[str, Any] | None = store.__dict__.get("_cs_stream_states")
    if cache is None:
        with _lock:
            cache = store.__dict__.setdefault("_cs_stream_states", {})
    st = cache.get(view.name)
    if st is None or st.view is not view:
        from ...state.tiles import ViewState

        st = cache[view.name] = ViewState(view, store.definitions.input_schemas.get(view.name, {}))
    return st


def apply(
    store: Any, view: FeatureView, rows: pa.Table, partition: int, offset: int | None, guard: bool = False
) -> int:
    token = (str(partition), str(offset)) if offset is not None else None
    return int(store.online.apply_events(view_state(store, view), rows, token=token, guard=guard) or 0)


def apply_many(
    store: Any,
    batches: list[tuple[FeatureView, pa.Table, list[tuple[int, int, int]], bool]],
    notify: tuple[str, str] | None = None,
    recent: Sequence[Any] = (),
) -> bool:
    """Several views' rows, each with [(partition, new offset, expected applied offset or -1)],
    and ``recent_item``s, in one atomic commit, then ``notify``; False (nothing written) when an
    offset moved."""
    from ...state.ops import ApplyItem

    items = [
        ApplyItem(view_state(store, view), rows, [(str(p), str(new), _expected(exp)) for p, new, exp in toks], guard)
        for view, rows, toks, guard in batches
    ]
    return bool(store.online.apply_many(items, notify=notify, recent=recent))


def recent_item(
    source: str, partition: int, offset: int, fence: int, lists: dict[str, tuple[list[dict[str, Any]], int]]
) -> Any:
    """Recent-events appends of one partition batch, advancing its recent fence to ``offset``."""
    from ...state.ops import RecentItem

    return RecentItem(source, str(partition), str(offset), _expected(fence), lists)


def recent_applied(store: Any, source: str, partition: int) -> int:
    """The offset up to which ``source``'s recent-events lists hold partition's events (-1: none)."""
    v = store.online.applied_offset(store.online.recent_fence(source), str(partition))
    return int(v) if v is not None else -1


def append_recent_once(store: Any, item: Any) -> bool:
    """``item``'s appends on their own (outside a round), unless already recorded."""
    return bool(store.online.append_recent_once(item))


def _expected(offset: int) -> str | None:
    return None if offset < 0 else str(offset)


def applied_offset(store: Any, view: FeatureView, partition: int) -> int:
    v = store.online.applied_offset(view.name, str(partition))
    return int(v) if v is not None else -1
