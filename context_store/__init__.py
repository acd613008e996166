"""context-store: a real-time feature platform and context service for ML models and LLM agents.

``import context_store as cs`` gives the definitions API and ``cs.ContextStore``.
"""

from .definitions import (
    Aggregate,
    Array,
    Bool,
    ContextService,
    Embedding,
    EmbeddingView,
    Entity,
    FeatureService,
    FeatureView,
    Field,
    FileSource,
    Float64,
    Int64,
    Knowledge,
    Lifetime,
    RealtimeFeatureView,
    RequestSource,
    StreamSource,
    String,
    Timestamp,
    realtime_feature_view,
)
from .errors import (
    ContextStoreError,
    DefinitionError,
    ForbiddenError,
    InvalidInputError,
    NotFoundError,
    RateLimitedError,
    UnauthorizedError,
    UnavailableError,
)
from .serving.store import ContextStore
from .types import FeatureVector

__version__ = "0.1.0"

__all__ = [
    "Aggregate",
    "Array",
    "Bool",
    "ContextService",
    "ContextStore",
    "ContextStoreError",
    "DefinitionError",
    "Embedding",
    "EmbeddingView",
    "Entity",
    "FeatureService",
    "FeatureVector",
    "FeatureView",
    "Field",
    "FileSource",
    "Float64",
    "ForbiddenError",
    "Int64",
    "InvalidInputError",
    "Knowledge",
    "Lifetime",
    "NotFoundError",
    "RateLimitedError",
    "RealtimeFeatureView",
    "RequestSource",
    "StreamSource",
    "String",
    "Timestamp",
    "UnauthorizedError",
    "UnavailableError",
    "realtime_feature_view",
]
