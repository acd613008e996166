"""Load shedding: a bounded number of requests in flight per server process; the rest get 503 at once.

Without a bound an overloaded process queues every request it accepts (measured: p50 1.34 s, p99 7.5 s
at 500 req/s on 2 busy cores, nothing shed). With one, admitted requests keep their latency and the
excess is refused in microseconds, before any body is read, so clients can retry elsewhere or later.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from ..errors import OverloadedError, error_messages
from .metrics import Metrics

__all__ = ["DEFAULT_MAX_IN_FLIGHT", "EXEMPT_PATHS", "LoadShedder"]

# Measured with evals/bench_server.py --overload (2 workers, 2 shared cores, docs/security.md): accepted p99
# at 2x saturation grew with the limit (16: 177 ms, 32: 695-802 ms, 64: 1107 ms, unbounded: 1.1-6.4 s),
# while 8 and 16 already shed ~1% at half load with 32 connections; 32 shed nothing there.
DEFAULT_MAX_IN_FLIGHT = 32
# Probes and scrapes must answer while the server sheds: that is when they matter most.
EXEMPT_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


class LoadShedder:
    """Pure ASGI, outermost (in front of the fast path and FastAPI): count requests until their response
    is sent; above ``max_in_flight`` answer a pre-encoded 503 with ``Retry-After``.

    ``GET /mcp`` is exempt too: it is a long-lived event stream, not work in progress.
    """

    def __init__(self, app: ASGIApp, max_in_flight: int, metrics: Metrics | None = None) -> None:
        self.app = app
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self.metrics = metrics
        exc = OverloadedError(f"server overloaded: {max_in_flight} requests in flight in this process; retry shortly")
        self._start, self._body = error_messages(exc)  # built once: a refusal costs two sends

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["path"] in EXEMPT_PATHS
            or (scope["path"] == "/mcp" and scope["method"] == "GET")
        ):
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.max_in_flight:
            # Single-threaded event loop: the check and the increment below cannot interleave.
            if self.metrics is not None:
                self.metrics.shed.inc()
            await send(self._start)
            await send(self._body)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
