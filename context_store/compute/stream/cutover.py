"""Streaming backfill hand-over: batch history covers ``ts < C``, the stream covers ``ts >= C``.

The cut-over ``C`` of a stream feature view is recorded by the batch backfill and read by every
pusher and worker, so the same event is never counted by both (no overlap) and every event is
counted by one of them (no gap):

- batch backfill of view V (a ``StreamSource`` view) -- the protocol ``compute.batch`` follows::

      c = choose_cutover(history_max_ts_us, end_us)   # C = end, else newest history event + 1us
      record_cutover(config, V.name, c)                 # FIRST: from now on the stream skips ts < C
      offline.overwrite_range("fv__V", transform(history with ts < C), ts, start_us, c)
      # then build online state from fv__V (batch rows < C plus stream rows >= C)

- stream (push and workers): events with ``ts < C`` of view V are not applied to V's online state
  nor appended to ``fv__V`` (the batch history owns that range); they are still appended to
  ``src__<source>`` and counted in ``STATS['before_cutover_events']`` -- never silently dropped.
- A view with no recorded cut-over (never backfilled) takes every stream event.

Stored as ``<workspace_dir>/stream/cutover.json`` (atomic rename), re-read when its mtime changes,
so a cut-over recorded by a backfill process is seen by running workers on their next batch.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...config import Config

__all__ = ["Cutover", "choose_cutover", "record_cutover", "get_cutover", "load_cutovers", "clear_cutover"]

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


def load_cutovers(config: Config) -> dict[str, Cutover]:
    path = _path(config)
    try:
        mtime = path.stat().st_mtime_ns
    except FileNotFoundError:
        return {}
    hit = _cache.get(path)
    if hit is not None and hit[0] == mtime:
        return hit[1]
    try:
        raw: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return hit[1] if hit else {}
    out = {
        v: Cutover(
            v,
            int(d["ts_us"]),
            int(d.get("recorded_at_us", 0)),
            {str(k): int(o) for k, o in (d.get("offsets") or {}).items()},
        )
        for v, d in raw.items()
    }
    _cache[path] = (mtime, out)
    return out


def get_cutover(config: Config, view: str) -> int | None:
    c = load_cutovers(config).get(view)
    return c.ts_us if c else None


def _write(config: Config, data: dict[str, Any]) -> None:
    path = _path(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


def record_cutover(
    config: Config, view: str, ts_us: int | None, offsets: dict[str, int] | None = None
) -> Cutover | None:
    """Record (or with ``ts_us=None`` remove) the cut-over of ``view``; returns it."""
    with _lock:
        path = _path(config)
        try:
            data: dict[str, Any] = json.loads(path.read_text())
        except (OSError, ValueError):
            data = {}
        if ts_us is None:
            data.pop(view, None)
            result = None
        else:
            now = int(time.time() * 1_000_000)
            data[view] = {"ts_us": int(ts_us), "recorded_at_us": now, "offsets": dict(offsets or {})}
            result = Cutover(view, int(ts_us), now, dict(offsets or {}))
        _write(config, data)
        _cache.pop(path, None)
        return result


def clear_cutover(config: Config, view: str) -> None:
    record_cutover(config, view, None)
