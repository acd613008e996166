"""Per-app server state: settings, the store resolver, keys, limits and metrics."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from starlette.requests import Request

from ..config import Config
from ..limits import BATCH_ROWS, INGEST_RECORDS
from ..serving.store import ContextStore
from .auth import Principal, authenticate, authorize
from .guard import HostPolicy
from .keys import KeyStore
from .limits import DEFAULT_MAX_BODY, RateLimiter
from .metrics import Metrics
from .resolver import StoreResolver
from .tokens import JwtVerifier

__all__ = ["ServerSettings", "ServerState"]


@dataclass
class ServerSettings:
    auth: bool = True  # False only for loopback development (``serve --no-auth``)
    max_body: int = DEFAULT_MAX_BODY  # bytes
    rate_limit: float | None = None  # default per-key requests/second (keys may carry their own)
    max_batch_rows: int = BATCH_ROWS
    max_ingest_records: int = INGEST_RECORDS  # per source of one request
    refresh_interval: float = 5.0  # seconds between registry-change checks
    mcp: bool = True
    freshness_sample: int = 16  # record freshness age on 1 request in N
    # Host names answered besides loopback (DNS-rebinding protection, REST and MCP alike), added to the
    # config's ``allowed_hosts``; browser origins that get CORS headers, added to ``allowed_origins``.
    allowed_hosts: tuple[str, ...] = ()
    allowed_origins: tuple[str, ...] = ()
    # Serve the Tecton routes without FastAPI's per-request layers; False serves them through the FastAPI
    # routes (same responses: the tests run both ways).
    fast_path: bool = True
    public_metrics: bool = False  # serve /metrics without a key (``serve --public-metrics``)
    freeze_gc: bool = False  # gc.freeze() after warm-up (dedicated server processes: ``serve``)
    console: bool = True  # the web console at /ui (docs/console.md)
    max_in_flight: int = 0  # requests in flight before 503 (load shedding); 0 = unbounded (``serve``: 32)
    max_lag_ms: float = 0.0  # event-loop lag before 503 (load shedding, ``shedding.py``); 0 = off (``serve``: 10)
    adaptive_limit: bool = False  # in-flight limit follows this process's latency, <= max_in_flight (``shedding.py``)
    max_queue_ms: float = 0.0  # standing queue delay before 503 (CoDel, ``shedding.py``); 0 = off (``serve``: off)
    # /readyz lists views staler than their expected_freshness; True also answers 503 then (a stale view is
    # usually a stream problem no restart of this server fixes, hence off by default).
    ready_requires_fresh: bool = False


class ServerState:
    def __init__(self, config: Config, settings: ServerSettings, key_store: KeyStore | None) -> None:
        self.config = config
        self.settings = settings
        self.keys = key_store if settings.auth else None
        # JWTs beside API keys (``auth.jwt``): key material is read now, so a bad config fails at start-up.
        self.jwt = JwtVerifier(config.jwt) if settings.auth and config.jwt is not None else None
        self.resolver = StoreResolver(config)
        self.limiter = RateLimiter(settings.rate_limit)
        self.metrics = Metrics()
        self.hosts = HostPolicy.build(
            (*config.allowed_hosts, *settings.allowed_hosts), (*config.allowed_origins, *settings.allowed_origins)
        )
        self.counter = 0

    def authenticate(self, request: Request) -> Principal:
        """401 for a missing/invalid key, 429 over the key's rate."""
        return self.authenticate_header(request.headers.get("authorization"))

    def authenticate_header(self, header_value: str | None) -> Principal:
        p = authenticate(header_value, self.keys, self.jwt)
        if p.key_id is not None:
            self.limiter.check(p.key_id, p.rate_limit)
        return p

    def store_for(self, principal: Principal, scope: str, workspace: str | None) -> tuple[str, ContextStore]:
        """403 unless the key allows ``scope`` in ``workspace``; then that workspace's store."""
        ws = authorize(principal, scope, workspace or (principal.workspace or self.config.workspace))
        return ws, self.resolver(ws)

    def sample(self) -> bool:
        self.counter += 1  # the first request, then one in N
        return self.counter % self.settings.freshness_sample == 1 or self.settings.freshness_sample == 1

    def close(self) -> Any:
        self.resolver.close()
        if self.keys is not None:
            self.keys.close()
