"""``context_store.client``: sync and async clients against a real server, typed errors, reuse."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import context_store as cs
from context_store.client import AsyncFeatureServerClient, FeatureServerClient, get_feature_server_client
from context_store.errors import ForbiddenError, InvalidInputError, NotFoundError, UnauthorizedError, UnavailableError
from context_store.server import create_app
from context_store.server.keys import KeyStore, key_store_path
from tests.support.server import FEATURES_10, SERVING_MODES, free_port, make_server_repo, running_server

pytestmark = pytest.mark.redis


@pytest.fixture(scope="module", params=SERVING_MODES)
def srv(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, redis_url: str
) -> Iterator[dict[str, Any]]:
    ws = "c" + uuid.uuid4().hex[:10]
    repo = make_server_repo(tmp_path_factory.mktemp("client") / "repo", redis_url, ws)
    store = cs.ContextStore(repo)
    store.apply()
    keys = KeyStore(key_store_path(store.config.data_dir))
    ingest_key = keys.create(ws, "ingest")[0]
    read_key = keys.create(ws, "read")[0]
    with running_server(create_app(repo, key_store=keys, mcp=False, fast_path=request.param)) as url:
        yield {"url": url, "ws": ws, "ingest": ingest_key, "read": read_key}
    store.close()
    import redis

    r = redis.Redis.from_url(redis_url)
    for k in r.scan_iter(match=f"*{ws}*", count=1000):
        r.delete(k)
    r.close()


def test_sync_client_push_and_get(srv: dict[str, Any]) -> None:
    ts = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
    with get_feature_server_client(srv["url"], api_key=srv["ingest"]) as client:
        assert isinstance(client, FeatureServerClient)
        res = client.push(
            "transactions", [{"user_id": "cu1", "amount": 4.0, "ts": ts}, {"user_id": "cu1", "amount": 6.0, "ts": ts}]
        )
        assert res["recordCounts"] == {"transactions": 2}
        vec = client.get_features(feature_service=cs.FeatureService(name="user_features"), join_keys={"user_id": "cu1"})
        assert list(vec.feature_values) == FEATURES_10
        assert vec.feature_values["txn_stats.amount_count_1h"] == 2  # int64 decoded back to int
        assert vec.feature_values["txn_stats.amount_sum_1h"] == pytest.approx(10.0)
        assert vec.metadata[0].status == "PRESENT" and vec.metadata[0].effective_time is not None
        assert vec.metadata[0].view == "txn_stats" and vec.join_keys == {"user_id": "cu1"}
        # One pooled connection is reused across calls (keep-alive).
        conns = []
        for _ in range(3):
            client.get_features("fraud", {"user_id": "cu1"}, {"amount": 1.0})
            conns.append(len(client._client._transport._pool.connections))
        assert conns == [1, 1, 1]
        batch = client.get_features_batch("user_features", [{"user_id": "cu1"}, {"user_id": "none"}])
        assert [v.feature_values["txn_stats.amount_count_1h"] for v in batch] == [2, 0]
        md = client.get_feature_service_metadata("fraud")
        assert [f["name"] for f in md["featureValues"]][-1] == "amount_check.amount_over_max"


def test_async_client(srv: dict[str, Any]) -> None:
    async def run() -> list[Any]:
        async with get_feature_server_client(srv["url"], srv["read"], asynchronous=True) as client:
            assert isinstance(client, AsyncFeatureServerClient)
            return await asyncio.gather(
                *[client.get_features("fraud", {"user_id": "cu1"}, {"amount": 100.0}) for _ in range(4)]
            )

    vecs = asyncio.run(run())
    assert all(v.feature_values["amount_check.amount_over_max"] in (True, False) for v in vecs)
    assert vecs[0].feature_values == vecs[-1].feature_values


def test_typed_errors(srv: dict[str, Any]) -> None:
    with FeatureServerClient(srv["url"], srv["read"]) as c:
        with pytest.raises(NotFoundError) as e:
            c.get_features("no_such_service", {"user_id": "x"})
        assert "no_such_service" in e.value.message
        with pytest.raises(ForbiddenError):
            c.push("transactions", [{"user_id": "x", "amount": 1.0, "ts": "2026-01-01T00:00:00Z"}])
        with pytest.raises(ForbiddenError):
            c.get_features("fraud", {"user_id": "x"}, workspace="someone_else")
        with pytest.raises(InvalidInputError):
            c.get_features("fraud", {"user_id": ["not", "a", "key"]})
    with pytest.raises(UnauthorizedError):
        FeatureServerClient(srv["url"], "cs_bad_key").get_features("fraud", {"user_id": "x"})
    with pytest.raises(UnavailableError) as e2:
        FeatureServerClient(f"http://127.0.0.1:{free_port()}", "k", timeout=2).get_features("fraud", {"user_id": "x"})
    assert "unreachable" in e2.value.message
    with pytest.raises(InvalidInputError):
        FeatureServerClient(srv["url"], srv["read"]).get_features(None, {"user_id": "x"})


def test_record_event_sync_and_async(srv: dict[str, Any]) -> None:
    user = "ev" + uuid.uuid4().hex[:8]
    now = datetime.now(UTC)
    events = [
        {"user_id": user, "amount": a, "ts": (now - timedelta(seconds=s)).isoformat()}
        for a, s in ((2.0, 30), (5.5, 20))
    ]
    with FeatureServerClient(srv["url"], srv["ingest"]) as c:
        first = c.record_event("transactions", events[0])
        assert first["accepted"] == 1 and first["visible"] is True and first["join_keys"] == {"user_id": user}
        assert first["features"]["txn_stats.amount_count_1h"] == 1
        assert first["provenance"]["txn_stats.amount_sum_1h"]["status"] == "PRESENT"
        with pytest.raises(InvalidInputError) as e:
            c.record_event("transactions", {**events[1], "amount": "much"})
        assert e.value.field == "record.amount"
        with pytest.raises(NotFoundError):
            c.record_event("nope", events[1])
    with FeatureServerClient(srv["url"], srv["read"]) as c, pytest.raises(ForbiddenError):
        c.record_event("transactions", events[1])

    async def run() -> list[dict[str, Any]]:
        async with AsyncFeatureServerClient(srv["url"], srv["ingest"]) as c:
            key = str(uuid.uuid4())
            return [await c.record_event("transactions", events[1], idempotency_key=key) for _ in range(2)]

    second, retry = asyncio.run(run())
    assert second["replayed"] is False and retry["replayed"] is True
    for res in (second, retry):  # brute force: the two events, both within the hour
        assert res["features"]["txn_stats.amount_count_1h"] == 2
        assert res["features"]["txn_stats.amount_sum_1h"] == pytest.approx(7.5)
        assert res["features"]["txn_stats.amount_max_1h"] == pytest.approx(5.5)


@pytest.fixture(scope="module")
def ctx_srv(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[dict[str, Any]]:
    from tests.support.context import build_context_repo

    ws = "c" + uuid.uuid4().hex[:10]
    repo = build_context_repo(
        tmp_path_factory.mktemp("ctx") / "repo", config={"online_store": redis_url, "workspace": ws}
    )
    store = cs.ContextStore(repo)
    store.apply()
    store.backfill()
    store.materialize()
    keys = KeyStore(key_store_path(store.config.data_dir))
    read_key = keys.create(ws, "read")[0]
    with running_server(create_app(repo, key_store=keys, mcp=False)) as url:
        yield {"url": url, "read": read_key, "store": store}
    store.close()
    import redis

    r = redis.Redis.from_url(redis_url)
    for k in r.scan_iter(match=f"*{ws}*", count=1000):
        r.delete(k)
    r.close()


def test_get_user_context_sync_and_async(ctx_srv: dict[str, Any]) -> None:
    args: dict[str, Any] = {"context_service": "user_context", "max_tokens": 300, "query": "refunds"}
    with FeatureServerClient(ctx_srv["url"], ctx_srv["read"]) as c:
        got = c.get_user_context("u1", **args)
        past = c.get_user_context("u1", context_service="user_context", as_of=datetime.now(UTC) - timedelta(hours=20))
        with pytest.raises(InvalidInputError) as e:
            c.get_user_context("u1", max_tokens=3)
        assert e.value.field == "max_tokens"

    async def run() -> Any:
        async with AsyncFeatureServerClient(ctx_srv["url"], ctx_srv["read"]) as c:
            return await c.get_user_context("u1", **args)

    aget = asyncio.run(run())
    direct = ctx_srv["store"].get_user_context("u1", **args)  # the SDK's in-process entry point
    for res in (got, aget):
        assert res["context_service"] == "user_context" and res["max_tokens"] == 300 and res["tokens"] <= 300
        assert [k["text"] for k in res["knowledge"]] == [k.text for k in direct.knowledge]
        assert "Refunds" in res["knowledge"][0]["text"]
        assert res["features"]["user_profile.segment"] == "runner"
    # Brute force over the history (build_context_repo: u1's events at ages 47h, 45h, ..., 9h): the 1d window
    # now holds ages 23h..9h, at now-20h it held ages 43h..21h.
    ages = [47 - 2 * i for i in range(20)]
    assert got["features"]["txn_stats.amount_count_1d"] == sum(a < 24 for a in ages) == 8
    assert past["as_of"] is not None
    assert past["features"]["txn_stats.amount_count_1d"] == sum(20 < a < 44 for a in ages) == 12
