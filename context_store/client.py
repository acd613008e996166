"""A thin Python client for the feature server (sync and async), speaking its Tecton-compatible API.

```python
from context_store.client import get_feature_server_client
client = get_feature_server_client(url="http://127.0.0.1:8000", api_key="cs_...")
client.get_features(feature_service="fraud_detection_service", join_keys={"user_id": "u1"}).feature_values
```

One HTTP connection pool per client (keep-alive), errors raised as ``context_store.errors`` classes.
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
from .vocab.redact import redact_url

__all__ = ["get_feature_server_client", "FeatureServerClient", "AsyncFeatureServerClient"]

_GET = "/api/v1/feature-service/get-features"
_BATCH = "/api/v1/feature-service/get-features-batch"
_META = "/api/v1/feature-service/metadata"
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


def _service_name(feature_service: Any) -> str:
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


def _get_body(
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


def _batch_body(
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


def _parse_get(resp: httpx.Response, join_keys: Any) -> FeatureVector:
    _raise_for(resp)
    body = orjson.loads(resp.content)
    return _vector(body["result"]["features"], body.get("metadata", {}).get("features", []), None, join_keys)


def _parse_batch(resp: httpx.Response, join_keys: Sequence[Any]) -> list[FeatureVector]:
    _raise_for(resp)
    body = orjson.loads(resp.content)
    meta = body.get("metadata", {}).get("features", [])
    return [
        _vector(r["features"], meta, (r.get("metadata") or {}).get("features"), k)
        for r, k in zip(body["result"], join_keys)
    ]


def _parse_similar(resp: httpx.Response) -> SimilarResult:
    _raise_for(resp)
    b = orjson.loads(resp.content)
    return SimilarResult(
        b.get("view", ""),
        [SimilarItem(i["entity_id"], i["score"], i.get("attributes") or {}) for i in b.get("items", [])],
    )


def _parse_knowledge(resp: httpx.Response) -> KnowledgeResult:
    _raise_for(resp)
    b = orjson.loads(resp.content)
    return KnowledgeResult(
        b.get("knowledge", ""), b.get("query", ""), [KnowledgeChunk(**c) for c in b.get("chunks", [])]
    )


def _memory(d: Mapping[str, Any]) -> MemoryRecord:
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


def _parse_memories(resp: httpx.Response) -> MemoryResult:
    b = _json(resp)
    return MemoryResult(b["memory"], b["entity"], b["query"], [_memory(m) for m in b.get("memories", [])])


def _remember_body(
    text: str, entity_id: Any, kind: str | None, metadata: Mapping[str, Any] | None, workspace: str | None
) -> bytes:
    body = {"text": text, "entity_id": entity_id, "kind": kind, "metadata": metadata, "workspace": workspace}
    return orjson.dumps({k: v for k, v in body.items() if v is not None})


def _json(resp: httpx.Response) -> Any:
    _raise_for(resp)
    return orjson.loads(resp.content)


def _similar_body(
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


def _ingest_body(source: str, rows: Sequence[Mapping[str, Any]], dry_run: bool, workspace: str | None) -> bytes:
    body: dict[str, Any] = {"dry_run": dry_run, "records": {source: [{"record": dict(r)} for r in rows]}}
    if workspace:
        body["workspace_name"] = workspace
    return orjson.dumps(body, option=RECORD_OPTIONS)


def _event_body(source: str, record: Mapping[str, Any], workspace: str | None) -> bytes:
    body: dict[str, Any] = {"source": source, "record": dict(record)}
    if workspace:
        body["workspace"] = workspace
    return orjson.dumps(body, option=RECORD_OPTIONS)


def _context_request(
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


def _key_header(key: str | None) -> dict[str, str] | None:
    return {"idempotency-key": key} if key is not None else None


def _headers(api_key: str | None) -> dict[str, str]:
    h = {"content-type": "application/json", "user-agent": "context-store-client/0.1"}
    if api_key:
        h["authorization"] = f"Bearer {api_key}"
    return h


class _Base:
    def __init__(self, url: str, api_key: str | None, workspace: str | None) -> None:
        self.url = url.rstrip("/")
        self._shown_url = redact_url(self.url)  # error messages never carry the URL's credentials
        self.workspace = workspace
        self._headers = _headers(api_key)


class FeatureServerClient(_Base):
    """Synchronous client; reuses one keep-alive connection pool. Use as a context manager or ``close()``."""

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        *,
        workspace: str | None = None,
        timeout: float = 10.0,
        client: httpx.Client | None = None,
    ) -> None:
        super().__init__(url, api_key, workspace)
        self._client = client or httpx.Client(base_url=self.url, timeout=timeout, headers=self._headers)

    def _post(self, path: str, content: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
        try:
            return self._client.post(path, content=content, headers=headers)
        except httpx.TransportError as e:
            raise UnavailableError(f"feature server at {self._shown_url} unreachable: {e}") from None

    def _get(self, path: str, params: dict[str, Any]) -> httpx.Response:
        try:
            return self._client.get(path, params={k: v for k, v in params.items() if v is not None})
        except httpx.TransportError as e:
            raise UnavailableError(f"feature server at {self._shown_url} unreachable: {e}") from None

    def _delete(self, path: str, params: dict[str, Any]) -> httpx.Response:
        try:
            return self._client.delete(path, params={k: v for k, v in params.items() if v is not None})
        except httpx.TransportError as e:
            raise UnavailableError(f"feature server at {self._shown_url} unreachable: {e}") from None

    def get_features(
        self,
        feature_service: Any,
        join_keys: Mapping[str, Any],
        request_context: Mapping[str, Any] | None = None,
        workspace: str | None = None,
    ) -> FeatureVector:
        body = _get_body(_service_name(feature_service), join_keys, request_context, workspace or self.workspace)
        return _parse_get(self._post(_GET, body), join_keys)

    def get_features_batch(
        self,
        feature_service: Any,
        join_keys: Sequence[Mapping[str, Any]],
        request_context: Any = None,
        workspace: str | None = None,
    ) -> list[FeatureVector]:
        body = _batch_body(_service_name(feature_service), join_keys, request_context, workspace or self.workspace)
        return _parse_batch(self._post(_BATCH, body), join_keys)

    def get_feature_service_metadata(self, feature_service: Any, workspace: str | None = None) -> dict[str, Any]:
        params = {"featureServiceName": _service_name(feature_service), "workspaceName": workspace or self.workspace}
        return _json(self._post(_META, orjson.dumps({"params": params})))

    def get_user_context(
        self,
        entity_id: str,
        context_service: str | None = None,
        max_tokens: int | None = None,
        as_of: datetime | str | None = None,
        query: str | None = None,
        *,
        k: int | None = None,
        filter: Mapping[str, Any] | None = None,
    ) -> Any:
        """``GET /v1/context/{entity_id}``: the same arguments as ``ContextStore.get_user_context``
        (``k`` and ``filter``: this call's similar items)."""
        path, params = _context_request(
            entity_id, context_service, max_tokens, as_of, query, self.workspace, k=k, filter=filter
        )
        return _json(self._get(path, params))

    def find_similar(
        self,
        view: str,
        *,
        text: str | None = None,
        entity_id: str | None = None,
        vector: Sequence[float] | None = None,
        k: int = 10,
        filter: Mapping[str, Any] | None = None,
    ) -> SimilarResult:
        return _parse_similar(
            self._post("/v1/similar", _similar_body(view, text, entity_id, vector, k, filter, self.workspace))
        )

    def search_knowledge(self, knowledge: str, query: str, k: int = 5) -> KnowledgeResult:
        body = {
            "knowledge": knowledge,
            "query": query,
            "k": k,
            **({"workspace": self.workspace} if self.workspace else {}),
        }
        return _parse_knowledge(self._post("/v1/knowledge/search", orjson.dumps(body)))

    def remember(
        self,
        text: str,
        entity_id: str | int | None = None,
        kind: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> MemoryRecord:
        """``POST /v1/memories`` (docs/memory.md); ``.deduplicated`` when the text was stored within the window."""
        return _memory(
            _json(self._post("/v1/memories", _remember_body(text, entity_id, kind, metadata, self.workspace)))
        )

    def search_memories(self, query: str, entity_id: str | int | None = None, k: int = 5) -> MemoryResult:
        params = {"q": query, "entity_id": entity_id, "k": k, "workspace": self.workspace}
        return _parse_memories(self._get("/v1/memories/search", params))

    def forget_memory(self, memory_id: str) -> bool:
        return bool(_json(self._delete(f"/v1/memories/{memory_id}", {"workspace": self.workspace}))["forgotten"])

    def push(
        self,
        source: str,
        rows: Sequence[Mapping[str, Any]],
        dry_run: bool = False,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """``POST /v1/ingest``. With ``idempotency_key`` (e.g. a UUID per logical push, reused on
        retries) a retry answers the first result and writes nothing."""
        body = _ingest_body(source, rows, dry_run, self.workspace)
        return _json(self._post("/v1/ingest", body, _key_header(idempotency_key)))

    def record_event(
        self, source: str, record: Mapping[str, Any], *, idempotency_key: str | None = None
    ) -> dict[str, Any]:
        """``POST /v1/events``: one event (an ingest key), answered with the push result and the online values
        of the views the source feeds, for the record's entity (``ContextStore.record_event``)."""
        body = _event_body(source, record, self.workspace)
        return _json(self._post("/v1/events", body, _key_header(idempotency_key)))

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> FeatureServerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncFeatureServerClient(_Base):
    """Asynchronous client (``await client.get_features(...)``); one pooled ``httpx.AsyncClient``."""

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        *,
        workspace: str | None = None,
        timeout: float = 10.0,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        super().__init__(url, api_key, workspace)
        self._client = client or httpx.AsyncClient(base_url=self.url, timeout=timeout, headers=self._headers)

    async def _post(self, path: str, content: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
        try:
            return await self._client.post(path, content=content, headers=headers)
        except httpx.TransportError as e:
            raise UnavailableError(f"feature server at {self._shown_url} unreachable: {e}") from None

    async def _get(self, path: str, params: dict[str, Any]) -> httpx.Response:
        try:
            return await self._client.get(path, params={k: v for k, v in params.items() if v is not None})
        except httpx.TransportError as e:
            raise UnavailableError(f"feature server at {self._shown_url} unreachable: {e}") from None

    async def _delete(self, path: str, params: dict[str, Any]) -> httpx.Response:
        try:
            return await self._client.delete(path, params={k: v for k, v in params.items() if v is not None})
        except httpx.TransportError as e:
            raise UnavailableError(f"feature server at {self._shown_url} unreachable: {e}") from None

    async def get_features(
        self,
        feature_service: Any,
        join_keys: Mapping[str, Any],
        request_context: Mapping[str, Any] | None = None,
        workspace: str | None = None,
    ) -> FeatureVector:
        body = _get_body(_service_name(feature_service), join_keys, request_context, workspace or self.workspace)
        return _parse_get(await self._post(_GET, body), join_keys)

    async def get_features_batch(
        self,
        feature_service: Any,
        join_keys: Sequence[Mapping[str, Any]],
        request_context: Any = None,
        workspace: str | None = None,
    ) -> list[FeatureVector]:
        body = _batch_body(_service_name(feature_service), join_keys, request_context, workspace or self.workspace)
        return _parse_batch(await self._post(_BATCH, body), join_keys)

    async def get_feature_service_metadata(self, feature_service: Any, workspace: str | None = None) -> dict[str, Any]:
        params = {"featureServiceName": _service_name(feature_service), "workspaceName": workspace or self.workspace}
        return _json(await self._post(_META, orjson.dumps({"params": params})))

    async def find_similar(
        self,
        view: str,
        *,
        text: str | None = None,
        entity_id: str | None = None,
        vector: Sequence[float] | None = None,
        k: int = 10,
        filter: Mapping[str, Any] | None = None,
    ) -> SimilarResult:
        body = _similar_body(view, text, entity_id, vector, k, filter, self.workspace)
        return _parse_similar(await self._post("/v1/similar", body))

    async def search_knowledge(self, knowledge: str, query: str, k: int = 5) -> KnowledgeResult:
        body = {
            "knowledge": knowledge,
            "query": query,
            "k": k,
            **({"workspace": self.workspace} if self.workspace else {}),
        }
        return _parse_knowledge(await self._post("/v1/knowledge/search", orjson.dumps(body)))

    async def remember(
        self,
        text: str,
        entity_id: str | int | None = None,
        kind: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> MemoryRecord:
        body = _remember_body(text, entity_id, kind, metadata, self.workspace)
        return _memory(_json(await self._post("/v1/memories", body)))

    async def search_memories(self, query: str, entity_id: str | int | None = None, k: int = 5) -> MemoryResult:
        params = {"q": query, "entity_id": entity_id, "k": k, "workspace": self.workspace}
        return _parse_memories(await self._get("/v1/memories/search", params))

    async def forget_memory(self, memory_id: str) -> bool:
        resp = await self._delete(f"/v1/memories/{memory_id}", {"workspace": self.workspace})
        return bool(_json(resp)["forgotten"])

    async def push(
        self,
        source: str,
        rows: Sequence[Mapping[str, Any]],
        dry_run: bool = False,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        body = _ingest_body(source, rows, dry_run, self.workspace)
        return _json(await self._post("/v1/ingest", body, _key_header(idempotency_key)))

    async def record_event(
        self, source: str, record: Mapping[str, Any], *, idempotency_key: str | None = None
    ) -> dict[str, Any]:
        body = _event_body(source, record, self.workspace)
        return _json(await self._post("/v1/events", body, _key_header(idempotency_key)))

    async def get_user_context(
        self,
        entity_id: str,
        context_service: str | None = None,
        max_tokens: int | None = None,
        as_of: datetime | str | None = None,
        query: str | None = None,
        *,
        k: int | None = None,
        filter: Mapping[str, Any] | None = None,
    ) -> Any:
        path, params = _context_request(
            entity_id, context_service, max_tokens, as_of, query, self.workspace, k=k, filter=filter
        )
        return _json(await self._get(path, params))

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> AsyncFeatureServerClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def get_feature_server_client(
    url: str,
    api_key: str | None = None,
    *,
    workspace: str | None = None,
    timeout: float = 10.0,
    asynchronous: bool = False,
) -> Any:
    """A ``FeatureServerClient`` (or ``AsyncFeatureServerClient`` with ``asynchronous=True``)."""
    cls = AsyncFeatureServerClient if asynchronous else FeatureServerClient
    return cls(url, api_key, workspace=workspace, timeout=timeout)
