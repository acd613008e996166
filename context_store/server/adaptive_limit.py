"""An in-flight limit per server process that follows the process's own latency (the gradient limit of Netflix's
concurrency-limits), instead of a fixed count.

Why: with several workers on few cores, a fixed cap of 32 lets an overloaded process interleave up to 32
requests, each then waiting for the others' CPU and Redis round trips: the accepted tail grows with the cap,
not with the work (evals/results/overload.md). The right cap depends on the request mix and on how much CPU
the process gets, so it is measured: every ``WINDOW`` completed requests, the mean time from admission (headers
parsed) to the handler's return is compared with the lowest such mean seen (``noload``, the process's latency
without a queue), and

    gradient = clamp(TOLERANCE * noload / recent, 0.5, 1)
    limit    = (1 - SMOOTHING) * limit + SMOOTHING * (limit * gradient + sqrt(limit))

so the limit grows by about sqrt(limit) while requests take at most TOLERANCE x their unloaded time and
shrinks (at most halving per window) once they take longer: the queue inside the process stays near the
service time. At equilibrium recent = TOLERANCE * noload / (1 - 1/sqrt(limit)), a bounded multiple of the
unloaded latency. ``noload`` drifts up slowly (``NOLOAD_DRIFT`` per window) so one lucky fast window, or a
change of workload, does not pin the limit low forever.

A window whose peak in-flight count stayed below half the limit says nothing against the limit (the process
was not using it: whatever its latency, the limit did not cause it) and the limit grows as in a good window,
towards ``max_limit``. Without that (the original gradient limit leaves it unchanged), every shrink at light load
was permanent: on one core latency grows with concurrency long before saturation (a few requests in flight at
half load already take a multiple of the fastest window's mean), so each burst at half load shrank the limit,
nothing grew it back, and a half-loaded process sat at the floor refusing (evals/results/overload.md,
2026-12-03). At 2x saturation the limit is full in every window and this never applies. The same effect is why
the limit still refuses at half load with one worker (5-6k req/s): a process busy enough has more than half its
limit in use and latencies over 2x the fastest window's, which this rule reads as a queue.

When the wait before each handler started is known (``serve``: the protocol stamps a request when its headers
are parsed), the window is judged by ``noload + mean wait`` instead of its mean latency: on one event loop a
handler's own time grows with the requests it interleaves with long before saturation, which is not a queue of
ours (at half load it shrank the limit and refused, evals/results/overload.md 2026-12-03); a queue shows as
requests waiting to start. So the limit shrinks once requests wait longer than ``(TOLERANCE - 1) x noload``
before their handler runs. Through ASGI alone (no stamp) the whole latency is all there is. ``queueing`` says
whether the last window was over tolerance (the shedder refuses under half the cap only then).

``discard`` drops the window in progress: the shedder calls it when the process was descheduled (its loop
late while it used no CPU), a wait that says nothing about the concurrency the process admitted.
"""

from __future__ import annotations

import math

__all__ = ["GradientLimit"]

WINDOW = 16  # completed requests per update: one slow request is not a trend
TOLERANCE = 2.0  # recent latency may reach this multiple of the unloaded one before the limit shrinks
SMOOTHING = 0.2  # weight of each update (about 5 windows to move most of the way)
MIN_LIMIT = 8  # never fewer: at 4, half-loaded processes (several requests in flight) refused (overload.md)
NOLOAD_DRIFT = 1.001  # per window in which recent > noload (~6%/s at 60 windows/s)


class GradientLimit:
    """The adaptive in-flight limit of one process; ``sample`` after each request, read ``limit``."""

    def __init__(self, max_limit: int, min_limit: int = MIN_LIMIT) -> None:
        self.max_limit = max(max_limit, min_limit)
        self.min_limit = min_limit
        self.limit = float(self.max_limit)  # start open: shrink on evidence, not on a guess
        self.noload = 0.0  # lowest window mean latency seen (seconds), 0 until the first window
        self.recent = 0.0  # the last window's mean latency
        self._sum = 0.0
        self._n = 0
        self._peak = 0
        self._wait = 0.0  # sum of the window's known admission waits
        self._waits = 0
        self.wait = -1.0  # the last window's mean admission wait (seconds); -1: not known
        self.queueing = False  # the last window's judged latency exceeded TOLERANCE x noload

    def sample(self, latency_s: float, in_flight: int, wait_s: float | None = None) -> None:
        """One request done: it took ``latency_s`` from admission, with ``in_flight`` admitted (itself included);
        ``wait_s`` of it before its handler started, when known (admitted by the protocol, under ``serve``)."""
        self._sum += latency_s
        self._n += 1
        if wait_s is not None:
            self._wait += wait_s
            self._waits += 1
        if in_flight > self._peak:
            self._peak = in_flight
        if self._n < WINDOW:
            return
        recent, peak = self._sum / self._n, self._peak
        # Known waits in most of the window: judge the queue by them (see the module docstring).
        wait = self._wait / self._waits if self._waits * 2 > self._n else None
        self._sum, self._n, self._peak, self._wait, self._waits = 0.0, 0, 0, 0.0, 0
        self.recent = recent
        if not self.noload or recent < self.noload:
            self.noload = recent
        else:
            self.noload *= NOLOAD_DRIFT
        # The latency the window's requests would have had with unloaded handlers plus the queue they met.
        judged = recent if wait is None else self.noload + wait
        self.wait = -1.0 if wait is None else wait
        self.queueing = judged > TOLERANCE * self.noload
        # Unused (peak under half of it): no evidence against the limit, whatever the latency; grow back.
        gradient = 1.0 if peak < self.limit / 2 else max(0.5, min(1.0, TOLERANCE * self.noload / judged))
        target = self.limit * gradient + math.sqrt(self.limit)
        limit = (1 - SMOOTHING) * self.limit + SMOOTHING * target
        self.limit = max(float(self.min_limit), min(float(self.max_limit), limit))

    def discard(self) -> None:
        """Forget the window in progress (its latencies include a stall of the host, not a queue of ours)."""
        self._sum, self._n, self._peak, self._wait, self._waits = 0.0, 0, 0, 0.0, 0
