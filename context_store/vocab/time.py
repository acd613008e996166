"""Scalar time conversions, one implementation for the whole project.

The internal convention is int64 microseconds since the epoch, UTC; naive datetimes are UTC.
The conversions raise ``ValueError``/``TypeError`` only: each caller turns that into its own
error naming the offending field (request_time, --start, as_of, ...). The ``checked_*`` functions
are the gate for times a caller gives: a time outside ``limits.TIME_MIN``..``TIME_MAX`` (UTC) is an
``InvalidInputError`` naming the field (a 400), never an ``OverflowError`` from a far offset or unit.
The vectorised Arrow column conversion is ``context_store.state.columns.ts_to_us``.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

from ..errors import InvalidInputError
from ..limits import TIME_MAX, TIME_MIN

__all__ = [
    "EPOCH",
    "MAX_US",
    "MIN_US",
    "as_utc",
    "check_us",
    "checked_seconds_us",
    "checked_us",
    "checked_utc",
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


MIN_US = datetime_to_us(TIME_MIN)
MAX_US = datetime_to_us(TIME_MAX)  # exclusive


def _out_of_range(field: str, shown: object, label: str | None) -> InvalidInputError:
    what = label or field
    value = f" {shown!s:.64}" if shown is not None else ""
    return InvalidInputError(
        f"{what}{value} is outside the supported time range {TIME_MIN:%Y-%m-%d} .. {TIME_MAX:%Y-%m-%d} (UTC)",
        field=field,
    )


def check_us(us: int, field: str, shown: object = None, *, label: str | None = None) -> int:
    """``us`` when it lies in ``[MIN_US, MAX_US)``; otherwise an ``InvalidInputError`` naming ``field``
    (``shown``: the value as the caller gave it, for the message; ``label``: the field as the caller
    spells it, e.g. ``--start``)."""
    if MIN_US <= us < MAX_US:
        return us
    raise _out_of_range(field, shown, label)


def checked_us(t: datetime, field: str, *, label: str | None = None) -> int:
    """A caller's datetime (naive = UTC) -> µs, range-checked (exact: no offset conversion can overflow)."""
    return check_us(datetime_to_us(t), field, t.isoformat(), label=label)


def checked_utc(t: datetime, field: str, *, label: str | None = None) -> datetime:
    """A caller's datetime -> aware UTC, range-checked before converting (``astimezone`` overflows
    near year 1 and 9999)."""
    check_us(datetime_to_us(t), field, t.isoformat(), label=label)
    return as_utc(t)


def checked_seconds_us(value: float, field: str, *, label: str | None = None) -> int:
    """Epoch seconds -> µs, range-checked (NaN and infinities included)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise _out_of_range(field, value, label)
    return check_us(int(value * 1_000_000), field, value, label=label)
