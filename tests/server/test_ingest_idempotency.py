"""``POST /v1/ingest`` with an ``Idempotency-Key``: a retry answers the first result and writes once;
the same key with other records is a 409; the SDK client sends the header."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

import context_store as cs
from context_store.client import FeatureServerClient
from context_store.server import create_app
from context_store.server.keys import KeyStore, key_store_path
from tests.support.server import make_server_repo, running_server

pytestmark = pytest.mark.redis


def _ts(minutes_ago: float) -> str:
    return (datetime.now(UTC) - timedelta(minutes=minutes_ago)).isoformat()


@pytest.fixture
def srv(tmp_path: Any, redis_url: str, redis_cleanup: list[str]) -> Iterator[dict[str, Any]]:
    ws = "i" + uuid.uuid4().hex[:10]
    redis_cleanup.append(f"cs:{ws}:*")
    repo = make_server_repo(tmp_path / "repo", redis_url, ws)
    store = cs.ContextStore(repo)
    store.apply()
    keys = KeyStore(key_store_path(store.config.data_dir))
    key = keys.create(ws, "ingest")[0]
    app = create_app(repo, key_store=keys, mcp=False)
    with running_server(app) as url:
        yield {"url": url, "ws": ws, "key": key, "h": {"authorization": f"Bearer {key}"}, "store": store}
    store.close()


def _count_1h(store: cs.ContextStore, user: str) -> int:
    return int(store.get_features("user_features", {"user_id": user}).feature_values["txn_stats.amount_count_1h"])


def test_retry_with_the_same_key_returns_the_first_result_and_writes_once(srv: dict[str, Any]) -> None:
    records = [{"record": {"user_id": "u1", "amount": a, "ts": _ts(m)}} for a, m in ((10.0, 30), (20.0, 20), (5.0, 9))]
    body = {"workspace_name": srv["ws"], "records": {"transactions": records}}
    h = {**srv["h"], "Idempotency-Key": "push-0001"}
    first = httpx.post(srv["url"] + "/v1/ingest", json=body, headers=h, timeout=30)
    assert first.status_code == 200, first.text
    m1 = first.json()["ingestMetrics"]["transactions"]
    assert m1["accepted"] == 3 and m1["replayed"] is False and "idempotent-replayed" not in first.headers
    assert _count_1h(srv["store"], "u1") == 3
    for _ in range(2):  # the client did not see the answer and retries
        again = httpx.post(srv["url"] + "/v1/ingest", json=body, headers=h, timeout=30)
        assert again.status_code == 200, again.text
        assert again.headers["idempotent-replayed"] == "true"
        m2 = again.json()["ingestMetrics"]["transactions"]
        assert m2["replayed"] is True
        assert {k: v for k, v in m2.items() if k != "replayed"} == {k: v for k, v in m1.items() if k != "replayed"}
    assert _count_1h(srv["store"], "u1") == 3  # written once

    other = {"workspace_name": srv["ws"], "records": {"transactions": records[:2]}}
    conflict = httpx.post(srv["url"] + "/v1/ingest", json=other, headers=h, timeout=30)
    assert conflict.status_code == 409, conflict.text
    assert "Idempotency-Key" in conflict.text and "push-0001" in conflict.text
    assert _count_1h(srv["store"], "u1") == 3

    bad = httpx.post(srv["url"] + "/v1/ingest", json=body, headers={**srv["h"], "Idempotency-Key": "x" * 300})
    assert bad.status_code == 400 and "Idempotency-Key" in bad.text
    # Without a key every push is new (at-least-once: the client's retry counts again).
    assert httpx.post(srv["url"] + "/v1/ingest", json=body, headers=srv["h"], timeout=30).status_code == 200
    assert _count_1h(srv["store"], "u1") == 6


def test_sdk_client_sends_the_key(srv: dict[str, Any]) -> None:
    rows = [{"user_id": "u7", "amount": 1.0, "ts": _ts(5)}]
    with FeatureServerClient(srv["url"], srv["key"], workspace=srv["ws"], timeout=30) as client:
        a = client.push("transactions", rows, idempotency_key="sdk-1")
        b = client.push("transactions", rows, idempotency_key="sdk-1")
    assert a["ingestMetrics"]["transactions"]["replayed"] is False
    assert b["ingestMetrics"]["transactions"]["replayed"] is True
    assert b["ingestMetrics"]["transactions"]["offsets"] == a["ingestMetrics"]["transactions"]["offsets"]
    assert _count_1h(srv["store"], "u7") == 1
