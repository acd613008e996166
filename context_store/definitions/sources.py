"""Data sources: files for history, streams for live events, requests for request-time data."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from ..limits import TIME_MIN
from ..vocab.time import as_utc, parse_iso
from .base import Definition
from .entity import Field
from .windows import parse_duration

__all__ = ["Source", "FileSource", "StreamSource", "RequestSource", "DEFAULT_MIN_EVENT_TIME"]

DEFAULT_MIN_EVENT_TIME = "2000-01-01T00:00:00Z"


class Source(Definition):
    kind = "source"
    timestamp_field: str
    schema: tuple[Field, ...] | None

    def field(self, name: str) -> Field | None:
        for f in self.schema or ():
            if f.name == name:
                return f
        return None


def _check_schema(obj: Definition, schema: Any, required: bool) -> tuple[Field, ...] | None:
    if schema is None:
        if required:
            obj.fail("schema is required: a list of cs.Field")
        return None
    if not isinstance(schema, (list, tuple)) or not all(isinstance(f, Field) for f in schema):
        obj.fail("schema must be a list of cs.Field")
    names = [f.name for f in schema]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        obj.fail(f"duplicate field {dup[0]!r} in schema")
    return tuple(schema)


class FileSource(Source):
    """Parquet or CSV files (a glob is allowed). ``schema`` is inferred from the files when omitted.

    A relative ``path`` is relative to the feature repo root.
    """

    kind = "file_source"

    def __init__(
        self,
        path: str,
        timestamp_field: str,
        name: str | None = None,
        schema: list[Field] | None = None,
        file_format: str | None = None,
        description: str | None = None,
        tags: dict[str, str] | None = None,
        owner: str | None = None,
    ) -> None:
        if not isinstance(path, str) or not path:
            self.name = name or "file_source"
            self._init_common(self.name, description, tags, owner)
            self.fail(f"path must be a non-empty string, got {path!r}")
        default_name = "src_" + "".join(c if c.isalnum() else "_" for c in path.rsplit("/", 1)[-1].split(".")[0])
        self._init_common(name or default_name[:120], description, tags, owner)
        self.path = path
        fmt = file_format or ("csv" if path.lower().endswith(".csv") else "parquet")
        if fmt not in ("parquet", "csv"):
            self.fail(f"file_format must be 'parquet' or 'csv', got {fmt!r}")
        self.file_format = fmt
        if not isinstance(timestamp_field, str) or not timestamp_field:
            self.fail("timestamp_field must be a column name")
        self.timestamp_field = timestamp_field
        self.schema = _check_schema(self, schema, required=False)

    def spec(self) -> dict[str, Any]:
        return {
            **super().spec(),
            "path": self.path,
            "format": self.file_format,
            "timestamp_field": self.timestamp_field,
            "schema": [f.spec() for f in self.schema] if self.schema else None,
        }


class StreamSource(Source):
    """Live events (push API or Redis Streams); ``batch_source`` holds the history for backfill.

    ``allowed_lateness``: events older than the partition's watermark by at most this still
    update online state; older ones are rejected by push and reported in ``PushResult.rejected``.

    Event-time bounds (checked by push, 4xx naming the record and field):
    ``max_future_skew`` (default 5m): an event later than now + this is refused, so one bad clock
    cannot move a watermark (and make every real event late) into the future.
    ``min_event_time`` (default 2000-01-01 UTC; ``None``: only the global 1900 floor): older
    events are refused. Epoch 0 and year-1 defaults of a producer's unset field land before it;
    a stream carries live events, history belongs in ``batch_source``.

    ``event_id_field``: a schema column identifying each event. A record whose id was already
    ingested within ``event_id_retention`` (default 24h) is dropped -- counted once online and
    offline -- and reported in ``PushResult.duplicates``, so a client may retry any push. The
    retention also bounds how long an ``Idempotency-Key`` of a push to this source is remembered.
    """

    kind = "stream_source"

    def __init__(
        self,
        name: str,
        schema: list[Field],
        timestamp_field: str,
        batch_source: FileSource | None = None,
        allowed_lateness: str | timedelta = "1h",
        partitions: int = 4,
        description: str | None = None,
        tags: dict[str, str] | None = None,
        max_future_skew: str | timedelta = "5m",
        min_event_time: str | datetime | None = DEFAULT_MIN_EVENT_TIME,
        event_id_field: str | None = None,
        event_id_retention: str | timedelta = "24h",
        owner: str | None = None,
    ) -> None:
        self._init_common(name, description, tags, owner)
        self.schema = _check_schema(self, schema, required=True)
        if not isinstance(timestamp_field, str) or self.field(timestamp_field) is None:
            self.fail(f"timestamp_field {timestamp_field!r} is not in the schema")
        self.timestamp_field = timestamp_field
        if batch_source is not None and not isinstance(batch_source, FileSource):
            self.fail("batch_source must be a cs.FileSource")
        self.batch_source = batch_source
        try:
            self.allowed_lateness = parse_duration(allowed_lateness, "allowed_lateness")
        except ValueError as e:
            self.fail(str(e))
        if not isinstance(partitions, int) or not 1 <= partitions <= 1024:
            self.fail("partitions must be an int in 1..1024")
        self.partitions = partitions
        try:
            self.max_future_skew = parse_duration(max_future_skew, "max_future_skew")
        except ValueError as e:
            self.fail(str(e))
        self.min_event_time = self._min_event_time(min_event_time)
        if event_id_field is not None:
            f = self.field(event_id_field) if isinstance(event_id_field, str) else None
            if f is None:
                names = ", ".join(x.name for x in self.schema or ())
                self.fail(f"event_id_field {event_id_field!r} is not in the schema ({names})")
            elif f.dtype.name not in ("string", "int64"):
                self.fail(f"event_id_field {event_id_field!r} must be a String or Int64 field, not {f.dtype.name}")
        self.event_id_field = event_id_field
        try:
            self.event_id_retention = parse_duration(event_id_retention, "event_id_retention")
        except ValueError as e:
            self.fail(str(e))
        if not timedelta(seconds=1) <= self.event_id_retention <= timedelta(days=90):
            self.fail(f"event_id_retention must be between 1s and 90d, got {event_id_retention!r}")

    def _min_event_time(self, value: object) -> datetime | None:
        if value is None:
            return None
        try:
            t = parse_iso(value) if isinstance(value, str) else value
        except ValueError:
            t = None
        if not isinstance(t, datetime) or not TIME_MIN <= as_utc(t) <= datetime.now(UTC):
            self.fail(f"min_event_time must be None or a past time after 1900 (ISO string or datetime), got {value!r}")
        return as_utc(t)

    def spec(self) -> dict[str, Any]:
        out = {
            **super().spec(),
            "schema": [f.spec() for f in self.schema or ()],
            "timestamp_field": self.timestamp_field,
            "batch_source": self.batch_source.spec() if self.batch_source else None,
            "allowed_lateness_s": self.allowed_lateness.total_seconds(),
            "partitions": self.partitions,
            **({"event_id_field": self.event_id_field} if self.event_id_field else {}),
            **(
                {"event_id_retention_s": self.event_id_retention.total_seconds()}
                if self.event_id_retention != timedelta(hours=24)
                else {}
            ),
        }
        # Only when set: an upgrade must not show every applied stream source as changed.
        if self.max_future_skew != timedelta(minutes=5):
            out["max_future_skew_s"] = self.max_future_skew.total_seconds()
        if self.min_event_time != parse_iso(DEFAULT_MIN_EVENT_TIME):
            out["min_event_time"] = None if self.min_event_time is None else self.min_event_time.isoformat()
        return out


class RequestSource(Source):
    """Data that arrives with the request (``request_context``), for realtime feature views."""

    kind = "request_source"

    def __init__(self, schema: list[Field], name: str = "request", description: str | None = None) -> None:
        self._init_common(name, description, None)
        self.schema = _check_schema(self, schema, required=True)
        self.timestamp_field = ""

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "schema": [f.spec() for f in self.schema or ()]}
