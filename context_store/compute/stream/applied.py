"""Applied-offset announcements: after each commit a worker publishes the offsets it applied per
(source, partition) on ``cs:{ws}:stream:applied``; pushers waiting for read-after-write wake on them.

An announcement is stamped with the registry version of the definitions the announcing worker ran.
After an ``apply`` that adds a view, a worker still on the old definitions applies a push without
the new view: its announcement proves nothing to a pusher on the new definitions, so the waiter
ignores it for that pusher, which then relies on the per-view applied offsets (authoritative).

Message: a ``v <version>`` line (-1: unknown), then ``source|partition|offset`` lines. Readers of
the older unstamped format skip the version line (it has no ``|``) and count as version -1.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from .redis_streams import RedisStreamLog

__all__ = ["Announcement", "AppliedWaiter", "applied_message", "parse_announcement", "parse_applied"]

Part = tuple[str, int]


class Announcement(NamedTuple):
    version: int  # registry version of the announcing worker's definitions (-1: unknown)
    offsets: list[tuple[Part, int]]


def applied_message(applied: dict[Part, int], version: int = -1) -> str:
    """One announcement for a worker round."""
    return "\n".join([f"v {version}", *(f"{source}|{p}|{off}" for (source, p), off in applied.items())])


def parse_announcement(data: bytes) -> Announcement:
    """An announcement's version and ((source, partition), offset) pairs; malformed lines are skipped."""
    version = -1
    out = []
    for line in data.decode().split("\n"):
        if line.startswith("v "):
            try:
                version = int(line[2:])
            except ValueError:
                pass
            continue
        try:
            source, p, off = line.rsplit("|", 2)
            out.append(((source, int(p)), int(off)))
        except ValueError:
            continue
    return Announcement(version, out)


def parse_applied(data: bytes) -> list[tuple[Part, int]]:
    """An announcement's ((source, partition), offset) pairs, whatever its version."""
    return parse_announcement(data).offsets


class _Wait(NamedTuple):
    offset: int
    version: int
    event: threading.Event


class AppliedWaiter:
    """Wakes pushers when a worker announces an applied offset (pub/sub) instead of polling.

    Announcements are hints: a waiter also re-reads the authoritative applied offsets now and then,
    so a message missed (e.g. before the subscription was active) only delays, never blocks.
    Each waiter has its own event, set only when its partition reaches its offset by a worker on
    definitions at least as new as the pusher's: with many concurrent pushes (a server's threads)
    an announcement wakes just the pushes it completes."""

    def __init__(self, log: RedisStreamLog) -> None:
        self._lock = threading.Lock()
        # (source, partition) -> definitions version -> highest offset announced by workers on it
        self._seen: dict[Part, dict[int, int]] = {}
        self._waiting: dict[Part, list[_Wait]] = {}
        self._closed = False
        self._pubsub = log.r.pubsub(ignore_subscribe_messages=True)
        self._pubsub.subscribe(log.applied_channel)
        self._thread = threading.Thread(target=self._run, name="cs-stream-applied", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._closed:
            try:
                msg = self._pubsub.get_message(timeout=1.0)
            except Exception:  # noqa: BLE001 - connection lost: pushers fall back to reading offsets
                time.sleep(0.5)
                continue
            if not msg or msg.get("type") != "message":
                continue
            ann = parse_announcement(msg["data"])
            for key, off in ann.offsets:
                self._seen_offset(key, ann.version, off)

    def _reached(self, key: Part, offset: int, version: int) -> bool:
        return any(o >= offset for v, o in self._seen.get(key, {}).items() if v >= version)

    def _seen_offset(self, key: Part, version: int, value: int) -> None:
        with self._lock:
            by_version = self._seen.setdefault(key, {})
            if value <= by_version.get(version, -1):
                return
            by_version[version] = value
            for v in [v for v, o in by_version.items() if v < version and o <= value]:
                del by_version[v]  # proves nothing this one does not
            waiting = self._waiting.get(key)
            if not waiting:
                return
            keep = []
            for w in waiting:
                if w.offset <= value and w.version <= version:
                    w.event.set()
                else:
                    keep.append(w)
            self._waiting[key] = keep

    def wait(self, source: str, offsets: dict[int, int], timeout: float, version: int = -1) -> bool:
        """True once every partition's announced offset reaches ``offsets``, announced by workers on
        definitions of registry ``version`` or newer (False on timeout)."""
        deadline = time.monotonic() + timeout
        for p, off in offsets.items():
            key = (source, p)
            with self._lock:
                if self._reached(key, off, version):
                    continue
                entry = _Wait(off, version, threading.Event())
                self._waiting.setdefault(key, []).append(entry)
            if not entry.event.wait(max(0.0, deadline - time.monotonic())):
                with self._lock:
                    lst = self._waiting.get(key, [])
                    if entry in lst:
                        lst.remove(entry)
                return entry.event.is_set()
        return True

    def close(self) -> None:
        self._closed = True
        try:
            self._pubsub.close()
        except Exception:  # noqa: BLE001
            pass
