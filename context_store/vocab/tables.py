"""Offline table names: ``fv__{view}`` (a feature view's input rows after its transform) and
``src__{source}`` (a stream source's raw events); ``log__{service}`` (a feature service's served vectors);
``sys__forgotten`` / ``audit__forget`` (erasure)."""

from __future__ import annotations

__all__ = [
    "FEATURE_STATS_TABLE",
    "FORGET_AUDIT_TABLE",
    "LOG_COLUMNS",
    "LOG_PREFIX",
    "QUALITY_TABLE",
    "SOURCE_PREFIX",
    "TOMBSTONE_TABLE",
    "VIEW_PREFIX",
    "is_source_table",
    "log_table",
    "source_table",
    "view_table",
]

VIEW_PREFIX = "fv__"
SOURCE_PREFIX = "src__"
# Right to erasure (docs/erasure.md): entities forgotten (join key, value, when) -- every compute
# path drops their rows up to that time -- and the audit of each forget (no entity data).
TOMBSTONE_TABLE = "sys__forgotten"
FORGET_AUDIT_TABLE = "audit__forget"
# Data quality (docs/data-quality.md): one row per expectation result of each run (backfill,
# materialize, sampled stream), and per-feature distribution statistics of each materialization.
QUALITY_TABLE = "sys__quality"
FEATURE_STATS_TABLE = "sys__feature_stats"
LOG_PREFIX = "log__"
# The request columns of a ``log__`` table (join keys and features are the others): no join key may be named so.
LOG_COLUMNS = ("request_id", "request_time", "logged_at", "workspace", "key_id", "request_context")


def view_table(view: str) -> str:
    """Offline table of a feature view's input rows (join keys, timestamp, input columns)."""
    return VIEW_PREFIX + view


def source_table(source: str) -> str:
    """Offline table of a stream source's raw events."""
    return SOURCE_PREFIX + source


def is_source_table(table: str) -> bool:
    return table.startswith(SOURCE_PREFIX)


def log_table(service: str) -> str:
    """Offline table of a feature service's logged (served) vectors: one column per join key (named by
    it), request metadata, one column per feature (``view__feature``) and its status."""
    return LOG_PREFIX + service
