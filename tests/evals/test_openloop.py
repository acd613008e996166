"""evals/loadgen/openloop.c, the open-loop generator of bench_overload: compiled here and run against a small
threaded HTTP/1.1 server whose answers are known in advance (which status for which request, how long it
takes), so the counts and the latencies it reports can be checked."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "evals" / "loadgen"))
import openloop  # noqa: E402  (evals/ is scripts, not a package)

pytestmark = pytest.mark.skipif(openloop.compiler() is None, reason="no C compiler (cc) on this machine")


@pytest.fixture(scope="module")
def binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    built = openloop.build(tmp_path_factory.mktemp("openloop"))
    assert built is not None
    return built


@contextmanager
def serving(answer: Any) -> Iterator[int]:
    """``answer(i)`` -> (status, body, delay_s, close) for the i-th request received (0-based, arrival order)."""
    lock = threading.Lock()
    count = [0]

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive
        disable_nagle_algorithm = True  # head and body are two writes: no 40 ms delayed-ACK stall between them

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            with lock:
                i = count[0]
                count[0] += 1
            status, body, delay, close = answer(i)
            time.sleep(delay)
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            if close:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield srv.server_address[1]
    finally:
        srv.shutdown()
        srv.server_close()


def pattern(i: int) -> tuple[int, bytes, float, bool]:
    kind = i % 4
    if kind == 0:
        return 503, b'{"error": "server overloaded"}', 0.0, False  # shed
    if kind == 1:
        return 503, b'{"error": "online store unavailable"}', 0.0, False  # a 503 that is not shedding
    if kind == 2:
        return 404, b"nope", 0.0, True  # and the server closes the connection after it
    return 200, b'{"ok": true}', 0.010, False


def test_counts_each_status_and_class(binary: Path) -> None:
    with serving(pattern) as port:
        out = openloop.run(binary, port, rate=200, seconds=1.0, connections=8, body=b'{"x": 1}', path="/p")
    assert out["scheduled"] == out["sent"] == 200
    assert out["unanswered"] == 0 and out["errors"] == 0
    assert out["status"] == {"200": 50, "404": 50, "503": 100}
    assert [out[k]["n"] for k in ("2xx", "shed", "503_other", "other")] == [50, 50, 50, 50]
    assert out["reconnects"] == 50  # one per "Connection: close", none counted as an error
    assert out["2xx"]["p50_ms"] >= 10.0  # the server's 10 ms are in every 200
    assert out["shed"]["p50_ms"] < 10.0


def test_latency_runs_from_the_scheduled_time(binary: Path) -> None:
    """One connection, 50 ms per request, 40 requests/s for 1 s: the server answers 20/s, so request i waits
    for the i before it. Timed from when each was written, every latency would be ~50 ms (coordinated
    omission); from its scheduled time the last one has waited ~1 s."""
    with serving(lambda i: (200, b"{}", 0.050, False)) as port:
        out = openloop.run(binary, port, rate=40, seconds=1.0, connections=1)
    ok = out["2xx"]
    assert ok["n"] == 40 and out["errors"] == 0
    assert ok["max_ms"] > 800  # ideal: 40 x 50 ms - 975 ms = 1025 ms
    assert ok["p50_ms"] > 300  # ideal ~512 ms
    assert out["send_delay"]["max_ms"] > 750  # the wait for the connection is reported as the generator's delay
    assert ok["max_ms"] - out["send_delay"]["max_ms"] >= 45  # and the service time comes on top


def test_paces_the_schedule(binary: Path) -> None:
    """An idle fast server: requests leave on time (open loop at the rate asked, not as fast as possible)."""
    with serving(lambda i: (200, b"{}", 0.0, False)) as port:
        t0 = time.perf_counter()
        out = openloop.run(binary, port, rate=100, seconds=1.0, connections=4)
        took = time.perf_counter() - t0
    assert out["2xx"]["n"] == 100
    assert 0.95 <= out["elapsed_s"] < 1.5 and took >= 0.95
    assert out["send_delay"]["p50_ms"] < 5.0
