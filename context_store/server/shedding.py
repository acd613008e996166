"""Load shedding: an overloaded server process answers the excess 503 + ``Retry-After`` at once instead of
queueing it.

Three bounds, all per process:

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
- **Queue delay** (``max_queue_ms``, off unless ``serve --max-queue-ms``): CoDel at dequeue, as in "Fail at Scale"
  (Maurer, ACM Queue 2015). The protocol stamps each admitted request; when its handler starts, the time it
  waited in this process is known. Once that wait has stayed above the target for ``INTERVAL_S`` (no request
  started below it and the queue never emptied: a standing queue, not a burst), a request that waited longer is
  refused instead of served late, and the ticker lowers the admitted fraction as for a late loop. It bounds
  the wait of admitted requests inside the process directly, where the lag bound only sees it through late
  timer ticks. Not a default: at 2x saturation it lowered the accepted p99 on an oversubscribed host (load
  5-10 on 2 cores; median 0.6x of the lag bound's, 11 of 16 pairs) but not on a quieter one, where with one
  worker it cost ~20% of the accepted requests (evals/results/overload.md).
  Neither rule refuses a lone request (nothing else in flight or queued, no crowd of arrivals since the last
  tick): a late loop with one client is this process being descheduled by a busy host, not a queue of ours.
- **In flight** (``max_in_flight``): a hard cap on admitted requests not answered yet (slow downstream calls).
- **Adaptive in flight** (``adaptive``, ``serve --adaptive-limit``): admitted requests (queued + in flight) also
  bounded by a limit that follows this process's latency (``adaptive_limit.GradientLimit``). With 2 workers at 2x
  it cut the accepted p99 ~3x. It refuses only a standing excess, not a burst: only once arrivals have met the
  limit full in most recent ticks (``full``, an average over ~10 ticks, >= ``STANDING``), as at 2x saturation;
  a burst at half load (the 10-30 requests that queue while a busy host deschedules the process, or a client's
  own burst) is admitted up to ``max_in_flight``. And host stalls are told from queues of ours: when a tick finds
  the loop late by more than ``STALL_S`` beyond the CPU the process used meanwhile, the process was descheduled;
  the limiter drops its window and the latencies of requests admitted until the stall's length after it (they
  waited for the host). Without both, a half-loaded process on a busy host ratcheted its limit to the floor and
  refused such bursts: 168-6733 refusals of 19-77k at 0.5x. Judged by whole latency it still refused 3-4071 at
  half load with one worker (the fixed cap 0): one busy loop's handlers take a multiple of their unloaded time
  with a few in flight, which is no queue. So under ``serve`` the limit follows the wait before handlers start
  (``GradientLimit``), and while fewer than ``FREE_SHARE`` of ``max_in_flight`` are admitted it refuses only
  if that wait was over tolerance in the last window (evals/results/overload.md).

Under ``serve`` the decision is taken in the HTTP protocol (``SheddingHttpTools``) as soon as a request's headers
are parsed: a refusal is one pre-encoded write, with no ASGI scope, task, routing or body read; the connection
stays open (a retrying client need not reconnect) unless the client asked to close it. At 2x saturation about
half the requests are refused, so what a refusal costs is capacity taken from the accepted ones (measured in
evals/results/overload.md). Through ASGI alone (other servers, tests) ``LoadShedder`` refuses with two sends.
Probes (``/healthz``, ``/readyz``), ``/metrics`` and the MCP event stream are never shed: that is when they matter.
"""

from __future__ import annotations

import asyncio
import time
from http import HTTPStatus
from typing import Any, cast

import httptools
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _UvicornHttpTools

from ..errors import OverloadedError, error_messages
from .adaptive_limit import GradientLimit
from .metrics import Metrics

__all__ = [
    "ADMITTED",
    "DEFAULT_ADAPTIVE_LIMIT",
    "DEFAULT_MAX_IN_FLIGHT",
    "DEFAULT_MAX_LAG_MS",
    "DEFAULT_MAX_QUEUE_MS",
    "EXEMPT_PATHS",
    "LoadShedder",
    "SheddingHttpTools",
    "find_shedder",
]

# Measured with evals/bench_overload.py (evals/results/overload.md): the lag bound does the work at 2x
# saturation; the in-flight cap is a backstop for slow downstream calls; the queue-delay bound is opt-in.
DEFAULT_MAX_IN_FLIGHT = 32
DEFAULT_MAX_LAG_MS = 10.0
DEFAULT_ADAPTIVE_LIMIT = False
DEFAULT_MAX_QUEUE_MS = 0.0  # off: measured a win only on an oversubscribed host (see the module docstring)
EXEMPT_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
_EXEMPT_RAW = frozenset(p.encode() for p in EXEMPT_PATHS)
# Scope key: the protocol layer already took the admission decision; its value is when (perf_counter), so the
# ASGI layer sees how long the request waited in this process before its handler started.
ADMITTED = "context_store.admitted"

TICK_S = 0.002  # lag sampling period (libuv timers have 1 ms resolution)
MIN_ADMIT = 1 / 64  # never refuse everything: admitted requests are how recovery shows
DECREASE = 0.75  # admitted fraction kept per late tick
INCREASE = 0.02  # added per punctual tick: back to admitting all in ~100 ms once the loop keeps up
INTERVAL_S = 0.1  # queue delay above its bound this long (none started below it, never empty): a standing queue
LONE_ARRIVALS = 3  # arrivals since the last tick from which requests compete (below it: one client's sequence)
IDLE_TICKS = 500  # ~1 s without requests while admitting all: stop ticking (an idle server stays idle)
STALL_S = 0.005  # a tick this late beyond the CPU used since the last one: the host descheduled this process
FULL_WEIGHT = 0.1  # per tick, of "an arrival met the adaptive limit full since the last tick" in ``full``
FREE_SHARE = 0.5  # of max_in_flight: admitted below it, the adaptive limit refuses only while requests queue
STANDING = 0.5  # ``full`` from which the adaptive limit refuses: full in most of the last ~10 ticks (~20 ms)


class LoadShedder:
    """Pure ASGI, outermost (in front of CORS, the fast path and FastAPI)."""

    def __init__(
        self,
        app: ASGIApp,
        max_in_flight: int = 0,
        metrics: Metrics | None = None,
        max_lag_ms: float = 0.0,
        max_queue_ms: float = 0.0,
        adaptive: bool = False,
    ) -> None:
        self.app = app
        self.max_in_flight = max_in_flight or 1 << 62  # 0: no count bound
        # Adaptive: admitted requests (queued + in flight) are also bounded by a limit that follows this process's
        # latency (adaptive_limit.py), at most ``max_in_flight``.
        self.limiter = GradientLimit(max_in_flight or DEFAULT_MAX_IN_FLIGHT) if adaptive else None
        self._free = FREE_SHARE * (max_in_flight or DEFAULT_MAX_IN_FLIGHT)  # under it the limit needs a queue
        self.max_lag = max_lag_ms / 1000
        self.max_queue = max_queue_ms / 1000
        self.queued = 0  # admitted by the protocol, handler not started yet
        self._above_since = 0.0  # when the queue delay went (and stayed) above the target; 0: it is below
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
        self._tick_seen = 0  # ``_seen`` at the last tick: more than one arrival since means requests compete
        self._cpu = 0.0  # process CPU time at the last tick (a late tick without CPU used: a host stall)
        self._unsampled_before = 0.0  # requests admitted before this (perf_counter) waited for the host: not sampled
        self.full = 0.0  # recent share of ticks in which an arrival met the adaptive limit full (refuses >= STANDING)
        self._hit = False  # an arrival met the adaptive limit full since the last tick
        self._raw: dict[tuple[int, bool], bytes] = {}
        # Built once: a refusal costs two sends.
        self._full: tuple[Message, Message] = error_messages(
            OverloadedError(f"server overloaded: {max_in_flight} requests in flight in this process; retry shortly")
        )
        self._late: tuple[Message, Message] = error_messages(
            OverloadedError(
                f"server overloaded: requests wait more than {max_lag_ms:g} ms for this process; retry shortly"
            )
        )
        self._stale: tuple[Message, Message] = error_messages(
            OverloadedError(
                f"server overloaded: requests queue more than {max_queue_ms:g} ms in this process; retry shortly"
            )
        )
        self._over: tuple[Message, Message] = error_messages(
            OverloadedError(
                "server overloaded: more requests in flight than this process serves at its unloaded latency; "
                "retry shortly"
            )
        )
        # Refusal by the admitted fraction: names the bound that lowered it last.
        self._lowered: tuple[Message, Message] = self._late

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        admitted_at: float | None = scope.get(ADMITTED)
        if admitted_at:
            self.queued -= 1  # before any return: a leak would keep the queue from ever looking empty
        if (
            scope["type"] != "http"
            or scope["path"] in EXEMPT_PATHS
            or (scope["path"] == "/mcp" and scope["method"] == "GET")
        ):
            await self.app(scope, receive, send)
            return
        if admitted_at:  # admitted before routing (SheddingHttpTools): the queue delay and the count are left
            refusal = self._queue_refusal(admitted_at) if self.max_queue else None
            if refusal is None:
                refusal = self._count_refusal()
        else:
            refusal = self.refusal()
        if refusal is not None:
            await send(refusal[0])
            await send(refusal[1])
            return
        # Single-threaded event loop: the check above and the increment below cannot interleave.
        started = time.perf_counter() if self.limiter is not None else 0.0
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
            # Latency from admission (unless a host stall caused it); the wait before the handler is the queue.
            if self.limiter is not None and (admitted_at or started) >= self._unsampled_before:
                self.limiter.sample(
                    time.perf_counter() - (admitted_at or started),
                    self.in_flight + self.queued + 1,
                    started - admitted_at if admitted_at else None,
                )

    def _queue_refusal(self, admitted_at: float) -> tuple[Message, Message] | None:
        """CoDel at dequeue (the "Fail at Scale" variant): once the time admitted requests wait before their
        handler starts has stayed above ``max_queue`` for ``INTERVAL_S`` (a standing queue, not a burst), a
        request that waited longer than that is refused now rather than served late; the ticker meanwhile
        lowers the admitted fraction, so the protocol refuses most of the excess before it queues."""
        now = time.perf_counter()
        if now - admitted_at <= self.max_queue:
            self._above_since = 0.0
            return None
        if not self._above_since:
            self._above_since = now
            return None
        if now - self._above_since < INTERVAL_S:
            return None
        if self.metrics is not None:
            self.metrics.shed.inc()
        return self._stale

    def standing(self, now: float) -> bool:
        """The queue delay has been above the target for an interval (and the queue was never empty)."""
        return bool(self._above_since) and now - self._above_since >= INTERVAL_S

    def refusal(self) -> tuple[Message, Message] | None:
        """The admission decision for one new request: ``None`` admits it, else the two messages refusing it."""
        late = False
        if self.max_lag or self.max_queue or self.limiter is not None:  # the ticker measures them (and ``full``)
            self._seen += 1
            if self._loop is None or self._loop.is_closed():  # not ticking (idle), or a test's old loop
                self._start_ticker()
            elif self.max_lag:
                # The loop's current turn has run past the next tick by more than the bound: the requests of this
                # turn (read at its start) have waited that long already, and admitting them lengthens it.
                late = time.perf_counter() - self._due > self.max_lag
        if self.in_flight >= self.max_in_flight:
            return self._count_refusal()
        # A lone request is served whatever the lag: nothing else in flight or queued here, and at most one other
        # arrival since the last tick (one client's back-to-back requests). Refusing it frees nothing; on a busy
        # host the lag is the OS descheduling this process (a single agent's MCP call got 503s from an otherwise
        # idle server). Under overload requests queue in the protocol and many arrive per tick.
        if not (self.in_flight or self.queued or self._seen - self._tick_seen >= LONE_ARRIVALS):
            return None
        admitted = self.in_flight + self.queued
        if self.limiter is not None and admitted >= self.limiter.limit:
            self._hit = True
            # A standing excess (2x saturation), not a burst at half load; and below ``FREE_SHARE`` of the cap only
            # while requests do queue (the last window's wait over tolerance): a busy loop's slow handlers are not.
            if self.full >= STANDING and (admitted >= self._free or self.limiter.queueing):
                if self.metrics is not None:
                    self.metrics.shed.inc()
                return self._over
        if late or (self.admit < 1.0 and not self._take()):
            if self.metrics is not None:
                self.metrics.shed.inc()
            return self._late if late else self._lowered
        return None

    def _count_refusal(self) -> tuple[Message, Message] | None:
        if self.in_flight < self.max_in_flight:
            return None
        if self.metrics is not None:
            self.metrics.shed.inc()
        return self._full

    def raw_refusal(self, refusal: tuple[Message, Message], keep_alive: bool) -> bytes:
        """``refusal`` as the bytes of an HTTP/1.1 response (built once per kind and connection mode)."""
        key = (id(refusal[0]), keep_alive)
        raw = self._raw.get(key)
        if raw is None:
            start, body = refusal
            head = [b"HTTP/1.1 %d %s\r\n" % (start["status"], HTTPStatus(start["status"]).phrase.encode())]
            head += [b"%s: %s\r\n" % (k, v) for k, v in start["headers"]]
            head.append(b"\r\n" if keep_alive else b"connection: close\r\n\r\n")
            raw = self._raw[key] = b"".join(head) + body["body"]
        return raw

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
        self._tick_seen = self._seen - 1  # the request that started it is the one arrival so far
        self._due = time.perf_counter() + TICK_S
        self._cpu = time.process_time()
        self._loop.call_later(TICK_S, self._tick)

    def _tick(self) -> None:
        now = time.perf_counter()
        self._tick_seen = self._seen
        lag, self.lag = self.lag, now - self._due
        if self.limiter is not None:
            self.full += FULL_WEIGHT * (self._hit - self.full)
            self._hit = False
            cpu, self._cpu = self._cpu, time.process_time()
            if self.lag - (self._cpu - cpu) > STALL_S:
                self._stalled(now, self.lag - (self._cpu - cpu))
        if self.queued <= 0:  # nothing waits for a handler: no standing queue (CoDel resets when it empties)
            self._above_since = 0.0
        lagging = bool(self.max_lag) and self.lag > self.max_lag
        # Two late ticks in a row: a standing queue. One alone is a burst or a single long request (CoDel's
        # distinction), not a reason to refuse anyone.
        if (lagging and lag > self.max_lag) or self.standing(now):
            self.admit = max(MIN_ADMIT, self.admit * DECREASE)
            self._lowered = self._late if lagging else self._stale
        elif not lagging and self.admit < 1.0:
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

    def _stalled(self, now: float, off_cpu: float) -> None:
        """The host descheduled this process for about ``off_cpu`` seconds until ``now`` (its timer was late and it
        did not run meanwhile): what queued then is no queue of its own concurrency."""
        assert self.limiter is not None
        self.limiter.discard()
        self._unsampled_before = now + off_cpu  # admitted until then: waited behind the stall's burst


def find_shedder(app: object) -> LoadShedder | None:
    """The ``LoadShedder`` of the app uvicorn serves: through its wrappers (``.app``) and ``_App._entry``."""
    for _ in range(8):
        if isinstance(app, LoadShedder):
            return app
        app = getattr(app, "_entry", None) or getattr(app, "app", None)
    return None


class _Answered:
    """Stands for the request cycle of a refused request: uvicorn's protocol then skips its body."""

    response_complete = True
    disconnected = False
    keep_alive = True

    class message_event:  # noqa: N801  (the attribute uvicorn sets on a lost connection)
        @staticmethod
        def set() -> None:
            pass


_ANSWERED = _Answered()


class SheddingHttpTools(_UvicornHttpTools):
    """uvicorn's httptools protocol taking the app's ``LoadShedder`` decision once a request's headers are
    parsed: a refused request is answered with one write and never becomes an ASGI request (no scope handed
    on, task, routing or body); an admitted one is marked so the ASGI layer does not decide twice."""

    _shedder: LoadShedder | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._shedder = find_shedder(self.app)
        super().connection_made(transport)

    def on_headers_complete(self) -> None:
        shedder = self._shedder
        if (
            shedder is None
            or (self.cycle is not None and not self.cycle.response_complete)  # pipelined: uvicorn queues it
            or self.limit_concurrency is not None  # uvicorn's own 503 path would skip the app
            or self.parser.should_upgrade()
        ):
            super().on_headers_complete()
            return
        path = httptools.parse_url(self.url).path
        if path in _EXEMPT_RAW or (path == b"/mcp" and self.parser.get_method() == b"GET"):
            super().on_headers_complete()
            return
        refusal = shedder.refusal()
        if refusal is None:
            cast(dict[str, Any], self.scope)[ADMITTED] = time.perf_counter()
            shedder.queued += 1
            super().on_headers_complete()
            return
        # Kept open unless the client asked to close, or waits for "100 Continue" (it may then never send the
        # body the parser would expect before the next request).
        keep_alive = bool(self.parser.should_keep_alive()) and not self.expect_100_continue
        self.transport.write(shedder.raw_refusal(refusal, keep_alive))
        self.cycle = _ANSWERED  # type: ignore[assignment]
        if keep_alive:
            self.on_response_complete()  # as after any response: count it, arm the keep-alive timeout
        else:
            self.transport.close()
