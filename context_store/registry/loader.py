"""Load a feature repo: import its ``*.py`` files in isolation and collect the definitions.

Each file is compiled from source (no ``__pycache__`` in the user's repo, no stale bytecode
when a file is rewritten within the same second). While loading, the repo's modules are
importable by their plain names so that ``from entities import user`` works across files;
afterwards they are removed from ``sys.modules`` so two repos never see each other's modules.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import linecache
import os
import sys
import threading
import traceback
import types
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..definitions import (
    ContextService,
    Definition,
    EmbeddingView,
    Entity,
    FeatureService,
    FeatureView,
    Knowledge,
    Memory,
    RealtimeFeatureView,
    RequestSource,
    Source,
)
from ..definitions.memory import builtin_memory
from ..errors import DefinitionError
from .repo import RepoDefinitions

if TYPE_CHECKING:
    from .validate import SchemaProbe

__all__ = ["load_repo", "find_definition_files", "import_definitions", "SKIP_DIRS"]

# Directories never scanned for definitions (data, tests, virtualenvs, build output).
SKIP_DIRS = frozenset(
    {"data", "tests", "test", "docs", "venv", "env", "node_modules", "build", "dist", "site-packages", "evals"}
)
_SKIP_FILES = frozenset({"conftest.py", "setup.py", "noxfile.py"})
_LOCK = threading.RLock()  # sys.modules / sys.meta_path are process-global


def find_definition_files(repo_root: Path, exclude: Sequence[Path] = ()) -> list[Path]:
    """Every definitions file under ``repo_root``, sorted, skipping hidden/data/test dirs."""
    root = Path(repo_root).resolve()
    excluded = {Path(p).resolve() for p in exclude}
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(
            d
            for d in dirnames
            if not d.startswith((".", "_")) and d not in SKIP_DIRS and (here / d).resolve() not in excluded
        )
        for fn in sorted(filenames):
            if (
                fn.endswith(".py")
                and not fn.startswith(".")
                and fn not in _SKIP_FILES
                and not fn.startswith("test_")
                and not fn.endswith("_test.py")
                and (fn != "__init__.py" or here != root)
            ):
                out.append(here / fn)
    return out


def _module_name(root: Path, path: Path) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


class _SourceLoader(importlib.abc.Loader):
    """Executes a file compiled from its current source text (never from cached bytecode)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return None

    def exec_module(self, module: types.ModuleType) -> None:
        if self.path is None:  # a directory without __init__.py: an empty package
            return
        source = self.path.read_bytes()
        code = compile(source, str(self.path), "exec", dont_inherit=True)
        exec(code, module.__dict__)


class _RepoFinder(importlib.abc.MetaPathFinder):
    """Resolves the repo's own module names (files and their directories) to the repo's files."""

    def __init__(self, root: Path, files: Iterable[Path], shadowed: set[str]) -> None:
        self.root = root
        self.modules: dict[str, Path] = {}
        self.packages: dict[str, Path] = {}
        for f in files:
            name = _module_name(root, f)
            if f.name == "__init__.py":
                self.packages[name] = f.parent
            self.modules[name] = f
            parts = name.split(".")
            for i in range(1, len(parts)):
                pkg = ".".join(parts[:i])
                self.packages.setdefault(pkg, root.joinpath(*parts[:i]))
        self.shadowed = shadowed

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname in self.shadowed:
            return None
        file = self.modules.get(fullname)
        is_pkg = fullname in self.packages
        if file is None and not is_pkg:
            return None
        spec = importlib.machinery.ModuleSpec(
            fullname, _SourceLoader(file), origin=str(file) if file else None, is_package=is_pkg
        )
        if is_pkg:
            spec.submodule_search_locations = [str(self.packages[fullname])]
        if file is not None:
            spec.has_location = True
        return spec


def _user_frame_location(exc: BaseException, files: set[str]) -> str | None:
    """``file:line`` of the deepest traceback frame inside one of the repo's files."""
    loc = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if os.path.abspath(frame.filename) in files:
            loc = f"{frame.filename}:{frame.lineno}"
    return loc


def _import_error(exc: BaseException, path: Path, files: set[str]) -> DefinitionError:
    if isinstance(exc, DefinitionError):
        return exc
    if isinstance(exc, SyntaxError):
        loc = f"{exc.filename or path}:{exc.lineno or 0}"
        return DefinitionError(f"syntax error: {exc.msg}", location=loc, obj=f"file {path.name}")
    loc = _user_frame_location(exc, files) or f"{path}:0"
    msg = str(exc).strip() or type(exc).__name__
    return DefinitionError(
        f"importing {path.name} raised {type(exc).__name__}: {msg}", location=loc, obj=f"file {path.name}"
    )


def import_definitions(repo_root: Path, files: Sequence[Path] | None = None) -> list[tuple[Path, types.ModuleType]]:
    """Import the repo's files (isolated) and return ``(file, module)`` pairs in file order."""
    root = Path(repo_root).resolve()
    if not root.is_dir():
        raise DefinitionError(f"feature repo {str(root)!r} is not a directory")
    files = list(files) if files is not None else find_definition_files(root)
    abs_files = {os.path.abspath(f) for f in files}
    with _LOCK:
        before = dict(sys.modules)
        # A repo file named like an already-imported module (e.g. ``json.py``) is loaded
        # under a private name instead of replacing the real module for the whole process.
        shadowed = {n for n in (_module_name(root, f) for f in files) if n.split(".")[0] in before}
        finder = _RepoFinder(root, files, shadowed)
        sys.meta_path.insert(0, finder)
        importlib.invalidate_caches()
        for abs_f in abs_files:  # inspect.getsource (spec hashes of transforms) must see the current text
            linecache.cache.pop(abs_f, None)
        loaded: list[tuple[Path, types.ModuleType]] = []
        try:
            for f in files:
                name = _module_name(root, f)
                try:
                    if name in shadowed:
                        private = f"_context_store_repo_{uuid.uuid4().hex[:8]}_{name.replace('.', '_')}"
                        spec = importlib.util.spec_from_loader(private, _SourceLoader(f), origin=str(f))
                        assert spec is not None
                        spec.has_location = True
                        mod = importlib.util.module_from_spec(spec)
                        sys.modules[private] = mod
                        spec.loader.exec_module(mod)  # type: ignore[union-attr]
                    else:
                        mod = importlib.import_module(name)
                except DefinitionError:
                    raise
                except (Exception, SystemExit) as e:  # the user's code: report file:line, never a traceback
                    raise _import_error(e, f, abs_files) from None
                loaded.append((f, mod))
        finally:
            sys.meta_path.remove(finder)
            for name in list(sys.modules):
                if name not in before:
                    mod = sys.modules[name]
                    origin = getattr(getattr(mod, "__spec__", None), "loader", None)
                    if isinstance(origin, _SourceLoader) or name.startswith("_context_store_repo_"):
                        del sys.modules[name]
                elif sys.modules[name] is not before[name]:
                    sys.modules[name] = before[name]
        return loaded


def _module_objects(mod: types.ModuleType) -> Iterable[Any]:
    for key, value in vars(mod).items():
        if key.startswith("__"):
            continue
        if isinstance(value, (list, tuple, set, frozenset)):
            yield from value
        elif isinstance(value, dict):
            yield from value.values()
        else:
            yield value


_TABLES: dict[type, str] = {
    Entity: "entities",
    Source: "sources",
    FeatureView: "feature_views",
    RealtimeFeatureView: "realtime_views",
    EmbeddingView: "embedding_views",
    Knowledge: "knowledge",
    FeatureService: "feature_services",
    ContextService: "context_services",
}
_KIND_LABEL = {
    "entities": "entity",
    "sources": "source",
    "feature_views": "feature view",
    "realtime_views": "feature view",
    "embedding_views": "embedding view",
    "knowledge": "knowledge",
    "feature_services": "feature service",
    "context_services": "context service",
}


def _table_of(obj: Definition) -> str | None:
    if isinstance(obj, RequestSource):
        return None  # part of the realtime view that uses it; many share the default name "request"
    for cls, table in _TABLES.items():
        if isinstance(obj, cls):
            return table
    return None


class _Collector:
    def __init__(self) -> None:
        self.repo = RepoDefinitions()
        self.seen: set[int] = set()

    def add(self, obj: Definition) -> None:
        if id(obj) in self.seen:
            return
        table_name = _table_of(obj)
        if table_name is None:
            return
        if isinstance(obj, FeatureService) and obj.is_reference:
            return  # ``FeatureService(name="x")`` is a client-side reference, not a definition
        self.seen.add(id(obj))
        # Feature views and realtime views share one namespace: both are addressed as ``view.feature``.
        tables = (
            ("feature_views", "realtime_views") if table_name in ("feature_views", "realtime_views") else (table_name,)
        )
        for t in tables:
            other = getattr(self.repo, t).get(obj.name)
            if other is not None and other is not obj:
                label = _KIND_LABEL[table_name]
                raise DefinitionError(
                    f"duplicate {label} name {obj.name!r}: also defined at {other.location}",
                    location=obj.location,
                    obj=f"{obj.kind} '{obj.name}'",
                )
        getattr(self.repo, table_name)[obj.name] = obj
        # Objects a definition depends on are registered with it (a source written inline, ...).
        if isinstance(obj, (FeatureView, EmbeddingView)):
            for e in obj.entities:
                self.add(e)
            self.add(obj.source)
        elif isinstance(obj, Memory):
            self.add(obj.entity)
        elif isinstance(obj, ContextService):
            self.add(obj.entity)
            fs = obj.feature_service
            if fs is not None and fs.name == f"{obj.name}_features" and fs.name not in self.repo.feature_services:
                self.add(fs)  # built by ContextService from a plain list of views


def collect(modules: Iterable[types.ModuleType]) -> RepoDefinitions:
    c = _Collector()
    for mod in modules:
        for value in _module_objects(mod):
            # A FeatureSelection (``view[["a"]]``) is not a definition: its view is registered itself.
            if isinstance(value, Definition):
                c.add(value)
    builtin = builtin_memory(c.repo.sources.values(), c.repo.context_services.values())
    if builtin is not None:  # docs/memory.md: one per workspace unless the repo declares a cs.Memory
        c.repo.sources[builtin.name] = builtin
    return c.repo


def load_repo(
    repo_root: str | os.PathLike[str],
    *,
    exclude: Sequence[Path] = (),
    probe: SchemaProbe | None = None,
) -> RepoDefinitions:
    """Import every definitions file of the repo, collect and validate the objects.

    ``probe`` reads each view's input columns from its source (after the transform) to check
    columns and types and to fill ``input_schemas``/``feature_types``; without one only
    references are checked (as when the registry reloads an applied snapshot: types come from
    the stored registry). ``compute.schema_probe.load_checked_repo`` passes the compute one.
    """
    from .validate import validate

    root = Path(repo_root).resolve()
    files = find_definition_files(root, exclude=exclude)
    modules = import_definitions(root, files)
    repo = collect(m for _, m in modules)
    validate(repo, root, probe)
    return repo
