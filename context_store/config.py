"""Configuration: ``context_store.yaml`` at the repo root, overridden by ``CONTEXT_STORE_*``
environment variables, overridden by keyword arguments.

```yaml
online_store: sqlite            # or redis://127.0.0.1:6379/0 (a password in it never appears in output)
data_dir: .context_store        # registry, offline store (Lance) and sqlite online store live here
offline_store: null             # default: <data_dir>/<workspace>/offline; or s3://bucket/prefix (gs://, az://, file://)
offline_storage_options: {}     # passed to Lance for a URI, e.g. {region: eu-west-1, aws_secret_access_key: env:MY_KEY}
registry: null                  # default: <data_dir>/registry; or postgresql://user@host:5432/db (shared)
allowed_hosts: []               # Host headers the server answers besides loopback, e.g. [api.example.com]
allowed_origins: []             # browser origins that get CORS headers, e.g. [https://app.example.com]
redis_read_timeout_ms: 100      # a Redis read (serving) fails with 503 after this long
redis_write_timeout_ms: 2000    # a Redis write (push, worker commit) fails with 503 after this long
redis_wait_replicas: 0          # acknowledge pushes (and cluster commits) once N replicas have them (WAIT)
redis_wait_timeout_ms: 1000     # how long such a write waits for its replicas before failing with 503
auth:                           # optional: JWT bearer tokens besides API keys (``jwt_config.py``)
  jwt: {secret_env: CONTEXT_STORE_JWT_SECRET, audience: context-store, subject_join_key: user_id}
```

Lists come from the environment comma-separated (``CONTEXT_STORE_ALLOWED_HOSTS=a.example,b.example``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from .errors import InvalidInputError
from .jwt_config import JwtConfig, parse_auth
from .vocab.redact import redact_url, register_secret, register_url

__all__ = ["Config", "RedisTimeouts", "RedisWait", "load_config", "check_host_list", "CONFIG_FILE"]

CONFIG_FILE = "context_store.yaml"
_WORKSPACE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# Settings that become typed Config fields; every other known key is kept in ``Config.extra``.
_TYPED = (
    "online_store",
    "data_dir",
    "offline_store",
    "offline_storage_options",
    "registry",
    "workspace",
    "allowed_hosts",
    "allowed_origins",
    "auth",
)
_KEYS = (
    *_TYPED,
    "redis_stream_maxlen",
    "embedded_push_timeout",
    "redis_read_timeout_ms",
    "redis_write_timeout_ms",
    "redis_wait_replicas",
    "redis_wait_timeout_ms",
    "ray_address",
)
_NOT_FROM_ENV = ("auth", "offline_storage_options")  # a nested mapping: only from the yaml (or a keyword argument)
_LISTS = ("allowed_hosts", "allowed_origins")
_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+)(:(\*|[0-9]{1,5}))?$")
# URI schemes Lance opens natively (object stores, and file:// for a local directory through the same code path)
_OFFLINE_SCHEMES = ("s3", "s3+ddb", "gs", "az", "abfs", "abfss", "file")
_ORIGIN = re.compile(r"^https?://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+)(:[0-9]{1,5})?$")


class RedisTimeouts(NamedTuple):
    """Socket timeouts (s) of Redis calls: reads within the serving latency budget, writes (a push,
    a worker's commit) within a bounded time, so a hung Redis answers 503 fast instead of after 30 s."""

    read_s: float = 0.1
    write_s: float = 2.0


class RedisWait(NamedTuple):
    """Durability of Redis writes: ``WAIT replicas timeout_ms`` after each push (and, on a Redis
    Cluster, each online commit); fewer replicas in time = 503 (the write may still land)."""

    replicas: int = 0
    timeout_ms: int = 1000


_TIMEOUT_MS_MAX = 600_000
CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")


def _timeout_ms(extra: dict[str, Any], key: str, default_s: float) -> float:
    v = extra.get(key)
    if v in (None, ""):
        return default_s
    try:
        ms = int(v)
    except (TypeError, ValueError):
        ms = -1
    if isinstance(v, bool) or not 1 <= ms <= _TIMEOUT_MS_MAX:
        raise InvalidInputError(
            f"{key} must be an integer of milliseconds in 1..{_TIMEOUT_MS_MAX}, got {v!r}", field=key
        )
    return ms / 1000


@dataclass(frozen=True, repr=False)
class Config:
    repo: Path
    workspace: str = "default"
    online_store: str = "sqlite"
    data_dir: Path = Path(".context_store")
    offline_store: Path | None = None
    registry: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    allowed_hosts: tuple[str, ...] = ()  # besides loopback; see docs/security.md
    allowed_origins: tuple[str, ...] = ()
    jwt: JwtConfig | None = None  # ``auth: jwt:``: bearer JWTs verified locally (docs/security.md)
    registry_url: str | None = None  # ``registry: postgresql://...``: a shared registry (docs/deploy.md)
    offline_url: str | None = None  # ``offline_store: s3://...``: Lance tables in an object store (docs/deploy.md)
    offline_storage_options: dict[str, str] = field(default_factory=dict)  # may hold secrets: never printed

    def __repr__(self) -> str:
        # The store URL may carry a password: the repr (tracebacks, debug logs) shows it masked.
        extra = {k: redact_url(v) if isinstance(v, str) else v for k, v in self.extra.items()}
        return (
            f"Config(repo={str(self.repo)!r}, workspace={self.workspace!r}, "
            f"online_store={redact_url(self.online_store)!r}, data_dir={str(self.data_dir)!r}, "
            f"offline_store={self.offline_url or self.offline_store!r}, "
            f"offline_storage_options={dict.fromkeys(self.offline_storage_options, '***')!r}, "
            f"registry={self.registry!r}, "
            f"registry_url={redact_url(self.registry_url) if self.registry_url else None!r}, extra={extra!r}, "
            f"allowed_hosts={self.allowed_hosts!r}, allowed_origins={self.allowed_origins!r})"
        )

    __str__ = __repr__

    @property
    def workspace_dir(self) -> Path:
        return self.data_dir / "workspaces" / self.workspace

    @property
    def offline_path(self) -> Path:
        """The workspace's local offline directory: its Lance tables (unless ``offline_store`` is a
        URI) and, always, its vector files (indexes, snapshots and trained item vectors stay local)."""
        return self.offline_store / self.workspace if self.offline_store else self.workspace_dir / "offline"

    @property
    def offline_uri(self) -> str:
        """Where the workspace's offline Lance tables live: ``<uri>/<workspace>`` or the local directory."""
        if self.offline_url:
            return f"{self.offline_url.rstrip('/')}/{self.workspace}"
        return str(self.offline_path)

    @property
    def registry_path(self) -> Path:
        """Directory holding every workspace's registry (one sub-folder each)."""
        return self.registry or (self.data_dir / "registry")

    @property
    def sqlite_path(self) -> Path:
        return self.workspace_dir / "online.sqlite"

    @property
    def redis_timeouts(self) -> RedisTimeouts:
        """``redis_read_timeout_ms`` (default 100) and ``redis_write_timeout_ms`` (default 2000)."""
        d = RedisTimeouts()
        return RedisTimeouts(
            _timeout_ms(self.extra, "redis_read_timeout_ms", d.read_s),
            _timeout_ms(self.extra, "redis_write_timeout_ms", d.write_s),
        )

    @property
    def redis_wait(self) -> RedisWait:
        """``redis_wait_replicas`` (default 0: no WAIT) and ``redis_wait_timeout_ms`` (default 1000)."""
        v = self.extra.get("redis_wait_replicas")
        try:
            n = 0 if v in (None, "") else int(v)
        except (TypeError, ValueError):
            n = -1
        if isinstance(v, bool) or not 0 <= n <= 16:
            raise InvalidInputError(
                f"redis_wait_replicas must be an integer in 0..16, got {v!r}", field="redis_wait_replicas"
            )
        return RedisWait(n, round(_timeout_ms(self.extra, "redis_wait_timeout_ms", 1.0) * 1000))

    @property
    def is_redis(self) -> bool:
        """A single Redis or a Redis Cluster (``redis+cluster://``): the Redis stream path."""
        return self.online_store.startswith(("redis://", "rediss://", "unix://", *CLUSTER_SCHEMES))

    @property
    def is_redis_cluster(self) -> bool:
        return self.online_store.startswith(CLUSTER_SCHEMES)

    def with_workspace(self, workspace: str) -> Config:
        return replace(self, workspace=check_workspace(workspace))


def check_workspace(name: str) -> str:
    if not isinstance(name, str) or not _WORKSPACE.match(name):
        raise InvalidInputError(f"workspace {name!r} must be 1-64 letters, digits, '-' or '_'", field="workspace")
    return name


def load_config(repo: str | os.PathLike[str] = ".", **overrides: Any) -> Config:
    """Read the repo's yaml, then env, then ``overrides`` (None values are ignored)."""
    root = Path(repo).resolve()
    values: dict[str, Any] = {}
    path = root / CONFIG_FILE
    if path.exists():
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise InvalidInputError(f"{path}: not valid YAML: {e}", field=CONFIG_FILE) from None
        if not isinstance(loaded, dict):
            raise InvalidInputError(f"{path}: expected a mapping of settings", field=CONFIG_FILE)
        unknown = sorted(set(loaded) - set(_KEYS))
        if unknown:
            raise InvalidInputError(
                f"{path}: unknown setting {unknown[0]!r}; known: {', '.join(_KEYS)}", field=unknown[0]
            )
        values.update(loaded)
    for key in _KEYS:
        if key in _NOT_FROM_ENV:
            continue
        env = os.environ.get(f"CONTEXT_STORE_{key.upper()}")
        if env:
            values[key] = env
    values.update({k: v for k, v in overrides.items() if v is not None})
    online = str(values.get("online_store") or "sqlite")
    register_url(online)
    if isinstance(values.get("ray_address"), str):
        register_url(values["ray_address"])
    if online not in ("sqlite",) and not online.startswith(
        ("redis://", "rediss://", "unix://", "sqlite:", *CLUSTER_SCHEMES)
    ):
        raise InvalidInputError(
            f"online_store {redact_url(online)!r} must be 'sqlite', a redis:// URL or redis+cluster://host:port[,...]",
            field="online_store",
        )
    registry_url = _registry_url(values.get("registry"))
    offline_url = _offline_url(values.get("offline_store"))
    lists = {k: check_host_list(k, _string_list(values.get(k), k)) for k in _LISTS}

    def _path(v: Any) -> Path | None:
        if v in (None, ""):
            return None
        p = Path(str(v)).expanduser()
        return p if p.is_absolute() else root / p

    extra = {k: v for k, v in values.items() if k not in _TYPED}
    config = Config(
        repo=root,
        workspace=check_workspace(str(values.get("workspace") or "default")),
        online_store=online,
        data_dir=_path(values.get("data_dir")) or root / ".context_store",
        offline_store=None if offline_url else _path(values.get("offline_store")),
        offline_url=offline_url,
        offline_storage_options=_storage_options(values.get("offline_storage_options")),
        registry=None if registry_url else _path(values.get("registry")),
        registry_url=registry_url,
        extra=extra,
        allowed_hosts=lists["allowed_hosts"],
        allowed_origins=lists["allowed_origins"],
        jwt=parse_auth(values.get("auth"), root),
    )
    config.redis_timeouts  # noqa: B018 - a bad timeout fails at load, naming its key
    config.redis_wait  # noqa: B018
    return config


_PG_SCHEMES = ("postgresql://", "postgres://")


def _registry_url(value: Any) -> str | None:
    """``registry:`` as a URL (a shared PostgreSQL registry), None for a path; other URL schemes are refused."""
    if not isinstance(value, str) or "://" not in value:
        return None
    register_url(value)
    if not value.startswith(_PG_SCHEMES):
        raise InvalidInputError(
            f"registry {redact_url(value)!r} must be a directory or a postgresql:// URL", field="registry"
        )
    return value


def _offline_url(value: Any) -> str | None:
    """``offline_store:`` as a URI Lance opens natively, None for a local path; other schemes are refused."""
    if not isinstance(value, str) or "://" not in value:
        return None
    register_url(value)
    scheme = value.split("://", 1)[0].lower()
    if scheme not in _OFFLINE_SCHEMES or not value.split("://", 1)[1].strip("/"):
        raise InvalidInputError(
            f"offline_store {redact_url(value)!r} must be a directory or a URI with a path "
            f"({', '.join(s + '://' for s in _OFFLINE_SCHEMES)})",
            field="offline_store",
        )
    return value


def _storage_options(value: Any) -> dict[str, str]:
    """``offline_storage_options:``: a mapping of strings; a value ``env:NAME`` is read from the
    environment variable NAME (keeps credentials out of the yaml)."""
    if value in (None, ""):
        return {}
    if not isinstance(value, dict):
        raise InvalidInputError(
            "offline_storage_options must be a mapping of option: value", field="offline_storage_options"
        )
    out: dict[str, str] = {}
    for k, v in value.items():
        if not isinstance(k, str) or isinstance(v, (dict, list)) or v is None:
            raise InvalidInputError(
                f"offline_storage_options.{k} must be a string, number or boolean", field="offline_storage_options"
            )
        text = str(v).lower() if isinstance(v, bool) else str(v)
        if text.startswith("env:"):
            env = os.environ.get(text[4:])
            if env is None:
                raise InvalidInputError(
                    f"offline_storage_options.{k}: environment variable {text[4:]!r} is not set",
                    field="offline_storage_options",
                )
            text = env
        if re.search(r"secret|token|key|password|sas|credential", k, re.IGNORECASE):
            register_secret(text)  # masked in every log line and error text of this process
        out[k] = text
    return out


def check_host_list(key: str, entries: tuple[str, ...], field: str | None = None) -> tuple[str, ...]:
    """Validate ``allowed_hosts`` (``name``, ``name:port``, ``name:*``) or ``allowed_origins`` entries."""
    for e in entries:
        if key == "allowed_hosts" and not _HOST.match(e):
            raise InvalidInputError(
                f"allowed host {e!r} must be a host name or address, optionally with :port or :*", field=field or key
            )
        if key == "allowed_origins" and not _ORIGIN.match(e):
            raise InvalidInputError(
                f"allowed origin {e!r} must look like https://app.example.com[:port]", field=field or key
            )
    return entries


def _string_list(value: Any, key: str) -> tuple[str, ...]:
    """A yaml list or a comma-separated string (environment) -> stripped, non-empty entries."""
    if value in (None, ""):
        return ()
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(x, str) for x in items):
        raise InvalidInputError(f"{key} must be a list of strings", field=key)
    return tuple(x.strip() for x in items if x.strip())
