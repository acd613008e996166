"""``create_app()``: the FastAPI feature server (Tecton API, native API, health, metrics, MCP at /mcp)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..config import Config, load_config
from .auth import authorize
from .errors import install_error_handlers
from .fastpath import FastPath
from .guard import RequestGuard, cors_middleware
from .keys import KeyStore, key_store_path
from .limits import BodySizeLimit
from .metrics import Metrics, QualityCollector, ViewStatusCollector
from .routes_catalog import catalog_router
from .routes_forget import forget_router
from .routes_health import health_router
from .routes_memory import memory_router
from .routes_native import native_router
from .routes_quality import quality_router
from .routes_status import status_router
from .routes_tecton import TectonHandlers, tecton_router
from .routes_ui import serving_status_router, ui_router
from .serving_stats import ServingSeries
from .shedding import LoadShedder
from .state import ServerSettings, ServerState

__all__ = ["create_app", "ServerSettings"]

log = logging.getLogger("context_store.server")


class _RequestMetrics:
    """Pure ASGI (no BaseHTTPMiddleware overhead): latency per route template and service."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500

        async def send_status(msg: Message) -> None:
            nonlocal status
            if msg["type"] == "http.response.start":
                status = msg["status"]
            await send(msg)

        self.metrics.active += 1  # batched metrics flush when no request is in flight
        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.active -= 1
            route = scope.get("route")
            path = getattr(route, "path", None) or "_unmatched"
            self.metrics.observe_request(path, scope.get("cs.service", ""), time.perf_counter() - t0, status)


class _App(FastAPI):
    """FastAPI behind load shedding, the request guard (Host, Origin, Content-Type: ``guard.py``), CORS when
    origins are configured, and the fast path: hot routes skip every FastAPI layer (telemetry, error and
    body-limit middleware, router); ``FastPath`` does their error mapping, size limit and metrics itself.
    ``LoadShedder`` (outermost) bounds the requests in flight across all of them."""

    _entry: ASGIApp | None = None

    def _routed(self, scope: Scope) -> bool:
        """A route takes this method at this path (only asked for a write the guard would refuse)."""
        return any(route.matches(scope)[0] == Match.FULL for route in self.router.routes)

    def build_entry(self, state: ServerState, fast_routes: dict[tuple[str, str], Any] | None) -> None:
        # [LoadShedder] -> [CORS] -> [FastPath] -> guard -> FastAPI. The fast path runs the guard's checks in its
        # own header scan (one scan per hot request); every other request meets the guard as a middleware.
        guard = RequestGuard(functools.partial(FastAPI.__call__, self), state.hosts, self._routed)
        app: ASGIApp = guard
        if fast_routes is not None:
            app = FastPath(app, fast_routes, state.metrics, state.settings.max_body, guard=guard)
        if state.hosts.origins:
            app = cors_middleware(app, state.hosts.origins)  # answers preflights, adds headers to every response
        s = state.settings
        if s.max_in_flight > 0 or s.max_lag_ms > 0 or s.max_queue_ms > 0:  # refuses before reading a body
            app = LoadShedder(
                app,
                s.max_in_flight,
                state.metrics,
                max_lag_ms=s.max_lag_ms,
                max_queue_ms=s.max_queue_ms,
                adaptive=s.adaptive_limit,
            )
        self._entry = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._entry is not None:
            await self._entry(scope, receive, send)  # falls through to FastAPI for other routes
        else:
            await super().__call__(scope, receive, send)


def _stream_lag_hook(state: ServerState) -> Callable[[Metrics], None]:
    """At scrape time: entries each stream source's workers have not applied yet (Redis only)."""

    def hook(metrics: Metrics) -> None:
        for store in state.resolver.open_stores():
            for name, lag in store.stream_lag().items():
                metrics.stream_lag.labels(store.workspace, name).set(lag)

    return hook


def _feature_log_hook(state: ServerState) -> Callable[[Metrics], None]:
    """At scrape time: the feature log's counters of each open workspace (``serving/feature_log.py``)."""

    def hook(metrics: Metrics) -> None:
        for store in state.resolver.open_stores():
            for name, value in store.feature_log_stats().items():
                if name != "accepted":
                    metrics.feature_log.labels(store.workspace, name).set(value)

    return hook


def _mcp_app(state: ServerState) -> Any:
    """The MCP streamable-HTTP app from ``context_store.tools.http`` (the MCP package), when importable."""
    try:
        from context_store.tools.http import create_mcp_http_app
    except ImportError as e:  # the mcp extra is not installed: serve REST only
        log.warning("MCP endpoint disabled: %s (pip install 'context-store[mcp]')", e)
        return None

    def auth(header_value: str | None) -> Any:
        # Same keys and per-key rate limit as REST; the key's workspace is the MCP tenant. The MCP tools read
        # data, so a key must grant ``read`` (a metrics-only key does not).
        principal = state.authenticate_header(header_value)
        authorize(principal, "read", None)
        return principal

    # The same lists as the request guard in front of it: the two checks never disagree.
    return create_mcp_http_app(
        state.resolver, auth, allowed_hosts=state.hosts.mcp_hosts(), allowed_origins=state.hosts.mcp_origins()
    )


async def _refresh_loop(state: ServerState) -> None:
    while True:
        await asyncio.sleep(state.settings.refresh_interval)
        try:
            await run_in_threadpool(state.resolver.refresh_changed)
        except Exception:  # keep serving the last good definitions
            log.warning("registry refresh failed", exc_info=True)


def _warm(state: ServerState) -> None:
    """Open the default workspace's store and compile its read path before the first request."""
    try:
        # FAISS indexes load from their snapshots (or rebuild) in the background; /readyz waits for them.
        state.resolver(None).warm()
    except Exception as e:  # nothing applied yet, or the online store is down: requests will say so
        log.info("warm-up skipped: %s", e)


def create_app(
    repo: str | os.PathLike[str] = ".",
    *,
    config: Config | None = None,
    workspace: str | None = None,
    online_store: str | None = None,
    auth: bool = True,
    key_store: KeyStore | None = None,
    settings: ServerSettings | None = None,
    **overrides: Any,
) -> FastAPI:
    """Build the server. ``auth=False`` disables API keys (loopback development only: ``serve`` enforces it).

    ``overrides`` set ``ServerSettings`` fields (``rate_limit=``, ``max_body=``, ``mcp=``, ...).
    """
    config = config or load_config(repo, workspace=workspace, online_store=online_store)
    settings = replace(settings or ServerSettings(), auth=auth, **overrides)
    if settings.auth and key_store is None:
        key_store = KeyStore(key_store_path(config.data_dir))
    state = ServerState(config, settings, key_store)
    state.metrics.on_collect(_stream_lag_hook(state))
    state.metrics.add_collector(QualityCollector(state.resolver.open_stores))
    state.metrics.on_collect(_feature_log_hook(state))
    state.metrics.add_collector(ViewStatusCollector(state.resolver.open_stores))
    mcp = _mcp_app(state) if settings.mcp else None
    series = ServingSeries(state.metrics)  # reads the request metrics every 2 s (off the request path)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            if mcp is not None:
                await stack.enter_async_context(mcp.lifespan())
            await run_in_threadpool(_warm, state)
            if state.settings.freeze_gc:
                # Measured: a full collection over the ~80k objects of imports and definitions paused the event
                # loop for 45-140 ms (the p99 stalls). Frozen objects are never scanned again.
                gc.collect()
                gc.freeze()
            refresher = asyncio.create_task(_refresh_loop(state))
            sampler = asyncio.create_task(series.run())
            flusher = asyncio.create_task(state.metrics.flush_every(1.0))  # batched request metrics
            try:
                yield
            finally:
                refresher.cancel()
                sampler.cancel()
                flusher.cancel()
                state.metrics.flush()
                await run_in_threadpool(state.close)

    app = _App(
        title="context-store feature server",
        version="0.1.0",
        description="Tecton-compatible feature serving, agent context, similarity, knowledge search and ingest.",
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.cs = state
    install_error_handlers(app)
    handlers = TectonHandlers(state)
    app.include_router(tecton_router(handlers))
    app.include_router(native_router(state))
    app.include_router(memory_router(state))
    app.include_router(health_router(state))
    app.include_router(forget_router(state))
    app.include_router(catalog_router(state))
    app.include_router(quality_router(state))
    app.include_router(status_router(state))
    app.include_router(serving_status_router(state, series))
    if settings.console:
        app.include_router(ui_router())  # the web console (docs/console.md): static files, no key needed
    if mcp is not None:
        # An exact-path route (not a Mount): POST /mcp without a trailing-slash redirect.
        app.router.routes.append(
            Route("/mcp", endpoint=mcp, methods=["GET", "POST", "DELETE"], include_in_schema=False)
        )
    app.add_middleware(_RequestMetrics, metrics=state.metrics)
    app.add_middleware(BodySizeLimit, max_body=settings.max_body)
    app.build_entry(state, handlers.routes() if settings.fast_path else None)
    return app
