"""A small repo with a declared ``cs.Memory`` (hash-64 embedder), for the memory tests and benchmark."""

from __future__ import annotations

from pathlib import Path

import context_store as cs
from tests.support.repo import make_repo

__all__ = ["MEMORY_DEFINITIONS", "memory_store", "drop_redis_workspace"]

MEMORY_DEFINITIONS = """
import context_store as cs

user = cs.Entity("user", join_keys=["user_id"])
memories = cs.Memory(
    "memories", entity=user, embedder="hash-64", dedup_window="{window}", max_per_entity={max_per_entity}
)
user_context = cs.ContextService("user_context", entity=user, memories={context_memories})
"""


def memory_store(
    root: Path,
    online_store: str,
    workspace: str,
    *,
    window: str = "1d",
    max_per_entity: int = 100,
    context_memories: int = 3,
) -> cs.ContextStore:
    """The memory repo written under ``root``, applied in ``workspace``."""
    code = MEMORY_DEFINITIONS.format(window=window, max_per_entity=max_per_entity, context_memories=context_memories)
    make_repo(root, code)
    store = cs.ContextStore(root, workspace=workspace, online_store=online_store)
    store.apply(force=True)
    return store


def drop_redis_workspace(url: str, workspace: str) -> None:
    """Delete the Redis keys of one test workspace (never a shared pattern)."""
    import redis

    r = redis.Redis.from_url(url)
    keys = list(r.scan_iter(match=f"cs:{workspace}:*", count=1000))
    for i in range(0, len(keys), 500):
        r.delete(*keys[i : i + 500])
    r.close()
