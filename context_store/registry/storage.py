"""Where the registry keeps its versions: a small seam with one module per backend.

``FileStorage`` (``file_storage.py``, the default) keeps them under ``registry_path/<workspace>`` on local
disk; ``PostgresStorage`` (``pg_storage.py``, ``registry: postgresql://...``) keeps them in a database that
servers and workers on several hosts share. ``Registry`` plans and validates; a storage only stores.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

from ..config import Config

__all__ = ["RegistryStorage", "open_storage"]


class RegistryStorage(Protocol):
    def current_version(self) -> int:
        """The applied version number, 0 when nothing was applied."""
        ...

    def read_meta(self, version: int) -> dict[str, Any]:
        """The ``registry.json`` of ``version`` (objects, files, plan). Raises OSError/ValueError/LookupError."""
        ...

    def snapshot_dir(self, version: int) -> Path:
        """A local directory holding the definitions files of ``version`` (imported to serve them)."""
        ...

    def versions(self) -> list[int]:
        """Every stored version, ascending."""
        ...

    def deployment_id(self, create: bool = True) -> str | None: ...

    def locked(self) -> AbstractContextManager[None]:
        """Held around plan + write of one apply: concurrent applies (any host) run one after another."""
        ...

    def write_version(self, expected: int, meta: dict[str, Any], files: dict[str, Path]) -> int:
        """Store ``meta`` and ``files`` (relative posix path -> source file) as version ``expected + 1`` and make
        it current, atomically; a ``ConflictError`` when the current version is no longer ``expected``."""
        ...


def open_storage(config: Config) -> RegistryStorage:
    if config.registry_url:
        from .pg_storage import PostgresStorage

        return PostgresStorage(config.registry_url, config.workspace, config.data_dir)
    from .file_storage import FileStorage

    return FileStorage(Path(config.registry_path) / config.workspace)
