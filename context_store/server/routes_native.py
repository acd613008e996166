"""Native endpoints: agent context, similarity, knowledge search and the stream ingest API."""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson
from fastapi import APIRouter, Query
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from ..errors import InvalidInputError
from ..limits import (
    CONTEXT_QUERY_CHARS,
    INGEST_SOURCES,
    KNOWLEDGE_K,
    KNOWLEDGE_K_DEFAULT,
    MAX_TOKENS,
    SIMILAR_FILTER_CHARS,
    SIMILAR_K,
    SIMILAR_K_DEFAULT,
    TIME_MAX,
    TIME_MIN,
    TIME_TEXT_CHARS,
    IntRange,
)
from . import schemas
from .errors import json_response, loads_object
from .params import KNOWN_QUERY_PARAMS
from .state import ServerState

__all__ = ["native_router", "to_jsonable"]


def to_jsonable(obj: Any) -> Any:
    """Result objects (dataclasses, ``to_dict()``) -> JSON-ready structures."""
    if hasattr(obj, "to_dict") and callable(obj.to_dict) and not isinstance(obj, dict):
        return obj.to_dict()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    return obj


def _opt(body: dict[str, Any], name: str, kind: type | tuple[type, ...], what: str) -> Any:
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise InvalidInputError(f"{name} must be {what}", field=name)
    if not isinstance(v, kind):
        raise InvalidInputError(f"{name} must be {what}", field=name)
    return v


def _req_str(body: dict[str, Any], name: str) -> str:
    v = _opt(body, name, str, "a non-empty string")
    if not v:
        raise InvalidInputError(f"{name} is required (a non-empty string)", field=name)
    return v


def _k(body: dict[str, Any], default: int, allowed: IntRange) -> int:
    k = body.get("k")
    if k is None:
        return default
    if isinstance(k, float) and k.is_integer():
        k = int(k)  # JSON has one number type: 24.0 is the integer 24 (as JSON Schema says)
    if k not in allowed:
        raise InvalidInputError(f"k must be an integer between {allowed.lo} and {allowed.hi}", field="k")
    assert isinstance(k, int)
    return k


def _json_param(value: str | None, name: str) -> dict[str, Any] | None:
    """A JSON object given in one query parameter (a 400 naming it otherwise)."""
    if value is None:
        return None
    try:
        out = orjson.loads(value)
    except orjson.JSONDecodeError:
        out = None
    if not isinstance(out, dict):
        raise InvalidInputError(f"{name} must be a JSON object", field=name)
    return out


def native_router(state: ServerState) -> APIRouter:
    router = APIRouter(
        prefix="/v1", tags=["native"], responses=schemas.ERROR_RESPONSES, dependencies=[KNOWN_QUERY_PARAMS]
    )

    @router.get("/context/{entity_id}", openapi_extra=schemas.CONTEXT_FILTER_PARAM)
    async def get_context(
        request: Request,
        entity_id: str,
        service: str | None = Query(None, description="context service name (default: the only one)"),
        max_tokens: int | None = Query(
            None, ge=MAX_TOKENS.lo, le=MAX_TOKENS.hi, description=f"token budget of `text` ({MAX_TOKENS})"
        ),
        as_of: str | None = Query(
            None,
            max_length=TIME_TEXT_CHARS,
            description=f"ISO-8601 time to replay the context at ({TIME_MIN:%Y-%m-%d} .. {TIME_MAX:%Y-%m-%d} UTC); "
            "default now",
        ),
        query: str | None = Query(
            None, max_length=CONTEXT_QUERY_CHARS, description="a question: adds matching knowledge chunks"
        ),
        k: int | None = Query(None, ge=SIMILAR_K.lo, le=SIMILAR_K.hi, description=f"similar items ({SIMILAR_K})"),
        # Documented as JSON content in schemas.CONTEXT_FILTER_PARAM (a string schema cannot say "a JSON object").
        filter: str | None = Query(None, max_length=SIMILAR_FILTER_CHARS, include_in_schema=False),
        workspace: str | None = Query(None),
    ) -> Response:
        principal = state.authenticate(request)
        _, store = state.store_for(principal, "read", workspace)
        flt = _json_param(filter, "filter")
        result = await run_in_threadpool(
            store.get_user_context,
            entity_id,
            context_service=service,
            max_tokens=max_tokens,
            as_of=as_of,
            query=query,
            subject=principal.subject,
            k=k,
            filter=flt,
        )
        request.scope["cs.service"] = service or ""  # labels only names that exist (bounded cardinality)
        return json_response(to_jsonable(result))

    @router.post("/similar", openapi_extra=schemas.body(schemas.SIMILAR))
    async def similar(request: Request) -> Response:
        principal = state.authenticate(request)
        body = loads_object(await request.body())
        view = _req_str(body, "view")
        text = _opt(body, "text", str, "a string")
        entity_id = _opt(body, "entity_id", str, "a string")
        vector = _opt(body, "vector", list, "a list of numbers")
        if vector is not None and not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in vector):
            raise InvalidInputError("vector must be a list of numbers", field="vector")
        if sum(x is not None for x in (text, entity_id, vector)) != 1:
            raise InvalidInputError("give exactly one of text, entity_id or vector", field="text")
        flt = _opt(body, "filter", dict, "a JSON object")
        k = _k(body, SIMILAR_K_DEFAULT, SIMILAR_K)
        _, store = state.store_for(principal, "read", _opt(body, "workspace", str, "a string"))
        result = await run_in_threadpool(
            lambda: store.find_similar(
                view, text=text, entity_id=entity_id, vector=vector, k=k, filter=flt, subject=principal.subject
            )
        )
        request.scope["cs.service"] = view
        return json_response(to_jsonable(result))

    @router.post("/knowledge/search", openapi_extra=schemas.body(schemas.KNOWLEDGE))
    async def knowledge_search(request: Request) -> Response:
        principal = state.authenticate(request)
        body = loads_object(await request.body())
        knowledge = _req_str(body, "knowledge")
        query = _req_str(body, "query")
        k = _k(body, KNOWLEDGE_K_DEFAULT, KNOWLEDGE_K)
        flt = _opt(body, "filter", dict, "a JSON object")
        _, store = state.store_for(principal, "read", _opt(body, "workspace", str, "a string"))
        result = await run_in_threadpool(lambda: store.search_knowledge(knowledge, query, k=k, filter=flt))
        request.scope["cs.service"] = knowledge
        return json_response(to_jsonable(result))

    @router.post("/ingest", openapi_extra={**schemas.body(schemas.INGEST), **schemas.INGEST_PARAMETERS})
    async def ingest(request: Request) -> Response:
        """Tecton Stream Ingest API shape: ``{"workspace_name", "dry_run", "records": {source: [{"record": {}}]}}``.

        ``ingestMetrics[source].rejected`` lists the records too late to count (index, field, reason,
        message): written nowhere; a source whose every record is too late is a 400."""
        principal = state.authenticate(request)
        body = loads_object(await request.body())
        dry_run = bool(_opt(body, "dry_run", bool, "true or false"))
        batches = _parse_records(body.get("records"), state.settings.max_ingest_records)
        ws, store = state.store_for(principal, "ingest", _opt(body, "workspace_name", str, "a string"))
        # A retry with the same key and records answers the first result and writes nothing (per source).
        key = request.headers.get("idempotency-key")

        def run() -> dict[str, Any]:
            if len(batches) > 1 and not dry_run:
                # Validate every source first so a bad second source does not leave the first half-applied.
                for source, rows in batches.items():
                    store.push(source, rows, dry_run=True, subject=principal.subject)
            return {
                source: store.push(source, rows, dry_run=dry_run, idempotency_key=key, subject=principal.subject)
                for source, rows in batches.items()
            }

        results = await run_in_threadpool(run)
        for source, rows in batches.items():
            state.metrics.ingest_records.labels(ws, source, str(dry_run).lower()).inc(len(rows))
        resp = json_response(
            {
                "workspaceName": ws,
                "dryRun": dry_run,
                "recordCounts": {s: len(r) for s, r in batches.items()},
                "ingestMetrics": {s: to_jsonable(r) for s, r in results.items()},
            }
        )
        if results and all(getattr(r, "replayed", False) for r in results.values()):
            resp.headers["Idempotent-Replayed"] = "true"
        return resp

    @router.post("/events", openapi_extra={**schemas.body(schemas.EVENT), **schemas.INGEST_PARAMETERS})
    async def record_event(request: Request) -> Response:
        """One event, as the MCP ``record_event`` tool: ``{"source", "record": {...}, "workspace"}``, validated and
        idempotent (``Idempotency-Key``) like ``/v1/ingest``; answers the push result and the online values of the
        views the source feeds, for the record's entity (read-after-write)."""
        principal = state.authenticate(request)
        body = loads_object(await request.body())
        source = _req_str(body, "source")
        record = _opt(body, "record", dict, "a JSON object of field -> value")
        if record is None:
            raise InvalidInputError("record is required (a JSON object of field -> value)", field="record")
        ws, store = state.store_for(principal, "ingest", _opt(body, "workspace", str, "a string"))
        key = request.headers.get("idempotency-key")
        result = await run_in_threadpool(
            lambda: store.record_event(source, record, subject=principal.subject, idempotency_key=key)
        )
        state.metrics.ingest_records.labels(ws, source, "false").inc(1)
        resp = json_response(to_jsonable(result))
        if result.result.replayed:
            resp.headers["Idempotent-Replayed"] = "true"
        return resp

    return router


def _parse_records(records: Any, limit: int) -> dict[str, list[dict[str, Any]]]:
    if not isinstance(records, dict) or not records:
        raise InvalidInputError(
            'records must be a JSON object of source name -> [{"record": {...}}, ...]', field="records"
        )
    if len(records) > INGEST_SOURCES:
        raise InvalidInputError(f"at most {INGEST_SOURCES} sources in one request; split it", field="records")
    out: dict[str, list[dict[str, Any]]] = {}
    for source, items in records.items():
        where = f"records.{source}"
        if not isinstance(items, list) or not items:
            raise InvalidInputError(f'{where} must be a non-empty list of {{"record": {{...}}}}', field=where)
        rows = []
        for i, item in enumerate(items):
            rec = item.get("record") if isinstance(item, dict) else None
            if not isinstance(rec, dict):
                raise InvalidInputError(f'{where}[{i}] must be {{"record": {{...}}}}', field=f"{where}[{i}].record")
            rows.append(rec)
        if len(rows) > limit:
            raise InvalidInputError(f"more than {limit} records of one source in one request; split it", field=where)
        out[source] = rows
    return out
