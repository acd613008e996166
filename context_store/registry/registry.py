"""The registry: what is applied in each workspace, versioned.

Storage is a backend behind ``storage.RegistryStorage``: local files by default (``file_storage.py``, layout
there), or PostgreSQL shared by several hosts (``registry: postgresql://...``, ``pg_storage.py``).
``applied()`` reloads the applied version's snapshot of the definitions files, so serving runs exactly the
code that was applied while data paths stay relative to ``config.repo``.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from ..config import Config
from ..errors import ConflictError, InvalidInputError, NotFoundError, UnavailableError
from .loader import collect, find_definition_files, import_definitions
from .plan import Plan, compute_plan, dtype_from_str, dtype_to_str
from .repo import RepoDefinitions
from .storage import RegistryStorage, open_storage
from .validate import SchemaProbe, validate

__all__ = ["Registry", "Plan", "applied_workspaces"]

_TABLES = (
    "entities",
    "sources",
    "feature_views",
    "realtime_views",
    "embedding_views",
    "knowledge",
    "feature_services",
    "context_services",
)


def _records(defs: RepoDefinitions) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for table in _TABLES:
        for name, obj in getattr(defs, table).items():
            rec: dict[str, Any] = {"spec": obj.spec(), "location": obj.location}
            if name in defs.feature_types:
                rec["feature_types"] = {k: dtype_to_str(v) for k, v in defs.feature_types[name].items()}
            if table == "feature_views" and name in defs.input_schemas:
                rec["input_schema"] = {k: dtype_to_str(v) for k, v in defs.input_schemas[name].items()}
            out[f"{table}/{name}"] = rec
    return out


def applied_workspaces(registry_path: Path) -> list[str]:
    """Workspaces with an applied version under ``registry_path``. For an operator's hints (CLI) only:
    over HTTP a caller must not learn other workspaces' names."""
    try:
        dirs = sorted(d for d in Path(registry_path).iterdir() if d.is_dir())
    except OSError:
        return []
    return [d.name for d in dirs if (d / "CURRENT").is_file() and (d / "CURRENT").read_text().strip() not in ("", "0")]


class Registry:
    """``Registry(config)``: plan/apply the repo's definitions into ``config.workspace``."""

    def __init__(self, config: Config, probe: SchemaProbe | None = None) -> None:
        """``probe``: how ``plan``/``apply`` learn input schemas from the data (compute's
        ``TransformSchemaProbe``, passed in by ``ContextStore``); without one they check
        references only and record no input types."""
        self.config = config
        self.probe = probe
        self._cache: tuple[int, RepoDefinitions] | None = None
        self._cache_lock = threading.Lock()
        self.storage: RegistryStorage = open_storage(config)

    def close(self) -> None:
        """Release the storage's connection (a PostgreSQL registry); reopened on next use."""
        close = getattr(self.storage, "close", None)
        if close is not None:
            close()

    # -- paths -------------------------------------------------------------------------
    @property
    def root(self) -> Path:
        return Path(self.config.registry_path) / self.config.workspace

    def _exclude(self) -> list[Path]:
        c = self.config
        return [p for p in (c.data_dir, c.registry_path, c.offline_store) if p is not None]

    def deployment_id(self, create: bool = True) -> str | None:
        """This registry's deployment identity: a random id written once (at the first ``apply``, or the
        first open of a registry applied before ids existed) and read by every process of this repo, so
        they agree; a fresh repo (a new registry) gets a new one. The online namespace is claimed by it
        (``stores/online/claim.py``). None when absent and not ``create``."""
        return self.storage.deployment_id(create)

    # -- the repo ----------------------------------------------------------------------
    def load_repo(self) -> RepoDefinitions:
        """Load and validate the repo's definitions (reads sources to check columns)."""
        from .loader import load_repo

        return self._bind(load_repo(self.config.repo, exclude=self._exclude(), probe=self.probe))

    def _bind(self, defs: RepoDefinitions) -> RepoDefinitions:
        """Tell interest vectors where this workspace keeps item vectors (``compute.interest`` joins them)."""
        from ..definitions import InterestVector

        root = str(Path(self.config.offline_path) / "vectors")
        for view in defs.feature_views.values():
            if isinstance(view, InterestVector):
                view.vectors_root = root
        return defs

    # -- what is applied -----------------------------------------------------------------
    def applied_version(self) -> int:
        """The applied version number, 0 when nothing was applied in this workspace."""
        return self.storage.current_version()

    def applied_records(self, version: int | None = None) -> dict[str, dict[str, Any]]:
        v = self.applied_version() if version is None else version
        if v == 0:
            return {}
        try:
            objects: dict[str, dict[str, Any]] = self.storage.read_meta(v)["objects"]
            return objects
        except (OSError, ValueError, LookupError) as e:
            raise UnavailableError(
                f"registry version {v} of workspace '{self.config.workspace}' cannot be read ({e})", field="registry"
            ) from None

    def applied(self) -> RepoDefinitions:
        """The applied definitions, loaded from the snapshot of the applied version (cached)."""
        return self.applied_with_version()[1]

    def applied_with_version(self) -> tuple[int, RepoDefinitions]:
        """The applied definitions and the version they were loaded from (a stream worker stamps its
        announcements with it: see ``compute/stream/applied.py``)."""
        v = self.applied_version()
        if v == 0:
            raise NotFoundError(
                f"nothing applied in workspace '{self.config.workspace}'; run `context-store apply`",
                field="workspace",
            )
        with self._cache_lock:
            if self._cache is None or self._cache[0] != v:
                self._cache = (v, self._load_version(v))
            return self._cache

    def _load_version(self, v: int) -> RepoDefinitions:
        try:
            meta = self.storage.read_meta(v)
        except (OSError, ValueError, LookupError) as e:
            raise UnavailableError(
                f"registry version {v} of workspace '{self.config.workspace}' cannot be read ({e}); "
                "re-run `context-store apply`",
                field="registry",
            ) from None
        snap = self.storage.snapshot_dir(v)
        files = [snap / rel for rel in meta["files"]]
        modules = import_definitions(snap, files)
        defs = collect(m for _, m in modules)
        validate(defs, Path(self.config.repo))
        for key, rec in meta["objects"].items():
            table, name = key.split("/", 1)
            if "feature_types" in rec:
                defs.feature_types[name] = {k: dtype_from_str(s) for k, s in rec["feature_types"].items()}
            if "input_schema" in rec:
                defs.input_schemas[name] = {k: dtype_from_str(s) for k, s in rec["input_schema"].items()}
        return self._bind(defs)

    # -- plan / apply --------------------------------------------------------------------
    def plan(self) -> Plan:
        defs = self.load_repo()
        v = self.applied_version()
        plan = compute_plan(self.applied_records(v), _records(defs), self.config.workspace, v)
        plan.definitions = defs
        plan.records = _records(defs)
        return plan

    def apply(self, force: bool = False) -> Plan:
        """Commit the repo's definitions as a new version; breaking changes need ``force``."""
        with self.storage.locked():
            self.deployment_id()  # the first apply creates this registry's deployment identity
            plan = self.plan()
            if plan.breaking and not force:
                items = "; ".join(
                    f"{c.kind.replace('_', ' ')} '{c.name}' ({', '.join(c.reasons)})" for c in plan.breaking
                )
                raise ConflictError(
                    f"refusing {len(plan.breaking)} breaking change(s) without --force: {items}", field="force"
                )
            if plan.is_empty and plan.from_version:
                plan.to_version = plan.from_version
                return plan
            if not plan.records and not plan.from_version:
                raise InvalidInputError(
                    f"no definitions found in {self.config.repo}: is --repo right? "
                    "(`context-store init DIR` creates an example repo)",
                    field="repo",
                )
            plan.to_version = self._write_version(plan.from_version + 1, plan)
            return plan

    def _write_version(self, v: int, plan: Plan) -> int:
        root = Path(self.config.repo).resolve()
        files = {f.relative_to(root).as_posix(): f for f in find_definition_files(root, exclude=self._exclude())}
        meta = {
            "version": v,
            "workspace": self.config.workspace,
            "applied_at": time.time(),
            "repo": str(root),
            "files": list(files),
            "objects": plan.records,
            "plan": plan.to_dict(),
        }
        return self.storage.write_version(v - 1, meta, files)
