"""The vocabulary shared by serving, REST, MCP and the client: result objects and aliases."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

__all__ = [
    "JoinKeys",
    "Row",
    "FeatureStatus",
    "MISSING_DATA",
    "NOT_MATERIALIZED",
    "PRESENT",
    "FeatureMetadata",
    "FeatureVector",
    "SimilarItem",
    "SimilarResult",
    "KnowledgeChunk",
    "KnowledgeResult",
]

JoinKeys = dict[str, Any]
Row = dict[str, Any]

# Feature statuses. PRESENT: a value the online state holds. MISSING_DATA: the state holds
# nothing for this entity (no row, older than ttl, an aggregate null over an empty window).
# NOT_MATERIALIZED: the online state of the feature's view is not complete -- never materialized in
# this workspace, a feature added by a later apply and not backfilled yet, or state lost (online
# store reset) -- so no value is served (null) rather than a wrong one; run `context-store
# materialize` (after `backfill`). Tecton's wire has no such status: the Tecton-compatible REST
# routes send it as UNKNOWN (docs/online-state.md, "Markers").
PRESENT = "PRESENT"
MISSING_DATA = "MISSING_DATA"
NOT_MATERIALIZED = "NOT_MATERIALIZED"
FeatureStatus = str  # PRESENT | MISSING_DATA | NOT_MATERIALIZED


@dataclass(frozen=True, slots=True)
class FeatureMetadata:
    name: str  # "{view}.{feature}"
    data_type: dict[str, Any]  # Tecton dataType object, e.g. {"type": "float64"}
    status: FeatureStatus
    effective_time: datetime | None
    view: str


@dataclass(slots=True)
class FeatureVector:
    """``feature_values``: name -> value in the service's declared order; ``metadata`` per feature."""

    feature_values: dict[str, Any]
    metadata: list[FeatureMetadata]
    join_keys: JoinKeys = field(default_factory=dict)
    request_time: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.feature_values)


@dataclass(frozen=True, slots=True)
class SimilarItem:
    entity_id: str
    score: float  # cosine similarity
    attributes: dict[str, Any]
    rank_score: float | None = None  # the combined score when re-ranked (cs.Rerank)


@dataclass(slots=True)
class SimilarResult:
    view: str
    items: list[SimilarItem]


@dataclass(frozen=True, slots=True)
class KnowledgeChunk:
    text: str
    score: float
    source: str  # file path relative to the repo
    start: int  # character offsets in the source document
    end: int
    chunk_id: str


@dataclass(slots=True)
class KnowledgeResult:
    knowledge: str
    query: str
    chunks: list[KnowledgeChunk]
