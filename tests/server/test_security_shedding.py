"""Issue 13, item 8: load shedding. Beyond ``max_in_flight`` requests in one server process the excess
gets 503 + Retry-After at once (no body read) while the admitted requests complete; probes are exempt."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.types import Receive, Scope, Send

from context_store.server import create_app
from context_store.server.shedding import LoadShedder
from tests.support.asgi import http_scope, ok_app, status_of
from tests.support.server import SERVING_MODES, make_server_repo, running_server

GET = "/api/v1/feature-service/get-features"


def _slow_body(ws: str) -> dict[str, Any]:
    # amount < 0 makes slow_echo sleep 0.5 s; a latency budget runs it in a thread, so the loop stays free
    # to receive (and shed) the requests that arrive meanwhile.
    return {
        "params": {
            "workspaceName": ws,
            "featureServiceName": "slow",
            "joinKeyMap": {"user_id": "u1"},
            "requestContextMap": {"amount": -1.0},
            "requestOptions": {"latencyBudgetMs": 10_000},
        }
    }


@pytest.mark.parametrize("fast_path", SERVING_MODES)
def test_excess_requests_get_503_fast_while_admitted_ones_complete(tmp_path: Path, fast_path: bool) -> None:
    ws = "sh" + uuid.uuid4().hex[:8]
    repo = make_server_repo(tmp_path / "repo", "sqlite", ws)
    import context_store as cs

    store = cs.ContextStore(repo)
    store.apply()
    store.close()
    app = create_app(repo, auth=False, mcp=False, max_in_flight=2, fast_path=fast_path)
    with running_server(app) as url:

        async def run() -> tuple[list[httpx.Response], list[tuple[httpx.Response, float]], httpx.Response]:
            limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
            async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as c:
                assert (await c.post(GET, json=_slow_body(ws))).status_code == 200  # warm: modules loaded

                async def timed(coro: Any) -> tuple[httpx.Response, float]:
                    t0 = time.perf_counter()
                    r = await coro
                    return r, time.perf_counter() - t0

                admitted = [asyncio.create_task(c.post(GET, json=_slow_body(ws))) for _ in range(2)]
                await asyncio.sleep(0.15)  # both are in flight now (each takes 0.5 s)
                excess = await asyncio.gather(*(timed(c.post(GET, json=_slow_body(ws))) for _ in range(6)))
                health = await c.get("/readyz")
                return await asyncio.gather(*admitted), excess, health

        admitted, excess, health = asyncio.run(run())
    assert [r.status_code for r in admitted] == [200, 200], [r.text for r in admitted]
    assert all(r.json()["result"]["features"][1] == -1.0 for r in admitted)
    assert [r.status_code for r, _ in excess] == [503] * 6
    for r, took in excess:
        assert r.headers["retry-after"] == "1"
        assert r.headers["content-type"] == "application/json"
        assert "overloaded" in r.json()["message"]
        assert took < 0.3, f"a shed request took {took * 1000:.0f} ms"  # far below the 0.5 s of the admitted
    assert health.status_code == 200  # probes are exempt from the limit


def test_shedder_counts_until_the_response_is_sent_and_exempts_probes() -> None:
    release = asyncio.Event()
    body_reads = 0

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal body_reads
        await receive()
        body_reads += 1
        await release.wait()
        await ok_app(scope, receive, send)

    shedder = LoadShedder(app, max_in_flight=1)

    async def call(scope: Scope) -> int:
        return await status_of(shedder, scope, b"{}")

    async def run() -> list[int]:
        first = asyncio.create_task(call(http_scope(GET)))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert shedder.in_flight == 1
        shed = await call(http_scope(GET))  # returns at once: no await on the app
        assert body_reads == 1  # the shed request's body was never read
        probes = [asyncio.create_task(call(http_scope(p, "GET"))) for p in ("/healthz", "/readyz", "/metrics", "/mcp")]
        await asyncio.sleep(0)
        release.set()
        return [shed, await first, *(await asyncio.gather(*probes))]

    assert asyncio.run(run()) == [503, 200, 200, 200, 200, 200]
    assert shedder.in_flight == 0
