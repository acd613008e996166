"""Materialization markers: what a workspace's online state holds, per feature view.

A marker is a meta entry ``mat:{view}`` of the online store (docs/online-state.md, "Markers"):
the ``vid`` of the view whose state is complete there and the feature names it covers. It is
written by ``materialize`` once a view's state is loaded, and by ``apply`` for a view whose inputs
have no history at all (complete by construction: the stream fills it from its first event).
Serving treats a feature whose view has no marker, or a marker of another ``vid`` that does not
cover the feature, as ``NOT_MATERIALIZED``, never as a value. A reset online store (Redis
restarted empty, flushed) has lost its meta hash too, so its views read as not materialized.

After an ``apply`` that adds features to a live view (a new ``vid``), the features the marker
covers keep being served from the old state (``legacy_state``), which the stream keeps writing,
until the new state is backfilled and materialized.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..definitions import DType, FeatureView
    from .tiles import ViewState

__all__ = ["Marker", "decode_marker", "encode_marker", "legacy_state", "marker_key", "read_marker"]

_PREFIX = "mat:"
_WM_PREFIX = "wm:"  # materialize's watermark, older than markers: read as one (it names the vid)


@dataclass(frozen=True)
class Marker:
    """The online state of view ``view`` holds ``vid``'s ``features`` completely."""

    view: str
    vid: str
    features: tuple[str, ...]
    how: str = "materialize"  # materialize | apply (no history) | wm (watermark of an older release)
    at_us: int = 0


def marker_key(view: str) -> str:
    return _PREFIX + view


def encode_marker(state: ViewState, how: str) -> bytes:
    return json.dumps(
        {"vid": state.vid, "features": state.view.feature_names, "how": how, "at": time.time_ns() // 1000}
    ).encode()


def decode_marker(view: str, raw: bytes | None, wm: bytes | None = None) -> Marker | None:
    """The marker of ``view`` from its meta entry, or from its watermark ``wm`` (no feature list:
    it covers its ``vid`` only)."""
    for blob, how in ((raw, None), (wm, "wm")):
        if not blob:
            continue
        try:
            d: Any = json.loads(blob)
            vid = d["vid"]
        except (ValueError, TypeError, KeyError):
            continue  # unreadable: as if absent (never served as complete)
        if not isinstance(vid, str):
            continue
        feats = d.get("features") if how is None else None
        return Marker(
            view,
            vid,
            tuple(f for f in feats if isinstance(f, str)) if isinstance(feats, list) else (),
            how or str(d.get("how") or "materialize"),
            int(d.get("at") or 0),
        )
    return None


def read_marker(online: Any, view: str) -> Marker | None:
    """``view``'s marker in ``online`` (an OnlineStore); raises what the store raises."""
    raw = online.get_meta(marker_key(view))
    return decode_marker(view, raw, None if raw else online.get_meta(_WM_PREFIX + view))


def legacy_state(view: FeatureView, marker: Marker, input_types: dict[str, DType] | None = None) -> ViewState | None:
    """The state layout ``marker`` was written with, rebuilt from ``view`` restricted to the
    features the marker covers; None when that is not exactly ``marker.vid`` (a covered feature
    was changed or removed since: nothing of the old state can be served as it is)."""
    from .tiles import ViewState

    keep = set(marker.features)
    if not keep or not keep <= set(view.feature_names) or len(keep) == len(view.feature_names):
        return None
    old = copy.copy(view)
    if view.aggregations:
        old.aggregations = tuple(a for a in view.aggregations if a.output_name in keep)
    else:
        old.features_in = tuple(f for f in view.features_in if f.name in keep)
    st = ViewState(old, input_types)
    return st if st.vid == marker.vid else None
