"""Load shedding: an overloaded server process answers the excess 503 + ``Retry-After`` at once instead of
queueing it.

Two bounds, both per process:

- **Queueing delay** (``max_lag_ms``, ``serve`` default 10 ms). A bound on requests in flight alone did not keep
  accepted latency down (measured at 2x saturation: accepted p99 27-43x the unsaturated one): the waiting
  happens before a request reaches the app, in socket buffers and in the event loop's backlog of ready
  callbacks, where no counter sees it (CPU-bound requests never even overlap in flight). The loop's lag does:
  a timer that should fire every ``TICK_S`` fires late by about as long as requests wait for the loop. Two
  rules, CoDel-like: a request met when the loop's current turn has already run ``max_lag`` past the next tick
  is refused (it has waited that long: this bounds one turn); and after two late ticks in a row (a standing
  queue, not a burst) a shrinking fraction of new requests is admitted (multiplicative decrease per late tick,
  additive increase per punctual one: AIMD, the way TCP finds its rate). The loop catches up on cheap
  refusals and admitted requests keep near-unsaturated latency.
- **In flight** (``max_in_flight``): a hard cap on admitted requests not answered yet (slow downstream calls).

A refusal costs two pre-encoded sends and happens before any body is read or key checked. Probes
(``/healthz``, ``/readyz``), ``/metrics`` and the MCP event stream are never shed: that is when they matter.
"""

from __future__ import annotations

import asyncio
import time

from starlette.types import ASGIApp, Receive, Scope, Send

from ..errors import OverloadedError, error_messages
from .metrics import Metrics

__all__ = ["DEFAULT_MAX_IN_FLIGHT", "DEFAULT_MAX_LAG_MS", "EXEMPT_PATHS", "LoadShedder"]

# Measured with evals/bench_overload.py (evals/results/overload.md): the lag bound does the work at 2x
# saturation; the in-flight cap is a backstop for slow downstream calls.
DEFAULT_MAX_IN_FLIGHT = 32
DEFAULT_MAX_LAG_MS = 10.0
EXEMPT_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})

TICK_S = 0.002  # lag sampling period (libuv timers have 1 ms resolution)
MIN_ADMIT = 1 / 64  # never refuse everything: admitted requests are how recovery shows
DECREASE = 0.75  # admitted fraction kept per late tick
INCREASE = 0.02  # added per punctual tick: back to admitting all in ~100 ms once the loop keeps up
IDLE_TICKS = 500  # ~1 s without requests while admitting all: stop ticking (an idle server stays idle)


class LoadShedder:
    """Pure ASGI, outermost (in front of CORS, the fast path and FastAPI)."""

    def __init__(
        self, app: ASGIApp, max_in_flight: int = 0, metrics: Metrics | None = None, max_lag_ms: float = 0.0
    ) -> None:
        self.app = app
        self.max_in_flight = max_in_flight or 1 << 62  # 0: no count bound
        self.max_lag = max_lag_ms / 1000
        self.in_flight = 0
        self.metrics = metrics
        self.admit = 1.0  # fraction of new requests admitted; < 1 only while the loop lags
        self.lag = 0.0  # the last sampled loop lag (seconds)
        self._credit = 0.0
        self._seen = 0  # requests seen (the ticker stops after a quiet second)
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop the ticker runs on, when it runs
        self._due = 0.0
        self._quiet = 0
        self._last_seen = 0
        # Built once: a refusal costs two sends.
        self._full = error_messages(
            OverloadedError(f"server overloaded: {max_in_flight} requests in flight in this process; retry shortly")
        )
        self._late = error_messages(
            OverloadedError(
                f"server overloaded: requests wait more than {max_lag_ms:g} ms for this process; retry shortly"
            )
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["path"] in EXEMPT_PATHS
            or (scope["path"] == "/mcp" and scope["method"] == "GET")
        ):
            await self.app(scope, receive, send)
            return
        late = False
        if self.max_lag:
            self._seen += 1
            if self._loop is None or self._loop.is_closed():  # not ticking (idle), or a test's old loop
                self._start_ticker()
            else:
                # The loop's current turn has run past the next tick by more than the bound: the requests of this
                # turn (read at its start) have waited that long already, and admitting them lengthens it.
                late = time.perf_counter() - self._due > self.max_lag
        # Single-threaded event loop: the checks and the increment below cannot interleave.
        if self.in_flight >= self.max_in_flight or late or (self.admit < 1.0 and not self._take()):
            if self.metrics is not None:
                self.metrics.shed.inc()
            start, body = self._full if self.in_flight >= self.max_in_flight else self._late
            await send(start)
            await send(body)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1

    def _take(self) -> bool:
        """Admit ``admit`` of the requests, evenly spread (a credit counter, not a coin: no runs of refusals)."""
        self._credit += self.admit
        if self._credit >= 1.0:
            self._credit -= 1.0
            return True
        return False

    def _start_ticker(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._quiet = 0
        self._due = time.perf_counter() + TICK_S
        self._loop.call_later(TICK_S, self._tick)

    def _tick(self) -> None:
        now = time.perf_counter()
        lag, self.lag = self.lag, now - self._due
        if self.lag > self.max_lag:
            # Two late ticks in a row: a standing queue. One alone is a burst or a single long request (CoDel's
            # distinction), not a reason to refuse anyone.
            if lag > self.max_lag:
                self.admit = max(MIN_ADMIT, self.admit * DECREASE)
        elif self.admit < 1.0:
            self.admit = min(1.0, self.admit + INCREASE)
        if self._seen == self._last_seen and self.admit >= 1.0:
            self._quiet += 1
            if self._quiet >= IDLE_TICKS:
                self._loop = None  # the next request starts it again (on its loop)
                return
        else:
            self._quiet, self._last_seen = 0, self._seen
        self._due = now + TICK_S
        assert self._loop is not None
        self._loop.call_later(TICK_S, self._tick)
