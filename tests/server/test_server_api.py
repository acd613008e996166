"""The feature server over real HTTP: Tecton wire compatibility (with ``tecton-client``), native
endpoints, bad input, limits and metrics."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from tecton_client import AsyncTectonClient, MetadataOptions, RequestOptions, TectonClient
from tecton_client.exceptions import BadRequestError, NotFoundError, UnauthorizedError

import context_store as cs
from context_store.server import create_app
from context_store.server.keys import KeyStore, key_store_path
from tests.support.server import FEATURES_10, SERVING_MODES, make_server_repo, running_server

pytestmark = pytest.mark.redis

GET = "/api/v1/feature-service/get-features"
BATCH = "/api/v1/feature-service/get-features-batch"


def _ts(minutes_ago: float) -> str:
    return (datetime.now(UTC) - timedelta(minutes=minutes_ago)).isoformat()


@pytest.fixture(scope="module", params=SERVING_MODES)
def srv(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, redis_url: str
) -> Iterator[dict[str, Any]]:
    ws = "s" + uuid.uuid4().hex[:10]
    repo = make_server_repo(tmp_path_factory.mktemp("api") / "repo", redis_url, ws)
    store = cs.ContextStore(repo)
    store.apply()
    keys = KeyStore(key_store_path(store.config.data_dir))
    key = keys.create(ws, "admin")[0]
    metrics_h = {"authorization": f"Bearer {keys.create(ws, 'metrics')[0]}"}  # what Prometheus scrapes with
    app = create_app(repo, key_store=keys, mcp=False, max_body=64 * 1024, fast_path=request.param)
    with running_server(app) as url:
        h = {"authorization": f"Bearer {key}"}
        records = [
            {"record": {"user_id": "u1", "amount": a, "ts": _ts(m)}} for a, m in ((10.0, 30), (20.0, 20), (30.0, 10))
        ]
        records += [{"record": {"user_id": "u2", "amount": 5.0, "ts": _ts(120)}}]
        body = {"workspace_name": ws, "records": {"transactions": records}}
        r = httpx.post(url + "/v1/ingest", json=body, headers=h, timeout=30)  # the first push loads its modules
        assert r.status_code == 200, r.text
        yield {"url": url, "ws": ws, "key": key, "h": h, "metrics_h": metrics_h}
    store.close()
    import redis

    r = redis.Redis.from_url(redis_url)
    for k in r.scan_iter(match=f"*{ws}*", count=1000):
        r.delete(k)
    r.close()


def _post(srv: dict[str, Any], path: str, body: Any = None, raw: bytes | None = None) -> httpx.Response:
    if raw is not None:
        return httpx.post(srv["url"] + path, content=raw, headers={**srv["h"], "content-type": "application/json"})
    return httpx.post(srv["url"] + path, json=body, headers=srv["h"])


def test_tecton_client_get_features(srv: dict[str, Any]) -> None:
    client = TectonClient(srv["url"], api_key=srv["key"], default_workspace_name=srv["ws"])
    resp = client.get_features(
        feature_service_name="user_features", join_key_map={"user_id": "u1"}, metadata_options=MetadataOptions.all()
    )
    d = resp.get_features_dict()
    assert list(d) == FEATURES_10  # declared order
    assert d["txn_stats.amount_count_1h"] == 3 and d["txn_stats.amount_count_1d"] == 3
    assert d["txn_stats.amount_sum_1h"] == pytest.approx(60.0)
    assert d["txn_stats.amount_mean_1h"] == pytest.approx(20.0)
    assert (d["txn_stats.amount_min_1h"], d["txn_stats.amount_max_1h"]) == (10.0, 30.0)
    assert resp.result.features[0] == "3"  # int64 travels as a JSON string
    meta = resp.metadata["features"]
    assert {m["status"] for m in meta} == {"PRESENT"}
    assert meta[0]["dataType"] == {"type": "int64"} and meta[1]["dataType"] == {"type": "float64"}
    assert meta[0]["effectiveTime"].endswith("Z")
    assert resp.slo_info is not None and resp.slo_info.server_time_seconds > 0
    # u2's only event is 2 h old: outside the 1 h windows, inside the 1 d ones.
    d2 = client.get_features(
        feature_service_name="user_features",
        join_key_map={"user_id": "u2"},
        metadata_options=MetadataOptions(include_names=True, include_data_types=True),
    ).get_features_dict()
    assert d2["txn_stats.amount_count_1h"] == 0 and d2["txn_stats.amount_count_1d"] == 1
    assert d2["txn_stats.amount_sum_1d"] == pytest.approx(5.0) and d2["txn_stats.amount_mean_1h"] is None


def test_tecton_client_realtime_and_metadata(srv: dict[str, Any]) -> None:
    client = TectonClient(srv["url"], api_key=srv["key"], default_workspace_name=srv["ws"])
    d = client.get_features(
        feature_service_name="fraud", join_key_map={"user_id": "u1"}, request_context_map={"amount": 100.0}
    ).get_features_dict()
    assert d == {
        "txn_stats.amount_count_1h": 3,
        "txn_stats.amount_sum_1d": pytest.approx(60.0),
        "amount_check.amount_over_max": True,
    }
    md = client.get_feature_service_metadata(feature_service_name="user_features")
    assert [f["name"] for f in md.feature_values] == FEATURES_10
    assert [k["name"] for k in md.input_join_keys] == ["user_id"]
    md = client.get_feature_service_metadata(feature_service_name="fraud")
    assert md.input_request_context_keys == [{"name": "amount", "dataType": {"type": "float64"}, "type": "float64"}]


def test_tecton_client_errors(srv: dict[str, Any]) -> None:
    client = TectonClient(srv["url"], api_key=srv["key"], default_workspace_name=srv["ws"])
    with pytest.raises(NotFoundError) as e:
        client.get_features(feature_service_name="nope", join_key_map={"user_id": "u1"})
    assert "nope" in str(e.value)
    with pytest.raises(UnauthorizedError):
        TectonClient(srv["url"], api_key="cs_x_y", default_workspace_name=srv["ws"]).get_features(
            feature_service_name="user_features", join_key_map={"user_id": "u1"}
        )
    with pytest.raises(BadRequestError):
        client.get_features(
            feature_service_name="fraud",
            join_key_map={"user_id": "u1"},
            request_options=RequestOptions(latency_budget_ms=-5),
        )


def test_async_tecton_client(srv: dict[str, Any]) -> None:
    async def run() -> dict[str, Any]:
        client = AsyncTectonClient(srv["url"], api_key=srv["key"], default_workspace_name=srv["ws"])
        rs = await asyncio.gather(
            *[
                client.get_features(feature_service_name="user_features", join_key_map={"user_id": "u1"})
                for _ in range(5)
            ]
        )
        return rs[-1].get_features_dict()

    assert asyncio.run(run())["txn_stats.amount_count_1h"] == 3


def test_batch(srv: dict[str, Any]) -> None:
    body = {
        "params": {
            "workspaceName": srv["ws"],
            "featureServiceName": "user_features",
            "requestData": [
                {"joinKeyMap": {"user_id": "u2"}},
                {"joinKeyMap": {"user_id": "u1"}},
                {"joinKeyMap": {"user_id": "nobody"}},
            ],
            "metadataOptions": {"includeServingStatus": True, "includeSloInfo": True},
        }
    }
    r = _post(srv, BATCH, body)
    assert r.status_code == 200, r.text
    b = r.json()
    assert [row["features"][0] for row in b["result"]] == ["0", "3", "0"]
    assert [f["name"] for f in b["metadata"]["features"]] == FEATURES_10
    assert b["result"][1]["metadata"]["features"][0]["status"] == "PRESENT"
    assert "batchSloInfo" in b["metadata"]


def test_snake_case_params_are_accepted(srv: dict[str, Any]) -> None:
    body = {
        "params": {
            "workspace_name": srv["ws"],
            "feature_service_name": "fraud",
            "join_key_map": {"user_id": "u1"},
            "request_context_map": {"amount": 1.0},
            "metadata_options": {"include_names": True},
        }
    }
    r = _post(srv, GET, body)
    assert r.status_code == 200, r.text
    assert r.json()["result"]["features"] == ["3", 60.0, False]


def test_latency_budget_with_partial_results(srv: dict[str, Any]) -> None:
    params = {
        "workspaceName": srv["ws"],
        "featureServiceName": "slow",
        "joinKeyMap": {"user_id": "u1"},
        "requestContextMap": {"amount": -1.0},
        "requestOptions": {"latencyBudgetMs": 100},
        "metadataOptions": {"includeServingStatus": True, "includeSloInfo": True},
    }
    r = _post(srv, GET, {"params": params})
    assert r.status_code == 504 and "latency budget" in r.json()["message"]
    r = _post(srv, GET, {"params": {**params, "allowPartialResults": True}})
    assert r.status_code == 200, r.text
    b = r.json()
    assert b["result"]["features"] == [None, None]
    assert {f["status"] for f in b["metadata"]["features"]} == {"MISSING_DATA"}
    assert b["metadata"]["sloInfo"]["sloEligible"] is False
    # Within budget: the full answer.
    r = _post(
        srv,
        GET,
        {"params": {**params, "requestContextMap": {"amount": 2.0}, "requestOptions": {"latencyBudgetMs": 5000}}},
    )
    assert r.json()["result"]["features"] == ["3", 2.0]


@pytest.mark.parametrize(
    ("raw", "status", "needle"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"", 400, "empty"),
        (b"[]", 400, "params"),
        (b'{"params": 5}', 400, "params"),
        (b'{"params": {}}', 400, "featureServiceName"),
        (b'{"params": {"featureServiceName": 7}}', 400, "featureServiceName"),
        (b'{"params": {"featureServiceName": "fraud", "joinKeyMap": [1]}}', 400, "joinKeyMap"),
        (b'{"params": {"featureServiceName": "fraud", "joinKeyMap": {"user_id": [1]}}}', 400, "joinKeyMap.user_id"),
        (b'{"params": {"featureServiceName": "fraud", "joinKeyMap": {"user_id": true}}}', 400, "joinKeyMap.user_id"),
        (
            b'{"params": {"featureServiceName": "fraud", "metadataOptions": {"includeNames": "yes"}}}',
            400,
            "includeNames",
        ),
        (
            b'{"params": {"featureServiceName": "fraud", "requestOptions": {"latencyBudgetMs": "1"}}}',
            400,
            "latencyBudgetMs",
        ),
        (b'{"params": {"featureServiceName": "fraud", "allowPartialResults": 1}}', 400, "allowPartialResults"),
        (
            b'{"params": {"featureServiceName": "no_such_service", "joinKeyMap": {"user_id": "u1"}}}',
            404,
            "no_such_service",
        ),
    ],
)
def test_bad_get_features_requests(srv: dict[str, Any], raw: bytes, status: int, needle: str) -> None:
    r = _post(srv, GET, raw=raw)
    assert r.status_code == status, r.text
    assert needle in r.json()["message"]


def test_store_level_bad_input_is_4xx(srv: dict[str, Any]) -> None:
    # Missing join key, and a request context value of the wrong type: the store's errors, as 400s.
    for params in (
        {"featureServiceName": "fraud", "joinKeyMap": {}, "requestContextMap": {"amount": 1.0}},
        {"featureServiceName": "fraud", "joinKeyMap": {"user_id": "u1"}, "requestContextMap": {"amount": "x"}},
        {"featureServiceName": "fraud", "joinKeyMap": {"user_id": "u1"}},
    ):
        r = _post(srv, GET, {"params": params})
        assert 400 <= r.status_code < 500, (params, r.text)
        assert r.json()["message"]


def test_bad_native_requests(srv: dict[str, Any]) -> None:
    cases = [
        ("/v1/similar", {"view": "x"}, "text"),
        ("/v1/similar", {"view": "x", "text": "a", "k": 0}, "k"),
        ("/v1/similar", {"text": "a"}, "view"),
        ("/v1/knowledge/search", {"knowledge": "kb"}, "query"),
        ("/v1/ingest", {"records": {}}, "records"),
        ("/v1/ingest", {"records": {"transactions": [{"nope": 1}]}}, "records.transactions[0]"),
        ("/v1/ingest", {"records": {"transactions": [{"record": {"user_id": "u1"}}]}}, ""),
        ("/v1/ingest", {"records": {"no_source": [{"record": {"a": 1}}]}}, "no_source"),
        ("/v1/ingest", {"dry_run": "yes", "records": {"transactions": [{"record": {}}]}}, "dry_run"),
    ]
    for path, body, needle in cases:
        r = _post(srv, path, body)
        assert 400 <= r.status_code < 500, (path, body, r.text)
        assert needle in r.json()["message"], (path, body, r.text)
    r = httpx.get(srv["url"] + "/v1/context/u1", params={"max_tokens": "lots"}, headers=srv["h"])
    assert r.status_code == 400 and "max_tokens" in r.json()["message"]


def test_ingest_then_read_after_write(srv: dict[str, Any]) -> None:
    body = {
        "workspace_name": srv["ws"],
        "records": {"transactions": [{"record": {"user_id": "u3", "amount": 7.5, "ts": _ts(1)}}]},
    }
    r = _post(srv, "/v1/ingest", body)
    assert r.status_code == 200 and r.json()["ingestMetrics"]["transactions"]["accepted"] == 1
    r = _post(srv, GET, {"params": {"featureServiceName": "user_features", "joinKeyMap": {"user_id": "u3"}}})
    assert r.json()["result"]["features"][:2] == ["1", 7.5]


def test_body_size_limit(srv: dict[str, Any]) -> None:
    big = b'{"params": {"featureServiceName": "fraud", "pad": "' + b"x" * 100_000 + b'"}}'
    r = _post(srv, GET, raw=big)
    assert r.status_code == 413 and "limit" in r.json()["message"]


def test_body_size_limit_while_streaming(srv: dict[str, Any]) -> None:
    """No Content-Length (chunked): the limit is enforced while the body arrives, with the same answer."""

    def chunks() -> Iterator[bytes]:
        yield b'{"params": {"featureServiceName": "fraud", "pad": "'
        for _ in range(10):
            yield b"x" * 10_000
        yield b'"}}'

    r = httpx.post(srv["url"] + GET, content=chunks(), headers={**srv["h"], "content-type": "application/json"})
    assert r.status_code == 413 and "limit" in r.json()["message"] and r.json()["field"] == "body"


def test_fast_path_limits_a_chunked_body_that_arrives_whole() -> None:
    """The server may hand over a chunked body in one message: the limit still holds (as in BodySizeLimit)."""
    from context_store.errors import PayloadTooLargeError
    from context_store.server.fastpath import FastPath
    from context_store.server.metrics import Metrics

    fast = FastPath(app=None, routes={}, metrics=Metrics(), max_body=10)  # type: ignore[arg-type]

    async def one_message() -> dict[str, Any]:
        return {"type": "http.request", "body": b"x" * 11, "more_body": False}

    with pytest.raises(PayloadTooLargeError) as e:
        asyncio.run(fast._body(one_message, None))  # type: ignore[arg-type]
    assert e.value.status == 413 and e.value.field == "body"


def test_unknown_route_and_method(srv: dict[str, Any]) -> None:
    r = httpx.get(srv["url"] + "/api/v1/nothing-here", headers=srv["h"])
    assert r.status_code == 404 and r.json()["message"]
    r = httpx.get(srv["url"] + GET, headers=srv["h"])
    assert r.status_code == 405 and r.json()["message"]


def test_health_ready_and_openapi(srv: dict[str, Any]) -> None:
    assert httpx.get(srv["url"] + "/healthz").json() == {"status": "ok"}
    r = httpx.get(srv["url"] + "/readyz")
    assert r.status_code == 200 and r.json()["ready"] is True
    spec = httpx.get(srv["url"] + "/openapi.json").json()
    for path in (
        GET,
        BATCH,
        "/api/v1/feature-service/metadata",
        "/v1/ingest",
        "/v1/similar",
        "/v1/context/{entity_id}",
    ):
        assert path in spec["paths"]
    assert "requestBody" in spec["paths"][GET]["post"]


def test_metrics_openmetrics(srv: dict[str, Any]) -> None:
    _post(srv, GET, {"params": {"featureServiceName": "user_features", "joinKeyMap": {"user_id": "u1"}}})
    r = httpx.get(srv["url"] + "/metrics", headers=srv["metrics_h"])
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/openmetrics-text")
    text = r.text
    assert re.search(
        r'cs_http_request_duration_seconds_bucket\{le="0.005",route="/api/v1/feature-service/get-features",'
        r'service="user_features"\} [1-9]',
        text,
    )
    assert "cs_online_store_read_duration_seconds_bucket" in text
    assert f'cs_ingest_records_total{{dry_run="false",source="transactions",workspace="{srv["ws"]}"}}' in text
    assert text.rstrip().endswith("# EOF")
    assert f'cs_feature_freshness_age_seconds{{view="txn_stats",workspace="{srv["ws"]}"}}' in text
    assert f'cs_stream_lag_entries{{source="transactions",workspace="{srv["ws"]}"}}' in text
    assert 'cs_stream_pushed_events_total{source="transactions"}' in text
    classic = httpx.get(srv["url"] + "/metrics", headers={**srv["metrics_h"], "accept": "text/plain"})
    assert classic.headers["content-type"].startswith("text/plain")
