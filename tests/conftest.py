"""Shared fixtures. Tests talk to a real Redis (started by scripts/ensure_redis.sh in CI)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from tests.support.redis import REDIS_URL, redis_up

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
