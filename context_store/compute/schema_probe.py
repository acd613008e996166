"""How definitions validation learns schemas from data: reading a source's files and running a
view's transform over a sample. Passed to the registry (``SchemaProbe``), which reads no data."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ..definitions import DType, FeatureView, Source
from ..definitions.dtypes import from_arrow
from ..registry.loader import load_repo
from ..registry.repo import RepoDefinitions
from .transform import input_schema, read_source

__all__ = ["TransformSchemaProbe", "load_checked_repo"]


class TransformSchemaProbe:
    """``registry.validate.SchemaProbe`` over the files and transforms (``compute.transform``)."""

    def source_schema(self, source: Source, repo_root: Path) -> dict[str, DType]:
        table = read_source(source, repo_root, limit=10)  # type: ignore[arg-type]
        out: dict[str, DType] = {}
        for f in table.schema:
            try:
                out[f.name] = from_arrow(f.type)
            except TypeError:
                continue
        return out

    def input_schema(self, view: FeatureView, repo_root: Path) -> dict[str, DType]:
        return input_schema(view, repo_root)


def load_checked_repo(repo_root: str | os.PathLike[str], *, exclude: Sequence[Path] = ()) -> RepoDefinitions:
    """``registry.loader.load_repo`` with columns and types checked against the data."""
    return load_repo(repo_root, exclude=exclude, probe=TransformSchemaProbe())
