"""Durations and windows: ``"30m"``, ``"7d"``, ``timedelta`` or ``Lifetime()``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta

__all__ = ["Lifetime", "Window", "parse_duration", "format_duration"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_PATTERN = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")


@dataclass(frozen=True)
class Lifetime:
    """A window with no start: every event before the request time."""

    def __repr__(self) -> str:
        return "cs.Lifetime()"


Window = timedelta | Lifetime


def parse_duration(value: object, what: str = "window") -> timedelta:
    """Parse ``"30m"``/``"7d"``/``timedelta`` into a positive timedelta, or raise ValueError."""
    if isinstance(value, timedelta):
        td = value
    elif isinstance(value, str):
        m = _PATTERN.match(value)
        if not m:
            raise ValueError(f"bad {what} {value!r}: expected a number and a unit s/m/h/d/w such as '30m' or '7d'")
        td = timedelta(seconds=int(m.group(1)) * _UNITS[m.group(2)])
    else:
        raise ValueError(f"bad {what} {value!r}: expected a string such as '7d' or a timedelta")
    if td <= timedelta(0):
        raise ValueError(f"bad {what} {value!r}: must be positive")
    if td % timedelta(microseconds=1000) != timedelta(0):
        raise ValueError(f"bad {what} {value!r}: finest resolution is a millisecond")
    return td


def parse_window(value: object) -> Window:
    if isinstance(value, Lifetime):
        return value
    return parse_duration(value, "window")


def format_duration(window: Window) -> str:
    """The shortest exact name: 30m, 7d, 90s, lifetime."""
    if isinstance(window, Lifetime):
        return "lifetime"
    total = window // timedelta(milliseconds=1)
    if total % 1000:
        return f"{total}ms"
    secs = total // 1000
    for unit in ("d", "h", "m"):
        if secs % _UNITS[unit] == 0:
            return f"{secs // _UNITS[unit]}{unit}"
    return f"{secs}s"
