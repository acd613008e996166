"""A worker asked to stop exits within a bounded time even when its Redis does not answer (issue #13 item 6:
children die with the server; ``serve``'s children get SIGTERM when it dies). Its Redis is a test-owned
redis-server SIGSTOPped while the worker owns partitions: connections stay open and every call of the graceful
stop (flush, release leases, leave) waits out its socket timeout, as behind a cut link."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.support.private_redis import PrivateRedis
from tests.support.stream import StoreFactory, event, events_table, start_worker

pytestmark = [pytest.mark.redis, pytest.mark.slow]

STOP_TIMEOUT_S = 3.0  # the worker's --stop-timeout in these tests
SLACK_S = 3.0  # signal delivery and exit on a busy 2-core host


class _Worker:
    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc, self.lines = proc, list[str]()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            self.lines.append(raw.decode(errors="replace"))

    def wait_running(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not any("stream workers running" in line for line in self.lines):
            assert self.proc.poll() is None, "".join(self.lines)[-2000:]
            assert time.monotonic() < deadline, "worker did not start"
            time.sleep(0.05)

    def stop_seconds(self, sig: signal.Signals) -> float:
        t0 = time.monotonic()
        self.proc.send_signal(sig)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            return float("inf")
        return time.monotonic() - t0


def _setup(tmp_path: Path, make_store: StoreFactory) -> tuple[PrivateRedis, _Worker]:
    (tmp_path / "redis").mkdir()
    redis = PrivateRedis(tmp_path / "redis").start()
    # 16 partitions: the graceful stop releases each lease, one timed-out call apiece while Redis hangs.
    store = make_store(tmp_path / "repo", online_store=redis.url, workspace="stopws", partitions=16)
    w = _Worker(start_worker(store, redis.url, "--flush-interval", "0.2", "--stop-timeout", str(STOP_TIMEOUT_S)))
    w.wait_running()
    # Applied by the worker (it owns partitions, holds leases, has rows to flush and entries to ack).
    rows = [event(f"u{i}", 1.0, 5.0, "m1") for i in range(40)]
    res = store.ingestor.push("transactions", events_table(rows), timeout=60)
    assert res.visible
    return redis, w


def _hang(redis: PrivateRedis) -> None:
    assert redis.proc is not None
    os.kill(redis.proc.pid, signal.SIGSTOP)
    time.sleep(1.0)  # the worker's calls now wait out their socket timeouts


def _cleanup(redis: PrivateRedis, w: _Worker) -> None:
    if w.proc.poll() is None:
        w.proc.kill()
        w.proc.wait(10)
    if redis.proc is not None:
        os.kill(redis.proc.pid, signal.SIGCONT)
    redis.stop()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_worker_exits_within_stop_timeout_when_redis_hangs(
    tmp_path: Path, make_store: StoreFactory, sig: signal.Signals
) -> None:
    redis, w = _setup(tmp_path, make_store)
    try:
        _hang(redis)
        took = w.stop_seconds(sig)
        assert took < STOP_TIMEOUT_S + SLACK_S, f"worker still running {took:.1f} s after {sig.name}:\n" + "".join(
            w.lines[-30:]
        )
    finally:
        _cleanup(redis, w)


def test_second_signal_exits_at_once(tmp_path: Path, make_store: StoreFactory) -> None:
    redis, w = _setup(tmp_path, make_store)
    try:
        _hang(redis)
        w.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)  # the graceful stop is under way, waiting on the hung Redis
        took = w.stop_seconds(signal.SIGTERM)
        assert took < 2.0, f"a second SIGTERM took {took:.1f} s"
        assert w.proc.returncode == 128 + signal.SIGTERM, w.proc.returncode
    finally:
        _cleanup(redis, w)


def test_burst_of_signals_never_deadlocks(tmp_path: Path, make_store: StoreFactory) -> None:
    """A parent-death SIGTERM followed by a teardown's signals: a handler that took ``Event.set``'s lock deadlocked
    when the next signal's handler ran inside it (same thread, non-reentrant lock); the process never exited (seen
    with gdb on an orphan). Now the second signal exits at once, deadlock or not."""
    redis, w = _setup(tmp_path, make_store)
    try:
        _hang(redis)
        t0 = time.monotonic()
        i = 0
        while w.proc.poll() is None and time.monotonic() - t0 < 2.0:  # every handler run is a chance to nest
            w.proc.send_signal(signal.SIGTERM if i % 2 == 0 else signal.SIGINT)
            i += 1
        try:
            w.proc.wait(STOP_TIMEOUT_S + SLACK_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"worker still running {time.monotonic() - t0:.1f} s after a burst of stop signals")
    finally:
        _cleanup(redis, w)
