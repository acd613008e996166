"""``record_event``: one event written back by an agent, answered with what it changed.

The write is an ordinary push of one record (``ContextStore.push``: the same validation, admission,
idempotency and read-after-write wait as the SDK and ``POST /v1/ingest``), so an agent can never
write what a producer could not. The answer adds the current online values of every online
feature view the source feeds, for the record's entity (the view's join keys, taken from the
record): the agent sees the effect of its write in the same call.

A subject-bound token (``context_store.access``) may only record events about its own entity.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ..access import Subject, check_join_keys
from ..compute.stream.processor import source_plan
from ..errors import InvalidInputError
from ..limits import RECORD_FIELDS
from ..types import FeatureMetadata
from .context_text import iso, jsonable

if TYPE_CHECKING:
    from ..compute.stream.ingestor import PushResult
    from .store import ContextStore

__all__ = ["RecordedEvent", "record_event"]

_PUSHED = "records[0]"  # how push names the one record of a record_event call in its errors


@dataclass(frozen=True, slots=True)
class RecordedEvent:
    """The push's result and the online values now served for the record's entity."""

    source: str
    result: PushResult  # accepted / duplicates / replayed / visible, as ``push`` answers
    join_keys: dict[str, Any]  # the record's entity: every join key of the views read
    views: tuple[str, ...]  # the online feature views fed by the source, in name order
    features: dict[str, Any]  # "view.feature" -> value, read after the write
    metadata: tuple[FeatureMetadata, ...] = field(default=())
    read_at: datetime | None = None  # the request time of the read

    def to_dict(self) -> dict[str, Any]:
        at = self.read_at
        return {
            "source": self.source,
            "accepted": self.result.accepted,
            "visible": self.result.visible,
            "replayed": self.result.replayed,
            "duplicate": self.result.duplicates > 0,
            "push": self.result.to_dict(),
            "join_keys": jsonable(self.join_keys),
            "views": list(self.views),
            "read_at": iso(at) if at else None,
            "features": jsonable(self.features),
            "provenance": {
                m.name: {
                    "view": m.view,
                    "status": m.status,
                    "effective_time": iso(m.effective_time) if m.effective_time else None,
                    "age_ms": int((at - m.effective_time).total_seconds() * 1000) if at and m.effective_time else None,
                    "data_type": m.data_type,
                }
                for m in self.metadata
            },
        }


def _renamed(e: InvalidInputError) -> InvalidInputError:
    """Push's ``records[0].amount`` is the caller's ``record.amount``: name the field it sent."""
    f = e.field or ""
    if not f.startswith(_PUSHED):
        return e
    return InvalidInputError(e.message.replace("record 0: ", "", 1), field="record" + f[len(_PUSHED) :])


def record_event(
    store: ContextStore,
    source: str,
    record: Mapping[str, Any],
    *,
    subject: Subject | None = None,
    idempotency_key: str | None = None,
) -> RecordedEvent:
    """Push ``record`` to the stream source ``source`` and read back the views it feeds."""
    if not isinstance(record, Mapping) or not record:
        raise InvalidInputError("record must be a non-empty object of field -> value", field="record")
    if len(record) > RECORD_FIELDS:
        raise InvalidInputError(f"record has {len(record)} fields; at most {RECORD_FIELDS}", field="record")
    plan = source_plan(store.definitions, source)  # 404 naming the stream sources
    check_join_keys(subject, record, field="record")  # before anything is written
    try:
        result = store.push(source, [dict(record)], idempotency_key=idempotency_key)
    except InvalidInputError as e:
        raise _renamed(e) from None
    views = tuple(v for v in plan.views if v.online)
    keys = {k: record[k] for v in views for k in v.join_keys}
    values: dict[str, Any] = {}
    meta: list[FeatureMetadata] = []
    read_at = datetime.now(UTC)  # one request time for every view
    server = store.features
    for view in views:
        vec = server.get_view_features(view, {k: keys[k] for k in view.join_keys}, read_at)
        values.update(vec.feature_values)
        meta += vec.metadata
    return RecordedEvent(plan.source.name, result, keys, tuple(v.name for v in views), values, tuple(meta), read_at)


def subject_rows(subject: Subject, rows: Any) -> list[dict[str, Any]]:
    """The rows of a push by a subject-bound token, each checked to be about its entity (403 otherwise)."""
    if hasattr(rows, "to_pylist"):  # a pyarrow Table
        listed: list[dict[str, Any]] = rows.to_pylist()
    elif hasattr(rows, "to_dict"):  # a pandas DataFrame
        listed = rows.to_dict("records")
    else:
        listed = [dict(r) if isinstance(r, Mapping) else r for r in rows]
    for i, row in enumerate(listed):
        check_join_keys(subject, row if isinstance(row, Mapping) else {}, f"records[{i}]")
    return listed
