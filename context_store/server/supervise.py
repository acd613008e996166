"""Supervised child processes of ``serve``: they die with it and are restarted when they die.

Process management only (no product logic): ``serve`` runs its stream workers as ``Supervisor``
children; every child, and every uvicorn worker process, calls ``die_with_parent()`` first.
``/readyz`` reads the supervisor's ``WorkerHealth`` from a small status file (the uvicorn workers
are separate processes; a file replaced atomically is the simplest shared state that survives that).
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import orjson

__all__ = [
    "ENV_PARENT_PID",
    "ENV_WORKER_STATUS",
    "Backoff",
    "Supervisor",
    "WorkerHealth",
    "die_with_parent",
    "worker_health",
]

log = logging.getLogger("context_store.server")

ENV_PARENT_PID = "CONTEXT_STORE_PARENT_PID"  # the serve process a child must not outlive
ENV_WORKER_STATUS = "CONTEXT_STORE_WORKER_STATUS"  # path of the supervisor's status file
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class WorkerHealth(NamedTuple):
    expected: int
    alive: int
    restarts: int

    def to_dict(self) -> dict[str, int]:
        return {"expected": self.expected, "alive": self.alive, "restarts": self.restarts}


def worker_health() -> WorkerHealth | None:
    """The supervisor's last report, or None when this server supervises no workers."""
    path = os.environ.get(ENV_WORKER_STATUS)
    if not path:
        return None
    try:
        d = orjson.loads(Path(path).read_bytes())
        return WorkerHealth(int(d["expected"]), int(d["alive"]), int(d["restarts"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _watch_parent(ppid: int, interval: float = 0.5) -> None:
    """Portable fallback (no prctl): poll the parent pid; a reparented child terminates itself."""

    def watch() -> None:
        while os.getppid() == ppid:
            time.sleep(interval)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="cs-parent-watch", daemon=True).start()


def _libc_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return prctl


_PRCTL = _libc_prctl()
_SIGTERM = int(signal.SIGTERM)


def _arm_pdeathsig() -> None:
    """``preexec_fn``: runs between fork and exec, so there is no window in which the parent can die unnoticed
    (a child that armed itself after its imports, seconds later on a busy machine, missed it). Only a
    pre-bound foreign call: no imports, no locks, nothing that could deadlock in a forked child."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, _SIGTERM, 0, 0, 0)


def die_with_parent() -> None:
    """In a child of ``serve``: get SIGTERM when ``serve`` dies, even by SIGKILL (its normal stop path runs).

    Linux: ``prctl(PR_SET_PDEATHSIG, SIGTERM)`` (the stream workers have it armed before exec already; the
    uvicorn worker processes arm it here). Elsewhere a thread polls the parent pid. No-op outside ``serve``.
    """
    raw = os.environ.get(ENV_PARENT_PID)
    if not raw or not raw.isdigit():
        return
    ppid = int(raw)
    if ppid == os.getpid():  # ``serve --workers 1`` runs the app in the serve process itself
        return
    if _PRCTL is None or _PRCTL(_PR_SET_PDEATHSIG, _SIGTERM, 0, 0, 0) != 0:
        _watch_parent(ppid)
    if os.getppid() != ppid:  # the parent died before the signal was armed
        os.kill(os.getpid(), signal.SIGTERM)


@dataclass(frozen=True)
class Backoff:
    """Restart delay: ``first`` doubling per quick death up to ``cap``; a child up ``reset_after`` s starts over."""

    first: float = 0.5
    cap: float = 30.0
    reset_after: float = 60.0

    def delay(self, failures: int) -> float:
        return min(self.cap, self.first * 2 ** max(0, failures - 1))


@dataclass
class _Slot:
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    failures: int = 0  # consecutive quick deaths
    next_start: float = 0.0


class Supervisor:
    """Run ``n`` copies of ``cmd`` and keep them running.

    One thread starts, watches and restarts the children: on Linux a child's parent-death signal fires
    when the thread that forked it ends, so every fork happens on this long-lived thread. Children stay
    in the caller's process group, so a group kill (Ctrl-C, ``kill -- -PGID``) reaches them as well.
    """

    def __init__(
        self,
        cmd: Sequence[str],
        n: int,
        env: dict[str, str],
        *,
        backoff: Backoff = Backoff(),
        poll: float = 0.1,
        name: str = "stream worker",
    ) -> None:
        self.cmd = list(cmd)
        self.env = {**env, ENV_PARENT_PID: str(os.getpid())}
        self.backoff = backoff
        self.poll = poll
        self.name = name
        self.slots = [_Slot() for _ in range(n)]
        self.restarts = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._dir = tempfile.TemporaryDirectory(prefix="cs-workers-")
        self.status_path = Path(self._dir.name) / "status.json"
        self._last: WorkerHealth | None = None
        self._thread = threading.Thread(target=self._run, name="cs-supervisor", daemon=True)

    def start(self) -> None:
        self._write(WorkerHealth(len(self.slots), 0, 0))
        self._thread.start()

    def health(self) -> WorkerHealth:
        with self._lock:
            alive = sum(1 for s in self.slots if s.proc is not None and s.proc.poll() is None)
            return WorkerHealth(len(self.slots), alive, self.restarts)

    def pids(self) -> list[int]:
        with self._lock:
            return [s.proc.pid for s in self.slots if s.proc is not None and s.proc.poll() is None]

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._step(time.monotonic())
            except Exception:  # noqa: BLE001 - the supervisor must outlive any one failed spawn
                log.exception("%s supervisor: step failed", self.name)
            self._stop.wait(self.poll)

    def _step(self, now: float) -> None:
        with self._lock:
            for i, slot in enumerate(self.slots):
                if slot.proc is not None:
                    code = slot.proc.poll()
                    if code is None:
                        continue
                    up = now - slot.started
                    slot.failures = 1 if up >= self.backoff.reset_after else slot.failures + 1
                    wait = self.backoff.delay(slot.failures)
                    slot.next_start = now + wait
                    slot.proc = None
                    log.warning("%s %d exited with %s after %.1f s; restarting in %.1f s", self.name, i, code, up, wait)
                if now >= slot.next_start and not self._stop.is_set():
                    if slot.started:  # not the first start
                        self.restarts += 1
                    slot.proc = subprocess.Popen(self.cmd, env=self.env, preexec_fn=_arm_pdeathsig)
                    slot.started = now
        self._publish()

    def _publish(self) -> None:
        h = self.health()
        if h != self._last:
            self._write(h)

    def _write(self, h: WorkerHealth) -> None:
        tmp = self.status_path.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps(h.to_dict()))
        os.replace(tmp, self.status_path)  # readers never see a half-written file
        self._last = h

    def stop(self, timeout: float = 10.0) -> None:
        """Stop restarting, SIGTERM every child (they flush and release their partitions), SIGKILL stragglers."""
        self._stop.set()
        self._thread.join(timeout=5)
        with self._lock:
            procs = [s.proc for s in self.slots if s.proc is not None]
        for p in procs:
            if p.poll() is None:
                p.terminate()
        deadline = time.monotonic() + timeout
        for p in procs:
            try:
                p.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self._dir.cleanup()
