"""Feature services (what a model reads) and context services (what an agent reads)."""

from __future__ import annotations

from typing import Any

from ..errors import DefinitionError
from .base import Definition
from .embedding import EmbeddingView, Knowledge
from .entity import Entity
from .feature_view import FeatureSelection, FeatureView
from .realtime import RealtimeFeatureView
from .retrieval import Similar, check_budget
from .sources import StreamSource

__all__ = ["FeatureService", "ContextService", "LoggingConfig"]

ViewLike = FeatureView | RealtimeFeatureView


class LoggingConfig:
    """Feature logging of a service: ``cs.FeatureService("fraud", [...], logging=cs.LoggingConfig(sample_rate=0.1))``
    writes each served vector (a deterministic ``sample_rate`` share of request ids) to the offline table
    ``log__{service}``, off the request path (docs/feature-logging.md)."""

    def __init__(self, sample_rate: float = 1.0) -> None:
        if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, float)) or not 0 < sample_rate <= 1:
            raise DefinitionError(f"LoggingConfig: sample_rate must be a number in (0, 1], got {sample_rate!r}")
        self.sample_rate = float(sample_rate)

    def spec(self) -> dict[str, Any]:
        return {"sample_rate": self.sample_rate}

    def __repr__(self) -> str:
        return f"LoggingConfig(sample_rate={self.sample_rate})"


class FeatureService(Definition):
    """A named, ordered set of features: ``cs.FeatureService("fraud", [txn_stats, user_profile[["age"]]])``.

    Online results name features ``{view}.{feature}`` and training data names columns
    ``{view}__{feature}`` (Tecton's conventions), in declared order.
    ``FeatureService(name="x")`` with no features is a reference by name (for clients).
    ``logging=cs.LoggingConfig(...)`` logs served vectors to the offline store (docs/feature-logging.md).
    """

    kind = "feature_service"

    def __init__(
        self,
        name: str,
        features: list[ViewLike | FeatureSelection] | None = None,
        description: str | None = None,
        tags: dict[str, str] | None = None,
        owner: str | None = None,
        logging: LoggingConfig | None = None,
    ) -> None:
        self._init_common(name, description, tags, owner)
        self.is_reference = features is None
        if logging is not None and not isinstance(logging, LoggingConfig):
            self.fail(f"logging must be a cs.LoggingConfig, got {type(logging).__name__}")
        self.logging = logging
        if features is not None and (not isinstance(features, (list, tuple)) or not features):
            self.fail("features must be a non-empty list of feature views or view[['feature', ...]]")
        selections: list[FeatureSelection] = []
        for f in features or ():
            if isinstance(f, (FeatureView, RealtimeFeatureView)):
                selections.append(FeatureSelection(f, tuple(f.feature_names)))
            elif isinstance(f, FeatureSelection):
                selections.append(f)
            else:
                self.fail(f"features: {f!r} is not a feature view or a selection of one")
        seen: set[str] = set()
        for s in selections:
            if s.view.name in seen:
                self.fail(f"feature view {s.view.name!r} appears twice")
            seen.add(s.view.name)
        self.selections: tuple[FeatureSelection, ...] = tuple(selections)

    @property
    def feature_names(self) -> list[str]:
        """Online names: ``view.feature``."""
        return [f"{s.view.name}.{n}" for s in self.selections for n in s.features]

    @property
    def column_names(self) -> list[str]:
        """Training-data column names: ``view__feature``."""
        return [f"{s.view.name}__{n}" for s in self.selections for n in s.features]

    @property
    def views(self) -> list[ViewLike]:
        return [s.view for s in self.selections]

    def spec(self) -> dict[str, Any]:
        spec = {**super().spec(), "features": [[s.view.name, list(s.features)] for s in self.selections]}
        if self.logging is not None:  # absent when off: services applied before logging existed show no change
            spec["logging"] = self.logging.spec()
        return spec


class ContextService(Definition):
    """What ``get_user_context`` returns for one entity: features, recent events, similar items, knowledge.

    ``similar``: ``(view, k)`` or a ``cs.Similar`` (seen items left out, filters, re-ranking;
    definitions/retrieval.py). ``budget``: section -> share of ``max_tokens`` it may claim first
    (``{"similar": 0.35, "recent_events": 0.25}``; unnamed sections keep their default share)."""

    kind = "context_service"

    def __init__(
        self,
        name: str,
        entity: Entity,
        features: FeatureService | list[ViewLike | FeatureSelection] | None = None,
        recent_events: tuple[StreamSource, int] | None = None,
        similar: tuple[EmbeddingView, int] | Similar | None = None,
        interest: str | None = None,
        knowledge: Knowledge | tuple[Knowledge, int] | None = None,
        description: str | None = None,
        tags: dict[str, str] | None = None,
        memories: int = 5,
        budget: dict[str, float] | None = None,
        owner: str | None = None,
    ) -> None:
        self._init_common(name, description, tags, owner)
        if not isinstance(entity, Entity):
            self.fail("entity must be a cs.Entity")
        self.entity = entity
        if features is None or isinstance(features, FeatureService):
            self.feature_service = features
        elif isinstance(features, (list, tuple)):
            self.feature_service = FeatureService(f"{name}_features", list(features), owner=owner)
        else:
            self.fail("features must be a cs.FeatureService or a list of feature views")
        self.recent_events: tuple[StreamSource, int] | None = None
        if recent_events is not None:
            if (
                not isinstance(recent_events, tuple)
                or len(recent_events) != 2
                or not isinstance(recent_events[0], StreamSource)
                or not isinstance(recent_events[1], int)
                or not 1 <= recent_events[1] <= 1000
            ):
                self.fail("recent_events must be (cs.StreamSource, n) with 1 <= n <= 1000")
            self.recent_events = recent_events
        self.similar: tuple[EmbeddingView, int] | None = None
        self.similar_options: Similar | None = None
        if isinstance(similar, Similar):
            self.similar_options = similar
            self.similar = (similar.view, similar.k)
        elif similar is not None:
            if (
                not isinstance(similar, tuple)
                or len(similar) != 2
                or not isinstance(similar[0], EmbeddingView)
                or not isinstance(similar[1], int)
                or not 1 <= similar[1] <= 100
            ):
                self.fail("similar must be (cs.EmbeddingView, k) with 1 <= k <= 100")
            self.similar = similar
            self.similar_options = Similar(similar[0], similar[1])
        # Which feature (``view__feature``) of the service is the entity's interest vector.
        self.interest = interest
        self.knowledge: tuple[Knowledge, int] | None = None
        if knowledge is not None:
            kn = (knowledge, 3) if isinstance(knowledge, Knowledge) else knowledge
            if (
                not isinstance(kn, tuple)
                or len(kn) != 2
                or not isinstance(kn[0], Knowledge)
                or not isinstance(kn[1], int)
            ):
                self.fail("knowledge must be a cs.Knowledge or (cs.Knowledge, k)")
            self.knowledge = kn
        # How many of the entity's memories (cs.Memory, docs/memory.md) the context holds; 0: none.
        if isinstance(memories, bool) or not isinstance(memories, int) or not 0 <= memories <= 50:
            self.fail(f"memories must be an int in 0..50, got {memories!r}")
        self.memories = memories
        try:
            self.budget = check_budget(budget)
        except ValueError as e:
            self.fail(str(e))

    def spec(self) -> dict[str, Any]:
        return {
            **super().spec(),
            "entity": self.entity.name,
            "features": self.feature_service.name if self.feature_service else None,
            "recent_events": [self.recent_events[0].name, self.recent_events[1]] if self.recent_events else None,
            "similar": [self.similar[0].name, self.similar[1]] if self.similar else None,
            "interest": self.interest,
            "knowledge": [self.knowledge[0].name, self.knowledge[1]] if self.knowledge else None,
            **({"memories": self.memories} if self.memories != 5 else {}),  # an upgrade shows no change
            **({"similar_options": opts} if (opts := self._similar_spec()) else {}),
            **({"budget": self.budget} if self.budget else {}),
        }

    def _similar_spec(self) -> dict[str, Any] | None:
        """The retrieval options when they differ from ``(view, k)``'s defaults (no change on upgrade)."""
        o = self.similar_options
        if o is None:
            return None
        spec = o.spec()
        default = Similar(o.view, o.k).spec()
        return spec if spec != default else None
