"""Shared fixtures. Tests talk to a real Redis (started by scripts/ensure_redis.sh in CI)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import context_store as cs
from tests.support.cluster import redis_cluster  # noqa: F401 - a session fixture (3 masters + 3 replicas)
from tests.support.redis import REDIS_URL, redis_up
from tests.support.repo import make_repo
from tests.support.stream import REPO, StoreFactory, events_table

# Tests must not read the developer's own config.
for _k in list(os.environ):
    if _k.startswith("CONTEXT_STORE_") and _k != "CONTEXT_STORE_REDIS_URL":
        del os.environ[_k]
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def redis_url() -> str:
    """A real Redis URL. Fails (not skips) when none answers: run scripts/ensure_redis.sh."""
    if not redis_up(REDIS_URL):
        pytest.fail(f"no Redis answers at {REDIS_URL}; start one with scripts/ensure_redis.sh")
    return REDIS_URL


@pytest.fixture
def workspace_name() -> str:
    """A unique workspace per test: isolates Redis keys of concurrent or repeated runs."""
    return "t" + uuid.uuid4().hex[:12]


@pytest.fixture
def redis_cleanup(redis_url: str) -> Iterator[list[str]]:
    """Append key patterns to the yielded list; they are deleted after the test."""
    import redis

    patterns: list[str] = []
    yield patterns
    r = redis.Redis.from_url(redis_url)
    for p in patterns:
        keys = list(r.scan_iter(match=p, count=1000))
        for i in range(0, len(keys), 500):
            r.delete(*keys[i : i + 500])
    r.close()


@pytest.fixture
def make_store() -> Iterator[StoreFactory]:
    """Factory: the streaming repo (``tests.support.stream.REPO``) written under ``root`` and applied.

    Every store it made is closed at teardown (closing twice is harmless, tests may close their own).
    """
    made: list[cs.ContextStore] = []

    def make(
        root: Path,
        online_store: str = "sqlite",
        workspace: str = "default",
        history: list[dict[str, Any]] | None = None,
        partitions: int = 4,
        lateness: str = "1h",
        interval: str | None = None,
    ) -> cs.ContextStore:
        code = REPO.format(
            partitions=partitions,
            lateness=lateness,
            interval=f'aggregation_interval="{interval}",' if interval else "",
        )
        make_repo(root, code, data={"txns.parquet": events_table(history or [])})
        store = cs.ContextStore(root, workspace=workspace, online_store=online_store)
        made.append(store)
        store.apply(force=True)
        return store

    yield make
    for store in made:
        store.close()
