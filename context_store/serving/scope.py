"""The key of one workspace's entries in the per-process serving caches (ranking, first-seen, pushed-log
index, replay memo). A server holds one ContextStore per workspace of the same repo: keyed by the repo
alone, one tenant's cached ranking was served to another (tests/serving/test_top_refresh.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ..config import Config

__all__ = ["cache_scope"]


class _Scoped(Protocol):
    @property
    def config(self) -> Config: ...

    @property
    def workspace(self) -> str: ...


def cache_scope(store: _Scoped) -> tuple[str, str]:
    """(repo, workspace): the data a cache entry was computed from is that workspace's."""
    return (str(store.config.repo), store.workspace)
