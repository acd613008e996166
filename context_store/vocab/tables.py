"""Offline table names: ``fv__{view}`` (a feature view's input rows after its transform) and
``src__{source}`` (a stream source's raw events); ``sys__forgotten`` / ``audit__forget`` (erasure)."""

from __future__ import annotations

__all__ = [
    "FEATURE_STATS_TABLE",
    "FORGET_AUDIT_TABLE",
    "QUALITY_TABLE",
    "SOURCE_PREFIX",
    "TOMBSTONE_TABLE",
    "VIEW_PREFIX",
    "is_source_table",
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


def view_table(view: str) -> str:
    """Offline table of a feature view's input rows (join keys, timestamp, input columns)."""
    return VIEW_PREFIX + view


def source_table(source: str) -> str:
    """Offline table of a stream source's raw events."""
    return SOURCE_PREFIX + source


def is_source_table(table: str) -> bool:
    return table.startswith(SOURCE_PREFIX)
