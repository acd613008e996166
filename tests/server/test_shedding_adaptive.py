"""Issue 13, item 8: the adaptive in-flight limit of ``serve``'s load shedding (``server/adaptive_limit.py``).
The limit follows the process's latency: it shrinks while admitted requests take well over their unloaded time
and grows back when they do not. In process, against a handler whose latency grows with the requests it
interleaves (a queue), the adaptive limit keeps accepted requests near their unloaded latency where the fixed
cap lets them queue; with the limit fixed the comparison fails."""

from __future__ import annotations

import asyncio
import json
import statistics
import threading
import time
import uuid
from pathlib import Path

import pytest
from starlette.types import Receive, Scope, Send

import context_store as cs
from context_store.server.adaptive_limit import MIN_LIMIT, WINDOW, GradientLimit
from context_store.server.shedding import LoadShedder
from tests.server.test_shedding_overload import DEFINITIONS
from tests.server.test_shedding_protocol import Conn, request, serving
from tests.support.asgi import http_scope, ok_app, status_of
from tests.support.repo import make_repo


def test_the_limit_shrinks_while_requests_queue_and_grows_back_when_they_do_not() -> None:
    limit = GradientLimit(32)

    def windows(n: int, latency_s: float, in_flight: int = 0) -> None:
        for _ in range(n * WINDOW):
            limit.sample(latency_s, in_flight or int(limit.limit))  # 0: as many as the limit admits

    windows(5, 0.001, 32)  # at the cap and as fast as ever: nothing to shrink
    assert limit.limit == 32 and abs(limit.noload - 0.001) < 1e-5
    windows(40, 0.010)  # 10x the unloaded latency with the limit in use: a queue
    assert limit.limit < 12, limit.limit
    assert limit.limit >= MIN_LIMIT
    low = limit.limit
    windows(1, 0.010, 1)  # the same latency with the limit unused (app-limited): no evidence against it, it grows
    assert low < limit.limit < low + 1
    # One slow window among fast ones moves it a little (smoothing), not to the floor.
    limit = GradientLimit(32)
    windows(5, 0.001, 32)
    windows(1, 0.050, 32)
    assert limit.limit > 25, limit.limit
    # Back at the unloaded latency (the drift let noload rise meanwhile; 1 ms is below it): it grows to the cap.
    limit = GradientLimit(32)
    windows(5, 0.001, 32)
    windows(40, 0.010, 32)
    windows(60, 0.001)
    assert limit.limit == 32, limit.limit


def test_known_admission_waits_judge_the_queue_not_the_handlers_latency() -> None:
    # Under ``serve`` the wait before a handler starts is known: a handler slowed by the others it interleaves
    # with on one loop (10x its unloaded latency, no wait) is no queue of ours; a wait of 5x the unloaded
    # latency is, however fast the handlers.
    limit = GradientLimit(32)
    for _ in range(5 * WINDOW):
        limit.sample(0.001, 32, 0.0)
    for _ in range(40 * WINDOW):
        limit.sample(0.010, 32, 0.0002)
    assert limit.limit == 32 and not limit.queueing, limit.limit
    for _ in range(40 * WINDOW):
        limit.sample(0.006, int(limit.limit), 0.005)
    assert limit.limit < 12 and limit.queueing, limit.limit
    assert abs(limit.wait - 0.005) < 1e-6


def _queueing_app() -> tuple[object, list[float]]:
    """A handler that waits 0.5 ms for each request it is interleaved with (itself included): latency grows with
    concurrency, as when a process's requests share one core and its Redis connection."""
    active = 0
    took: list[float] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal active
        active += 1
        t0 = time.perf_counter()
        try:
            await asyncio.sleep(0.0005 * active)
            await ok_app(scope, receive, send)
        finally:
            active -= 1
            took.append(time.perf_counter() - t0)

    return app, took


async def _open_loop(shedder: LoadShedder, per_ms: int, ms: int) -> list[int]:
    """``per_ms`` new requests every millisecond for ``ms`` ms, whatever the answers (a sustained overload)."""
    loop = asyncio.get_running_loop()
    t0, tasks = loop.time(), []
    for i in range(ms):
        tasks += [asyncio.ensure_future(status_of(shedder, http_scope("/x"))) for _ in range(per_ms)]
        await asyncio.sleep(max(0.0, t0 + (i + 1) / 1000 - loop.time()))
    return list(await asyncio.gather(*tasks))


def _drive(adaptive: bool) -> tuple[LoadShedder, list[int], list[float], list[int]]:
    app, took = _queueing_app()
    shedder = LoadShedder(app, max_in_flight=32, adaptive=adaptive)  # type: ignore[arg-type]

    async def run() -> tuple[list[int], list[int]]:
        lone = [await status_of(shedder, http_scope("/x")) for _ in range(4 * WINDOW)]  # unloaded: one at a time
        took.clear()
        # 6 per ms, open loop: ~3x what the process serves (~2000/s at any concurrency), for 1.5 s.
        return lone, await _open_loop(shedder, 6, 1500)

    lone, crowd = asyncio.run(run())
    return shedder, lone, took, crowd


def test_adaptive_limit_keeps_accepted_requests_near_their_unloaded_latency() -> None:
    fixed, fixed_lone, fixed_took, fixed_crowd = _drive(adaptive=False)
    adaptive, lone, took, crowd = _drive(adaptive=True)
    assert lone == fixed_lone == [200] * (4 * WINDOW)  # one request at a time is never refused
    assert adaptive.limiter is not None and fixed.limiter is None
    assert MIN_LIMIT <= adaptive.limiter.limit < 12, adaptive.limiter.limit
    assert fixed_crowd.count(503) > len(fixed_crowd) / 3  # the fixed cap: 32 admitted, all of them queueing
    # Accepted requests: the last third (the limit has settled), median in-handler time, against the fixed cap
    # (the unloaded time is ~1.5 ms: asyncio timers round the 0.5 ms sleep up).
    settled, fixed_settled = took[-len(took) // 3 :], fixed_took[-len(fixed_took) // 3 :]
    summary = (
        f"adaptive limit {adaptive.limiter.limit:.1f}: {crowd.count(200)} ok, median "
        f"{statistics.median(settled) * 1000:.1f} ms; fixed 32: {fixed_crowd.count(200)} ok, median "
        f"{statistics.median(fixed_settled) * 1000:.1f} ms"
    )
    assert statistics.median(settled) < statistics.median(fixed_settled) / 2, summary
    assert crowd.count(200) > len(crowd) / 6, summary  # it still serves about its capacity
    assert set(crowd) == {200, 503}


def test_an_unused_limit_grows_back() -> None:
    # A shrink at light load (a burst's slow window) must not be permanent: at the floor, a half-loaded process
    # refused the next burst. Unused windows grow it back, however slow (on one core latency grows with
    # concurrency long before saturation).
    limit = GradientLimit(32)
    for _ in range(5 * WINDOW):
        limit.sample(0.001, 32)
    for _ in range(40 * WINDOW):
        limit.sample(0.010, int(limit.limit))
    assert limit.limit < 12
    for _ in range(60 * WINDOW):  # 2 in flight, well under half the limit, 3x the unloaded latency
        limit.sample(0.003, 2)
    assert limit.limit == 32, limit.limit


def _stall_rounds(shedder: LoadShedder, rounds: int, crowd: int) -> list[int]:
    """Light load on a busy host: ``crowd`` requests in flight, then the loop blocked 20 ms without using CPU
    (the process descheduled), then a pause; ``rounds`` times."""

    async def run() -> list[int]:
        codes = [await status_of(shedder, http_scope("/x")) for _ in range(4 * WINDOW)]  # unloaded latency
        for _ in range(rounds):
            tasks = [asyncio.ensure_future(status_of(shedder, http_scope("/x"))) for _ in range(crowd)]
            await asyncio.sleep(0)  # admitted, in their handlers
            time.sleep(0.02)  # noqa: ASYNC251  (the point: the loop does not run, as when the host deschedules it)
            codes += await asyncio.gather(*tasks)
            await asyncio.sleep(0.01)
        return codes

    return asyncio.run(run())


def test_a_stall_of_the_host_at_light_load_neither_shrinks_the_limit_nor_refuses() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await asyncio.sleep(0.001)
        await ok_app(scope, receive, send)

    shedder = LoadShedder(app, max_in_flight=32, max_lag_ms=10, adaptive=True)
    # 20 in flight during each stall: their 20 ms wait is the host's, not a queue of ours. Counted as latency it
    # ratcheted the limit to the floor (nothing grew it back while unused) and most of each 20 were refused.
    codes = _stall_rounds(shedder, 40, 20)
    assert shedder.limiter is not None
    assert codes.count(503) == 0 and shedder.limiter.limit > 24, (codes.count(503), shedder.limiter.limit)


def test_bursts_at_light_load_are_admitted_over_a_low_limit() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await asyncio.sleep(0.001)
        await ok_app(scope, receive, send)

    shedder = LoadShedder(app, max_in_flight=32, max_lag_ms=10, adaptive=True)
    assert shedder.limiter is not None
    shedder.limiter.limit = float(MIN_LIMIT)  # as if shrunk by a real queue earlier

    # 3x the limit at once every 20 ms (what queues while a busy host deschedules a half-loaded process): a burst
    # that drains in a few ms, not a standing excess. Refused by the limit alone, most of each burst was lost.
    async def bursts() -> list[int]:
        codes: list[int] = []
        for _ in range(30):
            codes += await asyncio.gather(*(status_of(shedder, http_scope("/x")) for _ in range(3 * MIN_LIMIT)))
            await asyncio.sleep(0.02)
        return codes

    codes = asyncio.run(bursts())
    assert codes.count(503) == 0, (codes.count(503), shedder.full)


def test_a_real_overload_is_still_refused_after_host_stalls() -> None:
    app, took = _queueing_app()
    shedder = LoadShedder(app, max_in_flight=32, max_lag_ms=10, adaptive=True)  # type: ignore[arg-type]
    _stall_rounds(shedder, 10, 20)  # stalls first: they must not leave the limit blind

    took.clear()
    codes = asyncio.run(_open_loop(shedder, 6, 1500))  # ~3x what the process serves
    assert shedder.limiter is not None and shedder.limiter.limit < 12, shedder.limiter.limit
    assert codes.count(503) > len(codes) / 2 and codes.count(200) > len(codes) / 6, (codes.count(503), len(codes))
    # Refused by the adaptive limit, not the fixed cap alone: accepted requests interleave with few others (with
    # 32 in flight each takes ~16 ms).
    settled = statistics.median(took[-len(took) // 3 :])
    assert settled < 0.008, (settled, shedder.full)


def test_serve_adaptive_limit_option_reaches_each_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from context_store.cli.serve import serve as serve_cmd
    from context_store.server.run import ENV_OPTIONS, ServeOptions, app_from_env
    from context_store.server.shedding import DEFAULT_ADAPTIVE_LIMIT

    ws = "oa" + uuid.uuid4().hex[:8]
    repo = make_repo(tmp_path / "repo", DEFINITIONS, config={"online_store": "sqlite", "workspace": ws})
    cs.ContextStore(repo).apply()
    opts = ServeOptions(repo=str(repo), workspace=ws, mcp=False, auth=False, stream_workers=False)
    assert opts.adaptive_limit is DEFAULT_ADAPTIVE_LIMIT
    for adaptive in (True, False):
        opts.adaptive_limit = adaptive
        monkeypatch.setenv(ENV_OPTIONS, json.dumps(opts.__dict__))
        entry = app_from_env()._entry
        assert isinstance(entry, LoadShedder) and (entry.limiter is not None) is adaptive
        if entry.limiter is not None:  # bounded by --max-in-flight
            assert entry.limiter.max_limit == entry.max_in_flight == 32
    out = CliRunner().invoke(serve_cmd, ["--help"])
    assert out.exit_code == 0 and "--adaptive-limit / --fixed-limit" in out.output


def test_a_busy_loop_under_half_the_cap_is_not_refused_through_the_protocol() -> None:
    # 12 closed-loop clients of a handler whose latency grows with concurrency (1 ms per request it interleaves
    # with), the limit at its floor as after a saturated spell: a busy process at half load, not a queue (its
    # requests start at once). Judged by total latency (the previous rule) ~10 ms against an unloaded ~1 ms read
    # as a queue and the limit refused a share of them.
    active = 0

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal active
        active += 1
        try:
            await receive()
            await asyncio.sleep(0.001 * active)  # uvloop's timers: whole milliseconds
        finally:
            active -= 1
        headers = [(b"content-length", b"2")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"{}"})

    # No lag bound: the clients are threads of this process, whose turns for the GIL make the loop late.
    shedder = LoadShedder(app, max_in_flight=32, adaptive=True)
    assert shedder.limiter is not None
    codes: list[int] = []
    bodies: set[bytes] = set()
    peak = 0

    def client(port: int, n: int) -> None:
        nonlocal peak
        conn = Conn(port)
        try:
            for _ in range(n):
                conn.send(request("/x"))
                code, _h, body = conn.response()
                codes.append(code)
                if code == 503:
                    bodies.add(body[:80])
                peak = max(peak, shedder.in_flight + shedder.queued)
        finally:
            conn.close()

    with serving(shedder) as port:
        client(port, 4 * WINDOW)  # unloaded latency
        shedder.limiter.limit = float(MIN_LIMIT)
        threads = [threading.Thread(target=client, args=(port, 60)) for _ in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    assert len(codes) == 4 * WINDOW + 12 * 60
    assert codes.count(503) == 0, (codes.count(503), bodies, shedder.limiter.limit, shedder.limiter.wait, shedder.full)
    assert shedder.full > 0 or peak > MIN_LIMIT  # the limit was met: without the wait rule it refuses


def test_a_queue_before_the_handlers_shrinks_the_limit_and_is_refused_through_the_protocol() -> None:
    # The other side: handlers that hold the loop 1 ms each (CPU), 48 closed-loop clients: requests wait for
    # the loop before their handler starts, which the admission wait shows; the limit shrinks and refuses them.
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        end = time.perf_counter() + 0.001
        while time.perf_counter() < end:  # the process's CPU, not the host's: no stall
            pass
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"{}"})

    shedder = LoadShedder(app, max_in_flight=32, adaptive=True)
    assert shedder.limiter is not None
    codes: list[int] = []
    waits: list[float] = []

    def client(port: int, n: int) -> None:
        conn = Conn(port)
        try:
            for _ in range(n):
                conn.send(request("/x"))
                codes.append(conn.response()[0])
                waits.append(shedder.limiter.wait if shedder.limiter else 0.0)
        finally:
            conn.close()

    with serving(shedder) as port:
        client(port, 4 * WINDOW)  # unloaded latency
        threads = [threading.Thread(target=client, args=(port, 40)) for _ in range(48)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    summary = (codes.count(503), len(codes), shedder.limiter.limit, shedder.limiter.wait, shedder.limiter.noload)
    assert codes.count(503) > 48 * 40 / 4 and shedder.limiter.limit < 16, summary
    assert max(waits) > 2 * shedder.limiter.noload, summary  # it was the wait that shrank it
