"""Start the server under uvicorn (uvloop + httptools), optionally with several worker processes."""

from __future__ import annotations

import importlib.util
import ipaddress
import logging
import os
import socket
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

from ..config import Config, check_host_list, load_config
from ..errors import InvalidInputError
from .shedding import DEFAULT_ADAPTIVE_LIMIT, DEFAULT_MAX_IN_FLIGHT, DEFAULT_MAX_LAG_MS, DEFAULT_MAX_QUEUE_MS
from .supervise import ENV_PARENT_PID, ENV_WORKER_STATUS, Supervisor, die_with_parent

__all__ = ["ServeOptions", "serve", "app_from_env", "is_loopback", "public_bind_warning", "ENV_OPTIONS"]

ENV_OPTIONS = "CONTEXT_STORE_SERVER_OPTIONS"
_ANY_ADDRESS = ("0.0.0.0", "::", "")
log = logging.getLogger("context_store.server")


@dataclass
class ServeOptions:
    repo: str = "."
    workspace: str | None = None
    online_store: str | None = field(default=None, repr=False)  # may carry a password
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    auth: bool = True
    rate_limit: float | None = None
    max_body: int | None = None
    mcp: bool = True
    stream_workers: bool = True
    stream_processes: int = 1  # supervised ``context-store worker`` children (Redis only)
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT  # per server process; 0 = unbounded
    max_lag_ms: float = DEFAULT_MAX_LAG_MS  # shed while the event loop lags more than this; 0 = off
    max_queue_ms: float = DEFAULT_MAX_QUEUE_MS  # shed while requests queue longer than this (standing); 0 = off
    adaptive_limit: bool = DEFAULT_ADAPTIVE_LIMIT  # the in-flight limit follows latency, up to max_in_flight
    log_level: str = "warning"
    allowed_hosts: list[str] = field(default_factory=list)
    public_metrics: bool = False
    allowed_origins: list[str] = field(default_factory=list)


def is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        try:
            return all(ipaddress.ip_address(a[4][0]).is_loopback for a in socket.getaddrinfo(host, None))
        except OSError:
            return False


def check_options(opts: ServeOptions) -> None:
    if not opts.auth and not is_loopback(opts.host):
        raise InvalidInputError(
            f"--no-auth is only allowed on a loopback address (127.0.0.1, ::1, localhost), not {opts.host!r}: "
            "create a key with `context-store keys create` instead",
            field="--no-auth",
        )
    if not 1 <= opts.port <= 65535:
        raise InvalidInputError("port must be between 1 and 65535", field="--port")
    if not 1 <= opts.workers <= 64:
        raise InvalidInputError("workers must be between 1 and 64", field="--workers")
    if not 1 <= opts.stream_processes <= 64:
        raise InvalidInputError("stream processes must be between 1 and 64", field="--stream-processes")
    if opts.max_in_flight < 0:
        raise InvalidInputError("max in-flight must be >= 0 (0 = unbounded)", field="--max-in-flight")
    if not 0 <= opts.max_lag_ms <= 60_000:
        raise InvalidInputError("max lag must be between 0 and 60000 ms (0 = off)", field="--max-lag-ms")
    if not 0 <= opts.max_queue_ms <= 60_000:
        raise InvalidInputError("max queue delay must be between 0 and 60000 ms (0 = off)", field="--max-queue-ms")
    check_host_list("allowed_hosts", tuple(opts.allowed_hosts), "--allowed-host")
    check_host_list("allowed_origins", tuple(opts.allowed_origins), "--allowed-origin")


def _extra_hosts(opts: ServeOptions) -> list[str]:
    """Host names answered besides loopback and the config's: ``--allowed-host`` and a specific bound address."""
    hosts = list(opts.allowed_hosts)
    if not is_loopback(opts.host) and opts.host not in _ANY_ADDRESS:
        hosts.append(f"[{opts.host}]" if ":" in opts.host else opts.host)
    return hosts


def public_bind_warning(opts: ServeOptions, config: Config) -> str | None:
    """Bound to every interface without public host names: remote clients will get 421 (say so; do not refuse)."""
    if opts.host not in _ANY_ADDRESS or opts.allowed_hosts or config.allowed_hosts:
        return None
    return (
        f"serving on {opts.host} but no --allowed-host (or allowed_hosts in context_store.yaml) is set: only "
        "requests whose Host header is localhost, 127.0.0.1 or [::1] are answered; others get 421. "
        "Pass the public names clients use, e.g. --allowed-host api.example.com"
    )


def app_from_env() -> Any:
    """uvicorn factory (``context_store.server.run:app_from_env``): each worker builds its app from env."""
    from .app import create_app
    from .logs import configure_server_logging

    die_with_parent()  # a uvicorn worker process must not outlive a SIGKILLed serve
    opts = ServeOptions(**orjson.loads(os.environ[ENV_OPTIONS]))
    configure_server_logging(opts.log_level)  # each worker process: the queue handler, before the app logs
    overrides: dict[str, Any] = {
        "rate_limit": opts.rate_limit,
        "mcp": opts.mcp,
        "freeze_gc": True,
        "public_metrics": opts.public_metrics,
        "max_in_flight": opts.max_in_flight,
        "max_lag_ms": opts.max_lag_ms,
        "max_queue_ms": opts.max_queue_ms,
        "adaptive_limit": opts.adaptive_limit,
    }
    if opts.max_body:
        overrides["max_body"] = opts.max_body
    overrides["allowed_hosts"] = tuple(_extra_hosts(opts))
    overrides["allowed_origins"] = tuple(opts.allowed_origins)
    return create_app(opts.repo, workspace=opts.workspace, online_store=opts.online_store, auth=opts.auth, **overrides)


def _start_stream_workers(opts: ServeOptions) -> Supervisor | None:
    """``context-store worker`` children (the stream layer owns them), supervised, when the store is Redis."""
    if not opts.stream_workers or not load_config(opts.repo, online_store=opts.online_store).is_redis:
        return None
    if importlib.util.find_spec("context_store.cli.main") is None:
        return None
    code = (
        "from context_store.server.supervise import die_with_parent; die_with_parent(); "
        "from context_store.cli.main import main; main()"
    )
    cmd = [sys.executable, "-c", code, "worker", "--repo", opts.repo]
    if opts.workspace:
        cmd += ["--workspace", opts.workspace]
    env = dict(os.environ)
    if opts.online_store:
        env["CONTEXT_STORE_ONLINE_STORE"] = opts.online_store
    sup = Supervisor(cmd, opts.stream_processes, env)
    sup.start()
    os.environ[ENV_WORKER_STATUS] = str(sup.status_path)  # /readyz reads it (uvicorn workers inherit it)
    return sup


def serve(opts: ServeOptions) -> None:
    """Run until interrupted: REST + MCP (/mcp) in ``opts.workers`` processes, plus stream workers."""
    import uvicorn

    from .logs import configure_server_logging

    check_options(opts)
    configure_server_logging(opts.log_level)
    warning = public_bind_warning(
        opts, load_config(opts.repo, workspace=opts.workspace, online_store=opts.online_store)
    )
    if warning:
        log.warning(warning)
    os.environ[ENV_OPTIONS] = orjson.dumps(asdict(opts)).decode()
    tmp = None
    if opts.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        tmp = tempfile.TemporaryDirectory(prefix="cs-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tmp.name
    os.environ[ENV_PARENT_PID] = str(os.getpid())
    workers = _start_stream_workers(opts)
    try:
        uvicorn.run(
            "context_store.server.run:app_from_env",
            factory=True,
            host=opts.host,
            port=opts.port,
            workers=opts.workers,
            loop="uvloop",
            http="context_store.server.http_protocol:HttpToolsProtocol",  # one write per response
            log_level=opts.log_level,
            log_config=None,  # uvicorn's loggers propagate to our queue handler (server/logs.py)
            access_log=False,
            timeout_graceful_shutdown=5,
        )
    finally:
        if workers is not None:
            workers.stop()
        if tmp is not None:
            tmp.cleanup()
