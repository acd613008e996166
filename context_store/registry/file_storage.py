"""The file registry (the default): versions of one workspace under a local directory.

Layout under ``registry_path / <workspace>``::

    CURRENT                     the applied version number (replaced atomically)
    DEPLOYMENT                  this registry's deployment id (random, created once; see ``deployment_id``)
    .lock                       serialises concurrent ``apply`` calls (flock)
    versions/000003/registry.json   every object's spec + resolved types
    versions/000003/repo/...py      a copy of the definitions files that were applied

A version directory is written under a temporary name and renamed into place before
``CURRENT`` moves, so a reader (a server calling ``applied()``) never sees a partial version.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import ConflictError, UnavailableError

__all__ = ["FileStorage", "atomic_write"]


def atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class FileStorage:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _version_dir(self, version: int) -> Path:
        return self.root / "versions" / f"{version:06d}"

    def current_version(self) -> int:
        try:
            return int((self.root / "CURRENT").read_text().strip() or 0)
        except FileNotFoundError:
            return 0
        except ValueError:
            raise ConflictError(f"registry file {self.root / 'CURRENT'} is corrupt") from None

    def read_meta(self, version: int) -> dict[str, Any]:
        meta: dict[str, Any] = json.loads((self._version_dir(version) / "registry.json").read_text())
        return meta

    def snapshot_dir(self, version: int) -> Path:
        return self._version_dir(version) / "repo"

    def versions(self) -> list[int]:
        try:
            return sorted(int(d.name) for d in (self.root / "versions").iterdir() if d.name.isdigit())
        except OSError:
            return []

    def deployment_id(self, create: bool = True) -> str | None:
        path = self.root / "DEPLOYMENT"
        try:
            return path.read_text().strip() or None
        except FileNotFoundError:
            if not create:
                return None
        tmp = path.with_name(f".DEPLOYMENT.{uuid.uuid4().hex[:8]}.tmp")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            atomic_write(tmp, f"{uuid.uuid4().hex[:16]}\n".encode())
            try:
                os.link(tmp, path)  # create-if-absent: of two processes creating it at once, all keep the winner's
            except FileExistsError:
                pass
            finally:
                tmp.unlink(missing_ok=True)
            return path.read_text().strip() or None
        except OSError as e:
            raise UnavailableError(
                f"cannot create this registry's deployment id {path} ({e}); run `context-store apply` once where "
                "the registry is writable",
                field="registry",
            ) from None

    @contextmanager
    def locked(self) -> Iterator[None]:
        import fcntl

        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a+") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def write_version(self, expected: int, meta: dict[str, Any], files: dict[str, Path]) -> int:
        # Callers hold ``locked()``; the check still refuses a writer that planned outside it.
        current = self.current_version()
        if current != expected:
            raise ConflictError(
                f"registry moved from version {expected} to {current} while applying; re-run apply", field="registry"
            )
        v = expected + 1
        versions = self.root / "versions"
        versions.mkdir(parents=True, exist_ok=True)
        tmp = versions / f".tmp-{uuid.uuid4().hex[:10]}"
        (tmp / "repo").mkdir(parents=True)
        for rel, src in files.items():
            dst = tmp / "repo" / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
        atomic_write(tmp / "registry.json", json.dumps(meta, indent=1, sort_keys=True, default=str).encode())
        final = self._version_dir(v)
        if final.exists():  # a crashed earlier apply left it behind without moving CURRENT
            shutil.rmtree(final)
        os.rename(tmp, final)
        atomic_write(self.root / "CURRENT", f"{v}\n".encode())
        return v
