"""Issue 13, item 8 under real overload: a served process (uvicorn, its own process) driven open loop at about
twice what it can serve. With the event-loop lag bound (the ``serve`` default) it sheds the excess with fast
503 + Retry-After and the requests it accepts stay fast; the same load against an unbounded server queues
for seconds (the control, which the accepted latencies are compared with: the comparison can fail)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

import context_store as cs
from tests.support.asgi import http_scope, ok_app, status_of
from tests.support.repo import make_repo
from tests.support.server import free_port

ROOT = Path(__file__).resolve().parents[2]
GET = "/api/v1/feature-service/get-features"
SPIN_MS = 4.0  # each request holds the server's only event loop this long: it serves at most ~250 req/s
RATE = 500.0  # sent per second, open loop: about twice that
SECONDS = 3.0

DEFINITIONS = """
import context_store as cs

request = cs.RequestSource(schema=[cs.Field("amount", cs.Float64)])


@cs.realtime_feature_view(sources=[request], output=[cs.Field("spun", cs.Float64)])
def spin(req):
    import time

    end = time.perf_counter() + req["amount"] / 1000  # wall time, so the server's capacity is known
    while time.perf_counter() < end:
        pass
    return {"spun": req["amount"]}


busy = cs.FeatureService("busy", [spin])
"""


@dataclass
class Outcome:
    ok: list[float] = field(default_factory=list)  # latency (s) of 200s from the scheduled send time
    shed: list[float] = field(default_factory=list)
    other: list[int] = field(default_factory=list)  # statuses that are neither (must stay empty)
    errors: int = 0
    retry_after: set[str] = field(default_factory=set)
    shed_bodies: set[bytes] = field(default_factory=set)  # which bound refused (each has its own message)

    @staticmethod
    def p(xs: list[float], q: float) -> float:
        return sorted(xs)[int(q * (len(xs) - 1))] if xs else float("nan")


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    ws = "ov" + uuid.uuid4().hex[:8]
    repo = make_repo(tmp_path / "repo", DEFINITIONS, config={"online_store": "sqlite", "workspace": ws})
    cs.ContextStore(repo).apply()
    yield repo, ws


def _start(
    repo: Path, max_in_flight: int, max_lag_ms: float, max_queue_ms: float = 0.0
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    code = (
        "from context_store.server.run import ServeOptions, serve; "
        f"serve(ServeOptions(repo={str(repo)!r}, port={port}, workers=1, auth=False, mcp=False, "
        f"stream_workers=False, log_level='error', max_in_flight={max_in_flight}, max_lag_ms={max_lag_ms}, "
        f"max_queue_ms={max_queue_ms}))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROMETHEUS_")}
    env["PYTHONPATH"] = str(ROOT)  # this checkout's code, not an installed one
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=ROOT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"server exited with {proc.returncode}"
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError("server did not start")


async def _overload(port: int, body: bytes) -> tuple[Outcome, float]:
    """Open loop (latency counted from each request's scheduled time, so waiting anywhere shows), 64
    connections; returns the outcome and how long ``/healthz`` took in the middle of it."""
    req = (
        f"POST {GET} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    pool: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    for _ in range(64):
        pool.put_nowait(await asyncio.open_connection("127.0.0.1", port))
    out = Outcome()

    async def one(scheduled: float) -> None:
        reader, writer = await pool.get()
        try:
            writer.write(req)
            head = await reader.readuntil(b"\r\n\r\n")
            m = re.search(rb"(?i)content-length:\s*(\d+)", head)
            payload = await reader.readexactly(int(m.group(1)) if m else 0)
            took, status = time.perf_counter() - scheduled, int(head[9:12])
            if status == 200:
                out.ok.append(took)
            elif status == 503 and b"overloaded" in payload:
                out.shed.append(took)
                out.shed_bodies.add(payload)
                ra = re.search(rb"(?i)retry-after:\s*(\S+)", head)
                out.retry_after.add(ra.group(1).decode() if ra else "")
            else:
                out.other.append(status)
        except (OSError, asyncio.IncompleteReadError):
            out.errors += 1
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        finally:
            pool.put_nowait((reader, writer))

    async def probe() -> float:
        await asyncio.sleep(SECONDS / 2)
        t0 = time.perf_counter()
        async with httpx.AsyncClient() as c:
            assert (await c.get(f"http://127.0.0.1:{port}/healthz", timeout=30)).status_code == 200
        return time.perf_counter() - t0

    probing = asyncio.create_task(probe())
    n, tasks, start = int(RATE * SECONDS), [], time.perf_counter() + 0.05
    for i in range(n):
        await asyncio.sleep(max(0.0, start + i / RATE - time.perf_counter()))
        tasks.append(asyncio.create_task(one(start + i / RATE)))
    await asyncio.gather(*tasks)
    return out, await probing


def _drive(
    repo: Path, ws: str, max_in_flight: int, max_lag_ms: float, max_queue_ms: float = 0.0
) -> tuple[Outcome, float]:
    proc, url = _start(repo, max_in_flight, max_lag_ms, max_queue_ms)

    def body(amount: float) -> bytes:
        params = {"workspaceName": ws, "featureServiceName": "busy", "requestContextMap": {"amount": amount}}
        return json.dumps({"params": {**params, "joinKeyMap": {}}}).encode()

    try:
        warm = httpx.post(url + GET, content=body(1.0), headers={"Content-Type": "application/json"}, timeout=30)
        assert warm.status_code == 200, warm.text
        assert warm.json()["result"]["features"] == [1.0]
        out, health_s = asyncio.run(_overload(int(url.rsplit(":", 1)[1]), body(SPIN_MS)))
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert out.errors == 0 and out.other == [], (out.errors, out.other[:10])
    assert len(out.ok) + len(out.shed) == int(RATE * SECONDS)
    return out, health_s


def test_overload_is_shed_and_accepted_requests_stay_fast(serve: tuple[Path, str]) -> None:
    """The lag bound against the same load on an unbounded server (the control, run right after it): the
    comparison, not an absolute latency, is what a loaded shared machine cannot make flaky."""
    repo, ws = serve
    shed, health_s = _drive(repo, ws, 32, 10.0)
    control, _ = _drive(repo, ws, 0, 0.0)
    summary = (
        f"lag bound: {len(shed.ok)} ok (p50 {shed.p(shed.ok, 0.5):.3f} s, p99 {shed.p(shed.ok, 0.99):.3f} s), "
        f"{len(shed.shed)} shed (p99 {shed.p(shed.shed, 0.99):.3f} s); unbounded: {len(control.ok)} ok "
        f"(p50 {control.p(control.ok, 0.5):.3f} s, p99 {control.p(control.ok, 0.99):.3f} s)"
    )
    # Unbounded, the queue grows by ~250 requests (~1 s of work) per second: what shedding must prevent.
    assert control.shed == [] and control.p(control.ok, 0.5) > 0.5, summary
    # Excess shed (the server cannot serve 2x its capacity) but not everything: it keeps serving.
    assert len(shed.shed) >= 0.2 * RATE * SECONDS and len(shed.ok) >= 0.1 * RATE * SECONDS, summary
    assert shed.retry_after == {"1"}
    # Accepted requests do not queue: median and tail far below the unbounded server's (measured at load
    # average 9-11 on 2 cores: p50 ~0.02 s vs ~1.5 s, p99 ~0.6 s vs ~3 s; idle: p99 ~0.05 s).
    assert shed.p(shed.ok, 0.5) < control.p(control.ok, 0.5) / 5, summary
    assert shed.p(shed.ok, 0.99) < control.p(control.ok, 0.99) / 2, summary
    assert shed.p(shed.shed, 0.99) < control.p(control.ok, 0.99) / 2, summary  # refusals come back fast too
    assert health_s < 2.0, f"/healthz took {health_s * 1000:.0f} ms under overload"


def test_lag_bound_sheds_while_the_loop_lags_and_recovers_when_it_keeps_up() -> None:
    """In process: requests that each hold the loop 30 ms (3x the 10 ms bound) make the shedder refuse most new
    ones; once the loop is free again it admits everything within a fraction of a second."""
    from starlette.types import Receive, Scope, Send

    from context_store.server.shedding import LoadShedder

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        time.sleep(float(scope["path"].rsplit("/", 1)[1]) / 1000)  # CPU-bound work in the loop (blocks it)
        await ok_app(scope, receive, send)

    shedder = LoadShedder(app, max_in_flight=0, max_lag_ms=10)

    async def call(ms: int) -> int:
        return await status_of(shedder, http_scope(f"/work/{ms}"))

    async def run() -> tuple[list[int], list[int], float]:
        busy = []
        for _ in range(20):  # a burst of 5 per loop turn, each 30 ms: the loop is late by ~100 ms every turn
            busy += await asyncio.gather(*(call(30) for _ in range(5)))
        assert shedder.admit < 0.5 and shedder.lag > 0.01, (shedder.admit, shedder.lag)
        t0 = time.perf_counter()
        while shedder.admit < 1.0 and time.perf_counter() - t0 < 5:
            await asyncio.sleep(0.01)  # the loop idles: punctual ticks raise the admitted fraction again
        recovered = time.perf_counter() - t0
        calm = [await call(0) for _ in range(50)]
        return busy, calm, recovered

    busy, calm, recovered = asyncio.run(run())
    # Most refused, never all (the first two of a turn look like one client's sequence: served, see below).
    assert busy.count(503) >= 50 and busy.count(200) >= 8, busy
    assert recovered < 1.0, f"took {recovered:.2f} s to admit everything again"
    assert calm == [200] * 50


def test_a_lone_request_is_served_however_late_the_loop_is() -> None:
    """A host busy with other work deschedules the server: its loop ticks late although it serves one client.
    Refusing that client's requests frees nothing (a README walkthrough's MCP call got 503 on an idle server);
    the same lag with requests competing still sheds (the test above)."""
    from context_store.server.shedding import LoadShedder

    shedder = LoadShedder(ok_app, max_in_flight=32, max_lag_ms=10)

    async def call() -> int:
        return await status_of(shedder, http_scope("/mcp"))

    async def run() -> list[int]:
        out = []
        for _ in range(30):
            time.sleep(0.03)  # the process was off the CPU for 30 ms (3x the bound) before this request
            out.append(await call())
            await asyncio.sleep(0.001)  # the client's next request comes in a later loop turn
        # The loop did lag: late ticks lowered the admitted fraction (the last tick alone may be punctual).
        assert shedder.admit < 0.5, (shedder.lag, shedder.admit)
        return out

    assert asyncio.run(run()) == [200] * 30


def test_serve_sheds_by_lag_by_default_and_checks_the_option(
    serve: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from context_store.cli.serve import serve as serve_cmd
    from context_store.errors import InvalidInputError
    from context_store.server.run import ENV_OPTIONS, ServeOptions, app_from_env, check_options
    from context_store.server.shedding import DEFAULT_MAX_LAG_MS, LoadShedder

    repo, ws = serve
    opts = ServeOptions(repo=str(repo), workspace=ws, mcp=False, auth=False)
    monkeypatch.setenv(ENV_OPTIONS, json.dumps(opts.__dict__))
    app = app_from_env()
    assert app.state.cs.settings.max_lag_ms == DEFAULT_MAX_LAG_MS == 10.0
    entry = app._entry  # the outermost layer each worker serves
    assert isinstance(entry, LoadShedder) and entry.max_lag == 0.010 and entry.max_in_flight == 32
    with pytest.raises(InvalidInputError, match="max lag"):
        check_options(ServeOptions(max_lag_ms=-1))
    out = CliRunner().invoke(serve_cmd, ["--max-lag-ms", "-5", "--repo", str(repo)])
    assert out.exit_code == 2 and "--max-lag-ms" in out.output
