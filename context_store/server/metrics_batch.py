"""Request metrics tallied in the server process and handed to Prometheus in batches.

Measured: with several workers (``PROMETHEUS_MULTIPROC_DIR``) one Prometheus ``observe`` is ~5 us (two locked
writes to the metrics file), and a served request made three such updates (~10 us of a ~70 us request).
Here an observation is a list increment under one lock; ``Batches.flush`` moves the tallies into the
Prometheus children when the process has no request in flight (so an idle server's metrics are exact at
once), every second under load, and before every scrape or serving-series reading of this process.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from typing import Any

__all__ = ["Batches", "BatchedCounter", "BatchedHistogram"]


class Batches:
    """The batched metrics of one ``Metrics``: one lock, and the ones with tallies not flushed yet."""

    def __init__(self) -> None:
        self.lock = threading.Lock()  # observations on the event loop, flushes also from a scrape's thread
        self.dirty: list[BatchedHistogram | BatchedCounter] = []

    def flush(self) -> None:
        with self.lock:
            if not self.dirty:
                return
            taken = [(b, b.take()) for b in self.dirty]
            self.dirty.clear()
        for b, tally in taken:
            b.apply(tally)


class BatchedHistogram:
    """A Prometheus histogram child, observed here and updated in ``Batches.flush``."""

    __slots__ = ("_batches", "_bounds", "_child", "_counts", "_dirty", "_sum")

    def __init__(self, child: Any, batches: Batches) -> None:
        self._child = child
        self._batches = batches
        self._bounds = list(child._upper_bounds)  # ends with +Inf, as Histogram.observe walks them
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0
        self._dirty = False

    def observe(self, amount: float) -> None:
        i = bisect_left(self._bounds, amount)  # the first bound >= amount: Histogram.observe's bucket
        b = self._batches
        with b.lock:
            if i < len(self._counts):
                self._counts[i] += 1
            self._sum += amount
            if not self._dirty:
                self._dirty = True
                b.dirty.append(self)

    def take(self) -> tuple[list[int], float]:
        """The tally since the last flush, reset (called under the batches' lock)."""
        counts, total = self._counts, self._sum
        self._counts, self._sum, self._dirty = [0] * len(counts), 0.0, False
        return counts, total

    def apply(self, tally: tuple[list[int], float]) -> None:
        counts, total = tally
        self._child._sum.inc(total)
        for bucket, n in zip(self._child._buckets, counts):
            if n:
                bucket.inc(n)


class BatchedCounter:
    """A Prometheus counter child, incremented here and updated in ``Batches.flush``."""

    __slots__ = ("_batches", "_child", "_dirty", "_n")

    def __init__(self, child: Any, batches: Batches) -> None:
        self._child = child
        self._batches = batches
        self._n = 0.0
        self._dirty = False

    def inc(self, amount: float = 1.0) -> None:
        b = self._batches
        with b.lock:
            self._n += amount
            if not self._dirty:
                self._dirty = True
                b.dirty.append(self)

    def take(self) -> tuple[list[int], float]:
        n, self._n, self._dirty = self._n, 0.0, False
        return [], n

    def apply(self, tally: tuple[list[int], float]) -> None:
        if tally[1]:
            self._child.inc(tally[1])
