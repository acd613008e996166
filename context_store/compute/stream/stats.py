"""Process-wide stream counters, for ``/metrics`` (serving exports them to Prometheus).

``STATS.snapshot()`` gives ``{counter: {source: value}}``; counters only go up.
"""

from __future__ import annotations

import threading
from collections import defaultdict

__all__ = ["StreamStats", "STATS", "COUNTERS"]

COUNTERS: dict[str, str] = {
    "pushed_events": "Events accepted by push (durable when counted).",
    "rejected_pushes": "Push calls rejected by validation (nothing of the call was applied).",
    "applied_events": "Events applied to online aggregation state.",
    "offline_events": "Events appended to the offline log.",
    "late_events": "Events older than the watermark but within allowed_lateness (applied to their tiles).",
    "too_late_events": "Events older than watermark - allowed_lateness: rejected by push (reported, written "
    "nowhere); an outside producer's are kept offline only.",
    "before_cutover_events": "Events older than a view's backfill cut-over: rejected by push (reported); "
    "ones that raced a new cut-over are kept in src__ only.",
    "forgotten_events": "Events of an entity forgotten after their time (right to erasure): rejected by push, "
    "dropped by workers (docs/erasure.md).",
    "duplicate_events": "Events skipped because their offset was already applied (replay after a crash).",
    "claimed_events": "Pending events taken over from a dead consumer (XAUTOCLAIM).",
}


class StreamStats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))

    def inc(self, counter: str, source: str, n: int = 1) -> None:
        if n:
            with self._lock:
                self._values[counter][source] += n

    def get(self, counter: str, source: str | None = None) -> int:
        with self._lock:
            vals = self._values.get(counter, {})
            return sum(vals.values()) if source is None else vals.get(source, 0)

    def snapshot(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return {c: dict(v) for c, v in self._values.items()}


STATS = StreamStats()
