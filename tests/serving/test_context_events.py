"""Recent events of get_user_context: serving reads the online store only (lists built at materialize
time); as-of replay uses the history index when it is exact instead of re-reading the batch files."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import context_store as cs
from context_store.serving import context_events
from tests.support.context import build_context_repo


def test_serving_reads_the_online_list_only_and_replay_uses_the_exact_index(
    tmp_path: Path, workspace_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = cs.ContextStore(build_context_repo(tmp_path / "repo"), workspace=workspace_name, online_store="sqlite")
    try:
        store.apply()
        store.backfill()
        store.materialize()
        context_events._HISTORY.clear()

        def no_files(*_: Any, **__: Any) -> Any:
            raise AssertionError("batch history read on the request path")

        monkeypatch.setattr("context_store.compute.transform.read_source", no_files)
        monkeypatch.setattr(store.offline, "read", no_files)
        served = store.get_user_context("u2", context_service="user_context")
        assert [e.values["amount"] for e in served.recent_events] == [20.0, 19.0, 18.0, 17.0, 16.0]
        assert context_events._HISTORY == {}  # no per-process history index either
        monkeypatch.undo()

        replay = store.get_user_context("u2", context_service="user_context", as_of=served.served_at)
        assert [e.values for e in replay.recent_events] == [e.values for e in served.recent_events]
        # Index built: a replay reads no history file.
        monkeypatch.setattr("context_store.compute.transform.read_source", no_files)
        later = store.get_user_context(
            "u2", context_service="user_context", as_of=served.served_at - timedelta(hours=1)
        )
        assert [e.values["amount"] for e in later.recent_events] == [20.0, 19.0, 18.0, 17.0, 16.0]
        # Older replays too: the index holds every history row of the entity, so no file is read.
        old = store.get_user_context("u2", context_service="user_context", as_of=served.served_at - timedelta(hours=12))
        assert [e.values["amount"] for e in old.recent_events] == [18.0, 17.0, 16.0, 15.0, 14.0]
        monkeypatch.undo()
    finally:
        store.close()


def test_materialize_fills_an_empty_list_with_pushed_events_of_the_offline_log(
    tmp_path: Path, workspace_name: str
) -> None:
    """A new online store: materialize puts the pushed events of the offline log back on the lists."""
    from datetime import UTC, datetime

    from tests.support.context import txn_rows

    root = build_context_repo(tmp_path / "repo")
    store = cs.ContextStore(root, workspace=workspace_name, online_store="sqlite")
    try:
        store.apply()
        store.backfill()
        store.materialize()
        now = datetime.now(UTC)
        store.push("transactions", txn_rows("u7", now - timedelta(seconds=30), 2, timedelta(seconds=10), amount0=70.0))
        assert store.offline.exists("src__transactions")
        store.online.clear()
        assert store.get_user_context("u7", context_service="user_context").recent_events == []
        store.materialize()
        uc = store.get_user_context("u7", context_service="user_context")
        assert [e.values["amount"] for e in uc.recent_events] == [71.0, 70.0]
    finally:
        store.close()
