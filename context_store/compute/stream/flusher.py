"""Offline flushes of a stream worker: Lance appends, high-water marks, then ``XACK``.

A flush is slow and bursty next to a worker round (Lance commits, Redis acks and trims, about
once a second), so it runs on a background thread at a lower OS priority and the applying
thread never waits for it. What keeps it from stalling that thread is holding the GIL briefly:
the worker hands over a few merged tables, not thousands of one-event ones (see
``StreamWorker._finish``).

A flush's entries are acknowledged only after their rows are appended, so a flush that fails or
dies half-way leaves them pending: the next owner replays them, and the marks and ``_offset``
columns keep the replay from appending twice.
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

import pyarrow as pa

from ...vocab.tables import is_source_table
from .processor import OfflineWriter, concat
from .redis_streams import GROUP

if TYPE_CHECKING:
    from ...stores.offline.base import OfflineStore
    from .redis_streams import RedisStreamLog

__all__ = ["FlushJob", "Flusher"]

log = logging.getLogger("context_store.stream.flusher")

# by_table, marks ("table|p" -> offset), watermarks ("source|p" -> µs), acks (stream key -> entry ids)
FlushJob = tuple[dict[str, list[pa.Table]], dict[str, int], dict[str, int], dict[bytes, list[bytes]]]


def _lower_priority() -> None:
    try:  # Linux: a thread's own nice value (elsewhere: unchanged)
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    except (AttributeError, OSError):
        pass


class Flusher:
    """Flushes on one background thread of this process (lower OS priority where possible)."""

    def __init__(self, offline: OfflineStore, stream_log: RedisStreamLog, compact_every: int = 100) -> None:
        self.offline, self.log = offline, stream_log
        self.writer = OfflineWriter(offline)
        self.compact_every = compact_every
        self._appends: dict[str, int] = {}
        self._ex = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cs-stream-flush", initializer=_lower_priority)

    def submit(self, job: FlushJob) -> Future[dict[str, int]]:
        return self._ex.submit(self.write, job)

    def close(self) -> None:
        self._ex.shutdown(wait=True)

    def write(self, job: FlushJob) -> dict[str, int]:
        """Views first, raw events last; each table's marks right after its append (they only
        matter for tables without offset columns, whose replays they fence). Acks come last.
        Returns rows appended per ``src__`` table (for the caller's metrics)."""
        by_table, marks, wms, acks = job
        out: dict[str, int] = {}
        for table in sorted(by_table, key=is_source_table):
            rows = concat(by_table[table])
            self.writer.append(table, rows)
            if is_source_table(table):
                out[table[5:]] = rows.num_rows
            mine = {k: v for k, v in marks.items() if k.startswith(table + "|")}
            if mine:
                self.log.r.hset(self.log.offline_key, mapping=mine)
        pipe = self.log.r.pipeline(transaction=False)
        if marks:
            pipe.hset(self.log.offline_key, mapping=marks)
        if wms:
            pipe.hset(self.log.watermark_key, mapping=wms)
        for key, ids in acks.items():
            pipe.xack(key, GROUP, *ids)
        pipe.execute()
        for key in acks:
            self.log.trim_acked(key)
        # Last: a compaction can take seconds, and the rows above must reach the offline log
        # (and be acknowledged) within the completeness bound, not after it.
        for table in sorted(by_table, key=is_source_table):
            self._maybe_compact(table)
        return out

    def _maybe_compact(self, table: str) -> None:
        """Stream appends are small: merge their files now and then so reads stay fast."""
        n = self._appends[table] = self._appends.get(table, 0) + 1
        if n % self.compact_every == 0:
            try:
                self.offline.compact(table)
            except Exception as e:  # noqa: BLE001 - a concurrent commit; the next round retries
                log.info("compaction of %s skipped: %s", table, e)
