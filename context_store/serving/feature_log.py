"""Feature logging: every served vector of a logged service (``FeatureService(..., logging=cs.LoggingConfig())``)
goes to the offline table ``log__{service}``, never on the request path.

The request path only samples (a hash of the request id) and appends one tuple to a bounded deque: no
lock, no I/O, no Arrow. A background thread drains it every ``flush_interval`` s (or as soon as a batch
is full), builds one Arrow table per service and appends it through the ``OfflineStore`` protocol.

Trade-off (docs/feature-logging.md): when the queue is full (the offline store is down or slower than
serving for long) new vectors are DROPPED and counted (``stats()["dropped"]``, ``cs_feature_log_rows``),
so serving never blocks and memory stays bounded. Everything accepted is written on a clean shutdown:
``ContextStore.close()`` (the server's lifespan shutdown, on SIGTERM) and interpreter exit flush it.
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
import threading
import time
import weakref
import zlib
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..definitions import DType, FeatureService
from ..errors import InvalidInputError
from ..vocab.json import dumps_record
from ..vocab.tables import log_table

if TYPE_CHECKING:
    import pyarrow as pa

    from ..stores.offline.base import OfflineStore
    from ..types import FeatureVector

__all__ = ["FeatureLogWriter", "LogContext", "ServiceLog", "log_writer", "sampled"]

log = logging.getLogger("context_store.feature_log")

# Bounds memory: ~1-2 KB a vector of a dozen features, so ~20-40 MB at the default.
DEFAULT_QUEUE = int(os.environ.get("CONTEXT_STORE_FEATURE_LOG_QUEUE", "20000"))
# Fewer, larger appends: each Lance commit has a fixed cost (and small fragments slow reads); a clean
# shutdown flushes whatever is queued, so the interval only bounds what a crash (kill -9) can lose.
BATCH_ROWS = 10000
FLUSH_INTERVAL_S = 5.0
_FINAL_TRIES = 3


@dataclass(frozen=True, slots=True)
class LogContext:
    """Who asked, for the log: the caller's request id (else one is generated) and API key id."""

    request_id: str | None = None
    key_id: str | None = None


def sampled(request_id: str, threshold: int) -> bool:
    """Deterministic: the same request id is always in or out (``threshold`` = rate * 2**32)."""
    return zlib.crc32(request_id.encode()) < threshold


class _Ids:
    """Request ids for callers that give none: a random per-process prefix and a counter (a fraction
    of ``uuid4``'s cost on the request path); a forked child draws a new prefix."""

    def __init__(self) -> None:
        self.reset()
        os.register_at_fork(after_in_child=self.reset)

    def reset(self) -> None:
        self.prefix = os.urandom(6).hex() + "-"
        self.counter = itertools.count()

    def __call__(self) -> str:
        return f"{self.prefix}{next(self.counter):x}"


_new_id = _Ids()


# One logged vector: (service slot, request id, request µs, logged µs, join key values, request context,
# feature values, statuses, key id). A plain tuple of plain values on purpose: the garbage collector
# stops tracking such tuples, so a full queue adds no GC work to serving (a NamedTuple or a reference
# to the ServiceLog would keep every queued entry tracked).
_Entry = tuple[Any, ...]


class ServiceLog:
    """One logged service as compiled with its read plan: columns, types, sampling, and its writer."""

    def __init__(
        self,
        writer: FeatureLogWriter,
        service: FeatureService,
        join_keys: Mapping[str, DType],
        dtypes: Sequence[DType | None],
    ) -> None:
        assert service.logging is not None
        self.writer = writer
        self.service = service.name
        self.table = log_table(service.name)
        self.join_keys = dict(join_keys)
        self.columns = service.column_names
        self.dtypes = list(dtypes)
        self.rate = service.logging.sample_rate
        self.threshold = int(self.rate * 2**32)
        self.slot = writer.register(self)

    def record(
        self, fv: FeatureVector, ctx: Mapping[str, Any] | None, t_us: int, lc: LogContext | None, rid: str | None = None
    ) -> None:
        """On the request path: sample, copy what was served, enqueue. Never raises, never blocks."""
        rid = rid or (lc.request_id if lc is not None and lc.request_id else None) or _new_id()
        if self.threshold < 2**32 and not sampled(rid, self.threshold):
            return
        self.writer.put(
            (
                self.slot,
                rid,
                t_us,
                time.time_ns() // 1000,
                tuple(fv.join_keys.values()),  # in plan (= self.join_keys) order
                dict(ctx) if ctx else None,
                tuple(fv.feature_values.values()),
                tuple([m.status for m in fv.metadata]),
                lc.key_id if lc is not None else None,
            )
        )

    def record_batch(
        self, fvs: Sequence[FeatureVector], ctxs: Sequence[Mapping[str, Any]], t_us: int, lc: LogContext | None
    ) -> None:
        """A batch request: one row per entity, request ids ``{id}:{row}``."""
        base = (lc.request_id if lc is not None and lc.request_id else None) or _new_id()
        for i, (fv, ctx) in enumerate(zip(fvs, ctxs)):
            self.record(fv, ctx, t_us, lc, f"{base}:{i}")

    # -- in the writer thread ------------------------------------------------------------------
    def to_arrow(self, entries: list[_Entry], workspace: str) -> pa.Table:
        import pyarrow as pa

        ts = pa.timestamp("us", tz="UTC")
        n = len(entries)
        _, rids, req_us, logged_us, keys, ctxs, values, statuses, key_ids = zip(*entries)  # columns, in C
        cols: dict[str, pa.Array] = {}
        for (k, key_type), col in zip(self.join_keys.items(), zip(*keys)):
            cols[k] = pa.array(col, key_type.to_arrow())
        cols["request_id"] = pa.array(rids, pa.string())
        cols["request_time"] = pa.array(req_us, pa.int64()).cast(ts)
        cols["logged_at"] = pa.array(logged_us, pa.int64()).cast(ts)
        cols["workspace"] = pa.array([workspace] * n, pa.string())
        cols["key_id"] = pa.array(key_ids, pa.string())
        cols["request_context"] = pa.array([dumps_record(c).decode() if c else None for c in ctxs], pa.string())
        for name, dt, col in zip(self.columns, self.dtypes, zip(*values)):
            cols[name] = _typed(list(col), dt)
        for name, col in zip(self.columns, zip(*statuses)):
            cols[f"{name}__status"] = pa.array(col, pa.string())
        return pa.table(cols)


def _typed(values: list[Any], dt: DType | None) -> pa.Array:
    """The feature's training-data type; a value that does not fit (a realtime view returning another
    type) is logged as null rather than failing the batch (its status column still says what was served)."""
    import pyarrow as pa

    if dt is None:
        try:
            return pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            return pa.array([None if v is None else str(v) for v in values], pa.string())
    typ = dt.to_arrow()
    try:
        return pa.array(values, typ)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        out = []
        for v in values:
            try:
                pa.array([v], typ)
                out.append(v)
            except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
                out.append(None)
        return pa.array(out, typ)


class FeatureLogWriter:
    """The queue and its background writer, one per ``ContextStore`` (every logged service of its workspace)."""

    def __init__(
        self,
        offline: Callable[[], OfflineStore],
        workspace: str,
        max_queue: int = DEFAULT_QUEUE,
        batch_rows: int = BATCH_ROWS,
        flush_interval: float = FLUSH_INTERVAL_S,
        on_exit: Callable[[], None] | None = None,
    ) -> None:
        self._offline = offline
        self._on_exit = on_exit  # at interpreter exit without close(): closes the owner, which closes this
        self.workspace = workspace
        self.max_queue = max_queue
        self.batch_rows = batch_rows
        self.flush_interval = flush_interval
        self._logs: list[ServiceLog] = []  # by slot (entries name their service by index: see ``_Entry``)
        self._q: deque[_Entry] = deque()  # append/popleft are atomic: the request path takes no lock
        self._wake = threading.Event()
        self._drain_lock = threading.Lock()  # one drainer at a time: the thread or a flush()
        self._count_lock = threading.Lock()
        self._paused = False
        self._closed = False
        self.accepted = 0
        self.dropped = 0
        self.logged = 0
        self.failed = 0
        self._thread = threading.Thread(target=self._run, name=f"feature-log-{workspace}", daemon=True)
        self._thread.start()
        # Interpreter exit without close(): still flushed. Registered with threading's exit hooks (as
        # concurrent.futures does): they run before atexit's, while LanceDB's loop threads still work.
        # A weak reference: a closed writer (and its store) is not kept alive until exit.
        threading._register_atexit(functools.partial(_exit_hook, weakref.ref(self)))  # type: ignore[attr-defined]

    # -- request path ------------------------------------------------------------------
    def put(self, entry: _Entry) -> bool:
        q = self._q
        if len(q) >= self.max_queue or self._closed:
            with self._count_lock:
                self.dropped += 1
            return False
        q.append(entry)
        self.accepted += 1  # approximate under threads (stats only); ``logged``/``dropped`` are exact
        if len(q) >= self.batch_rows:
            self._wake.set()
        return True

    # -- control -----------------------------------------------------------------------
    def register(self, slog: ServiceLog) -> int:
        with self._count_lock:
            self._logs.append(slog)
            return len(self._logs) - 1

    def service_log(self, service: FeatureService, join_keys: Mapping[str, DType], dtypes: Sequence[Any]) -> ServiceLog:
        return ServiceLog(self, service, join_keys, dtypes)

    def pause(self) -> None:
        """Test hook: the background thread stops draining (``flush()`` still writes)."""
        self._paused = True

    def resume(self) -> None:
        self._paused = False
        self._wake.set()

    def stats(self) -> dict[str, int]:
        return {
            "accepted": self.accepted,
            "logged": self.logged,
            "dropped": self.dropped,
            "failed": self.failed,
            "queued": len(self._q),
        }

    def flush(self) -> None:
        """Write everything queued now, in the calling thread (waits for a drain in progress)."""
        self._drain(final=True)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        self._thread.join(timeout=30)  # the thread writes what is queued, then exits
        if self._q:
            self._drain(final=True)

    def _at_exit(self) -> None:
        # The owner's close (the ContextStore's): LanceDB objects this thread used, left to interpreter
        # finalization, crash it now and then (PyGILState_Release); a closed store releases them first.
        if not self._closed:
            (self._on_exit or self.close)()

    # -- writer thread -------------------------------------------------------------------
    def _warm(self) -> None:
        """Import what a write needs now: at interpreter exit (the atexit flush) imports that start
        threads fail, and a first write would pay seconds of LanceDB import."""
        import concurrent.futures.thread  # noqa: F401  (pandas and LanceDB import it lazily)

        import pyarrow as pa

        pa.array([0], pa.int64())  # loads pyarrow's pandas shim
        connect = getattr(self._offline(), "connect", None)
        if connect is not None:
            connect()

    def _run(self) -> None:
        try:
            self._warm()
        except Exception:  # the first write reports it
            log.debug("feature log warm-up failed", exc_info=True)
        backoff = self.flush_interval
        while not self._closed:
            self._wake.wait(backoff)
            self._wake.clear()
            if self._closed:
                break
            if self._paused:
                continue
            try:
                self._drain(final=False)
                backoff = self.flush_interval
            except Exception:  # the offline store is unavailable: keep the rows (queue bound applies), retry
                log.warning("feature log: offline write failed; retrying", exc_info=True)
                backoff = min(backoff * 2, 30.0)
        # Closing: the last write from this thread too (LanceDB's native threads have served only it).
        try:
            self._drain(final=True)
        except Exception:
            log.error("feature log: final flush failed", exc_info=True)

    def _drain(self, final: bool) -> None:
        """Write what is queued now (not what arrives meanwhile: under load that would be a stream of tiny
        appends, each a Lance commit), in batches of ``batch_rows``."""
        with self._drain_lock:
            q = self._q
            n = len(q)
            while n > 0 and q:
                k = min(n, len(q), self.batch_rows)
                self._write([q.popleft() for _ in range(k)], final)
                n -= k

    def _write(self, batch: list[_Entry], final: bool) -> None:
        groups: dict[int, list[_Entry]] = {}
        for e in batch:
            groups.setdefault(e[0], []).append(e)
        pending = list(groups.values())
        while pending:
            entries = pending[0]
            try:
                self._append(self._logs[entries[0][0]], entries, final)
            except InvalidInputError:  # rows the table can never take: retrying would only fill the queue
                self._lost(entries, "the offline table refused their columns")
            except Exception:
                if not final:
                    self._q.extendleft(reversed([e for es in pending for e in es]))  # retried next round, in order
                    raise
                self._lost(entries, "the offline store is unavailable")
            pending.pop(0)

    def _lost(self, entries: list[_Entry], why: str) -> None:
        with self._count_lock:
            self.failed += len(entries)
        log.error(
            "feature log: %d vector(s) of %s not logged: %s",
            len(entries),
            self._logs[entries[0][0]].service,
            why,
            exc_info=True,
        )

    def _append(self, slog: ServiceLog, entries: list[_Entry], final: bool) -> None:
        data = slog.to_arrow(entries, self.workspace)
        offline = self._offline()
        for attempt in range(_FINAL_TRIES if final else 1):
            try:
                _append_evolving(offline, slog.table, data)
                break
            except InvalidInputError:
                raise  # a schema the table cannot take even after evolving: retrying will not help
            except Exception:
                if attempt + 1 >= (_FINAL_TRIES if final else 1):
                    raise
                time.sleep(0.2 * (attempt + 1))
        with self._count_lock:
            self.logged += len(entries)


def _exit_hook(ref: weakref.ref[FeatureLogWriter]) -> None:
    writer = ref()
    if writer is not None:
        writer._at_exit()


def _append_evolving(offline: OfflineStore, table: str, data: pa.Table) -> None:
    """Append; when the service gained features since the table was created, rewrite it once with the
    union of columns (old rows get nulls) rather than refuse the new rows."""
    import pyarrow as pa

    try:
        offline.append(table, data)
    except InvalidInputError:
        if not offline.exists(table):
            raise
        old = offline.read(table)
        if all(c in old.column_names for c in data.column_names):
            raise  # not a new column: a type change the store cannot cast
        merged = pa.concat_tables([old, data], promote_options="permissive")
        offline.overwrite_range(table, merged, "request_time", None, None)


def log_writer(
    current: FeatureLogWriter | None,
    services: Mapping[str, FeatureService],
    workspace: str,
    offline: Any,
    on_exit: Callable[[], None] | None = None,
) -> FeatureLogWriter | None:
    """The store's writer: the existing one (its queue survives a refresh), a new one when a service logs."""
    if current is not None or not any(s.logging is not None for s in services.values()):
        return current
    return FeatureLogWriter(offline, workspace, on_exit=on_exit)
