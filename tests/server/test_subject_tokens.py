"""Subject-bound tokens over real HTTP: a key or JWT bound to user_id=u1 reads u1 and nothing else."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.subject import make_jwt, subject_server

pytestmark = pytest.mark.redis

FEATURES = "/api/v1/feature-service/get-features"
BATCH = "/api/v1/feature-service/get-features-batch"


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[dict[str, Any]]:
    with subject_server(tmp_path_factory.mktemp("subject") / "repo", redis_url, mcp=False) as s:
        s["keys"]["jwt_u1"] = make_jwt({"sub": "u1", "ws": s["ws"], "scope": "read"})
        yield s


def _h(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _features(srv: dict[str, Any], key: str, join_keys: dict[str, Any]) -> httpx.Response:
    body = {"params": {"featureServiceName": "user_features", "joinKeyMap": join_keys}}
    return httpx.post(srv["url"] + FEATURES, json=body, headers=_h(key))


def _batch(srv: dict[str, Any], key: str, users: list[str]) -> httpx.Response:
    rows = [{"joinKeyMap": {"user_id": u}} for u in users]
    return httpx.post(
        srv["url"] + BATCH,
        json={"params": {"featureServiceName": "user_features", "requestData": rows}},
        headers=_h(key),
    )


def _similar(srv: dict[str, Any], key: str, **body: Any) -> httpx.Response:
    return httpx.post(srv["url"] + "/v1/similar", json=body, headers=_h(key))


@pytest.mark.parametrize("who", ["u1", "jwt_u1"])
def test_get_features_only_for_the_subject(srv: dict[str, Any], who: str) -> None:
    key = srv["keys"][who]
    own = _features(srv, key, {"user_id": "u1"})
    assert own.status_code == 200, own.text
    other = _features(srv, key, {"user_id": "u2"})
    assert other.status_code == 403 and "user_id=u1" in other.json()["message"]
    assert other.json()["field"] == "join_keys.user_id"
    assert _features(srv, key, {"item_id": "i1"}).status_code == 403  # no user_id: not the subject's entity
    assert _features(srv, srv["keys"]["free"], {"user_id": "u2"}).status_code == 200  # an unbound key reads any


@pytest.mark.parametrize("who", ["u1", "jwt_u1"])
def test_a_service_not_keyed_by_the_subject_is_refused(srv: dict[str, Any], who: str) -> None:
    """An extra user_id the item service ignores must not unlock item features for a user-bound token."""
    body: dict[str, Any] = {
        "params": {"featureServiceName": "item_features", "joinKeyMap": {"item_id": "i1", "user_id": "u1"}}
    }
    r = httpx.post(srv["url"] + FEATURES, json=body, headers=_h(srv["keys"][who]))
    assert r.status_code == 403 and "not keyed by 'user_id'" in r.json()["message"], r.text
    body["params"]["joinKeyMap"] = {"item_id": "i1"}
    assert _features(srv, srv["keys"][who], {"item_id": "i1"}).status_code == 403
    free = httpx.post(srv["url"] + FEATURES, json=body, headers=_h(srv["keys"]["free"]))
    assert free.status_code == 200, free.text


@pytest.mark.parametrize("who", ["u1", "jwt_u1"])
def test_batch_with_one_foreign_entity_is_refused_whole(srv: dict[str, Any], who: str) -> None:
    key = srv["keys"][who]
    ok = _batch(srv, key, ["u1", "u1"])
    assert ok.status_code == 200 and len(ok.json()["result"]) == 2
    bad = _batch(srv, key, ["u1", "u2"])
    assert bad.status_code == 403 and bad.json()["field"] == "join_keys[1].user_id"
    assert _batch(srv, srv["keys"]["free"], ["u1", "u2"]).status_code == 200


@pytest.mark.parametrize("who", ["u1", "jwt_u1"])
def test_user_context_only_for_the_subject(srv: dict[str, Any], who: str) -> None:
    key = srv["keys"][who]
    r = httpx.get(srv["url"] + "/v1/context/u1", headers=_h(key))
    assert r.status_code == 200 and r.json()["entity_id"] == "u1"
    r = httpx.get(srv["url"] + "/v1/context/u2", headers=_h(key))
    assert r.status_code == 403 and r.json()["field"] == "entity_id"
    assert httpx.get(srv["url"] + "/v1/context/u2", headers=_h(srv["keys"]["free"])).status_code == 200


@pytest.mark.parametrize("who", ["u1", "jwt_u1"])
def test_find_similar_by_entity_only_for_the_subject_by_text_for_all(srv: dict[str, Any], who: str) -> None:
    key = srv["keys"][who]
    own = _similar(srv, key, view="user_embeddings", entity_id="u1", k=2)
    assert own.status_code == 200, own.text
    assert "u1" not in [i["entity_id"] for i in own.json()["items"]]
    assert _similar(srv, key, view="user_embeddings", entity_id="u2").status_code == 403
    # Another entity type altogether (items are keyed by item_id): out of reach by entity ...
    items = _similar(srv, key, view="item_embeddings", entity_id="i1")
    assert items.status_code == 403 and "item_id" in items.json()["message"]
    # ... but a text query names no entity.
    text = _similar(srv, key, view="item_embeddings", text="red running shoes", k=2)
    assert text.status_code == 200 and text.json()["items"][0]["entity_id"] == "i1"
    assert _similar(srv, srv["keys"]["free"], view="user_embeddings", entity_id="u2").status_code == 200


def test_jwt_errors_over_http(srv: dict[str, Any]) -> None:
    expired = make_jwt({"sub": "u1", "ws": srv["ws"], "scope": "read", "exp": int(time.time()) - 600})
    r = _features(srv, expired, {"user_id": "u1"})
    assert r.status_code == 401 and "expired" in r.json()["message"] and expired not in r.text
    no_sub = make_jwt({"ws": srv["ws"], "scope": "read"})
    r = _features(srv, no_sub, {"user_id": "u1"})
    assert r.status_code == 401 and "'sub'" in r.json()["message"]
    other_ws = make_jwt({"sub": "u1", "ws": "elsewhere", "scope": "read"})
    body = {
        "params": {"workspaceName": srv["ws"], "featureServiceName": "user_features", "joinKeyMap": {"user_id": "u1"}}
    }
    r = httpx.post(srv["url"] + FEATURES, json=body, headers=_h(other_ws))
    assert r.status_code == 403 and r.json()["field"] == "workspaceName"  # the token's workspace decides
    read_only = make_jwt({"sub": "u1", "ws": srv["ws"], "scope": "read"})
    ingest = {"workspace_name": srv["ws"], "records": {"transactions": [{"record": {"user_id": "u1"}}]}}
    r = httpx.post(srv["url"] + "/v1/ingest", json=ingest, headers=_h(read_only))
    assert r.status_code == 403 and "ingest" in r.json()["message"]


def test_ingest_by_a_subject_bound_key_only_for_its_entity(srv: dict[str, Any]) -> None:
    """A bound ingest key pushes events about its own entity; one foreign record refuses the whole push."""

    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    rows = [{"record": {"user_id": u, "item_id": "i1", "amount": 1.0, "note": "n", "ts": now}} for u in ("u1", "u2")]
    bad = {"workspace_name": srv["ws"], "records": {"transactions": rows}}
    r = httpx.post(srv["url"] + "/v1/ingest", json=bad, headers=_h(srv["keys"]["u1_ingest"]))
    assert r.status_code == 403 and r.json()["field"] == "records[1].user_id", r.text
    ok = {"workspace_name": srv["ws"], "records": {"transactions": rows[:1]}}
    r = httpx.post(srv["url"] + "/v1/ingest", json=ok, headers=_h(srv["keys"]["u1_ingest"]))
    assert r.status_code == 200, r.text
    assert r.json()["ingestMetrics"]["transactions"]["accepted"] == 1
