"""Fixtures of the MCP tool tests."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import context_store as cs
from tests.support.context import build_context_repo, txn_rows
from tests.support.mcp import McpStoreFactory


@pytest.fixture(scope="module")
def prepare_store() -> Iterator[McpStoreFactory]:
    """Factory: a store on the context repo, loaded and with 3 pushed events of u1 a minute old.

    Module-scoped because the modules share one prepared store per module; all are closed at teardown.
    """
    made: list[cs.ContextStore] = []

    def make(root: Path, workspace: str, online: str) -> cs.ContextStore:
        store = cs.ContextStore(build_context_repo(root), workspace=workspace, online_store=online)
        made.append(store)
        store.apply()
        store.backfill()
        store.materialize()
        now = datetime.now(UTC)
        store.push("transactions", txn_rows("u1", now - timedelta(seconds=60), 3, timedelta(seconds=10), amount0=100.0))
        return store

    yield make
    for store in made:
        store.close()
