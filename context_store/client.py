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

import httpx
import orjson

from . import client_wire as wire
from .errors import UnavailableError
from .memory_types import MemoryRecord, MemoryResult
from .types import FeatureVector, KnowledgeResult, SimilarResult
from .vocab.redact import redact_url

__all__ = ["get_feature_server_client", "FeatureServerClient", "AsyncFeatureServerClient"]


class _Base:
    def __init__(self, url: str, api_key: str | None, workspace: str | None) -> None:
        self.url = url.rstrip("/")
        self._shown_url = redact_url(self.url)  # error messages never carry the URL's credentials
        self.workspace = workspace
        self._headers = wire.default_headers(api_key)


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
        body = wire.get_body(
            wire.service_name(feature_service), join_keys, request_context, workspace or self.workspace
        )
        return wire.parse_get(self._post(wire.GET_PATH, body), join_keys)

    def get_features_batch(
        self,
        feature_service: Any,
        join_keys: Sequence[Mapping[str, Any]],
        request_context: Any = None,
        workspace: str | None = None,
    ) -> list[FeatureVector]:
        body = wire.batch_body(
            wire.service_name(feature_service), join_keys, request_context, workspace or self.workspace
        )
        return wire.parse_batch(self._post(wire.BATCH_PATH, body), join_keys)

    def get_feature_service_metadata(self, feature_service: Any, workspace: str | None = None) -> dict[str, Any]:
        params = {
            "featureServiceName": wire.service_name(feature_service),
            "workspaceName": workspace or self.workspace,
        }
        return wire.json_of(self._post(wire.META_PATH, orjson.dumps({"params": params})))

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
        path, params = wire.context_request(
            entity_id, context_service, max_tokens, as_of, query, self.workspace, k=k, filter=filter
        )
        return wire.json_of(self._get(path, params))

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
        return wire.parse_similar(
            self._post("/v1/similar", wire.similar_body(view, text, entity_id, vector, k, filter, self.workspace))
        )

    def search_knowledge(self, knowledge: str, query: str, k: int = 5) -> KnowledgeResult:
        body = {
            "knowledge": knowledge,
            "query": query,
            "k": k,
            **({"workspace": self.workspace} if self.workspace else {}),
        }
        return wire.parse_knowledge(self._post("/v1/knowledge/search", orjson.dumps(body)))

    def remember(
        self,
        text: str,
        entity_id: str | int | None = None,
        kind: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> MemoryRecord:
        """``POST /v1/memories`` (docs/memory.md); ``.deduplicated`` when the text was stored within the window."""
        return wire.memory_of(
            wire.json_of(
                self._post("/v1/memories", wire.remember_body(text, entity_id, kind, metadata, self.workspace))
            )
        )

    def search_memories(self, query: str, entity_id: str | int | None = None, k: int = 5) -> MemoryResult:
        params = {"q": query, "entity_id": entity_id, "k": k, "workspace": self.workspace}
        return wire.parse_memories(self._get("/v1/memories/search", params))

    def forget_memory(self, memory_id: str) -> bool:
        return bool(wire.json_of(self._delete(f"/v1/memories/{memory_id}", {"workspace": self.workspace}))["forgotten"])

    def push(
        self,
        source: str,
        rows: Sequence[Mapping[str, Any]],
        dry_run: bool = False,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """``POST /v1/ingest``. With ``idempotency_key`` (e.g. a UUID per logical push, reused on
        retries) a retry answers the first result and writes nothing."""
        body = wire.ingest_body(source, rows, dry_run, self.workspace)
        return wire.json_of(self._post("/v1/ingest", body, wire.key_header(idempotency_key)))

    def record_event(
        self, source: str, record: Mapping[str, Any], *, idempotency_key: str | None = None
    ) -> dict[str, Any]:
        """``POST /v1/events``: one event (an ingest key), answered with the push result and the online values
        of the views the source feeds, for the record's entity (``ContextStore.record_event``)."""
        body = wire.event_body(source, record, self.workspace)
        return wire.json_of(self._post("/v1/events", body, wire.key_header(idempotency_key)))

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
        body = wire.get_body(
            wire.service_name(feature_service), join_keys, request_context, workspace or self.workspace
        )
        return wire.parse_get(await self._post(wire.GET_PATH, body), join_keys)

    async def get_features_batch(
        self,
        feature_service: Any,
        join_keys: Sequence[Mapping[str, Any]],
        request_context: Any = None,
        workspace: str | None = None,
    ) -> list[FeatureVector]:
        body = wire.batch_body(
            wire.service_name(feature_service), join_keys, request_context, workspace or self.workspace
        )
        return wire.parse_batch(await self._post(wire.BATCH_PATH, body), join_keys)

    async def get_feature_service_metadata(self, feature_service: Any, workspace: str | None = None) -> dict[str, Any]:
        params = {
            "featureServiceName": wire.service_name(feature_service),
            "workspaceName": workspace or self.workspace,
        }
        return wire.json_of(await self._post(wire.META_PATH, orjson.dumps({"params": params})))

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
        body = wire.similar_body(view, text, entity_id, vector, k, filter, self.workspace)
        return wire.parse_similar(await self._post("/v1/similar", body))

    async def search_knowledge(self, knowledge: str, query: str, k: int = 5) -> KnowledgeResult:
        body = {
            "knowledge": knowledge,
            "query": query,
            "k": k,
            **({"workspace": self.workspace} if self.workspace else {}),
        }
        return wire.parse_knowledge(await self._post("/v1/knowledge/search", orjson.dumps(body)))

    async def remember(
        self,
        text: str,
        entity_id: str | int | None = None,
        kind: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> MemoryRecord:
        body = wire.remember_body(text, entity_id, kind, metadata, self.workspace)
        return wire.memory_of(wire.json_of(await self._post("/v1/memories", body)))

    async def search_memories(self, query: str, entity_id: str | int | None = None, k: int = 5) -> MemoryResult:
        params = {"q": query, "entity_id": entity_id, "k": k, "workspace": self.workspace}
        return wire.parse_memories(await self._get("/v1/memories/search", params))

    async def forget_memory(self, memory_id: str) -> bool:
        resp = await self._delete(f"/v1/memories/{memory_id}", {"workspace": self.workspace})
        return bool(wire.json_of(resp)["forgotten"])

    async def push(
        self,
        source: str,
        rows: Sequence[Mapping[str, Any]],
        dry_run: bool = False,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        body = wire.ingest_body(source, rows, dry_run, self.workspace)
        return wire.json_of(await self._post("/v1/ingest", body, wire.key_header(idempotency_key)))

    async def record_event(
        self, source: str, record: Mapping[str, Any], *, idempotency_key: str | None = None
    ) -> dict[str, Any]:
        body = wire.event_body(source, record, self.workspace)
        return wire.json_of(await self._post("/v1/events", body, wire.key_header(idempotency_key)))

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
        path, params = wire.context_request(
            entity_id, context_service, max_tokens, as_of, query, self.workspace, k=k, filter=filter
        )
        return wire.json_of(await self._get(path, params))

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
