"""Offline flushes of a stream worker: Lance appends, high-water marks, then ``XACK``.

A flush is slow and bursty next to a worker round (Lance commits, Redis acks and trims, about
once a second), so it runs on a background thread at a lower OS priority and the applying
thread never waits for it. What keeps it from stalling that thread is holding the GIL briefly:
the worker hands over a few merged tables, not thousands of one-event ones (see
``OfflineBuffer.add``).

A flush's entries are acknowledged only after their rows are appended, so a flush that fails or
dies half-way leaves them pending: the next owner replays them, and the marks and ``_offset``
columns keep the replay from appending twice.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

import pyarrow as pa

from ...vocab.tables import is_source_table, source_table, view_table
from .processor import OfflineWriter, PartitionState, concat
from .redis_streams import GROUP
from .stats import STATS

if TYPE_CHECKING:
    from ...stores.offline.base import OfflineStore
    from .redis_streams import RedisStreamLog

__all__ = ["FlushJob", "Flusher", "OfflineBuffer"]

log = logging.getLogger("context_store.stream.flusher")

Part = tuple[str, int]
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


class OfflineBuffer:
    """A worker's rows for the offline log and the entry ids to acknowledge, per partition, until a
    flush (about once a second, on the ``Flusher``'s thread) appends them, records the partitions'
    marks and watermarks, then acknowledges the entries."""

    def __init__(self, offline: OfflineStore, stream_log: RedisStreamLog) -> None:
        self._flusher = Flusher(offline, stream_log)
        self.writer = self._flusher.writer  # also reads the marks of partitions a worker takes
        self._rows: dict[Part, dict[str, list[pa.Table]]] = {}
        self._unacked: dict[Part, list[bytes]] = {}
        self.buffered_rows = 0  # raw events (``src__`` rows) buffered: the worker's flush_rows trigger
        self.last_flush = time.monotonic()
        self._flushing: Future[dict[str, int]] | None = None

    def add(self, part: Part, offline: Mapping[str, list[pa.Table]], ids: list[bytes]) -> None:
        """One applied batch of ``part``: its rows per offline table, and its entry ids to ack."""
        buf = self._rows.setdefault(part, {})
        for table, rows in offline.items():
            pending = buf.setdefault(table, [])
            pending.extend(rows)
            if len(pending) >= 64:
                # Merge small batches as they come: a flush of thousands of one-event tables
                # spends tens of ms holding the GIL (concat, pickling, freeing them at once),
                # which stalls the applying thread: that was the whole freshness tail.
                buf[table] = [concat(pending).combine_chunks()]
            if is_source_table(table):
                self.buffered_rows += sum(t.num_rows for t in rows)
        self.ack_later(part, ids)

    def ack_later(self, part: Part, ids: list[bytes]) -> None:
        self._unacked.setdefault(part, []).extend(ids)

    def drop(self, part: Part) -> None:
        """Forget ``part``'s buffered rows and acks (its entries stay pending: the next owner replays them)."""
        buf = self._rows.pop(part, {})
        self.buffered_rows -= sum(t.num_rows for name, ts in buf.items() if is_source_table(name) for t in ts)
        self._unacked.pop(part, None)

    def clear(self) -> None:
        self._rows, self._unacked, self.buffered_rows = {}, {}, 0

    def _snapshot(self, owned: Mapping[Part, PartitionState], key: Callable[[Part], bytes]) -> FlushJob:
        """Take the buffered rows, marks, watermarks and entry ids to flush (processing goes on)."""
        by_table: dict[str, list[pa.Table]] = {}
        for buf in self._rows.values():
            for table, rows in buf.items():
                by_table.setdefault(table, []).extend(rows)
        marks: dict[str, int] = {}
        wms: dict[str, int] = {}
        for (source, p), state in owned.items():
            for name, off in state.offline.items():
                table = source_table(source) if name == "src" else view_table(name)
                marks[f"{table}|{p}"] = off
            if state.watermark_us is not None:
                wms[f"{source}|{p}"] = state.watermark_us
        acks = {key(part): ids for part, ids in self._unacked.items() if ids}
        self._rows = {}
        self._unacked = {part: [] for part in self._unacked}
        self.buffered_rows = 0
        return by_table, marks, wms, acks

    def flush(self, owned: Mapping[Part, PartitionState], key: Callable[[Part], bytes]) -> None:
        """Append buffered rows offline, record the marks, then acknowledge the entries (waits)."""
        self.wait()
        self.last_flush = time.monotonic()
        if self._rows or any(self._unacked.values()):
            self._flushing = self._flusher.submit(self._snapshot(owned, key))
            self.wait()

    def flush_background(self, owned: Mapping[Part, PartitionState], key: Callable[[Part], bytes]) -> None:
        """The same without waiting, so a slow Lance commit never stalls applying."""
        if self._flushing is not None and not self._flushing.done():
            return  # the previous one is still writing: keep buffering (back-pressure via flush_rows)
        self.wait()
        self.last_flush = time.monotonic()
        if self._rows or any(self._unacked.values()):
            self._flushing = self._flusher.submit(self._snapshot(owned, key))

    def wait(self) -> None:
        """Until the running flush is done; re-raises a failed write (its entries stay pending, nothing is lost)."""
        f, self._flushing = self._flushing, None
        if f is not None:
            for source, n in f.result().items():
                STATS.inc("offline_events", source, n)

    def close(self) -> None:
        self._flusher.close()
