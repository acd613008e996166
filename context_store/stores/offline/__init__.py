"""Offline store: feature logs and raw events as Lance tables (see ``base.OfflineStore``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import OfflineStore

if TYPE_CHECKING:
    from ...config import Config

__all__ = ["OfflineStore", "open_offline_store", "source_table", "view_table"]


def open_offline_store(config: Config) -> OfflineStore:
    """The workspace's offline store (LanceDB at ``config.offline_uri``: a directory or an object-store URI)."""
    from .lance import LanceOfflineStore

    return LanceOfflineStore(config.offline_uri, config.offline_storage_options)
