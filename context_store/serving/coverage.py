"""Truthful statuses on the read path: which views of a feature service the online state holds.

``Coverage`` caches the materialization markers (``state.markers``) of every online view and
refreshes them at most once per ``interval`` seconds (and whenever the definitions are reloaded,
since a ``FeatureServer`` is rebuilt then), so a request pays one clock read when every view is
materialized. Per compiled plan it derives a ``PlanCover``: reads to redirect to the state an
older ``vid`` left (a live apply added features: the old ones stay served), how to lay their
values out in the current order, and which outputs are ``NOT_MATERIALIZED`` (value null).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..definitions import FeatureView
from ..registry.repo import RepoDefinitions
from ..state.markers import Marker, legacy_state, read_marker
from ..state.tiles import ViewState
from ..stores.online.base import OnlineStore, ViewValues
from ..types import NOT_MATERIALIZED, FeatureMetadata, FeatureVector
from .feature_plans import Plan, ViewArg

__all__ = ["Coverage", "PlanCover", "ViewCover"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ViewCover:
    """One view: ``full`` (served as read), else the old ``state`` to read instead (None: nothing
    to read) and, per current feature position, its position in that state's values (or None)."""

    full: bool
    state: ViewState | None = None
    remap: tuple[int | None, ...] = ()


_FULL = ViewCover(True)
_NONE = ViewCover(False)


@dataclass
class PlanCover:
    """What a plan's reads need: substitute states, value layouts, and the outputs to mark."""

    subs: dict[int, ViewState] = field(default_factory=dict)  # read index -> state to read instead
    remap: dict[int, tuple[int | None, ...]] = field(default_factory=dict)
    nulls: frozenset[int] = frozenset()  # reads with nothing servable
    missing: tuple[int, ...] = ()  # spec indices served as NOT_MATERIALIZED

    def states(self, plan: Plan) -> list[ViewState]:
        return [self.subs.get(i, r.state) for i, r in enumerate(plan.reads)]

    def fix(self, plan: Plan, res: list[ViewValues]) -> list[ViewValues]:
        """Values of one entity (``len(plan.reads)`` reads) laid out as the current views'."""
        n = len(plan.reads)
        out = list(res)
        for j in range(len(out)):
            i = j % n
            if i in self.nulls:
                out[j] = ViewValues(None, None)
            else:
                m = self.remap.get(i)
                if m is not None and out[j].values is not None:
                    vv = out[j].values
                    assert vv is not None
                    out[j] = ViewValues([vv[p] if p is not None else None for p in m], out[j].effective_us)
        return out

    def mark(self, plan: Plan, fv: FeatureVector) -> None:
        for si in self.missing:
            sp = plan.specs[si]
            fv.feature_values[sp.name] = None
            fv.metadata[si] = FeatureMetadata(sp.name, sp.dtype, NOT_MATERIALIZED, None, sp.view)


class Coverage:
    """Markers of ``defs``' online views in ``online``, refreshed every ``interval`` seconds."""

    def __init__(
        self,
        defs: RepoDefinitions,
        online: OnlineStore,
        state_of: Callable[[FeatureView], ViewState],
        interval: float = 1.0,
    ) -> None:
        self.defs = defs
        self.online = online
        self.state_of = state_of
        self.interval = interval
        self._views = [v for v in defs.feature_views.values() if v.online]
        self._markers: dict[str, Marker | None] | None = None
        self._views_cover: dict[str, ViewCover] = {}
        self._plans: dict[str, PlanCover | None] = {}
        self._due = 0.0
        self._lock = threading.Lock()
        self.gaps = True  # some view is not fully covered (or not known yet)

    # -- markers -----------------------------------------------------------------------
    def refresh_if_due(self) -> None:
        if time.monotonic() >= self._due:
            self.refresh()

    def invalidate(self) -> None:
        """Re-read the markers at the next request (after a materialize in this process)."""
        self._due = 0.0

    def refresh(self) -> None:
        with self._lock:
            if self._due and time.monotonic() < self._due and self._markers is not None:
                return  # another thread just did
            self._due = time.monotonic() + self.interval
            try:
                markers = {v.name: read_marker(self.online, v.name) for v in self._views}
            except Exception as e:  # noqa: BLE001 - store unreachable: reads fail on their own
                log.debug("coverage refresh failed: %s", e)
                if self._markers is not None:
                    return
                markers = dict.fromkeys((v.name for v in self._views), None)  # unknown: never claim complete
            if markers == self._markers:
                return
            self._markers = markers
            self._views_cover = {v.name: self._view_cover(v, markers.get(v.name)) for v in self._views}
            self._plans = {}
            self.gaps = any(not c.full for c in self._views_cover.values())

    def _view_cover(self, view: FeatureView, m: Marker | None) -> ViewCover:
        st = self.state_of(view)
        if m is None:
            return _NONE
        if m.vid == st.vid:
            return _FULL
        old = legacy_state(view, m, self.defs.input_schemas.get(view.name, {}))
        if old is None:
            return _NONE
        names = old.view.feature_names
        return ViewCover(False, old, tuple(names.index(f) if f in names else None for f in view.feature_names))

    def missing_views(self, fresh: bool = False) -> list[str]:
        """Online views with no complete state at all (never materialized, or state lost).

        ``fresh``: re-read the markers now. A readiness probe must not answer from markers read before
        the store restarted empty (they are kept while it is unreachable)."""
        if fresh:
            self.invalidate()
        self.refresh_if_due()
        return sorted(n for n, c in self._views_cover.items() if not c.full and c.state is None)

    def pending_views(self) -> list[str]:
        """Online views some of whose features are not materialized."""
        self.refresh_if_due()
        return sorted(n for n, c in self._views_cover.items() if not c.full)

    # -- plans -------------------------------------------------------------------------
    def plan_cover(self, plan: Plan) -> PlanCover | None:
        """None when every read of ``plan`` is fully covered (the usual case)."""
        try:
            return self._plans[plan.name]
        except KeyError:
            pass
        pc = self._compile(plan)
        self._plans[plan.name] = pc
        return pc

    def _compile(self, plan: Plan) -> PlanCover | None:
        pc = PlanCover()
        nulls: set[int] = set()
        bad_pos: dict[int, set[int] | None] = {}  # read -> positions not served (None: all)
        for i, r in enumerate(plan.reads):
            c = self._views_cover.get(r.state.name, _NONE)
            if c.full:
                continue
            if c.state is None:
                nulls.add(i)
                bad_pos[i] = None
            else:
                pc.subs[i] = c.state
                pc.remap[i] = c.remap
                bad_pos[i] = {p for p, q in enumerate(c.remap) if q is None}
        if not bad_pos:
            return None
        pc.nulls = frozenset(nulls)

        def unserved(ri: int, pos: int) -> bool:
            if ri not in bad_pos:
                return False
            bad = bad_pos[ri]
            return bad is None or pos in bad

        missing = []
        for si, sp in enumerate(plan.specs):
            if sp.read >= 0:
                if unserved(sp.read, sp.pos):
                    missing.append(si)
            else:  # a realtime output: unserved when any feature it reads is
                _, args = plan.realtimes[sp.pos]
                if any(isinstance(a, ViewArg) and any(unserved(a.read, p) for p in a.positions) for a in args):
                    missing.append(si)
        pc.missing = tuple(missing)
        return pc
