"""Thread pool running StreamWorkers in-process: lifecycle only, separate from the per-message worker logic."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .context import StreamContext

__all__ = ["WorkerPool", "run_workers"]


class WorkerPool:
    """``n`` worker threads on one context; ``stop()`` flushes and releases their partitions."""

    def __init__(self, ctx: StreamContext, n: int = 1, stop_event: threading.Event | None = None, **kw: Any) -> None:
        from .worker import StreamWorker  # lazy: worker re-exports this module, a top-level import is circular

        self.stop_event = stop_event or threading.Event()
        self.workers = [StreamWorker(ctx, **kw) for _ in range(n)]
        self.threads = [
            threading.Thread(target=w.run, args=(self.stop_event,), name=f"cs-stream-{i}", daemon=True)
            for i, w in enumerate(self.workers)
        ]
        for t in self.threads:
            t.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Ask every worker to stop and wait at most ``timeout`` s in all (not per thread)."""
        self.stop_event.set()
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))


def run_workers(ctx: StreamContext, n: int = 1, stop_event: threading.Event | None = None, **kw: Any) -> WorkerPool:
    """Start ``n`` stream workers in threads of this process (non-blocking). Stop them with
    ``stop_event.set()`` or ``pool.stop()``. Does nothing useful without a Redis online store."""
    return WorkerPool(ctx, n, stop_event, **kw)
