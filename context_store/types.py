"""The vocabulary shared by serving, REST, MCP and the client: result objects and aliases."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .vocab.time import us_to_datetime

__all__ = [
    "JoinKeys",
    "Row",
    "FeatureStatus",
    "MISSING_DATA",
    "NOT_MATERIALIZED",
    "PRESENT",
    "FeatureMetadata",
    "FeatureVector",
    "LazyFeatureVector",
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


_METADATA: Any = vars(FeatureVector)["metadata"]  # the dataclass slots (member descriptors), shadowed below
_REQUEST_TIME: Any = vars(FeatureVector)["request_time"]


class LazyFeatureVector(FeatureVector):
    """A ``FeatureVector`` whose ``metadata`` and ``request_time`` are built on first access: the
    get-features hot path sends neither in the common response, and building them (a datetime and
    ten metadata objects per lookup: a continuous window ends at the request) was ~15% of its CPU.
    ``build(arg)`` returns the metadata list; reads, writes and equality behave as a FeatureVector's."""

    __slots__ = ("_build", "_arg", "_rt_us")

    def __init__(
        self,
        feature_values: dict[str, Any],
        join_keys: JoinKeys,
        build: Callable[[Any], list[FeatureMetadata]],
        arg: Any,
        request_time: datetime | None,
        request_us: int,
    ) -> None:
        self.feature_values = feature_values
        self.join_keys = join_keys
        self._build, self._arg, self._rt_us = build, arg, request_us
        if request_time is not None:
            _REQUEST_TIME.__set__(self, request_time)

    @property
    def metadata(self) -> list[FeatureMetadata]:
        try:
            return _METADATA.__get__(self)
        except AttributeError:
            m = self._build(self._arg)
            _METADATA.__set__(self, m)
            self._arg = None  # the read results it was built from
            return m

    @metadata.setter
    def metadata(self, value: list[FeatureMetadata]) -> None:
        _METADATA.__set__(self, value)

    @property
    def request_time(self) -> datetime | None:
        try:
            return _REQUEST_TIME.__get__(self)
        except AttributeError:
            rt = us_to_datetime(self._rt_us)
            _REQUEST_TIME.__set__(self, rt)
            return rt

    @request_time.setter
    def request_time(self, value: datetime | None) -> None:
        _REQUEST_TIME.__set__(self, value)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FeatureVector):
            return NotImplemented
        return (self.feature_values, self.metadata, self.join_keys, self.request_time) == (
            other.feature_values,
            other.metadata,
            other.join_keys,
            other.request_time,
        )

    __hash__ = None  # type: ignore[assignment]  # mutable, like FeatureVector

    def __repr__(self) -> str:
        return "FeatureVector" + FeatureVector.__repr__(self)[len("LazyFeatureVector") :]


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
