"""Scalar time conversions, one implementation for the whole project.

The internal convention is int64 microseconds since the epoch, UTC; naive datetimes are UTC.
These functions raise ``ValueError``/``TypeError`` only: each caller turns that into its own
error naming the offending field (request_time, --start, as_of, ...). The vectorised Arrow
column conversion is ``context_store.state.columns.ts_to_us``.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

__all__ = [
    "EPOCH",
    "as_utc",
    "datetime_to_us",
    "epoch_number_to_us",
    "format_iso_z",
    "parse_iso",
    "us_to_datetime",
]

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def as_utc(t: datetime) -> datetime:
    """Naive -> UTC; aware -> the same instant in UTC."""
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def datetime_to_us(t: datetime) -> int:
    """A datetime (naive = UTC) -> µs since the epoch (exact integer arithmetic, no float)."""
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    d = t - EPOCH
    return (d.days * 86_400 + d.seconds) * 1_000_000 + d.microseconds


def us_to_datetime(us: int) -> datetime:
    """µs since the epoch -> aware UTC datetime."""
    return datetime.fromtimestamp(us // 1_000_000, tz=UTC).replace(microsecond=us % 1_000_000)


def parse_iso(value: str) -> datetime:
    """An ISO-8601 date/time (surrounding blanks and a trailing ``Z``/``z`` allowed) -> datetime,
    naive when the string has no offset; ``ValueError`` when unparseable."""
    s = value.strip()
    if s.endswith(("Z", "z")):
        s = s[:-1] + "+00:00"
    return datetime.fromisoformat(s)


def epoch_number_to_us(value: float) -> int:
    """An epoch number in seconds, milliseconds, microseconds or nanoseconds (told apart by
    magnitude) -> µs; ``ValueError`` for NaN/inf."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{value!r} is not a timestamp")
    mag = abs(value)
    scale = 1_000_000 if mag < 1e11 else 1_000 if mag < 1e14 else 1 if mag < 1e17 else 0.001
    return int(round(value * scale))


def format_iso_z(t: datetime) -> str:
    """ISO-8601 in UTC with a ``Z`` suffix (naive = UTC)."""
    return as_utc(t).isoformat().replace("+00:00", "Z")
