"""Operator view of event-time admission: per stream source and partition, the admitted watermark,
the workers' lag and the late/rejected counts; and resetting a watermark (``context-store stream
watermarks``). The watermark shown is the one pushes decide lateness against (``admission.py``).

Embedded stores keep one watermark per source (partition 0): a push applies in-process.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ...definitions import StreamSource
from ...errors import InvalidInputError, NotFoundError
from ...vocab.time import as_utc, datetime_to_us, parse_iso, us_to_datetime
from .admission import embedded_admission
from .redis_streams import GROUP
from .validate import event_time_bounds

if TYPE_CHECKING:
    from ...config import Config
    from ...registry.repo import RepoDefinitions
    from .redis_streams import RedisStreamLog

__all__ = ["WatermarkStatus", "watermark_status", "reset_watermarks"]


@dataclass(frozen=True)
class WatermarkStatus:
    source: str
    partition: int
    watermark: datetime | None  # newest admitted event time (None: nothing pushed yet)
    applied_watermark: datetime | None  # the workers' as of their last flush (Redis only)
    lag: int  # stream entries not yet applied and acknowledged (0 embedded)
    late: int  # admitted records older than the watermark, within allowed_lateness
    rejected: int  # records refused as too late or before a backfill cut-over


def _dt(v: Any) -> datetime | None:
    return None if v in (None, b"", "") else us_to_datetime(int(v))


def _streams(definitions: RepoDefinitions) -> dict[str, StreamSource]:
    return {n: s for n, s in sorted(definitions.sources.items()) if isinstance(s, StreamSource)}


def _lag(log_: RedisStreamLog, key: bytes) -> int:
    try:
        groups = log_.r.xinfo_groups(key)
    except Exception:  # noqa: BLE001 - no stream yet: nothing pushed to this partition
        return 0
    for g in groups:
        if g.get("name") in (GROUP, GROUP.encode()):
            return int(g.get("pending") or 0) + int(g.get("lag") or 0)
    return int(log_.r.xlen(key))  # no consumer group yet: every entry is unread


def watermark_status(
    config: Config, definitions: RepoDefinitions, log_: RedisStreamLog | None = None
) -> list[WatermarkStatus]:
    """One row per stream source and partition (Redis: ``log_`` is the workspace's stream log)."""
    out = []
    if log_ is None:
        with embedded_admission(config.workspace_dir) as af:
            for name in _streams(definitions):
                e = af.entry(name, 0)
                wm = _dt(e.get("wm"))
                out.append(WatermarkStatus(name, 0, wm, wm, 0, int(e.get("late", 0)), int(e.get("rejected", 0))))
        return out
    for name, src in _streams(definitions).items():
        adm = {k.decode(): v for k, v in log_.r.hgetall(log_.admission_key(name)).items()}
        applied = log_.r.hmget(log_.watermark_key, [f"{name}|{p}" for p in range(src.partitions)])
        for p in range(src.partitions):
            out.append(
                WatermarkStatus(
                    name,
                    p,
                    _dt(adm.get(f"wm:{p}")),
                    _dt(applied[p]),
                    _lag(log_, log_.stream_key(name, p)),
                    int(adm.get(f"late:{p}") or 0),
                    int(adm.get(f"rejected:{p}") or 0),
                )
            )
    return out


def _target(definitions: RepoDefinitions, target: str, redis: bool) -> tuple[StreamSource, list[int]]:
    """``SOURCE`` (every partition) or ``SOURCE:PARTITION``."""
    streams = _streams(definitions)
    name, sep, part = target.rpartition(":") if ":" in target else (target, "", "")
    src = streams.get(name)
    if src is None:
        raise NotFoundError(
            f"{name!r} is not a stream source; stream sources: {', '.join(streams) or 'none'}", field="source"
        )
    n = src.partitions if redis else 1
    if not sep:
        return src, list(range(n))
    if not part.isdigit() or int(part) >= n:
        where = f"0..{n - 1}" if redis else "0 (an embedded store keeps one watermark per source)"
        raise InvalidInputError(f"partition {part!r} of {name!r} must be one of {where}", field="partition")
    return src, [int(part)]


def _reset_time(src: StreamSource, to: datetime | str | None) -> int:
    if to is None:
        return time.time_ns() // 1000
    if isinstance(to, str):
        try:
            to = parse_iso(to)
        except ValueError:
            raise InvalidInputError(f"--to {to!r} is not an ISO-8601 time", field="to") from None
    us = datetime_to_us(as_utc(to))
    lo, hi = event_time_bounds(src)
    if not lo <= us <= hi:
        raise InvalidInputError(
            f"--to {to.isoformat()} is outside {us_to_datetime(lo):%Y-%m-%d} .. now + max_future_skew "
            f"for source {src.name!r}",
            field="to",
        )
    return us


def reset_watermarks(
    config: Config,
    definitions: RepoDefinitions,
    target: str,
    to: datetime | str | None = None,
    log_: RedisStreamLog | None = None,
) -> list[WatermarkStatus]:
    """Set the watermark of ``SOURCE[:PARTITION]`` to ``to`` (default: now); returns the new rows.

    Later pushes decide lateness against it at once; a worker owning the partition lowers its own
    to it at its next lease renewal (within a second)."""
    src, parts = _target(definitions, target, log_ is not None)
    us = _reset_time(src, to)
    if log_ is None:
        with embedded_admission(config.workspace_dir) as af:
            af.reset(src.name, 0, us)
    else:
        pipe = log_.r.pipeline(transaction=False)  # two hash slots
        pipe.hset(log_.admission_key(src.name), mapping={f"wm:{p}": us for p in parts})
        pipe.hset(log_.watermark_key, mapping={f"{src.name}|{p}": us for p in parts})
        pipe.execute()
    return [s for s in watermark_status(config, definitions, log_) if s.source == src.name and s.partition in parts]
