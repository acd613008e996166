"""context-store: a real-time feature platform and context service for ML models and LLM agents.

``import context_store as cs`` gives the definitions API and ``cs.ContextStore``.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .definitions import (
        MMR,
        Aggregate,
        Array,
        Bool,
        ContextService,
        Embedding,
        EmbeddingView,
        Entity,
        Expect,
        FeatureService,
        FeatureView,
        Field,
        FileSource,
        Float64,
        Int64,
        InteractionEmbeddingView,
        InterestVector,
        Knowledge,
        Lifetime,
        LoggingConfig,
        Memory,
        RealtimeFeatureView,
        RequestSource,
        Rerank,
        Similar,
        StreamSource,
        String,
        Timestamp,
        TopItems,
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
    "Expect",
    "FeatureService",
    "FeatureVector",
    "FeatureView",
    "Field",
    "FileSource",
    "Float64",
    "ForbiddenError",
    "Int64",
    "InteractionEmbeddingView",
    "InterestVector",
    "InvalidInputError",
    "Knowledge",
    "Lifetime",
    "LoggingConfig",
    "Memory",
    "MMR",
    "NotFoundError",
    "RateLimitedError",
    "RealtimeFeatureView",
    "Rerank",
    "TopItems",
    "RequestSource",
    "Similar",
    "StreamSource",
    "String",
    "Timestamp",
    "UnauthorizedError",
    "UnavailableError",
    "realtime_feature_view",
]

# Names are imported on first use (PEP 562): ``context-store --help`` and the CLI's other light
# commands must not pay for pyarrow/numpy (definitions) or the serving layer at start-up.
_LAZY: dict[str, str] = {
    **dict.fromkeys(
        [n for n in __all__ if n not in ("ContextStore", "FeatureVector") and not n.endswith("Error")],
        ".definitions",
    ),
    **{n: ".errors" for n in __all__ if n.endswith("Error")},
    "ContextStore": ".serving.store",
    "FeatureVector": ".types",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
