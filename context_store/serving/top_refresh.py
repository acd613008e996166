"""Online ``cs.TopItems`` rankings, refreshed off the request path (stale-while-revalidate).

Ranking every item of a view by a live feature reads the whole catalogue's values (~9.7k items on
the MovieLens config: 90-220 ms, more under load); it used to run on the request that found the
ranking older than ``refresh_seconds``, once a minute per process. Now, per key (repo, item view,
feature):

- the first call of a process computes the ranking on the call (there is nothing to serve yet);
  concurrent first calls wait for that one computation, they do not repeat it;
- a call that finds it older than ``refresh_seconds`` gets the current list at once and starts one
  background refresh (a daemon thread); calls meanwhile get the current list too and start nothing;
  when the refresh finishes, the next calls get the new list. So a served ranking is at most
  ``refresh_seconds`` plus one refresh's duration old (measured from the start of its computation,
  which is also the time its values are read as of);
- a refresh that fails is logged and the current list is kept for another ``refresh_seconds``;
- ``refresh_seconds=0`` means no staleness: computed on every call, on the call (as before).

A stream push to the source does not by itself refresh the ranking (it would on every push): new
items and values enter at the next refresh.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from datetime import UTC, datetime

__all__ = ["online_ranking", "wait_refreshes", "clear"]

log = logging.getLogger(__name__)

_MAX_ENTRIES = 256  # keys are (repo, view, feature): a process holds a handful


@dataclass(slots=True)
class _Entry:
    at: float  # time.monotonic() when the computation of ``ids`` started
    ids: list[str]
    refreshing: threading.Thread | None = None


_ENTRIES: dict[Hashable, _Entry] = {}
_lock = threading.Lock()  # guards _ENTRIES; never held while computing
_first_lock = threading.Lock()  # serialises first computations (no stampede on a cold process)


def online_ranking(
    key: Hashable, ttl: float, compute: Callable[[datetime], list[str]], served_at: datetime
) -> list[str]:
    """The ranking for ``key`` (see the module doc). ``compute(at)`` ranks as of ``at``: the call's
    ``served_at`` when computed on the call, the refresh's start time in the background."""
    with _lock:
        e = _ENTRIES.get(key)
        if e is not None and ttl > 0:
            if e.refreshing is None and time.monotonic() - e.at > ttl:
                e.refreshing = threading.Thread(
                    target=_refresh, args=(key, compute), name="cs-top-items-refresh", daemon=True
                )
                e.refreshing.start()
            return e.ids
    if ttl <= 0:
        return _store(key, time.monotonic(), compute(served_at))
    with _first_lock:
        with _lock:
            e = _ENTRIES.get(key)
            if e is not None:  # another first call computed it while this one waited
                return e.ids
        return _store(key, time.monotonic(), compute(served_at))


def _store(key: Hashable, at: float, ids: list[str]) -> list[str]:
    with _lock:
        if key not in _ENTRIES and len(_ENTRIES) >= _MAX_ENTRIES:
            _ENTRIES.pop(min(_ENTRIES, key=lambda k: _ENTRIES[k].at), None)
        _ENTRIES[key] = _Entry(at, ids)
    return ids


def _refresh(key: Hashable, compute: Callable[[datetime], list[str]]) -> None:
    start = time.monotonic()
    try:
        ids = compute(datetime.now(UTC))
    except Exception:  # the request path must not see it: keep serving the current list
        log.warning("cs.TopItems refresh of %r failed; serving the previous ranking", key, exc_info=True)
        with _lock:
            e = _ENTRIES.get(key)
            if e is not None:
                e.at, e.refreshing = time.monotonic(), None  # retry after another refresh_seconds
        return
    with _lock:
        e = _ENTRIES.get(key)
        if e is not None and e.at <= start:  # not cleared nor recomputed meanwhile
            _ENTRIES[key] = _Entry(start, ids)


def wait_refreshes(timeout: float | None = None, scope: Hashable | None = None) -> bool:
    """Join the background refreshes running now (``scope``: only those of keys starting with it);
    False if one is still running after ``timeout``."""
    with _lock:
        running = [
            e.refreshing
            for k, e in _ENTRIES.items()
            if e.refreshing is not None and (scope is None or (isinstance(k, tuple) and k[:1] == (scope,)))
        ]
    deadline = None if timeout is None else time.monotonic() + timeout
    for t in running:
        t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
    return not any(t.is_alive() for t in running)


def clear() -> None:
    """Forget every ranking (tests; a running refresh's result is dropped)."""
    with _lock:
        _ENTRIES.clear()
