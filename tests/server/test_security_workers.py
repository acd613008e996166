"""Issue 13, item 6: supervised workers. ``serve``'s children die with it (even by SIGKILL) and a dead
stream worker is restarted with backoff; ``/readyz`` reports their health. Real processes, real Redis."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import context_store as cs
from context_store.server.supervise import Backoff
from tests.support.server import free_port, make_server_repo

pytestmark = [pytest.mark.redis, pytest.mark.slow]

CLI = [sys.executable, "-m", "context_store.cli.main"]


def _proc_state(pid: int) -> str | None:
    """The process state letter, or None when the pid is gone (a zombie counts as gone: it runs nothing)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None
    return None if state in ("Z", "X") else state


def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid and _proc_state(int(d.name)) is not None:
            out.append(int(d.name))
    return out


def _descendants(pid: int) -> list[int]:
    todo, seen = [pid], []
    while todo:
        for c in _children(todo.pop()):
            seen.append(c)
            todo.append(c)
    return seen


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _stream_workers(serve_pid: int) -> list[int]:
    return [p for p in _children(serve_pid) if " worker " in _cmdline(p) + " "]


def _wait(cond: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def _readyz(url: str) -> dict[str, Any] | None:
    try:
        r = httpx.get(url + "/readyz", timeout=2)
    except httpx.HTTPError:
        return None
    body: dict[str, Any] = r.json()
    return body


@pytest.fixture
def serve(tmp_path: Path, redis_url: str) -> Iterator[Any]:
    """Start ``context-store serve`` (no auth, loopback); yields (process, url). Kills its group at the end."""
    ws = "w" + uuid.uuid4().hex[:10]
    repo = make_server_repo(tmp_path / "repo", redis_url, ws)
    cs.ContextStore(repo).apply()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROMETHEUS_")}
    started: list[subprocess.Popen[bytes]] = []

    def start(streams: int, *extra: str) -> tuple[subprocess.Popen[bytes], str]:
        port = free_port()
        log = tmp_path / f"serve-{port}.log"
        with log.open("wb") as err:
            proc = subprocess.Popen(
                [
                    *CLI,
                    "serve",
                    "--repo",
                    str(repo),
                    "--port",
                    str(port),
                    "--no-auth",
                    "--no-mcp",
                    "--stream-processes",
                    str(streams),
                    *extra,
                ],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=err,  # the stream workers inherit it: their "running" lines tell when they are up
                start_new_session=True,  # its own group: the cleanup below kills exactly what it started
            )
        started.append(proc)
        url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            body = _readyz(url) or {}
            running = log.read_text(errors="replace").count("stream workers running")
            return body.get("workers", {}).get("alive") == streams and running >= streams

        _wait(up, 120, "server and stream workers never came up: " + log.read_text(errors="replace")[-2000:])
        return proc, url

    yield start
    for proc in started:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)


def test_sigkill_of_serve_takes_every_child_with_it(serve: Any) -> None:
    proc, url = serve(2, "--workers", "2")
    kids = _descendants(proc.pid)
    assert len(_stream_workers(proc.pid)) == 2
    assert len(kids) >= 4, [_cmdline(p) for p in kids]  # 2 uvicorn workers + 2 stream workers
    os.kill(proc.pid, signal.SIGKILL)  # the process only, not its group: children must notice themselves
    proc.wait(timeout=10)
    t0 = time.monotonic()
    try:
        _wait(lambda: all(_proc_state(p) is None for p in kids), 10, "children outlived the server")
    except AssertionError:
        raise AssertionError([(p, _proc_state(p), _cmdline(p)) for p in kids]) from None
    took = time.monotonic() - t0
    # SIGTERM, not SIGKILL: each stream worker flushes and releases its partitions first. ~1 s on an idle
    # machine; the bound leaves room for a shared, oversubscribed one.
    assert took < 6.0, f"children took {took:.1f} s to go"
    print(f"children gone {took:.2f} s after SIGKILL of serve")


def test_dead_stream_worker_is_restarted_and_readyz_counts_it(serve: Any) -> None:
    proc, url = serve(2)
    body = _readyz(url)
    assert body is not None and body["ready"] is True
    assert body["workers"] == {"expected": 2, "alive": 2, "restarts": 0}
    before = _stream_workers(proc.pid)
    assert len(before) == 2
    os.kill(before[0], signal.SIGKILL)
    _wait(lambda: (_readyz(url) or {}).get("workers", {}).get("restarts") == 1, 30, "no restart reported")
    body = _wait(lambda: (b := _readyz(url)) and b["workers"]["alive"] == 2 and b, 30, "restarted worker not alive")
    assert body["ready"] is True and body["workers"] == {"expected": 2, "alive": 2, "restarts": 1}
    after = _stream_workers(proc.pid)
    assert len(after) == 2 and before[0] not in after and before[1] in after


def test_backoff_doubles_to_the_cap() -> None:
    b = Backoff()
    assert [b.delay(n) for n in range(1, 9)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
