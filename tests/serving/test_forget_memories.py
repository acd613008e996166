"""Forgetting an entity erases its memories too: search, the context section, the offline log, the vectors.

Memories are events of a source keyed by the entity's join key plus a vector collection with that join
key as an attribute, so the generic erasure covers them; this test holds that together.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import context_store as cs
from tests.support.memory import drop_redis_workspace, memory_store


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path, workspace_name: str) -> Iterator[cs.ContextStore]:
    online = "sqlite" if request.param == "sqlite" else request.getfixturevalue("redis_url")
    s = memory_store(tmp_path / "repo", online, workspace_name, max_per_entity=10)
    yield s
    s.close()
    if online != "sqlite":
        drop_redis_workspace(online, workspace_name)


def _offline_users(store: cs.ContextStore, n: int) -> list[str]:
    deadline = time.monotonic() + 15  # Redis mode writes the offline log about once a second
    while True:
        users = (
            store.offline.read("src__memories").column("user_id").to_pylist()
            if store.offline.exists("src__memories")
            else []
        )
        if len(users) >= n or time.monotonic() > deadline:
            return sorted(users)
        time.sleep(0.1)


def test_forget_erases_the_entitys_memories(store: cs.ContextStore) -> None:
    store.remember("Prefers window seats", "u1")
    store.remember("Allergic to peanuts", "u1")
    kept = store.remember("Prefers aisle seats", "u2")
    assert _offline_users(store, 3) == ["u1", "u1", "u2"]

    result = store.forget({"user_id": "u1"}, actor="test")
    assert result.total >= 4, result.to_dict()  # two log rows and two vectors at least
    assert store.search_memories("seats", "u1", k=5).memories == []
    assert store.search_memories("peanuts", "u1", k=5).memories == []
    assert _offline_users(store, 1) == ["u2"]
    assert [m.id for m in store.search_memories("seats", "u2", k=5).memories] == [kept.id]

    # A memory written after the forget is new data: kept, and only it.
    new = store.remember("Moved to Porto", "u1")
    assert [m.id for m in store.search_memories("Porto", "u1", k=5).memories] == [new.id]
