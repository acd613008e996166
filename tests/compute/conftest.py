"""Fixtures of the compute tests (batch and stream)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import context_store as cs
from tests.support.repo import make_repo
from tests.support.stream import REPO, StoreFactory, events_table


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
