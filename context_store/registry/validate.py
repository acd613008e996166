"""Cross-object validation of a loaded repo: references, columns and types.

Every error names the file, line and object (``DefinitionError(location=, obj=)``), so a
user can go straight to the definition at fault.
"""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Any, Protocol

from ..definitions import (
    DType,
    EmbeddingView,
    FeatureService,
    FeatureView,
    InteractionEmbeddingView,
    InterestVector,
    RealtimeFeatureView,
    RequestSource,
    Source,
    aggregate_dtype,
)
from ..definitions.dtypes import Embedding
from ..definitions.feature_view import AGGREGATION_FUNCTIONS, FeatureSelection
from ..errors import DefinitionError
from ..vocab.tables import LOG_COLUMNS
from .repo import RepoDefinitions

__all__ = ["SchemaProbe", "source_columns", "validate"]


class SchemaProbe(Protocol):
    """What validation needs to learn from data, supplied by the caller (compute implements it:
    ``compute.schema_probe.TransformSchemaProbe``); the registry itself reads no data files."""

    def source_schema(self, source: Source, repo_root: Path) -> dict[str, DType]:
        """Columns of a source's files (its declared schema is used without calling this)."""
        ...

    def input_schema(self, view: FeatureView, repo_root: Path) -> dict[str, DType]:
        """Columns of a feature view's rows after its transform."""
        ...


def _err(obj: Any, message: str, location: str | None = None) -> DefinitionError:
    return DefinitionError(message, location=location or obj.location, obj=f"{obj.kind} '{obj.name}'")


def _fmt_cols(cols: dict[str, DType]) -> str:
    return ", ".join(sorted(cols)) or "none"


def source_columns(source: Source, repo_root: Path, probe: SchemaProbe) -> dict[str, DType]:
    """Declared schema of a source, or the columns of its files when none is declared."""
    if source.schema:
        return {f.name: f.dtype for f in source.schema}
    return probe.source_schema(source, repo_root)


def _check_references(repo: RepoDefinitions) -> None:
    for fv in repo.feature_views.values():
        if isinstance(fv, InterestVector) and repo.embedding_views.get(fv.item_vectors.name) is None:
            raise _err(fv, f"item_vectors: embedding view {fv.item_vectors.name!r} is not registered")

    def registered(view: Any, owner: Any, what: str) -> None:
        table = repo.realtime_views if isinstance(view, RealtimeFeatureView) else repo.feature_views
        found = table.get(view.name)
        if found is None:
            raise _err(
                owner,
                f"{what} {view.kind.replace('_', ' ')} {view.name!r} is not registered; assign it to a "
                "module-level variable in a definitions file (registered views: "
                f"{', '.join(sorted(repo.feature_views) + sorted(repo.realtime_views)) or 'none'})",
            )
        if found is not view and found.spec() != view.spec():
            raise _err(owner, f"{what} {view.name!r} differs from the registered view of that name ({found.location})")

    for fs in repo.feature_services.values():
        for sel in fs.selections:
            registered(sel.view, fs, "uses")
        if fs.logging is not None:
            _check_logged_service(fs)
    for rt in repo.realtime_views.values():
        for src in rt.sources:
            if isinstance(src, RequestSource):
                continue
            registered(src.view if isinstance(src, FeatureSelection) else src, rt, "reads")
    for cs in repo.context_services.values():
        if cs.feature_service is not None and repo.feature_services.get(cs.feature_service.name) is None:
            raise _err(cs, f"feature service {cs.feature_service.name!r} is not registered")
        if cs.feature_service is not None:
            for sel in cs.feature_service.selections:
                registered(sel.view, cs, "uses")
        if cs.recent_events is not None:
            stream = cs.recent_events[0]
            if repo.sources.get(stream.name) is None:
                raise _err(
                    cs,
                    f"recent_events stream source {stream.name!r} is not registered; assign it to a "
                    "module-level variable in a definitions file",
                )
        if cs.similar is not None and repo.embedding_views.get(cs.similar[0].name) is None:
            raise _err(cs, f"similar: embedding view {cs.similar[0].name!r} is not registered")
        if cs.knowledge is not None and repo.knowledge.get(cs.knowledge[0].name) is None:
            raise _err(cs, f"knowledge {cs.knowledge[0].name!r} is not registered")
        if cs.interest is not None:
            cols = cs.feature_service.column_names if cs.feature_service else []
            names = cs.feature_service.feature_names if cs.feature_service else []
            if cs.interest not in cols and cs.interest not in names:
                raise _err(cs, f"interest {cs.interest!r} is not a feature of its feature service; it has {cols}")


def _check_logged_service(fs: FeatureService) -> None:
    """A logged service's join keys name columns of ``log__{service}`` beside its request columns."""
    for view in fs.views:
        for key in getattr(view, "join_keys", ()):
            if key in LOG_COLUMNS:
                raise _err(fs, f"join key {key!r} is a column of the feature log; rename it or drop logging=")


def _check_feature_view(view: FeatureView, cols: dict[str, DType]) -> dict[str, DType]:
    """Check a view against its input columns; return the output dtype of each feature."""
    if view.timestamp_field not in cols:
        raise _err(view, f"unknown timestamp field {view.timestamp_field!r}; input columns: {_fmt_cols(cols)}")
    if cols[view.timestamp_field].name != "timestamp":
        raise _err(
            view, f"timestamp field {view.timestamp_field!r} has type {cols[view.timestamp_field]!r}, not a timestamp"
        )
    for entity in view.entities:
        for key in entity.join_key_fields:
            if key.name not in cols:
                raise _err(
                    view,
                    f"unknown join key column {key.name!r} (entity '{entity.name}'); input columns: {_fmt_cols(cols)}",
                )
            got = cols[key.name]
            if got != key.dtype:
                raise _err(
                    view,
                    f"type mismatch: join key {key.name!r} is {got!r} in the input but entity '{entity.name}' "
                    f"declares {key.dtype!r}; declare cs.Field({key.name!r}, {got!r}) in the entity "
                    "or cast in a transform",
                )
    types: dict[str, DType] = {}
    for agg in view.aggregations:
        if agg.column not in cols:
            raise _err(
                view,
                f"aggregate {agg.output_name!r}: unknown column {agg.column!r}; input columns: {_fmt_cols(cols)}",
                location=agg.location or None,
            )
        dtype = cols[agg.column]
        numeric, _, _ = AGGREGATION_FUNCTIONS[agg.function]
        if isinstance(dtype, Embedding):
            if agg.function not in ("mean", "count", "last"):
                raise _err(
                    view,
                    f"type mismatch: aggregate {agg.output_name!r}: {agg.function} is not defined over "
                    f"the embedding column {agg.column!r} (use mean)",
                    location=agg.location or None,
                )
        elif numeric and not dtype.is_numeric:
            raise _err(
                view,
                f"type mismatch: aggregate {agg.output_name!r}: {agg.function} needs a numeric column but "
                f"{agg.column!r} is {dtype!r}",
                location=agg.location or None,
            )
        elif dtype.name == "array" and agg.function != "count":
            raise _err(
                view,
                f"type mismatch: aggregate {agg.output_name!r}: {agg.function} over the array column "
                f"{agg.column!r} is not supported",
                location=agg.location or None,
            )
        types[agg.output_name] = aggregate_dtype(agg.function, dtype)
    for f in view.features_in:
        if f.name not in cols:
            raise _err(view, f"feature {f.name!r}: unknown column; input columns: {_fmt_cols(cols)}")
        if cols[f.name] != f.dtype:
            raise _err(
                view, f"type mismatch: feature {f.name!r} is declared {f.dtype!r} but the column is {cols[f.name]!r}"
            )
        types[f.name] = f.dtype
    return types


def _check_embedding_view(ev: EmbeddingView, cols: dict[str, DType]) -> None:
    if isinstance(ev, InteractionEmbeddingView):  # learned: its source holds interactions, not texts
        for what, c in (("user", ev.user), ("item", ev.item), ("weight", ev.weight)):
            if c is not None and c not in cols:
                raise _err(ev, f"unknown {what} column {c!r}; source columns: {_fmt_cols(cols)}")
        if ev.weight is not None and not cols[ev.weight].is_numeric:
            raise _err(ev, f"type mismatch: weight column {ev.weight!r} is {cols[ev.weight]!r}, not numeric")
        return
    if ev.join_key not in cols:
        raise _err(ev, f"unknown join key column {ev.join_key!r}; source columns: {_fmt_cols(cols)}")
    if ev.text not in cols:
        raise _err(ev, f"unknown text column {ev.text!r}; source columns: {_fmt_cols(cols)}")
    if cols[ev.text].name != "string":
        raise _err(ev, f"type mismatch: text column {ev.text!r} is {cols[ev.text]!r}, not cs.String")
    for a in ev.attributes:
        if a not in cols:
            raise _err(ev, f"unknown attribute column {a!r}; source columns: {_fmt_cols(cols)}")


def validate(repo: RepoDefinitions, repo_root: Path, probe: SchemaProbe | None = None) -> None:
    """Check references always; with a ``probe``, read sources to check columns and fill types."""
    _check_references(repo)
    for rt in repo.realtime_views.values():
        repo.feature_types[rt.name] = {f.name: f.dtype for f in rt.output}
    if probe is None:
        return
    for view in repo.feature_views.values():
        try:
            cols = probe.input_schema(view, repo_root)
        except DefinitionError:
            raise
        except Exception as e:  # unreadable files, a broken transform...: a definition problem
            raise _err(view, f"cannot read the view's input rows: {type(e).__name__}: {e}") from None
        repo.input_schemas[view.name] = cols
        repo.feature_types[view.name] = _check_feature_view(view, cols)
    for ev in repo.embedding_views.values():
        try:
            cols = source_columns(ev.source, repo_root, probe)
        except DefinitionError:
            raise
        except Exception as e:
            raise _err(ev, f"cannot read the source: {type(e).__name__}: {e}") from None
        _check_embedding_view(ev, cols)
    for kn in repo.knowledge.values():
        pattern = str(Path(repo_root) / kn.source) if not Path(kn.source).is_absolute() else kn.source
        if not [p for p in glob.glob(pattern, recursive=True) if Path(p).is_file()]:
            raise _err(kn, f"no document matches source {kn.source!r} (resolved to {pattern})")
    for fs in repo.feature_services.values():
        _check_service_features(fs, repo)


def _check_service_features(fs: FeatureService, repo: RepoDefinitions) -> None:
    for sel in fs.selections:
        known = repo.feature_types.get(sel.view.name, {})
        for n in sel.features:
            if known and n not in known:
                raise _err(fs, f"feature view {sel.view.name!r} has no feature {n!r}")
