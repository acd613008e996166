"""Interaction-trained item embeddings and declared interest vectors (docs/recommendations.md).

``InteractionEmbeddingView``: an embedding view whose vectors are learned from interaction events
(user, item, time, optional weight) by ``backfill``, not embedded from text. ``InterestVector``: a
feature view whose one feature is an entity's interest vector, the (weighted, recency-decayed) mean
of the vectors of the items in its events; the item vectors are joined in by the compute layer.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from .embedding import EmbeddingView
from .entity import Entity
from .feature_view import Aggregate, FeatureView
from .sources import FileSource, StreamSource
from .windows import Lifetime, Window, format_duration, parse_duration

__all__ = ["InteractionEmbeddingView", "InterestVector", "INTERACTION_METHODS", "ITEM_VECTOR_COLUMN"]

INTERACTION_METHODS = ("pmi_svd", "als")
# The column the item vectors are joined into (``compute.interest``); aggregated by ``mean``.
ITEM_VECTOR_COLUMN = "item_vector__"
# Attributes stored beside every learned vector: the model version it belongs to, whether it was
# learned ("cf") or projected from a text vector ("text", cold start), and its interaction count.
LEARNED_ATTRIBUTES = ("origin", "interactions")


class InteractionEmbeddingView(EmbeddingView):
    """Item vectors learned from interactions: ``cs.InteractionEmbeddingView("item_cf", item, ratings,
    user="user_id", weight="rating", method="pmi_svd", dim=64)``.

    ``backfill`` (``end=``: only interactions before it) trains a new model version and commits it
    at once; ``find_similar`` and context services read it like a text view. ``text_view`` (an
    embedding view of the same entity): items with fewer than ``min_interactions`` get their text
    vector projected into the learned space (cold start). ``min_weight``: interactions below it
    are ignored (e.g. ratings under 3.5).
    """

    def __init__(
        self,
        name: str,
        entities: list[Entity],
        source: FileSource | StreamSource,
        *,
        user: str,
        item: str | None = None,
        weight: str | None = None,
        min_weight: float | None = None,
        method: str = "pmi_svd",
        dim: int = 64,
        min_interactions: int = 3,
        text_view: EmbeddingView | None = None,
        params: dict[str, float] | None = None,
        index: str = "auto",
        description: str | None = None,
        tags: dict[str, str] | None = None,
    ) -> None:
        if method not in INTERACTION_METHODS:
            self._init_common(name, description, tags)
            self.fail(f"method must be one of {', '.join(INTERACTION_METHODS)}, got {method!r}")
        super().__init__(
            name,
            entities,
            source,
            text="model_version",  # the attribute beside each vector that names its model version
            embedder=f"interactions:{method}:{dim}",
            attributes=list(LEARNED_ATTRIBUTES),
            index=index,
            description=description,
            tags=tags,
        )
        if not isinstance(user, str) or not user:
            self.fail("user must be the name of the user column")
        self.user = user
        self.item = item or self.join_key
        if weight is not None and (not isinstance(weight, str) or not weight):
            self.fail("weight must be the name of a numeric column (or None: every interaction counts 1)")
        self.weight = weight
        if min_weight is not None and (isinstance(min_weight, bool) or not isinstance(min_weight, (int, float))):
            self.fail("min_weight must be a number")
        if min_weight is not None and weight is None:
            self.fail("min_weight needs weight=<column>")
        self.min_weight = None if min_weight is None else float(min_weight)
        self.method = method
        if isinstance(dim, bool) or not isinstance(dim, int) or not 2 <= dim <= 1024:
            self.fail(f"dim must be an int in 2..1024, got {dim!r}")
        self.dim = dim
        if isinstance(min_interactions, bool) or not isinstance(min_interactions, int) or min_interactions < 1:
            self.fail(f"min_interactions must be a positive int, got {min_interactions!r}")
        self.min_interactions = min_interactions
        if text_view is not None:
            if not isinstance(text_view, EmbeddingView) or isinstance(text_view, InteractionEmbeddingView):
                self.fail("text_view must be a text cs.EmbeddingView of the same entity")
            if text_view.join_key != self.join_key:
                self.fail(f"text_view {text_view.name!r} is keyed by {text_view.join_key!r}, not {self.join_key!r}")
        self.text_view = text_view
        self.params = dict(params or {})

    def spec(self) -> dict[str, Any]:
        return {
            **super().spec(),
            "user": self.user,
            "item": self.item,
            "weight": self.weight,
            "min_weight": self.min_weight,
            "method": self.method,
            "dim": self.dim,
            "min_interactions": self.min_interactions,
            "text_view": self.text_view.name if self.text_view else None,
            "params": self.params,
        }


class InterestVector(FeatureView):
    """An entity's interest vector, declared: ``cs.InterestVector("user_interest", user, ratings,
    item_vectors=item_cf, weight="rating", half_life="180d")`` -> feature ``interest``.

    For each event the vector of its item (``item``, default the item view's join key) is joined
    in from ``item_vectors`` (the stream at apply time, backfill when it writes the view's rows),
    multiplied by ``weight`` (a column, or 1) and by ``2 ** ((t - origin) / half_life)``; the feature
    is the ``mean`` of those over ``window``. Dividing by the same ``2 ** ((now - origin) / half_life)``
    for every event would not change the direction, so this is the recency-decayed weighted mean
    direction, exactly, and incremental (docs/recommendations.md). Keep ``origin`` within 50
    half-lives of the data (float32 range; beyond, the decay is clipped); events without an item
    vector do not count.
    """

    def __init__(
        self,
        name: str,
        entity: Entity,
        source: FileSource | StreamSource,
        item_vectors: EmbeddingView,
        *,
        item: str | None = None,
        weight: str | None = None,
        half_life: str | timedelta | None = None,
        origin: datetime | str = "2020-01-01T00:00:00Z",
        window: Window | str | None = None,
        feature: str = "interest",
        online: bool = True,
        offline: bool = True,
        description: str | None = None,
        tags: dict[str, str] | None = None,
    ) -> None:
        super().__init__(
            name,
            [entity],
            source,
            aggregations=[Aggregate(ITEM_VECTOR_COLUMN, "mean", window or Lifetime(), name=feature)],
            online=online,
            offline=offline,
            description=description,
            tags=tags,
        )
        if not isinstance(item_vectors, EmbeddingView):
            self.fail("item_vectors must be a cs.EmbeddingView (text or interaction-trained)")
        self.item_vectors = item_vectors
        self.item = item or item_vectors.join_key
        if weight is not None and (not isinstance(weight, str) or not weight):
            self.fail("weight must be the name of a numeric column")
        self.weight = weight
        self.half_life: timedelta | None = None
        if half_life is not None:
            try:
                self.half_life = parse_duration(half_life, "half_life")
            except ValueError as e:
                self.fail(str(e))
        from ..vocab.time import parse_iso

        try:
            self.origin = origin if isinstance(origin, datetime) else parse_iso(str(origin))
        except ValueError:
            self.fail(f"origin must be an ISO-8601 time, got {origin!r}")
        self.feature = feature
        self.vectors_root: str | None = None  # set by the registry when the workspace is known

    def spec(self) -> dict[str, Any]:
        return {
            **super().spec(),
            "item_vectors": self.item_vectors.name,
            "item": self.item,
            "weight": self.weight,
            "half_life": format_duration(self.half_life) if self.half_life else None,
            "origin": self.origin.isoformat(),
        }
