"""The newest event time applied online per view: what view freshness is measured from.

Written on the write path, read by any process (``serving/view_status.py``):

- Redis: hash ``cs:{ws}:stream:applied_at``, field ``<view>|<partition>`` -> µs: the owning worker's
  event-time watermark of that partition when it committed the round that applied the view's rows
  (the watermark is the newest event time the worker processed: what the view reflects). One
  owner per partition at a time, so a plain HSET per field never goes backwards across writers.
  ``AppliedTimes`` batches them: one HSET per worker at most every ``interval`` seconds (and
  right after a commit that follows an idle spell), so the hot path pays one small round trip a
  tenth of a second at most, not one per round.
- Embedded (SQLite): online meta ``applied:<view>`` -> µs, written in the push's own transaction.

Lag in seconds of a partition: the age of its oldest stream entry no worker has read yet (Redis
stream ids are the append time in ms), 0 when every entry was delivered.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .processor import SourcePlan
    from .redis_streams import RedisStreamLog

__all__ = [
    "AppliedTimes",
    "applied_at_key",
    "embedded_meta_name",
    "note_embedded_applied",
    "read_applied",
    "read_embedded_applied",
    "undelivered_age_s",
]

_META = "applied:"


def applied_at_key(workspace: str) -> str:
    return f"cs:{workspace}:stream:applied_at"


def embedded_meta_name(view: str) -> str:
    return _META + view


class AppliedTimes:
    """A worker's newest applied event time per (view, partition), written to Redis in batches."""

    def __init__(self, log_: RedisStreamLog, interval: float = 0.1) -> None:
        self.log = log_
        self.key = applied_at_key(log_.workspace)
        self.interval = interval
        self._pending: dict[str, int] = {}
        self._last = 0.0

    def note(self, views: Iterable[str], partition: int, us: int | None) -> None:
        if us is None:
            return
        for v in views:
            f = f"{v}|{partition}"
            if us > self._pending.get(f, -1):
                self._pending[f] = us

    def write(self, force: bool = False) -> None:
        """HSET what was noted, when ``interval`` passed since the last write (or ``force``)."""
        if not self._pending:
            return
        now = time.monotonic()
        if not force and now - self._last < self.interval:
            return
        pending, self._pending = self._pending, {}
        self._last = now
        try:
            self.log.r.hset(self.key, mapping=pending)
        except Exception:
            for f, us in pending.items():  # kept for the next write; the data itself is committed
                self._pending[f] = max(us, self._pending.get(f, -1))
            raise


def note_embedded_applied(online: Any, definitions: Any, plan: SourcePlan, views: list[str], us: int | None) -> None:
    """Inside an embedded push's transaction: ``us`` (the source's watermark after the push) as the
    newest applied event time of the views it applied, and of the embedding views on its source."""
    if us is None:
        return
    if plan.embeds:
        views = views + [n for n, e in definitions.embedding_views.items() if e.source.name == plan.source.name]
    value = str(us).encode()
    for v in views:
        online.set_meta(embedded_meta_name(v), value)


def read_applied(log_: RedisStreamLog) -> dict[str, int]:
    """View -> newest event time (µs) applied online over all its partitions (Redis)."""
    out: dict[str, int] = {}
    for f, v in log_.r.hgetall(applied_at_key(log_.workspace)).items():
        view = (f.decode() if isinstance(f, bytes) else str(f)).rpartition("|")[0]
        try:
            us = int(v)
        except ValueError:
            continue
        if us > out.get(view, -1):
            out[view] = us
    return out


def read_embedded_applied(online: Any, views: Iterable[str]) -> dict[str, int]:
    """View -> newest event time (µs) an embedded push applied (online meta)."""
    out = {}
    for v in views:
        raw = online.get_meta(embedded_meta_name(v))
        if raw:
            try:
                out[v] = int(raw)
            except ValueError:
                continue
    return out


def undelivered_age_s(log_: RedisStreamLog, key: bytes, now_ms: int) -> float:
    """Seconds the oldest entry of stream ``key`` not yet read by the workers' group has waited."""
    from .redis_streams import GROUP

    try:
        groups = log_.r.xinfo_groups(key)
    except Exception:  # noqa: BLE001 - no stream yet: nothing pushed to this partition
        return 0.0
    last = next((g.get("last-delivered-id") for g in groups if g.get("name") in (GROUP, GROUP.encode())), None)
    start = "-" if last is None else b"(" + (last if isinstance(last, bytes) else str(last).encode())
    first = log_.r.xrange(key, min=start, max="+", count=1)
    if not first:
        return 0.0
    entry_id = first[0][0]
    ms = int((entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)).split("-")[0])
    return max(0.0, (now_ms - ms) / 1000.0)
