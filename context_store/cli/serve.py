"""``context-store serve``: the feature server (REST + MCP at /mcp + stream workers)."""

from __future__ import annotations

import click

from ..errors import ContextStoreError
from ..server.shedding import DEFAULT_ADAPTIVE_LIMIT, DEFAULT_MAX_IN_FLIGHT, DEFAULT_MAX_LAG_MS, DEFAULT_MAX_QUEUE_MS
from ..vocab.redact import redact_text
from ._common import config_from_ctx, handle_errors, repo_options

__all__ = ["serve"]


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind; non-loopback requires auth.")
@click.option("--port", default=8000, show_default=True, type=int, help="Port to bind.")
@click.option(
    "--workers", default=1, show_default=True, type=int, help="Server processes (each runs its own event loop)."
)
@click.option("--no-auth", is_flag=True, help="Disable API keys (only allowed on a loopback address).")
@click.option(
    "--public-metrics",
    is_flag=True,
    help="Serve /metrics without an API key (default: a key with the metrics or admin scope).",
)
@click.option("--rate-limit", default=None, type=float, help="Default per-key rate limit, requests/second per worker.")
@click.option("--max-body", default=None, type=int, help="Maximum request body in bytes (default 4 MiB).")
@click.option("--no-mcp", is_flag=True, help="Do not serve MCP at /mcp.")
@click.option(
    "--no-workers",
    "no_stream_workers",
    is_flag=True,
    help="Do not start stream workers (run `context-store worker` separately).",
)
@click.option(
    "--stream-processes",
    default=1,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Stream worker processes (Redis only); supervised: restarted with backoff, stopped with the server.",
)
@click.option(
    "--max-in-flight",
    default=DEFAULT_MAX_IN_FLIGHT,
    show_default=True,
    type=click.IntRange(0, 100_000),
    help="Requests in flight per server process before answering 503 + Retry-After (0: unbounded).",
)
@click.option(
    "--max-lag-ms",
    default=DEFAULT_MAX_LAG_MS,
    show_default=True,
    type=click.FloatRange(0, 60_000),
    help="Shed new requests (503 + Retry-After) while a server process's event loop lags more than this "
    "(the queueing delay of an overloaded process; 0: off).",
)
@click.option(
    "--max-queue-ms",
    default=DEFAULT_MAX_QUEUE_MS,
    show_default=True,
    type=click.FloatRange(0, 60_000),
    help="CoDel-style shedding: once requests have waited longer than this in a server process (from their "
    "headers being read to their handler starting) for 100 ms on end, answer such requests and most new ones "
    "503 + Retry-After (0: off). Try 5 on a host whose cores are oversubscribed; on a quiet host it costs "
    "throughput.",
)
@click.option(
    "--adaptive-limit/--fixed-limit",
    default=DEFAULT_ADAPTIVE_LIMIT,
    show_default=True,
    help="Let each server process's in-flight limit follow its own queue (at most --max-in-flight): it shrinks "
    "while requests wait longer to start than a request takes unloaded, so queueing inside the process stays "
    "near the service time; --fixed-limit keeps the cap at --max-in-flight.",
)
@click.option(
    "--allowed-host",
    "allowed_hosts",
    multiple=True,
    help="Host name clients use to reach this server (repeatable), e.g. api.example.com or api.example.com:8443; "
    "loopback names are always answered, other Host headers get 421. Needed with --host 0.0.0.0.",
)
@click.option(
    "--allowed-origin",
    "allowed_origins",
    multiple=True,
    help="Browser origin that gets CORS headers (repeatable), e.g. https://app.example.com. None by default.",
)
@click.option(
    "--log-level",
    default="warning",
    show_default=True,
    type=click.Choice(["critical", "error", "warning", "info", "debug"]),
)
@repo_options
@handle_errors
def serve(
    host: str,
    port: int,
    workers: int,
    no_auth: bool,
    public_metrics: bool,
    rate_limit: float | None,
    max_body: int | None,
    no_mcp: bool,
    no_stream_workers: bool,
    stream_processes: int,
    max_in_flight: int,
    max_lag_ms: float,
    max_queue_ms: float,
    adaptive_limit: bool,
    allowed_hosts: tuple[str, ...],
    allowed_origins: tuple[str, ...],
    log_level: str,
) -> None:
    """Serve features over Tecton's HTTP API, the native API and MCP (streamable HTTP at /mcp).

    API keys decide each request's workspace; --workspace is the default one (and the one whose
    stream workers start here). Auth is required on non-loopback addresses.
    """
    from ..server.run import ServeOptions
    from ..server.run import serve as run_server

    config = config_from_ctx()
    opts = ServeOptions(
        repo=str(config.repo),
        workspace=config.workspace,
        online_store=config.online_store,
        host=host,
        port=port,
        workers=workers,
        auth=not no_auth,
        rate_limit=rate_limit,
        max_body=max_body,
        mcp=not no_mcp,
        stream_workers=not no_stream_workers,
        stream_processes=stream_processes,
        max_in_flight=max_in_flight,
        max_lag_ms=max_lag_ms,
        max_queue_ms=max_queue_ms,
        adaptive_limit=adaptive_limit,
        log_level=log_level,
        allowed_hosts=list(allowed_hosts),
        public_metrics=public_metrics,
        allowed_origins=list(allowed_origins),
    )
    try:
        from ..server.run import check_options

        check_options(opts)
    except ContextStoreError as e:
        raise click.UsageError(redact_text(str(e))) from None
    scheme = "auth: API keys" if opts.auth else "auth: DISABLED (loopback development)"
    if opts.auth and opts.public_metrics:
        scheme += ", /metrics public"
    click.echo(f"serving on http://{host}:{port} ({workers} worker(s), {scheme}); MCP at /mcp", err=True)
    run_server(opts)
