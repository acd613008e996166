"""Definitions: plain annotated Python objects, checked when constructed and when registered.

Knows nothing of stores, compute or serving.
"""

from .base import Definition
from .dtypes import Array, Bool, DType, Embedding, Float64, Int64, String, Timestamp
from .embedding import EmbeddingView, Knowledge
from .entity import Entity, Field
from .expectations import Expect, Expectation
from .feature_view import AGGREGATION_FUNCTIONS, Aggregate, FeatureSelection, FeatureView, aggregate_dtype
from .interactions import InteractionEmbeddingView, InterestVector
from .memory import Memory
from .realtime import RealtimeFeatureView, realtime_feature_view
from .retrieval import MMR, Rerank, Similar, TopItems
from .services import ContextService, FeatureService, LoggingConfig
from .sources import FileSource, RequestSource, Source, StreamSource
from .windows import Lifetime, format_duration, parse_duration

__all__ = [
    "AGGREGATION_FUNCTIONS",
    "Aggregate",
    "Array",
    "Bool",
    "ContextService",
    "DType",
    "Definition",
    "Embedding",
    "EmbeddingView",
    "Entity",
    "Expect",
    "Expectation",
    "FeatureSelection",
    "FeatureService",
    "FeatureView",
    "Field",
    "FileSource",
    "Float64",
    "Int64",
    "InteractionEmbeddingView",
    "InterestVector",
    "Knowledge",
    "Lifetime",
    "LoggingConfig",
    "Memory",
    "MMR",
    "RealtimeFeatureView",
    "Rerank",
    "TopItems",
    "RequestSource",
    "Similar",
    "Source",
    "StreamSource",
    "String",
    "Timestamp",
    "aggregate_dtype",
    "format_duration",
    "parse_duration",
    "realtime_feature_view",
]
