"""Operator reads of the stream layer for ``ContextStore``: lag, watermarks and their reset, counters.

Owns the scrape-time Redis stream log these use (opened on first use, Redis only), apart from the
ingestor's: a metrics scrape never waits behind pushes."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING

from ..config import Config
from ..definitions import StreamSource

if TYPE_CHECKING:
    from ..compute.stream.redis_streams import RedisStreamLog
    from ..compute.stream.watermarks import WatermarkStatus
    from ..registry.repo import RepoDefinitions
    from ..stores.online.base import OnlineStore

__all__ = ["StreamAdmin"]


class StreamAdmin:
    def __init__(self, config: Config) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._log: RedisStreamLog | None = None

    def _stream_log(self) -> RedisStreamLog | None:
        if not self.config.is_redis:
            return None
        from ..compute.stream.redis_streams import RedisStreamLog

        with self._lock:
            if self._log is None:
                c = self.config
                self._log = RedisStreamLog(c.online_store, c.workspace, timeouts=c.redis_timeouts)
            return self._log

    def lag(self, defs: RepoDefinitions) -> dict[str, int]:
        """Entries each stream source's workers have not applied yet (Redis only; empty embedded)."""
        log = self._stream_log()
        if log is None:
            return {}
        return {
            name: log.lag([log.stream_key(name, k) for k in range(src.partitions)])
            for name, src in defs.sources.items()
            if isinstance(src, StreamSource)
        }

    def watermarks(self, defs: RepoDefinitions) -> list[WatermarkStatus]:
        from ..compute.stream.watermarks import watermark_status

        return watermark_status(self.config, defs, self._stream_log())

    def reset_watermark(self, defs: RepoDefinitions, target: str, to: datetime | str | None) -> list[WatermarkStatus]:
        from ..compute.stream.watermarks import reset_watermarks

        return reset_watermarks(self.config, defs, target, to, self._stream_log())

    def applied_times(self, online: OnlineStore, views: Iterable[str]) -> dict[str, int]:
        """View -> newest event time (µs) applied online by the stream (``compute/stream/freshness.py``)."""
        from ..compute.stream.freshness import read_applied, read_embedded_applied

        log = self._stream_log()
        return read_embedded_applied(online, views) if log is None else read_applied(log)

    def lag_seconds(self, defs: RepoDefinitions, now_ms: int) -> dict[tuple[str, int], float]:
        """(source, partition) -> age of its oldest entry no worker has read (Redis; empty embedded)."""
        from ..compute.stream.freshness import undelivered_age_s

        log = self._stream_log()
        if log is None:
            return {}
        return {
            (name, p): undelivered_age_s(log, log.stream_key(name, p), now_ms)
            for name, src in sorted(defs.sources.items())
            if isinstance(src, StreamSource)
            for p in range(src.partitions)
        }

    @staticmethod
    def counters() -> tuple[dict[str, str], dict[str, dict[str, int]]]:
        from ..compute.stream.stats import COUNTERS, STATS

        return dict(COUNTERS), STATS.snapshot()

    def close(self) -> None:
        with self._lock:
            log, self._log = self._log, None
        if log is not None:
            log.close()
