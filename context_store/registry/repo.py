"""``RepoDefinitions``: every object of one feature repo, by kind and name, validated.

Built by ``registry.loader.load_repo`` (from the repo's ``*.py`` files) or from the
applied snapshot in the registry. Serving code reads definitions only through this.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..definitions import (
    ContextService,
    DType,
    EmbeddingView,
    Entity,
    FeatureService,
    FeatureView,
    Knowledge,
    RealtimeFeatureView,
    RequestSource,
    Source,
)
from ..errors import NotFoundError

__all__ = ["RepoDefinitions"]


@dataclass
class RepoDefinitions:
    entities: dict[str, Entity] = field(default_factory=dict)
    sources: dict[str, Source] = field(default_factory=dict)
    feature_views: dict[str, FeatureView] = field(default_factory=dict)
    realtime_views: dict[str, RealtimeFeatureView] = field(default_factory=dict)
    embedding_views: dict[str, EmbeddingView] = field(default_factory=dict)
    knowledge: dict[str, Knowledge] = field(default_factory=dict)
    feature_services: dict[str, FeatureService] = field(default_factory=dict)
    context_services: dict[str, ContextService] = field(default_factory=dict)
    # Column types of each feature view's input rows (source after transform), resolved at load.
    input_schemas: dict[str, dict[str, DType]] = field(default_factory=dict)
    # Output type of every feature of every (realtime) feature view: view -> feature -> dtype.
    feature_types: dict[str, dict[str, DType]] = field(default_factory=dict)

    def _get(self, table: dict[str, Any], name: str, what: str) -> Any:
        try:
            return table[name]
        except (KeyError, TypeError):
            known = ", ".join(sorted(table)) or "none"
            raise NotFoundError(f"unknown {what} {name!r}; known: {known}", field=what.replace(" ", "_")) from None

    def feature_service(self, name: str) -> FeatureService:
        return self._get(self.feature_services, name, "feature service")

    def feature_view(self, name: str) -> FeatureView:
        return self._get(self.feature_views, name, "feature view")

    def context_service(self, name: str) -> ContextService:
        return self._get(self.context_services, name, "context service")

    def source(self, name: str) -> Source:
        return self._get(self.sources, name, "source")

    def request_fields(self, service: FeatureService) -> dict[str, DType]:
        """Every request-context field a service's realtime views need."""
        out: dict[str, DType] = {}
        for view in service.views:
            if isinstance(view, RealtimeFeatureView):
                for src in view.request_sources:
                    assert isinstance(src, RequestSource)
                    for f in src.schema or ():
                        out[f.name] = f.dtype
        return out
