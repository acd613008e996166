"""Workspace -> ``ContextStore``: the one place the server opens stores, cached per process."""

from __future__ import annotations

import logging
import threading
from typing import Any

from ..config import Config, check_workspace
from ..errors import ContextStoreError
from ..serving.store import ContextStore

__all__ = ["StoreResolver"]

log = logging.getLogger("context_store.server")


class StoreResolver:
    """``resolver(workspace) -> ContextStore``; stores are built once and reused by every request."""

    def __init__(self, config: Config, max_workspaces: int = 64) -> None:
        self.config = config
        self.max_workspaces = max_workspaces
        self._stores: dict[str, ContextStore] = {}
        self._lock = threading.Lock()
        self._versions: dict[str, Any] = {}
        self._conflicts: set[str] = set()  # workspaces whose namespace another deployment holds (logged once)

    def __call__(self, workspace: str | None = None) -> ContextStore:
        ws = workspace or self.config.workspace
        store = self._stores.get(ws)
        if store is not None:
            return store
        check_workspace(ws)
        with self._lock:
            store = self._stores.get(ws)
            if store is None:
                if len(self._stores) >= self.max_workspaces:
                    # Evict the oldest: a bound on memory when auth is off and names come from requests.
                    old_ws = next(iter(self._stores))
                    self._stores.pop(old_ws).close()
                store = ContextStore(config=self.config.with_workspace(ws))
                # The version before definitions load: a later apply is then always seen as a change.
                self._versions[ws] = self._version(store)
                self._stores[ws] = store
        return store

    def open_stores(self) -> list[ContextStore]:
        return list(self._stores.values())

    @staticmethod
    def _version(store: ContextStore) -> Any:
        try:
            return store.registry.applied_version()
        except Exception:  # unreadable registry: treat as unknown, the next check retries
            return None

    def refresh_changed(self) -> None:
        """Reload definitions of workspaces whose registry changed (after an ``apply`` elsewhere), and re-check
        that this deployment still holds each opened online namespace (a take-over elsewhere: requests then
        answer the conflict, 409, instead of serving another deployment's values)."""
        for ws, store in list(self._stores.items()):
            v = self._version(store)
            if v is not None and self._versions.get(ws) != v:
                store.refresh()
                self._versions[ws] = v
            try:
                store.recheck_deployment()
                self._conflicts.discard(ws)
            except ContextStoreError as e:
                if ws not in self._conflicts:  # once, not every refresh
                    log.warning("workspace %s: %s", ws, e)
                    self._conflicts.add(ws)
            except Exception as e:  # noqa: BLE001 - the store is down: /readyz and requests say so
                log.debug("workspace %s: deployment claim not re-checked: %s", ws, e)

    def close(self) -> None:
        with self._lock:
            for store in self._stores.values():
                try:
                    store.close()
                except Exception:
                    pass
            self._stores.clear()
