"""OpenAPI request-body schemas. Bodies are parsed by hand (orjson, no pydantic on the hot path);
these schemas document them for clients and drive the schemathesis fuzz run."""

from __future__ import annotations

from typing import Any

from ..limits import (
    BATCH_ROWS,
    INGEST_RECORDS,
    INGEST_SOURCES,
    KNOWLEDGE_K,
    LATENCY_BUDGET_MS,
    QUERY_TEXT_CHARS,
    RECORD_FIELDS,
    SIMILAR_K,
)
from ..serving.catalog import KINDS

__all__ = [
    "CONTEXT_FILTER_PARAM",
    "body",
    "GET_FEATURES",
    "GET_FEATURES_BATCH",
    "METADATA",
    "SIMILAR",
    "KNOWLEDGE",
    "INGEST",
    "INGEST_PARAMETERS",
    "EVENT",
    "ERROR_RESPONSES",
    "ok",
    "CATALOG_LIST",
    "CATALOG_SEARCH",
    "CATALOG_DESCRIBE",
]

_JOIN_KEYS = {"type": "object", "additionalProperties": {"type": ["string", "integer", "null"]}}
# Values of request context, ingest records and filters: scalars or lists of scalars (embeddings, tags).
_SCALAR = {"type": ["string", "number", "integer", "boolean", "null"]}
_VALUES = {"type": "object", "additionalProperties": {"anyOf": [_SCALAR, {"type": "array", "items": _SCALAR}]}}
_OPTIONS = {
    "type": "object",
    "properties": {
        k: {"type": "boolean"}
        for k in ("includeNames", "includeDataTypes", "includeEffectiveTimes", "includeSloInfo", "includeServingStatus")
    },
}
_REQUEST_OPTIONS = {
    "type": "object",
    "properties": {"latencyBudgetMs": {"type": "integer", **LATENCY_BUDGET_MS.schema()}},
}


def body(schema: dict[str, Any], example: Any = None) -> dict[str, Any]:
    content: dict[str, Any] = {"schema": schema}
    if example is not None:
        content["example"] = example
    return {"requestBody": {"required": True, "content": {"application/json": content}}}


def _params(props: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["params"],
        "properties": {"params": {"type": "object", "required": required, "properties": props}},
    }


GET_FEATURES = _params(
    {
        "workspaceName": {"type": "string"},
        "featureServiceName": {"type": "string", "minLength": 1},
        "joinKeyMap": _JOIN_KEYS,
        "requestContextMap": _VALUES,
        "metadataOptions": _OPTIONS,
        "requestOptions": _REQUEST_OPTIONS,
        "allowPartialResults": {"type": "boolean"},
    },
    ["featureServiceName"],
)

GET_FEATURES_BATCH = _params(
    {
        "workspaceName": {"type": "string"},
        "featureServiceName": {"type": "string", "minLength": 1},
        "requestData": {
            "type": "array",
            "minItems": 1,
            "maxItems": BATCH_ROWS,
            "items": {"type": "object", "properties": {"joinKeyMap": _JOIN_KEYS, "requestContextMap": _VALUES}},
        },
        "metadataOptions": _OPTIONS,
        "requestOptions": _REQUEST_OPTIONS,
        "allowPartialResults": {"type": "boolean"},
    },
    ["featureServiceName", "requestData"],
)

METADATA = _params(
    {"workspaceName": {"type": "string"}, "featureServiceName": {"type": "string", "minLength": 1}},
    ["featureServiceName"],
)

# GET /v1/context/{id}?filter=<JSON>: the similar items' filter, a JSON object in a query parameter.
CONTEXT_FILTER_PARAM: dict[str, Any] = {
    "parameters": [
        {
            "name": "filter",
            "in": "query",
            "required": False,
            "description": 'similar items filter, a JSON object: {"genre": "drama", "item_id": {"$nin": ["i1"]}}',
            "content": {"application/json": {"schema": _VALUES}},
        }
    ]
}

SIMILAR = {
    "type": "object",
    "required": ["view"],
    "properties": {
        "view": {"type": "string", "minLength": 1},
        "text": {"type": "string", "minLength": 1, "maxLength": QUERY_TEXT_CHARS, "pattern": r"\S"},
        "entity_id": {"type": "string"},
        "vector": {"type": "array", "items": {"type": "number"}},
        "k": {"type": "integer", **SIMILAR_K.schema()},
        "filter": _VALUES,
        "workspace": {"type": "string"},
    },
    # Exactly one query: the service answers 400 to none or several.
    "oneOf": [{"required": ["text"]}, {"required": ["entity_id"]}, {"required": ["vector"]}],
}

KNOWLEDGE = {
    "type": "object",
    "required": ["knowledge", "query"],
    "properties": {
        "knowledge": {"type": "string", "minLength": 1},
        "query": {"type": "string", "minLength": 1, "maxLength": QUERY_TEXT_CHARS, "pattern": r"\S"},
        "k": {"type": "integer", **KNOWLEDGE_K.schema()},
        "filter": _VALUES,
        "workspace": {"type": "string"},
    },
}

# A retry with the same key and records answers the first result (header Idempotent-Replayed: true)
# and writes nothing; the same key with other records is a 409.
INGEST_PARAMETERS = {
    "parameters": [
        {
            "name": "Idempotency-Key",
            "in": "header",
            "required": False,
            "schema": {"type": "string", "minLength": 1, "maxLength": 256},
            "description": "One key per logical push (e.g. a UUID), reused on its retries; remembered for "
            "the source's event_id_retention (default 24h).",
        }
    ]
}
INGEST = {
    "type": "object",
    "required": ["records"],
    "properties": {
        "workspace_name": {"type": "string"},
        "dry_run": {"type": "boolean"},
        "records": {
            "type": "object",
            "minProperties": 1,
            "maxProperties": INGEST_SOURCES,
            "description": "source name -> records",
            "additionalProperties": {
                "type": "array",
                "minItems": 1,
                "maxItems": INGEST_RECORDS,
                "items": {"type": "object", "required": ["record"], "properties": {"record": _VALUES}},
            },
        },
    },
}

# POST /v1/events: one event (the MCP record_event tool's arguments).
EVENT = {
    "type": "object",
    "required": ["source", "record"],
    "properties": {
        "source": {"type": "string", "minLength": 1},
        "record": {**_VALUES, "minProperties": 1, "maxProperties": RECORD_FIELDS},
        "workspace": {"type": "string"},
    },
}

# GET /v1/catalog*: response shapes (the web console reads them; docs/catalog.md).
_REF = {
    "type": "object",
    "required": ["kind", "name"],
    "properties": {"kind": {"type": "string"}, "name": {"type": "string"}},
}
_ITEM_PROPS: dict[str, Any] = {
    "kind": {"type": "string", "enum": list(KINDS)},
    "name": {"type": "string"},
    "description": {"type": "string"},
    "owner": {"type": ["string", "null"]},
    "tags": {"type": "object", "additionalProperties": {"type": "string"}},
    "entities": {"type": "array", "items": {"type": "string"}},
    "upstream": {"type": "array", "items": _REF, "description": "what it reads from (one hop)"},
    "downstream": {"type": "array", "items": _REF, "description": "what reads from it (one hop)"},
}
_ITEM = {"type": "object", "required": list(_ITEM_PROPS), "properties": _ITEM_PROPS}
CATALOG_LIST = {
    "type": "object",
    "required": ["workspace", "items"],
    "properties": {"workspace": {"type": "string"}, "items": {"type": "array", "items": _ITEM}},
}
CATALOG_SEARCH = {
    "type": "object",
    "required": ["workspace", "query", "items"],
    "properties": {
        "workspace": {"type": "string"},
        "query": {"type": "string"},
        "items": {
            "type": "array",
            "items": {
                "type": "object",
                "required": [*_ITEM_PROPS, "score"],
                "properties": {**_ITEM_PROPS, "score": {"type": "number", "minimum": 0, "maximum": 1}},
            },
        },
    },
}
CATALOG_DESCRIBE = {
    "type": "object",
    "required": [*_ITEM_PROPS, "spec", "features", "lineage"],
    "properties": {
        **_ITEM_PROPS,
        "spec": {"type": "object", "description": "the definition as the registry stores it"},
        "features": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "dtype", "description"],
                "properties": {
                    "name": {"type": "string"},
                    "dtype": {"type": ["string", "null"]},
                    "description": {"type": "string"},
                },
            },
        },
        "lineage": {
            "type": "array",
            "description": "the full chain [kind, name], each after what it reads from",
            "items": {"type": "array", "items": {"type": "string"}, "minItems": 2, "maxItems": 2},
        },
    },
}


def ok(schema: dict[str, Any], description: str = "OK") -> dict[int | str, dict[str, Any]]:
    """A documented 200 response of a GET route."""
    return {200: {"description": description, "content": {"application/json": {"schema": schema}}}}


_ERR = {
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["message"],
                "properties": {"message": {"type": "string"}, "field": {"type": "string"}},
            }
        }
    }
}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"description": "Bad request (the message names the field)", **_ERR},
    401: {"description": "Missing or invalid API key", **_ERR},
    403: {"description": "Key not allowed for this workspace or scope", **_ERR},
    404: {"description": "Unknown feature service / view / knowledge", **_ERR},
    413: {"description": "Request body too large", **_ERR},
    415: {"description": "A write without Content-Type: application/json", **_ERR},
    429: {"description": "Rate limit exceeded", **_ERR},
    503: {"description": "Online store unreachable; retry", **_ERR},
}
