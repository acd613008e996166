"""Online stores: an embedded SQLite default and Redis, behind one protocol (base.OnlineStore)."""

from __future__ import annotations

from ...config import Config
from .base import BaseOnlineStore, OnlineStore, ViewValues

__all__ = ["BaseOnlineStore", "OnlineStore", "ViewValues", "open_online_store"]


def open_online_store(config: Config) -> OnlineStore:
    """SQLite at ``config.sqlite_path`` (default) or Redis from a ``redis://`` URL (prefix ``cs:{workspace}:``),
    or a Redis Cluster from ``redis+cluster://host:port[,...]``."""
    if config.is_redis_cluster:
        from .redis_cluster import RedisClusterOnlineStore

        return RedisClusterOnlineStore(
            config.online_store, workspace=config.workspace, timeouts=config.redis_timeouts, wait=config.redis_wait
        )
    if config.is_redis:
        from .redis import RedisOnlineStore

        return RedisOnlineStore(config.online_store, workspace=config.workspace, timeouts=config.redis_timeouts)
    from .sqlite import SqliteOnlineStore

    path = config.sqlite_path
    spec = config.online_store
    if spec.startswith("sqlite:") and spec.rstrip("/") != "sqlite:":
        from pathlib import Path

        raw = spec[len("sqlite://") :] if spec.startswith("sqlite://") else spec[len("sqlite:") :]
        path = Path(raw) if Path(raw).is_absolute() else config.repo / raw
    return SqliteOnlineStore(path, workspace=config.workspace)
