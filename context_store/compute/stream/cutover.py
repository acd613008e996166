"""Streaming backfill hand-over: batch history covers ``ts < C``, the stream covers ``ts >= C``.

The cut-over ``C`` of a stream feature view is recorded by the batch backfill and read by every
pusher and worker, so the same event is never counted by both (no overlap) and every event is
counted by one of them (no gap):

- batch backfill of view V (a ``StreamSource`` view) -- the protocol ``compute.batch`` follows::

      c = choose_cutover(history_max_ts_us, end_us)   # C = end, else newest history event + 1us
      record_cutover(config, V.name, c, online=online)  # FIRST: from now on the stream skips ts < C
      offline.overwrite_range("fv__V", transform(history with ts < C), ts, start_us, c)
      # then build online state from fv__V (batch rows < C plus stream rows >= C)

- stream (push and workers): events with ``ts < C`` of view V are not applied to V's online state
  nor appended to ``fv__V`` (the batch history owns that range); they are still appended to
  ``src__<source>`` and counted in ``STATS['before_cutover_events']`` -- never silently dropped.
- A view with no recorded cut-over (never backfilled) takes every stream event.

Where ``C`` lives -- a place every process that pushes or applies events of the namespace sees:

- **Redis / Redis Cluster** (``config.is_redis``; API servers and workers on several hosts): the
  online store's shared map ``cutover`` (``cs:{ws}:map:cutover``, one hash, field = view, value =
  the JSON record; on a cluster in the ``{ws}`` slot, written through the commit path with ``WAIT``
  when configured, read from the master). A worker reads it once per batch (one ``HGETALL``), a push
  once per push, with no cache: a push that admitted a ``ts < C`` event on a stale copy would not
  double count (the worker that applies it re-reads ``C`` and skips it for V), but it would answer
  "accepted" for an event V never counts; one round trip per push is cheaper than that confusion.
- **Embedded SQLite** (one host): ``<workspace_dir>/stream/cutover.json`` (atomic rename), re-read
  when its mtime changes, so a cut-over recorded by a backfill process is seen by running workers
  on their next batch and by every push.

Upgrade from host-local files on Redis: a process that finds ``cutover.json`` copies its views into
the shared map when they are not there yet (``HSETNX``: a cut-over recorded since wins) and renames
the file ``cutover.json.migrated``. The copy happens before that process's first read or record
returns (an unreachable Redis fails the call: nothing is decided without the cut-overs), so an
upgrade does not double count. Processes of the earlier version still read only their own file:
upgrade every host before the next backfill of a stream view.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...config import Config
from ...stores.online import OnlineStore, open_online_store

__all__ = ["Cutover", "choose_cutover", "record_cutover", "get_cutover", "load_cutovers", "clear_cutover"]

log = logging.getLogger(__name__)

SHARED_MAP = "cutover"  # the online store's shared map holding the cut-overs (Redis deployments)
_lock = threading.Lock()
_cache: dict[Path, tuple[float, dict[str, Cutover]]] = {}


@dataclass(frozen=True)
class Cutover:
    view: str
    ts_us: int  # batch covers ts < ts_us; the stream covers ts >= ts_us
    recorded_at_us: int
    offsets: dict[str, int]  # stream offsets per partition when recorded (for audit)


def _path(config: Config) -> Path:
    return config.workspace_dir / "stream" / "cutover.json"


def choose_cutover(history_max_ts_us: int | None, end_us: int | None) -> int | None:
    """``end`` when the backfill was bounded, else just after the newest history event."""
    if end_us is not None:
        return int(end_us)
    if history_max_ts_us is None:
        return None
    return int(history_max_ts_us) + 1


def _decode(view: str, d: dict[str, Any]) -> Cutover:
    offsets = {str(k): int(o) for k, o in (d.get("offsets") or {}).items()}
    return Cutover(view, int(d["ts_us"]), int(d.get("recorded_at_us", 0)), offsets)


def load_cutovers(config: Config, online: OnlineStore | None = None) -> dict[str, Cutover]:
    """Every recorded cut-over (view -> ``Cutover``). ``online``: the process's open online store
    (on Redis one ``HGETALL`` on it; without it one is opened and closed for this call)."""
    if not config.is_redis:
        return _load_file(config)
    with _shared(config, online) as store:
        _migrate(config, store)
        raw = store.get_shared_map(SHARED_MAP)
    key = (config.online_store, config.workspace)
    hit = _decoded.get(key)
    if hit is not None and hit[0] == raw:
        return hit[1]
    out = {v: _decode(v, json.loads(b)) for v, b in raw.items()}
    _decoded[key] = (raw, out)
    return out


def get_cutover(config: Config, view: str, online: OnlineStore | None = None) -> int | None:
    c = load_cutovers(config, online).get(view)
    return c.ts_us if c else None


def record_cutover(
    config: Config,
    view: str,
    ts_us: int | None,
    offsets: dict[str, int] | None = None,
    online: OnlineStore | None = None,
) -> Cutover | None:
    """Record (or with ``ts_us=None`` remove) the cut-over of ``view``; returns it. Durable when it
    returns: every pusher and worker of the namespace (any host) skips ``ts < C`` of ``view`` from
    its next push / batch on."""
    now = int(time.time() * 1_000_000)
    result = None if ts_us is None else Cutover(view, int(ts_us), now, dict(offsets or {}))
    entry = None if result is None else {"ts_us": result.ts_us, "recorded_at_us": now, "offsets": result.offsets}
    if config.is_redis:
        with _shared(config, online) as store:
            _migrate(config, store)  # first: an old file's entry must not come back over this one
            store.set_shared_field(SHARED_MAP, view, None if entry is None else json.dumps(entry).encode())
        return result
    with _lock:
        path = _path(config)
        data = _read_file(path) or {}
        if entry is None:
            data.pop(view, None)
        else:
            data[view] = entry
        _write(config, data)
        _cache.pop(path, None)
    return result


def clear_cutover(config: Config, view: str, online: OnlineStore | None = None) -> None:
    record_cutover(config, view, None, online=online)


# -- Redis: the online store's shared map ------------------------------------------------------
_decoded: dict[tuple[str, str], tuple[dict[str, bytes], dict[str, Cutover]]] = {}


@contextmanager
def _shared(config: Config, online: OnlineStore | None) -> Iterator[OnlineStore]:
    if online is not None:
        yield online
        return
    store = open_online_store(config)  # a backfill or a one-off read: no open store to borrow
    try:
        yield store
    finally:
        store.close()


def _migrate(config: Config, online: OnlineStore) -> None:
    """A host-local ``cutover.json`` of an earlier version: its views into the shared map (unless
    recorded there already), then the file is renamed. One ``stat`` when there is none."""
    path = _path(config)
    if not path.exists():
        return
    with _lock:
        data = _read_file(path)
        if data is None:  # gone (another process of this host migrated it) or unreadable
            return
        for view, entry in data.items():
            if not online.set_shared_field(SHARED_MAP, view, json.dumps(entry).encode(), if_absent=True):
                log.info("cut-over of %s from %s: the shared one (recorded since) stands", view, path)
        try:
            os.replace(path, path.with_name(path.name + ".migrated"))
        except FileNotFoundError:
            pass
        log.info("cut-overs of %d views moved from %s into the online store (%s)", len(data), path, online.location)


# -- embedded: the workspace's file ------------------------------------------------------------
def _read_file(path: Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data


def _load_file(config: Config) -> dict[str, Cutover]:
    path = _path(config)
    try:
        mtime = path.stat().st_mtime_ns
    except FileNotFoundError:
        return {}
    hit = _cache.get(path)
    if hit is not None and hit[0] == mtime:
        return hit[1]
    raw = _read_file(path)
    if raw is None:
        return hit[1] if hit else {}
    out = {v: _decode(v, d) for v, d in raw.items()}
    _cache[path] = (mtime, out)
    return out


def _write(config: Config, data: dict[str, Any]) -> None:
    path = _path(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)
