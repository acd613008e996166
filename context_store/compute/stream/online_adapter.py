"""The two calls the stream makes into the online store, in one place.

- ``apply(store, view, rows, partition, offset)``: atomically merge ``rows`` (a view's input rows
  after its transform) into the view's online state (``OnlineStore.apply_events``, which uses
  ``compute.aggregations`` like batch materialization) and, when ``offset`` is given, advance
  the applied offset of ``(view, partition)`` in the same commit; a replay whose offset is not
  above the recorded one changes nothing.
- ``apply_many(store, batches, notify)``: a stream worker's whole step (several views and
  partitions) in one commit, CAS'd against the worker's fences.
- ``applied_offset(store, view, partition) -> int``: that recorded offset (-1 when none).

Offsets are the stream ids encoded as ints (``redis_streams.id_to_offset``), passed as strings.
"""

from __future__ import annotations

import threading
from typing import Any

import pyarrow as pa

from ...definitions import FeatureView

__all__ = ["apply", "apply_many", "applied_offset", "view_state"]

_lock = threading.Lock()


def view_state(store: Any, view: FeatureView) -> Any:
    """The compiled online state layout of ``view`` (cached on the store object)."""
    cache: dict[str, Any] | None = store.__dict__.get("_cs_stream_states")
    if cache is None:
        with _lock:
            cache = store.__dict__.setdefault("_cs_stream_states", {})
    st = cache.get(view.name)
    if st is None or st.view is not view:
        from ..tiles import ViewState

        st = cache[view.name] = ViewState(view, store.definitions.input_schemas.get(view.name, {}))
    return st


def apply(store: Any, view: FeatureView, rows: pa.Table, partition: int, offset: int | None, guard: bool = False) -> int:
    token = (str(partition), str(offset)) if offset is not None else None
    return int(store.online.apply_events(view_state(store, view), rows, token=token, guard=guard) or 0)


def apply_many(store: Any, batches: list[tuple[FeatureView, pa.Table, list[tuple[int, int, int]], bool]],
               notify: tuple[str, str] | None = None, recent: Any = ()) -> bool:
    """Several views' rows, each with [(partition, new offset, expected applied offset or -1)],
    in one atomic commit, then ``notify``; False (nothing written) when an offset moved."""
    from ...stores.online.base import ApplyItem

    items = [
        ApplyItem(view_state(store, view), rows, [(str(p), str(new), None if exp < 0 else str(exp)) for p, new, exp in toks], guard)
        for view, rows, toks, guard in batches
    ]
    return bool(store.online.apply_many(items, notify=notify, recent=recent))


def applied_offset(store: Any, view: FeatureView, partition: int) -> int:
    v = store.online.applied_offset(view.name, str(partition))
    return int(v) if v is not None else -1
