"""The wire format of the feature server's API as the client speaks it: request bodies, response parsing, errors.

Kept apart from ``client`` so the sync and async clients share one spelling of each body and parser.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import quote

import httpx
import orjson

from .errors import (
    ContextStoreError,
    ForbiddenError,
    InvalidInputError,
    NotFoundError,
    RateLimitedError,
    UnauthorizedError,
    UnavailableError,
)
from .memory_types import MemoryRecord, MemoryResult
from .types import FeatureMetadata, FeatureVector, KnowledgeChunk, KnowledgeResult, SimilarItem, SimilarResult
from .vocab.json import RECORD_OPTIONS

GET_PATH = "/api/v1/feature-service/get-features"
BATCH_PATH = "/api/v1/feature-service/get-features-batch"
META_PATH = "/api/v1/feature-service/metadata"
_ERRORS: dict[int, type[ContextStoreError]] = {
    400: InvalidInputError,
    401: UnauthorizedError,
    403: ForbiddenError,
    404: NotFoundError,
    413: InvalidInputError,
    429: RateLimitedError,
    503: UnavailableError,
    504: UnavailableError,
}
_ALL_META = {
    "includeNames": True,
    "includeDataTypes": True,
    "includeEffectiveTimes": True,
    "includeServingStatus": True,
}


def service_name(feature_service: Any) -> str:
    name = getattr(feature_service, "name", feature_service)
    if not isinstance(name, str) or not name:
        raise InvalidInputError("feature_service must be a name or a cs.FeatureService", field="feature_service")
    return name


def _raise_for(resp: httpx.Response) -> None:
    if resp.status_code < 400:
        return
    try:
        body = orjson.loads(resp.content)
        message, field = body.get("message") or resp.reason_phrase, body.get("field")
    except (orjson.JSONDecodeError, AttributeError):
        message, field = resp.text[:200] or resp.reason_phrase, None
    cls = _ERRORS.get(resp.status_code)
    if cls is None:
        err = ContextStoreError(f"{resp.status_code}: {message}", field=field)
        err.status = resp.status_code
        raise err
    raise cls(message, field=field)


def _decode(dtype: Mapping[str, Any] | None, v: Any) -> Any:
    if v is None or not dtype:
        return v
    t = dtype.get("type")
    if t == "int64":
        return int(v)
    if t == "array":
        return [_decode(dtype.get("elementType"), x) for x in v]
    if t == "timestamp" and isinstance(v, str):
        return datetime.fromisoformat(v.replace("Z", "+00:00"))
    return v


def _vector(
    values: list[Any], meta: list[dict[str, Any]], statuses: list[dict[str, Any]] | None, join_keys: Any
) -> FeatureVector:
    out: dict[str, Any] = {}
    md: list[FeatureMetadata] = []
    for i, (v, m) in enumerate(zip(values, meta)):
        name = m.get("name", str(i))
        dt = m.get("dataType") or {}
        out[name] = _decode(dt, v)
        et = m.get("effectiveTime")
        status = (statuses[i] if statuses else m).get("status", "PRESENT" if v is not None else "MISSING_DATA")
        md.append(
            FeatureMetadata(
                name=name,
                data_type=dict(dt),
                status=status,
                effective_time=datetime.fromisoformat(et.replace("Z", "+00:00")) if et else None,
                view=name.split(".", 1)[0],
            )
        )
    return FeatureVector(out, md, dict(join_keys or {}))


def get_body(
    service: str, join_keys: Mapping[str, Any], request_context: Mapping[str, Any] | None, workspace: str | None
) -> bytes:
    params: dict[str, Any] = {
        "featureServiceName": service,
        "joinKeyMap": dict(join_keys),
        "requestContextMap": dict(request_context or {}),
        "metadataOptions": _ALL_META,
    }
    if workspace:
        params["workspaceName"] = workspace
    return orjson.dumps({"params": params})


def batch_body(
    service: str, join_keys: Sequence[Mapping[str, Any]], request_context: Any, workspace: str | None
) -> bytes:
    ctxs = request_context if isinstance(request_context, (list, tuple)) else [request_context or {}] * len(join_keys)
    params: dict[str, Any] = {
        "featureServiceName": service,
        "metadataOptions": _ALL_META,
        "requestData": [{"joinKeyMap": dict(k), "requestContextMap": dict(c or {})} for k, c in zip(join_keys, ctxs)],
    }
    if workspace:
        params["workspaceName"] = workspace
    return orjson.dumps({"params": params})


def parse_get(resp: httpx.Response, join_keys: Any) -> FeatureVector:
    _raise_for(resp)
    body = orjson.loads(resp.content)
    return _vector(body["result"]["features"], body.get("metadata", {}).get("features", []), None, join_keys)


def parse_batch(resp: httpx.Response, join_keys: Sequence[Any]) -> list[FeatureVector]:
    _raise_for(resp)
    body = orjson.loads(resp.content)
    meta = body.get("metadata", {}).get("features", [])
    return [
        _vector(r["features"], meta, (r.get("metadata") or {}).get("features"), k)
        for r, k in zip(body["result"], join_keys)
    ]


def parse_similar(resp: httpx.Response) -> SimilarResult:
    _raise_for(resp)
    b = orjson.loads(resp.content)
    return SimilarResult(
        b.get("view", ""),
        [SimilarItem(i["entity_id"], i["score"], i.get("attributes") or {}) for i in b.get("items", [])],
    )


def parse_knowledge(resp: httpx.Response) -> KnowledgeResult:
    _raise_for(resp)
    b = orjson.loads(resp.content)
    return KnowledgeResult(
        b.get("knowledge", ""), b.get("query", ""), [KnowledgeChunk(**c) for c in b.get("chunks", [])]
    )


def memory_of(d: Mapping[str, Any]) -> MemoryRecord:
    from .vocab.time import parse_iso

    return MemoryRecord(
        id=d["id"],
        entity=dict(d.get("entity") or {}),
        text=d.get("text", ""),
        kind=d.get("kind"),
        metadata=dict(d.get("metadata") or {}),
        created_at=parse_iso(d["created_at"]),
        written_by=d.get("written_by"),
        score=d.get("score"),
        memory=d.get("memory", ""),
        deduplicated=bool(d.get("deduplicated")),
    )


def parse_memories(resp: httpx.Response) -> MemoryResult:
    b = json_of(resp)
    return MemoryResult(b["memory"], b["entity"], b["query"], [memory_of(m) for m in b.get("memories", [])])


def remember_body(
    text: str, entity_id: Any, kind: str | None, metadata: Mapping[str, Any] | None, workspace: str | None
) -> bytes:
    body = {"text": text, "entity_id": entity_id, "kind": kind, "metadata": metadata, "workspace": workspace}
    return orjson.dumps({k: v for k, v in body.items() if v is not None})


def json_of(resp: httpx.Response) -> Any:
    _raise_for(resp)
    return orjson.loads(resp.content)


def similar_body(
    view: str,
    text: str | None,
    entity_id: str | None,
    vector: Sequence[float] | None,
    k: int,
    filter: Mapping[str, Any] | None,
    workspace: str | None,
) -> bytes:
    body: dict[str, Any] = {"view": view, "k": k}
    for name, v in (("text", text), ("entity_id", entity_id), ("filter", filter), ("workspace", workspace)):
        if v is not None:
            body[name] = v
    if vector is not None:
        body["vector"] = [float(x) for x in vector]
    return orjson.dumps(body)


def ingest_body(source: str, rows: Sequence[Mapping[str, Any]], dry_run: bool, workspace: str | None) -> bytes:
    body: dict[str, Any] = {"dry_run": dry_run, "records": {source: [{"record": dict(r)} for r in rows]}}
    if workspace:
        body["workspace_name"] = workspace
    return orjson.dumps(body, option=RECORD_OPTIONS)


def event_body(source: str, record: Mapping[str, Any], workspace: str | None) -> bytes:
    body: dict[str, Any] = {"source": source, "record": dict(record)}
    if workspace:
        body["workspace"] = workspace
    return orjson.dumps(body, option=RECORD_OPTIONS)


def context_request(
    entity_id: str,
    context_service: str | None,
    max_tokens: int | None,
    as_of: datetime | str | None,
    query: str | None,
    workspace: str | None,
    k: int | None = None,
    filter: Mapping[str, Any] | None = None,
) -> tuple[str, dict[str, Any]]:
    """The path and query parameters of ``GET /v1/context/{entity_id}`` (unset ones left out)."""
    if isinstance(as_of, datetime):
        as_of = as_of.isoformat()
    params: dict[str, Any] = {"service": context_service, "max_tokens": max_tokens, "as_of": as_of, "query": query}
    params["k"] = k
    params["filter"] = orjson.dumps(filter).decode() if filter is not None else None  # JSON in one parameter
    params["workspace"] = workspace
    return f"/v1/context/{quote(str(entity_id), safe='')}", {k: v for k, v in params.items() if v is not None}


def key_header(key: str | None) -> dict[str, str] | None:
    return {"idempotency-key": key} if key is not None else None


def default_headers(api_key: str | None) -> dict[str, str]:
    h = {"content-type": "application/json", "user-agent": "context-store-client/0.1"}
    if api_key:
        h["authorization"] = f"Bearer {api_key}"
    return h
