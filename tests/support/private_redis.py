"""A redis-server of a test's own on a free port: the only kind a test may flush, stop or restart."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.server import free_port

__all__ = ["PrivateRedis"]


class PrivateRedis:
    """``start()`` / ``restart_empty()`` / ``stop()``; ``url`` carries ``password`` when given."""

    def __init__(self, tmp: Path, password: str | None = None) -> None:
        if shutil.which("redis-server") is None:
            pytest.fail("redis-server binary not found (apt-get install redis-server)")
        self.port = free_port()
        self.dir = tmp
        self.password = password
        auth = f":{password}@" if password else ""
        self.url = f"redis://{auth}127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> PrivateRedis:
        import redis

        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        args += ["--dir", str(self.dir)] + (["--requirepass", self.password] if self.password else [])
        self.proc = subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if redis.Redis.from_url(self.url, socket_timeout=0.5).ping():
                    return self
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("redis-server did not start")

    def client(self) -> object:
        import redis

        return redis.Redis.from_url(self.url)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    def restart_empty(self) -> None:
        """Kill (no save, no AOF) and start again on the same port: every key is gone."""
        self.stop()
        self.start()
