"""Tecton HTTP API wire format: parse ``{"params": ...}`` requests, encode feature vectors.

Plain dict/list code on purpose (no pydantic per request): this is the hot path. Both camelCase
(the Python client) and snake_case (the Java client) parameter names are accepted, as Tecton does.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from ..errors import InvalidInputError
from ..limits import BATCH_ROWS, LATENCY_BUDGET_MS
from ..registry.repo import RepoDefinitions
from ..types import NOT_MATERIALIZED, FeatureVector
from ..vocab.json import dumps_api

__all__ = [
    "GetFeaturesParams",
    "MetadataOptions",
    "parse_get_features",
    "parse_batch",
    "parse_metadata_request",
    "encode_vector",
    "WireSchema",
    "encode_values",
    "encode_feature_metadata",
    "service_metadata",
    "rfc3339",
]

_META_KEYS = {
    "includeNames": "names",
    "include_names": "names",
    "includeDataTypes": "data_types",
    "include_data_types": "data_types",
    "includeEffectiveTimes": "effective_times",
    "include_effective_times": "effective_times",
    "includeSloInfo": "slo_info",
    "include_slo_info": "slo_info",
    "includeServingStatus": "serving_status",
    "include_serving_status": "serving_status",
    "includeFeatureDescriptions": "descriptions",
    "include_feature_descriptions": "descriptions",
    "includeFeatureTags": "tags",
    "include_feature_tags": "tags",
}


@dataclass(slots=True)
class MetadataOptions:
    # Names and data types default on: tecton-client's get_features_dict() needs both.
    names: bool = True
    data_types: bool = True
    effective_times: bool = False
    slo_info: bool = False
    serving_status: bool = False
    descriptions: bool = False
    tags: bool = False


@dataclass(slots=True)
class GetFeaturesParams:
    workspace: str | None
    service: str
    join_keys: dict[str, Any]
    request_context: dict[str, Any]
    meta: MetadataOptions
    latency_budget_ms: int | None
    allow_partial: bool


def _get(params: dict[str, Any], camel: str, snake: str) -> Any:
    v = params.get(camel)
    return params.get(snake) if v is None else v


def _params(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise InvalidInputError('request body must be a JSON object {"params": {...}}', field="params")
    params = body.get("params")
    if not isinstance(params, dict):
        raise InvalidInputError("'params' must be a JSON object", field="params")
    return params


def _str(params: dict[str, Any], camel: str, snake: str, required: bool) -> str | None:
    v = _get(params, camel, snake)
    if v is None or v == "":
        if required:
            raise InvalidInputError(f"params.{camel} is required", field=f"params.{camel}")
        return None
    if not isinstance(v, str):
        raise InvalidInputError(f"params.{camel} must be a string", field=f"params.{camel}")
    return v


def _join_keys(v: Any, where: str) -> dict[str, Any]:
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise InvalidInputError(f"{where} must be a JSON object of join key -> value", field=where)
    for k, x in v.items():
        if x is not None and (isinstance(x, bool) or not isinstance(x, (str, int))):
            if isinstance(x, float) and x.is_integer():
                v = {**v, k: int(x)}  # JSON has one number type: 7.0 is the integer 7 (as JSON Schema says)
                continue
            raise InvalidInputError(
                f"{where}.{k} must be a string or an integer, got {type(x).__name__}", field=f"{where}.{k}"
            )
    return v


def _context(v: Any, where: str) -> dict[str, Any]:
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise InvalidInputError(f"{where} must be a JSON object", field=where)
    return v


def _meta(params: dict[str, Any]) -> MetadataOptions:
    raw = _get(params, "metadataOptions", "metadata_options")
    opts = MetadataOptions()
    if raw is None:
        return opts
    if not isinstance(raw, dict):
        raise InvalidInputError("params.metadataOptions must be a JSON object", field="params.metadataOptions")
    for k, v in raw.items():
        attr = _META_KEYS.get(k)
        if attr is None:
            continue  # unknown options are ignored, as Tecton does for forward compatibility
        if not isinstance(v, bool):
            raise InvalidInputError(
                f"params.metadataOptions.{k} must be true or false", field=f"params.metadataOptions.{k}"
            )
        setattr(opts, attr, v)
    return opts


def _request_options(params: dict[str, Any]) -> int | None:
    raw = _get(params, "requestOptions", "request_options")
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise InvalidInputError("params.requestOptions must be a JSON object", field="params.requestOptions")
    budget = _get(raw, "latencyBudgetMs", "latency_budget_ms")
    if budget is None:
        return None
    if isinstance(budget, float) and budget.is_integer():
        budget = int(budget)  # JSON has one number type: 8300.0 is the integer 8300
    if budget not in LATENCY_BUDGET_MS:
        raise InvalidInputError(
            f"params.requestOptions.latencyBudgetMs must be an integer between {LATENCY_BUDGET_MS.lo} and "
            f"{LATENCY_BUDGET_MS.hi}",
            field="params.requestOptions.latencyBudgetMs",
        )
    return budget


def _bool(params: dict[str, Any], camel: str, snake: str) -> bool:
    v = _get(params, camel, snake)
    if v is None:
        return False
    if not isinstance(v, bool):
        raise InvalidInputError(f"params.{camel} must be true or false", field=f"params.{camel}")
    return v


def parse_get_features(body: Any) -> GetFeaturesParams:
    p = _params(body)
    return GetFeaturesParams(
        workspace=_str(p, "workspaceName", "workspace_name", False),
        service=_str(p, "featureServiceName", "feature_service_name", True),  # type: ignore[arg-type]
        join_keys=_join_keys(_get(p, "joinKeyMap", "join_key_map"), "params.joinKeyMap"),
        request_context=_context(_get(p, "requestContextMap", "request_context_map"), "params.requestContextMap"),
        meta=_meta(p),
        latency_budget_ms=_request_options(p),
        allow_partial=_bool(p, "allowPartialResults", "allow_partial_results"),
    )


def parse_batch(
    body: Any, max_rows: int = BATCH_ROWS
) -> tuple[GetFeaturesParams, list[dict[str, Any]], list[dict[str, Any]]]:
    """``params.requestData: [{joinKeyMap, requestContextMap}, ...]`` -> (params, join keys, contexts)."""
    p = _params(body)
    rows = _get(p, "requestData", "request_data")
    if not isinstance(rows, list) or not rows:
        raise InvalidInputError(
            "params.requestData must be a non-empty list of {joinKeyMap, requestContextMap}", field="params.requestData"
        )
    if len(rows) > max_rows:
        raise InvalidInputError(
            f"params.requestData has {len(rows)} rows; the limit is {max_rows}", field="params.requestData"
        )
    keys: list[dict[str, Any]] = []
    ctxs: list[dict[str, Any]] = []
    for i, r in enumerate(rows):
        where = f"params.requestData[{i}]"
        if not isinstance(r, dict):
            raise InvalidInputError(f"{where} must be a JSON object", field=where)
        keys.append(_join_keys(_get(r, "joinKeyMap", "join_key_map"), where + ".joinKeyMap"))
        ctxs.append(_context(_get(r, "requestContextMap", "request_context_map"), where + ".requestContextMap"))
    params = GetFeaturesParams(
        workspace=_str(p, "workspaceName", "workspace_name", False),
        service=_str(p, "featureServiceName", "feature_service_name", True),  # type: ignore[arg-type]
        join_keys={},
        request_context={},
        meta=_meta(p),
        latency_budget_ms=_request_options(p),
        allow_partial=_bool(p, "allowPartialResults", "allow_partial_results"),
    )
    return params, keys, ctxs


def parse_metadata_request(body: Any) -> tuple[str | None, str]:
    p = _params(body)
    return (
        _str(p, "workspaceName", "workspace_name", False),
        _str(p, "featureServiceName", "feature_service_name", True),  # type: ignore[return-value]
    )


# -- encoding -------------------------------------------------------------------------------


def rfc3339(t: datetime | None) -> str | None:
    if t is None:
        return None
    if t.tzinfo is not None:
        t = t.astimezone(UTC).replace(tzinfo=None)
    return t.isoformat(timespec="seconds" if not t.microsecond else "microseconds") + "Z"


def _wire(dtype: dict[str, Any], v: Any) -> Any:
    """Tecton encodes int64 as JSON strings (JS numbers lose precision above 2**53)."""
    if v is None:
        return None
    t = dtype.get("type")
    if t == "int64":
        return str(int(v))
    if t == "array":
        el = dtype.get("elementType") or {}
        if el.get("type") in ("int64", "array"):
            return [_wire(el, x) for x in v]
        return v  # lists, tuples and numpy arrays all serialize as JSON arrays
    if t == "timestamp" and isinstance(v, datetime):
        return rfc3339(v)
    return v


def encode_values(vec: FeatureVector) -> list[Any]:
    return [_wire(m.data_type, v) for v, m in zip(vec.feature_values.values(), vec.metadata)]


def _wire_type(dtype: dict[str, Any]) -> dict[str, Any]:
    # Tecton spells booleans "boolean".
    if dtype.get("type") == "bool":
        return {**dtype, "type": "boolean"}
    if dtype.get("type") == "array":
        return {**dtype, "elementType": _wire_type(dtype.get("elementType") or {})}
    return dtype


def wire_status(status: str) -> str:
    """Tecton's serving statuses are PRESENT, MISSING_DATA and UNKNOWN: NOT_MATERIALIZED (the
    online state is not complete, value null) goes out as UNKNOWN, so Tecton clients parse it and
    never take the null for a known-missing value."""
    return "UNKNOWN" if status == NOT_MATERIALIZED else status


def encode_feature_metadata(
    vec: FeatureVector, meta: MetadataOptions, with_status: bool = True
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for m in vec.metadata:
        d: dict[str, Any] = {}
        if meta.names:
            d["name"] = m.name
        if meta.data_types:
            d["dataType"] = _wire_type(m.data_type)
        if meta.effective_times and m.effective_time is not None:
            d["effectiveTime"] = rfc3339(m.effective_time)
        if meta.serving_status and with_status:
            d["status"] = wire_status(m.status)
        out.append(d)
    return out


def encode_vector(vec: FeatureVector, meta: MetadataOptions, slo: dict[str, Any] | None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"features": encode_feature_metadata(vec, meta)}
    if slo is not None:
        metadata["sloInfo"] = slo
    return {"result": {"features": encode_values(vec)}, "metadata": metadata}


class WireSchema:
    """What a get-features response of one service repeats on every request, done once: the feature
    metadata (names, data types) pre-encoded as a JSON fragment, and which values need a wire conversion.
    Only for responses without per-request metadata (effective times, statuses): ``static(meta)``."""

    __slots__ = ("fragment", "ints", "general")

    def __init__(self, vec: FeatureVector, meta: MetadataOptions) -> None:
        self.fragment = orjson.Fragment(dumps_api(encode_feature_metadata(vec, meta)))
        types = [m.data_type for m in vec.metadata]
        self.ints = [i for i, t in enumerate(types) if t.get("type") == "int64"]
        self.general = [(i, t) for i, t in enumerate(types) if t.get("type") in ("array", "timestamp")]

    @staticmethod
    def static(meta: MetadataOptions) -> bool:
        return not meta.effective_times and not meta.serving_status

    def encode(self, vec: FeatureVector, slo: dict[str, Any] | None) -> dict[str, Any]:
        """The same object as ``encode_vector`` (with this schema's options), metadata as the fragment."""
        values = list(vec.feature_values.values())
        for i in self.ints:
            v = values[i]
            if v is not None:
                values[i] = str(int(v))
        for i, t in self.general:
            values[i] = _wire(t, values[i])
        metadata: dict[str, Any] = {"features": self.fragment}
        if slo is not None:
            metadata["sloInfo"] = slo
        return {"result": {"features": values}, "metadata": metadata}


def service_metadata(defs: RepoDefinitions, name: str) -> dict[str, Any]:
    """The ``/metadata`` response: input join keys, request context keys and feature values."""
    svc = defs.feature_service(name)
    join: dict[str, dict[str, Any]] = {}
    for view in svc.views:
        fvs = getattr(view, "feature_view_sources", None)
        for fv in fvs if fvs is not None else [view]:
            for f in getattr(fv, "join_key_fields", ()):
                join.setdefault(f.name, _wire_type(f.dtype.describe()))
    ctx = {k: _wire_type(t.describe()) for k, t in defs.request_fields(svc).items()}
    values = []
    for sel in svc.selections:
        types = defs.feature_types.get(sel.view.name, {})
        for f in sel.features:
            t = types.get(f)
            dt = _wire_type(t.describe()) if t is not None else {"type": "unknown"}
            values.append(
                {"name": f"{sel.view.name}.{f}", "dataType": dt, "type": dt["type"], "featureViewName": sel.view.name}
            )
    return {
        "featureServiceType": "DEFAULT",
        "inputJoinKeys": [{"name": k, "dataType": t, "type": t["type"]} for k, t in join.items()],
        "inputRequestContextKeys": [{"name": k, "dataType": t, "type": t["type"]} for k, t in ctx.items()],
        "featureValues": values,
    }
