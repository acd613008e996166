"""Recent events of one entity for ``get_user_context``: online list first, offline log as fallback.

Rows are dicts of the source's columns, newest first, all with ``ts < before`` (strictly before
the request time, like every window here), so online and as-of replay agree.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from ..errors import NotFoundError

if TYPE_CHECKING:
    from ..definitions import StreamSource
    from .store import ContextStore

__all__ = ["online_recent_events", "offline_recent_events", "offline_row_time"]


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_ONE_US = timedelta(microseconds=1)


def _us(t: datetime) -> int:
    return (t - _EPOCH) // _ONE_US


def _ts_us(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return _us(value if value.tzinfo else value.replace(tzinfo=timezone.utc))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value)  # already int64 microseconds (the internal convention)
    if isinstance(value, str):
        try:
            t = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        return _us(t if t.tzinfo else t.replace(tzinfo=timezone.utc))
    return None


def _newest_first(rows: list[dict[str, Any]], ts_field: str, n: int, before_us: int) -> list[dict[str, Any]]:
    keyed = [(ts, i, r) for i, r in enumerate(rows) if (ts := _ts_us(r.get(ts_field))) is not None and ts < before_us]
    keyed.sort(key=lambda x: (x[0], x[1]), reverse=True)
    return [r for _, _, r in keyed[:n]]


def online_recent_events(
    store: ContextStore, source: StreamSource, join_keys: dict[str, Any], n: int, before: datetime
) -> list[dict[str, Any]] | None:
    """From the online store's bounded per-entity list; None when it holds nothing for the entity."""
    from ..stores.online.codec import entity_key

    read = getattr(store.online, "read_recent", None)
    if read is None:
        return None
    # A few extra: events stamped at/after ``before`` (clock skew, future timestamps) are skipped.
    rows = read(source.name, entity_key(list(join_keys), list(join_keys.values())), n + 8)
    if not rows:
        return None
    return _newest_first([dict(r) for r in rows], source.timestamp_field, n, _us(before))


def offline_recent_events(
    store: ContextStore, source: StreamSource, join_keys: dict[str, Any], n: int, before: datetime
) -> list[dict[str, Any]] | None:
    """From the offline ``src__{source}`` event log (used for as-of replay)."""
    import pyarrow.compute as pc

    from ..stores.offline import source_table

    name = source_table(source.name)
    offline = store.offline
    if not offline.exists(name):
        return None
    expr = None
    for k, v in join_keys.items():
        e = pc.field(k) == v
        expr = e if expr is None else expr & e
    try:
        table = offline.read(name, ts_column=source.timestamp_field, end_us=_us(before), filter=expr)
    except NotFoundError:
        return None
    if table.num_rows == 0:
        return []
    table = table.sort_by([(source.timestamp_field, "descending")]).slice(0, n * 4 + 16)
    return _newest_first(table.to_pylist(), source.timestamp_field, n, _us(before))


def offline_row_time(store: ContextStore, view: Any, join_keys: dict[str, Any], at: datetime) -> datetime | None:
    """Time of the entity's latest row of a (non-aggregate) feature view at ``at`` (ts <= at), from the
    offline log: the effective time of a replayed row feature. None for other views or no row."""
    import pyarrow.compute as pc

    from ..stores.offline import view_table

    keys = getattr(view, "join_keys", None)
    ts_field = getattr(view, "timestamp_field", None)
    if not keys or not ts_field or not set(keys) <= set(join_keys):
        return None
    name = view_table(view.name)
    if not store.offline.exists(name):
        return None
    expr = None
    for k in keys:
        e = pc.field(k) == join_keys[k]
        expr = e if expr is None else expr & e
    try:
        table = store.offline.read(name, columns=[ts_field], ts_column=ts_field, end_us=_us(at) + 1, filter=expr)
    except NotFoundError:
        return None
    if table.num_rows == 0:
        return None
    latest = pc.max(table[ts_field]).as_py()
    if isinstance(latest, datetime):
        return latest if latest.tzinfo else latest.replace(tzinfo=timezone.utc)
    return None
